"""`pretrain` killed with SIGKILL from outside at chosen and random moments, then resumed.

One uninterrupted reference run, then one run directory that is killed over and over
(before the first step, mid-checkpoint-write, during the held-out evaluation, at random
moments mid-training with SIGKILL and SIGTERM, during a resume's loading and compiling, after
the last checkpoint)
and restarted each time (`--resume`, or from scratch when no checkpoint loads). Checked:
- after every kill, nothing looks finished that is not: no summary.json, and every step
  checkpoint the loader accepts holds exactly the reference run's weights at that step;
- the run that finally completes has the reference `weights_crc32`;
- over 1.75 epochs, with the kills, every training row is seen exactly once per epoch (row
  ids recovered from the per-step data fingerprints in metrics.jsonl), in the same order as
  the uninterrupted run.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import kill_driver as kd
from toy_data import TOY_MODEL, write_prepared, write_run_config

pytestmark = pytest.mark.e2e

STEPS, CKPT_EVERY, EVAL_EVERY, BATCH, TRAIN_ROWS = 28, 4, 7, 2, 32
STEPS_PER_EPOCH = TRAIN_ROWS // BATCH  # 16: the run covers 1.75 epochs
SEED = 20261201  # the random kill moments; printed with the table


@dataclass
class World:
    root: Path
    config: Path
    reference: Path
    digests: dict[int, str]
    """step -> crc32 of the reference run's weights at that step."""
    summary: dict
    keep_last: int
    rows: np.ndarray
    """the training rows in storage order [TRAIN_ROWS, S+1]."""


def _tokenizer(out: Path) -> Path:
    from pangu_ms.config import TokenizerConfig
    from pangu_ms.tokenizer import segment, train_tokenizer

    text = ["今天天气很好，我们去公园散步。", "人民日报发表评论文章，讨论经济发展。", "中国的科学技术不断进步，人民生活水平提高。"]
    train_tokenizer(TokenizerConfig(vocab_size=56, byte_fallback=False, character_coverage=1.0), out,
                    segmented=[segment(t) for t in text * 30])
    return out


def _stored_rows(data: Path) -> np.ndarray:
    import mindspore.dataset as ds

    from pangu_ms.data.shards import shard_files

    it = ds.MindDataset(shard_files(data, "train"), shuffle=False).create_dict_iterator(num_epochs=1, output_numpy=True)
    return np.stack([r["input_ids"] for r in it])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("fault")
    data = write_prepared(root / "data", seq_length=TOY_MODEL["seq_length"], vocab_size=TOY_MODEL["vocab_size"],
                          train_rows=TRAIN_ROWS, heldout_rows=16)
    config = write_run_config(root / "run.yaml", data, root / "reference",
                              tokenizer={"path": str(_tokenizer(root / "tok"))},
                              train={"steps": STEPS, "global_batch_size": BATCH, "eval_every": EVAL_EVERY,
                                     "eval_batches": 2, "log_every": 1},
                              checkpoint={"every_steps": CKPT_EVERY, "keep_last": 2})
    reference = root / "reference"
    child = kd.start(["pretrain", "--config", str(config), "--no-progress", "--set", "checkpoint.keep_last=100"],
                     root / "logs" / "reference")
    assert child.wait() == 0, child.stderr()[-3000:]
    dirs = kd.step_dirs(reference)
    assert sorted(dirs) == list(range(CKPT_EVERY, STEPS + 1, CKPT_EVERY))
    digests = {s: kd.checkpoint_digest(d) for s, d in dirs.items()}
    summary = json.loads((reference / "summary.json").read_text())
    # the summary's checksum is the crc32 of the weights as a loader reads them back
    assert digests[STEPS] == summary["weights_crc32"]
    assert len(set(digests.values())) == len(digests)  # every checkpoint holds other weights
    rows = _stored_rows(data)
    assert len({r.tobytes() for r in rows}) == TRAIN_ROWS  # distinct rows: an id per row
    return World(root, config, reference, digests, summary, 2, rows)


# --------------------------------------------------------------------------- the killed run


class KilledRun:
    """One run directory, started, killed and restarted by the scenarios below."""

    def __init__(self, world: World, name: str):
        self.world, self.run, self.n = world, world.root / name, 0
        self.table: list[dict] = []

    def start(self) -> kd.Child:
        self.n += 1
        self.base_records = len(kd.records(self.run))
        self.base_entries = kd.checkpoint_entries(self.run)
        # temporary entries left by earlier kills (stale: no process writes them any more)
        root = self.run / "checkpoints"
        self.stale = {e for e in self.base_entries
                      if not kd.STEP_DIR.match(e) or not (root / e / "manifest.json").exists()}
        self.resumed_from = kd.newest_loadable(self.run) if self.run.exists() else None
        args = ["pretrain", "--config", str(self.world.config), "--no-progress"]
        args += ["--resume", str(self.run)] if self.resumed_from is not None else ["--out", str(self.run)]
        return kd.start(args, self.world.root / "logs" / f"{self.run.name}_{self.n}")

    # what this process has logged so far
    def new_records(self, kind: str) -> list[dict]:
        return [r for r in kd.records(self.run)[self.base_records:] if r.get("kind") == kind]

    def describe(self) -> str:
        train = self.new_records("train")
        evals = self.new_records("eval")
        where = f"after train step {train[-1]['step']} was logged" if train else "before this process's first step"
        if evals and train and evals[-1]["step"] == train[-1]["step"]:
            where += " and its held-out evaluation"
        unfinished = self.unfinished()
        return where + (f", checkpoint entries being written: {unfinished}" if unfinished else "")

    def unfinished(self) -> list[str]:
        """Checkpoint entries this process has begun and not finished: temporary names, and step
        directories still without their manifest (written last, once every rank's files are in)."""
        root = self.run / "checkpoints"
        return [e for e in kd.checkpoint_entries(self.run) if e not in self.stale and (
            not kd.STEP_DIR.match(e) or ((root / e).is_dir() and not (root / e / "manifest.json").exists()))]

    def killed(self, point: str, what: str | None) -> None:
        """Record the kill and check the invariants of a killed run directory."""
        assert what is not None, f"{point}: the process exited before the kill point was reached"
        assert not (self.run / "summary.json").exists(), f"{point}: a killed run left a summary.json"
        assert all(r.get("kind") != "partial" for r in kd.records(self.run)), "a kill cut a metrics line short"
        loaded, refused = {}, []
        for step, d in kd.step_dirs(self.run).items():
            digest = kd.checkpoint_digest(d)
            if digest is None:
                refused.append(step)
            else:
                loaded[step] = digest
                assert digest == self.world.digests[step], f"{point}: {d.name} loads but holds other weights"
        # a step directory the loader refuses is either the one being written when the kill came
        # (newer than every loadable one) or an old one being pruned (keep_last) at that moment
        newest = max(loaded, default=0)
        assert all(s > newest or s < newest - self.world.keep_last * CKPT_EVERY + CKPT_EVERY for s in refused), \
            f"{point}: checkpoints {refused} within keep_last of the newest ({newest}) do not load"
        note = f"; refused (half-written or half-pruned): {refused}" if refused else ""
        self.table.append({"kill point": point, "state at the kill": what + note,
                           "resumed from": self.resumed_from, "checkpoints left": sorted(loaded)})

    def finish(self) -> dict:
        child = self.start()
        assert child.wait() == 0, child.stderr()[-3000:]
        self.table.append({"kill point": "(none: ran to the end)", "state at the kill": "-",
                           "resumed from": self.resumed_from, "checkpoints left": sorted(kd.step_dirs(self.run))})
        return json.loads((self.run / "summary.json").read_text())


def _new_checkpoint_entry(k: KilledRun):
    def trigger() -> bool:
        return kd.checkpoint_entries(k.run) != k.base_entries and any(
            e not in k.base_entries for e in kd.checkpoint_entries(k.run))

    def confirm() -> str | None:
        unfinished = k.unfinished()
        newest = max(kd.step_dirs(k.run), default=None)
        if unfinished or (newest is not None and kd.checkpoint_digest(kd.step_dirs(k.run)[newest]) is None):
            return k.describe()
        k.base_entries = kd.checkpoint_entries(k.run)  # that write finished: wait for the next one
        return None

    return trigger, confirm


def _random_kill(k: KilledRun, rng: random.Random, sig: int) -> None:
    """Resume, pick a random later step, and kill a random 0-20 ms after its train record: the
    moment falls anywhere in the next step, an evaluation or a checkpoint write."""
    child = k.start()
    start = k.resumed_from or 0
    target = rng.randint(start + 1, STEPS - 1)
    assert kd.wait_for(child, lambda: any(r["step"] >= target for r in k.new_records("train"))), \
        child.stderr()[-2000:]
    k.killed(f"random moment ({signal.Signals(sig).name}) after step {target}",
             kd.kill_after(child, rng.uniform(0.0, 0.02), k.describe, sig=sig))


def test_killed_at_every_kind_of_moment_resumes_to_the_uninterrupted_weights(world):
    rng = random.Random(SEED)
    k = KilledRun(world, "killed")

    child = k.start()  # 1. during start-up (imports, data, graph compile), before any step
    k.killed("start-up, before the first step",
             kd.kill_after(child, rng.uniform(0.5, 2.5), k.describe))

    child = k.start()  # 2. mid-checkpoint-write (no checkpoint yet: a fresh start)
    trigger, confirm = _new_checkpoint_entry(k)
    k.killed("mid-checkpoint-write", kd.kill_when(child, trigger, confirm))

    child = k.start()  # 3. during the held-out evaluation (the first one compiles its graph)
    k.killed("held-out evaluation", kd.kill_when(
        child, lambda: any(r["step"] % EVAL_EVERY == 0 for r in k.new_records("train")),
        lambda: k.describe() if not k.new_records("eval") else None))

    _random_kill(k, rng, signal.SIGTERM)  # 4. a random moment; SIGTERM, as a job scheduler stops a job

    child = k.start()  # 5. while resuming: loading the checkpoint, building, compiling
    k.killed("during the resume (load, compile)", kd.kill_after(
        child, rng.uniform(0.3, 2.0), lambda: k.describe() if not k.new_records("train") else None))

    _random_kill(k, rng, signal.SIGKILL)  # 6. another random moment

    child = k.start()  # 7. after the last checkpoint, while the summary and plot are made
    k.killed("after the final checkpoint, before summary.json", kd.kill_when(
        child, lambda: STEPS in kd.step_dirs(k.run) and not k.unfinished(),
        lambda: k.describe() if not (k.run / "summary.json").exists() else None))

    summary = k.finish()
    print(f"\nfault injection (seed {SEED}):")
    for row in k.table:
        print("  " + " | ".join(f"{key}: {value}" for key, value in row.items()))
    assert summary["steps"] == STEPS
    assert summary["weights_crc32"] == world.summary["weights_crc32"]
    final = kd.step_dirs(k.run)[STEPS]
    assert kd.checkpoint_digest(final) == world.digests[STEPS]

    # every training row exactly once per epoch, in the uninterrupted run's order
    fp = {s: r["data"] for s, r in kd.final_records(k.run, "train").items()}
    ref_fp = {s: r["data"] for s, r in kd.final_records(world.reference, "train").items()}
    assert sorted(fp) == list(range(1, STEPS + 1))
    assert fp == ref_fp
    ids = kd.batch_row_ids(fp, world.rows, BATCH)
    epoch0 = [i for s in range(1, STEPS_PER_EPOCH + 1) for i in ids[s]]
    epoch1 = [i for s in range(STEPS_PER_EPOCH + 1, STEPS + 1) for i in ids[s]]
    assert sorted(epoch0) == list(range(TRAIN_ROWS))  # the whole first epoch: each row once
    assert len(set(epoch1)) == len(epoch1) == (STEPS - STEPS_PER_EPOCH) * BATCH  # no row twice in epoch 2
    assert epoch1 != epoch0[:len(epoch1)]  # and a new shuffle for it
    losses = {s: r["loss"] for s, r in kd.final_records(k.run, "train").items()}
    ref_losses = {s: r["loss"] for s, r in kd.final_records(world.reference, "train").items()}
    assert losses == ref_losses  # bitwise the same trajectory, step by step
    kills = [r for r in k.table if r["state at the kill"] != "-"]
    assert any("being written" in r["state at the kill"] for r in kills)  # a write really was cut


# --------------------------------------------------------------------------- a full disk


def _can_mount_tmpfs(where: Path) -> bool:
    """Whether `unshare -Urm` lets this user mount a small tmpfs (user + mount namespaces)."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _enospc_shim(out: Path) -> Path:
    src = Path(__file__).with_name("enospc_shim.c")
    lib = out / "enospc_shim.so"
    done = subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return lib


def test_a_full_disk_fails_with_one_line_and_keeps_the_last_good_checkpoint(world):
    """The run directory sits on a 1600 KiB filesystem: checkpoints 4 and 8 fit (about 620 KiB
    each, with the tokenizer copy), the third does not. The run stops with one `error:` line and exit status 2, the two
    complete checkpoints still load and hold the reference weights, and a resume elsewhere
    from a copy finishes with the uninterrupted run's weights."""
    base = world.root / "disk_full"
    mnt, copy = base / "mnt", base / "copy"
    args = ["pretrain", "--config", str(world.config), "--no-progress", "--out", str(mnt / "run")]
    if _can_mount_tmpfs(base / "probe") and not os.environ.get("PANGU_TEST_ENOSPC_SHIM"):
        how = "tmpfs of 1600 KiB"
        script = (f'mount -t tmpfs -o size=1600k tmpfs {mnt} && "$@"; rc=$?; '
                  f'cp -a {mnt}/run {copy}; exit $rc')
        mnt.mkdir(parents=True)
        child = kd.start(args, base / "log", prefix=["unshare", "-Urm", "sh", "-c", script, "sh"])
    else:  # no namespaces here: the same budget through a shim that fails write() with ENOSPC
        how = "LD_PRELOAD shim, 1600 KiB"
        mnt.mkdir(parents=True)
        child = kd.start(args, base / "log", env={"LD_PRELOAD": str(_enospc_shim(base)), "PANGU_FAULT_DIR": str(mnt),
                                                  "PANGU_FAULT_BYTES": str(1600 * 1024)})
    rc = child.wait()
    if how.startswith("LD_PRELOAD"):
        shutil.copytree(mnt / "run", copy, symlinks=True)
    err = child.stderr()
    assert rc == 2, f"{how}: exit status {rc}\n{err[-3000:]}"
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: pretrain: no space left on the device") and "--resume" in last, last
    assert "Traceback" not in err
    left = {step: kd.checkpoint_digest(d) for step, d in kd.step_dirs(copy).items()}
    assert left == {4: world.digests[4], 8: world.digests[8]}, (how, left)  # the two that fit, intact
    assert not (copy / "summary.json").exists()
    resumed = kd.start(["pretrain", "--config", str(world.config), "--no-progress", "--resume", str(copy)],
                       base / "resume_log")
    assert resumed.wait() == 0, resumed.stderr()[-3000:]
    assert json.loads((copy / "summary.json").read_text())["weights_crc32"] == world.summary["weights_crc32"]
    print(f"\ndisk full ({how}): {last}")
