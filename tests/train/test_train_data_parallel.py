"""Data parallel through the real engine: `pretrain` under msrun with 2 workers matches the
single-process run with the same global batch."""
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
from toy_data import TOY_MODEL, write_prepared, write_run_config

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
                              checkpoint={"every_steps": 5})
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    args = ["pretrain", "--config", str(config), "--no-progress"]
    single = subprocess.run([sys.executable, "-m", "pangu_ms", *args], capture_output=True, text=True,
                            timeout=600, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    msrun = shutil.which("msrun", path=env["PATH"])
    cmd = [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={8600 + os.getpid() % 300}",
           f"--log_dir={root / 'logs'}", "--join=True", str(MAIN), *args, "--out", str(root / "dp")]
    dp = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=root)
    logs = "".join(p.read_text(errors="replace")[-2000:] for p in sorted((root / "logs").glob("worker_*.log")))
    assert dp.returncode == 0, logs
    return root / "single", root / "dp"


def test_dp_losses_match_single_process(runs):
    single, dp = runs
    a, b = _losses(single), _losses(dp)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    ha = [r["heldout_loss"] for r in read_metrics(single / "metrics.jsonl") if r["kind"] == "eval"]
    hb = [r["heldout_loss"] for r in read_metrics(dp / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(ha) == len(hb) == 1 and abs(ha[0] - hb[0]) < 1e-5


def test_dp_final_weights_equal_on_both_ranks_and_to_single_process(runs):
    single, dp = runs
    rank0 = json.loads((dp / "summary.json").read_text())
    rank1 = json.loads((dp / "summary_rank1.json").read_text())
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["weights_crc32"] == rank1["weights_crc32"]  # bitwise equal replicas
    a, b = _weights(single), _weights(dp)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5, err_msg=k)
