"""The CPU PanGu-Sigma run: a tiny Sigma from the quickstart's dense model against the dense
model continued on the same tokens, per-domain held-out loss, tokens/s, and the extracted news
sub-model's size and equality.

    python bench/sigma_cpu.py [--steps 150] [--skip-train]

Needs the quickstart's dense checkpoint under runs/tiny/pretrain and its tokenizer in
runs/tiny/tokenizer (README quickstart). Steps, each skipped when its output exists:
  1. prepare runs/sigma_tiny/data from pangu_sigma_tiny_cpu.yaml (rows packed per domain);
  2. sigma init --from runs/tiny/pretrain --out runs/sigma_tiny/init;
  3. pretrain the Sigma (pangu_sigma_tiny_cpu.yaml) and the dense model
     (pangu_alpha_tiny_continue_cpu.yaml) for the same steps on the same shards, one after the
     other (their metrics' data fingerprints are compared: the same rows in the same order);
  4. held-out loss per domain of: the dense start, the Sigma right after init, both trained;
  5. sigma extract --domain news, its size, and its logits against the full model's on the news
     held-out rows.
Writes runs/sigma_tiny/report.json and prints a Markdown table. Timings on a shared machine
are noisy: tokens/s is each run's own steady-state figure (first step, with compilation, left out).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "sigma_tiny"
SIGMA_CFG = "ascend_configs/runs/pangu_sigma_tiny_cpu.yaml"
DENSE_CFG = "ascend_configs/runs/pangu_alpha_tiny_continue_cpu.yaml"


def cli(*args: str) -> str:
    cmd = [sys.executable, "-m", "pangu_ms", *args]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout


def heldout_rows(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    import mindspore.dataset as ds

    from pangu_ms.data.shards import DOMAIN_COLUMN, ROW_COLUMN, shard_files

    data = ds.MindDataset(shard_files(data_dir, "heldout"), columns_list=[ROW_COLUMN, DOMAIN_COLUMN], shuffle=False)
    rows, dom = [], []
    for r in data.create_dict_iterator(output_numpy=True):
        rows.append(r[ROW_COLUMN])
        dom.append(int(r[DOMAIN_COLUMN]))
    return np.stack(rows), np.array(dom, np.int32)


def per_domain_loss(loss_net, rows: np.ndarray, dom: np.ndarray, eod: int, names: list[str], sigma: bool,
                    batch: int = 8) -> dict[str, float]:
    """Mean next-token loss over each domain's held-out rows (last partial batch dropped)."""
    from mindspore import Tensor

    from pangu_ms.data.dataset import eod_reset

    loss_net.set_train(False)
    out = {}
    for d, name in enumerate(names):
        r = rows[dom == d]
        losses = []
        for i in range(0, len(r) - batch + 1, batch):
            b = r[i:i + batch]
            pos, doc = eod_reset(b, eod)
            args = [Tensor(b), Tensor(pos), Tensor(doc)] + ([Tensor(np.full(batch, d, np.int32))] if sigma else [])
            losses.append(float(loss_net(*args).asnumpy()))
        out[name] = float(np.mean(losses)) if losses else float("nan")
        out[f"{name}_rows"] = int(len(r))
    return out


def load_net(path: Path, sigma: bool):
    """The loss network of the newest checkpoint under `path` (dense or Sigma)."""
    import mindspore as ms

    from pangu_ms.checkpoint.inference import model_weights, newest_complete
    from pangu_ms.checkpoint.training import load_job_config
    from pangu_ms.models.pangu_alpha import PanguAlphaWithLoss
    from pangu_ms.models.pangu_sigma import PanguSigmaWithLoss

    step = newest_complete(path)
    job = load_job_config(step)
    net = PanguSigmaWithLoss(job.model, job.experts) if sigma else PanguAlphaWithLoss(job.model)
    ms.load_param_into_net(net, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in model_weights(step).items()},
                           strict_load=True)
    return job, net


def fingerprints(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x)["data"] for x in lines if json.loads(x).get("kind") == "train"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--skip-train", action="store_true", help="evaluate the existing runs only")
    args = ap.parse_args()
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    dense_start = ROOT / "runs" / "tiny" / "pretrain"
    if not (RUNS / "data" / "manifest.json").is_file():
        cli("prepare", "--config", SIGMA_CFG)
    if not (RUNS / "init" / "checkpoints").is_dir():
        cli("sigma", "init", "--from", str(dense_start), "--config", SIGMA_CFG, "--out", str(RUNS / "init"))
    report: dict = {"steps": args.steps}
    if not args.skip_train:
        for name, cfg in (("sigma", SIGMA_CFG), ("dense", DENSE_CFG)):
            cli("pretrain", "--config", cfg, "--no-progress", "--set", f"train.steps={args.steps}",
                "--out", str(RUNS / name))
    for name in ("sigma", "dense"):
        s = json.loads((RUNS / name / "summary.json").read_text(encoding="utf-8"))
        report[name] = {"tokens_per_s": s["tokens_per_s"], "train_time_s": s["train_time_s"],
                        "final_train_loss": s["final_train_loss"], "heldout_loss": s["heldout_loss"]}
    report["same_rows"] = fingerprints(RUNS / "sigma") == fingerprints(RUNS / "dense")
    rows, dom = heldout_rows(RUNS / "data")
    sig_job, sig0 = load_net(RUNS / "init", True)
    names, eod = sig_job.experts.domain_names, sig_job.model.eod_id
    _, dense0 = load_net(dense_start, False)
    report["heldout"] = {
        "dense_start": per_domain_loss(dense0, rows, dom, eod, names, False),
        "sigma_init": per_domain_loss(sig0, rows, dom, eod, names, True),
        "dense_continued": per_domain_loss(load_net(RUNS / "dense", False)[1], rows, dom, eod, names, False),
        "sigma_trained": per_domain_loss(load_net(RUNS / "sigma", True)[1], rows, dom, eod, names, True),
    }
    report["extract"] = extract_check(rows, dom, eod)
    (RUNS / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(table(report, names))
    return 0


def extract_check(rows: np.ndarray, dom: np.ndarray, eod: int) -> dict:
    import shutil

    from mindspore import Tensor

    from pangu_ms.checkpoint.sigma import load_sigma_lm
    from pangu_ms.data.dataset import eod_reset

    out = RUNS / "news_only"
    shutil.rmtree(out, ignore_errors=True)
    rep = json.loads(cli("sigma", "extract", "--ckpt", str(RUNS / "sigma"), "--domain", "news", "--out",
                         str(out)).strip().splitlines()[-1])
    _, full = load_sigma_lm(RUNS / "sigma")
    _, sub = load_sigma_lm(out)
    news = rows[dom == 0][:8]
    pos, doc = eod_reset(news, eod)
    s = news.shape[1] - 1
    args = [Tensor(news[:, :s]), Tensor(pos), Tensor(doc)]
    a = full(*args, Tensor(np.zeros(len(news), np.int32))).asnumpy()
    b = sub(*args, Tensor(np.zeros(len(news), np.int32))).asnumpy()
    return {"full_bytes": rep["source_bytes"], "news_bytes": rep["output_bytes"], "rows_compared": int(len(news)),
            "bitwise_equal": bool(np.array_equal(a, b)), "max_abs_diff": float(np.abs(a - b).max())}


def table(r: dict, names: list[str]) -> str:
    h = r["heldout"]
    lines = ["| model | " + " | ".join(f"held-out loss {n}" for n in names) + " | tokens/s | train s |",
             "|---|" + "---|" * len(names) + "---|---|"]
    rows = (("dense_start", "dense start (quickstart)", None), ("sigma_init", "Sigma after init", None),
            ("dense_continued", "dense continued", "dense"), ("sigma_trained", "Sigma trained", "sigma"))
    for key, label, run in rows:
        speed = f"{r[run]['tokens_per_s']:.0f} | {r[run]['train_time_s']:.0f}" if run else "- | -"
        lines.append(f"| {label} | " + " | ".join(f"{h[key][n]:.4f}" for n in names) + f" | {speed} |")
    e = r["extract"]
    lines.append(f"\nsame training rows in the same order: {r['same_rows']}; news sub-model "
                 f"{e['news_bytes'] / 2**20:.1f} MiB of {e['full_bytes'] / 2**20:.1f} MiB, logits on "
                 f"{e['rows_compared']} news rows bitwise equal: {e['bitwise_equal']} "
                 f"(max |diff| {e['max_abs_diff']:.3g})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
