"""Data-parallel training on CPU under msrun with 2 workers, through init_parallel() and
parallelize() (dp=2, full recompute), equals a single-process run on the whole batch: SGD,
so a sum instead of a mean in the gradient all-reduce would show in the weights."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pangu_testing import with_free_port

SCRIPT = Path(__file__).with_name("dp_train_script.py")


@pytest.mark.msrun
def test_two_worker_data_parallel_equals_single_process(tmp_path):
    env = {**os.environ, "GLOG_v": "3", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for var in ("MS_WORKER_NUM", "RANK_SIZE", "RANK_ID"):
        env.pop(var, None)
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "single"], env=env, cwd=tmp_path, check=True,
                   timeout=300)
    msrun = Path(sys.executable).with_name("msrun")

    def launch(port: int) -> tuple[int, str]:
        proc = subprocess.run([str(msrun), "--worker_num=2", "--local_worker_num=2", f"--master_port={port}",
                               f"--log_dir={tmp_path / 'logs'}", "--join=True", str(SCRIPT), str(tmp_path), "dp"],
                              env=env, cwd=tmp_path, timeout=600, capture_output=True, text=True)
        logs = "".join(p.read_text(errors="replace")[-3000:] for p in sorted((tmp_path / "logs").glob("*.log")))
        return proc.returncode, f"{proc.stdout[-2000:]}\n{logs}"

    rc, logs, _ = with_free_port(launch)
    assert rc == 0, f"msrun failed:\n{logs}"
    single = np.load(tmp_path / "single_rank0.npz")
    ranks = [np.load(tmp_path / f"dp_rank{r}.npz") for r in (0, 1)]
    names = [k for k in single.files if k != "losses" and not k.startswith("init:")]
    assert len(names) > 10
    # ranks saw different halves, so identical weights prove the gradient all-reduce happened
    for k in names:  # both ranks hold bitwise identical weights, equal to the single-process run
        np.testing.assert_array_equal(ranks[0][k], ranks[1][k], err_msg=k)
    for k in names:  # measured at most 6e-8 after 4 SGD steps
        np.testing.assert_allclose(ranks[0][k], single[k], rtol=0, atol=1e-6, err_msg=k)
    # SGD moved the weights by far more than that tolerance: summing the two ranks' gradients
    # instead of averaging them would double every update and fail the comparison above
    moved = max(float(np.abs(single[k] - single[f"init:{k}"]).max()) for k in names)
    assert moved > 1e-3, moved
    # each rank's loss is over its half of the batch; their mean is the full-batch loss
    np.testing.assert_allclose((ranks[0]["losses"] + ranks[1]["losses"]) / 2, single["losses"], rtol=0, atol=5e-7)
    assert not np.allclose(ranks[0]["losses"], ranks[1]["losses"])  # the halves really differ
