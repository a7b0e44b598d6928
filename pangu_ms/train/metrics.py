"""Run outputs for humans and machines: JSON-lines metrics, the loss-curve PNG, the summary.

`metrics.jsonl` holds one object per line with a `kind`: `train` (step, loss, lr,
loss_scale, grad_norm, overflow, tokens_seen, tokens_per_s, time), `eval` (step,
heldout_loss, heldout_ppl) and `resume` (step). A resumed run appends to the same file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


class MetricsLog:
    """Append-only JSON-lines writer (one flushed line per record)."""

    def __init__(self, path: str | Path, *, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, **fields: Any) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, **fields}, ensure_ascii=False) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl; for steps logged twice (a resumed run) the last wins."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    latest: dict[tuple, dict] = {}
    for r in records:
        latest[(r["kind"], r.get("step"))] = r
    return sorted(latest.values(), key=lambda r: (r.get("step", -1), r["kind"]))


def plot_loss(metrics_path: str | Path, png_path: str | Path, *, title: str = "",
              unigram: float | None = None) -> Path:
    """Train and held-out loss against step, written as a PNG (matplotlib, Agg backend);
    `unigram` (the corpus' unigram entropy) is drawn as a dashed reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    heldout = [(r["step"], r["heldout_loss"]) for r in records if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train), lw=1.0, alpha=0.8, label="train loss")
    if heldout:
        ax.plot(*zip(*heldout), "o-", lw=1.5, label="held-out loss")
    if unigram is not None:
        ax.axhline(unigram, ls="--", color="gray", lw=1, label=f"unigram entropy {unigram:.2f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or "PanGu-alpha pretraining")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


def unigram_entropy(token_counts: np.ndarray) -> float:
    """Entropy in nats of the unigram distribution with these counts (zeros ignored)."""
    p = token_counts[token_counts > 0].astype(np.float64)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


def summary_text(s: dict[str, Any]) -> str:
    """A few human-readable lines for the end of a run."""
    lines = [f"steps {s['steps']}  tokens seen {s['tokens_seen']:,}  time {s['wall_time_s']:.0f} s "
             f"({s['tokens_per_s']:.0f} tokens/s)",
             f"final train loss {s['final_train_loss']:.4f}"]
    if s.get("heldout_loss") is not None:
        lines.append(f"held-out loss {s['heldout_loss']:.4f}  perplexity {s['heldout_ppl']:.2f}")
    if s.get("unigram_entropy") is not None:
        lines.append(f"unigram entropy of the training tokens {s['unigram_entropy']:.4f} nats "
                     f"(perplexity {math.exp(s['unigram_entropy']):.1f})")
    return "\n".join(lines)
