"""Data parallel through the real engine: `pretrain` under msrun with 2 workers matches the
single-process run with the same global batch; every worker saves its own checkpoint files, and
a run killed after step 3 and resumed under msrun ends bitwise equal to the uninterrupted one."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pangu_ms.train import checkpoint as ckpt
from pangu_ms.train.metrics import read_metrics
from train_toy import TOY_MODEL, write_prepared, write_run_config

pytestmark = pytest.mark.msrun
MAIN = Path(__file__).resolve().parents[2] / "pangu_ms" / "__main__.py"


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"}


def _weights(run: Path) -> dict[str, np.ndarray]:
    return {k: v.asnumpy() for k, v in ckpt.read_tensors(ckpt.list_step_dirs(run)[0]).items() if k.startswith("lm.")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    data = write_prepared(root / "data", seq_length=TOY_MODEL["seq_length"], vocab_size=TOY_MODEL["vocab_size"])
    config = write_run_config(root / "run.yaml", data, root / "single", train={"steps": 5, "eval_every": 5},
                              checkpoint={"every_steps": 2})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    args = ["pretrain", "--config", str(config), "--no-progress"]
    single = subprocess.run([sys.executable, "-m", "pangu_ms", *args], capture_output=True, text=True,
                            timeout=600, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    dp = _msrun(root, "dp", env, *args, "--out", str(root / "dp"))
    assert dp.returncode == 0, _logs(root / "logs_dp")
    return root / "single", root / "dp", (root, config, env)


def _msrun(root: Path, tag: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    msrun = shutil.which("msrun", path=env["PATH"])
    port = 8600 + (os.getpid() * 7 + len(tag) * 13) % 900
    cmd = [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={port}",
           f"--log_dir={root / f'logs_{tag}'}", "--join=True", str(MAIN), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=root)


def _logs(d: Path) -> str:
    return "".join(p.read_text(errors="replace")[-2000:] for p in sorted(d.glob("worker_*.log")))


def test_dp_losses_match_single_process(runs):
    single, dp, _ = runs
    a, b = _losses(single), _losses(dp)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    ha = [r["heldout_loss"] for r in read_metrics(single / "metrics.jsonl") if r["kind"] == "eval"]
    hb = [r["heldout_loss"] for r in read_metrics(dp / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(ha) == len(hb) == 1 and abs(ha[0] - hb[0]) < 1e-5


def test_dp_final_weights_equal_on_both_ranks_and_to_single_process(runs):
    single, dp, _ = runs
    rank0 = json.loads((dp / "summary.json").read_text())
    rank1 = json.loads((dp / "summary_rank1.json").read_text())
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["weights_crc32"] == rank1["weights_crc32"]  # bitwise equal replicas
    a, b = _weights(single), _weights(dp)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5, err_msg=k)


def test_dp_every_rank_saves_its_files_and_the_manifest_lists_both(runs):
    _, dp, _ = runs
    step = ckpt.list_step_dirs(dp)[0]
    manifest = json.loads((step / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["mesh"]["dp"] == 2
    for r in (0, 1):
        assert f"rank_{r}/model.safetensors" in manifest["files"]
        info = json.loads((step / f"rank_{r}" / "rank.json").read_text())
        assert info["coords"] == {"stage": 0, "dp": r, "mp": 0}
    a, b = (ckpt.read_tensors(step, rank=r) for r in (0, 1))
    assert a.keys() == b.keys() and len(a) > 100
    for k in a:  # replicas: the two ranks wrote bitwise equal tensors
        np.testing.assert_array_equal(a[k].asnumpy(), b[k].asnumpy(), err_msg=k)


def test_dp_killed_run_resumes_to_the_uninterrupted_weights(runs):
    from pangu_ms.train.loop import KILL_AFTER_STEP_ENV

    _, dp, (root, config, env) = runs
    args = ["pretrain", "--config", str(config), "--no-progress"]
    killed = _msrun(root, "killed", {**env, KILL_AFTER_STEP_ENV: "3"}, *args, "--out", str(root / "dp_b"))
    assert killed.returncode != 0
    assert [p.name for p in ckpt.list_step_dirs(root / "dp_b")] == ["step_00000002"]  # step 3 was never saved
    resumed = _msrun(root, "resumed", env, *args, "--resume", str(root / "dp_b"))
    assert resumed.returncode == 0, _logs(root / "logs_resumed")
    assert "resumed from" in _logs(root / "logs_resumed")
    a, b = _weights(dp), _weights(root / "dp_b")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    assert _losses(root / "dp_b") == _losses(dp)
