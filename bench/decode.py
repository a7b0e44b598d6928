"""Decode throughput: K/V-cached generation vs full recompute vs MindFormers 1.3.2's cached decode.

Prints one JSON line per (model, method) and a summary line with the ratios:

    python bench/decode.py                         # tiny and small, 128 new tokens, 3 repeats
    python bench/decode.py --models tiny --new-tokens 8 --repeats 1 --no-mindformers   # smoke

Methods (random weights, greedy, batch 1 by default; compile time is excluded by an untimed
warm-up run and reported separately):
- cache: `pangu_ms.infer` prompt graph + one step graph per token, cache of `seq_length` slots
  (the same cache length MindFormers uses); the step graph runs the fused kernels of
  `pangu_ms.kernels` (the C++ ones are compiled on first use, outside the timed runs);
- recompute: the full model over the whole prefix for every new token, the prefix right-padded
  to a multiple of `--bucket` so a handful of compiled shapes serve all lengths (an unpadded
  recompute would recompile at every token);
- recompute_fast: the same recompute through the decoder's prompt graph (`DecoderCore.prefill`
  with its `PromptOps`, logits of the last position only, no cache kept), prefix left-padded
  to the bucket: the fastest full recompute this code base offers, so the cache is also
  compared with it;
- mindformers: `../shared/bench/mindformers_pangu.py --decode-tokens N` in its own venv
  (`--mf-python`); its cache is float16 as shipped, and its
  position bug limits it to about (seq_length - prompt) / 2 new tokens, so it generates
  `generated` tokens (100 for seq 256, prompt 16) and the ratio compares tokens/s.
"""
from __future__ import annotations

import sys
from pathlib import Path


import argparse
import json
import os
import statistics
import subprocess
import time

ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCH = ROOT.parent / "shared" / "bench"  # the peer scripts, beside the checkout


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,small", help="comma list of ascend_configs/models/pangu_alpha_<m>.yaml")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-length", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up (median reported)")
    p.add_argument("--bucket", type=int, default=32, help="recompute: prefix padded to a multiple of this")
    p.add_argument("--no-recompute", action="store_true")
    p.add_argument("--no-mindformers", action="store_true")
    p.add_argument("--mf-python", default=None, help="python of a venv with mindformers 1.3.2 (shared/bench/README.md)")
    p.add_argument("--shared-bench", default=str(SHARED_BENCH), help="folder of the peer scripts (default ../shared/bench)")
    return p.parse_args(argv)


def build_model(name: str):
    import mindspore as ms

    from pangu_ms.config import load_config
    from pangu_ms.models.pangu_alpha import PanguAlphaLM, count_parameters

    cfg = load_config(ROOT / "ascend_configs" / "models" / f"pangu_alpha_{name}.yaml").model
    ms.set_seed(0)
    lm = PanguAlphaLM(cfg)
    lm.set_train(False)
    return cfg, lm, count_parameters(cfg)


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(first call seconds incl. compile, median of `repeats` further calls)."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times)


def run_cache(lm, cfg, prompts, n_new: int, repeats: int) -> dict:
    import numpy as np

    from pangu_ms.infer.decoder import IncrementalDecoder

    dec = IncrementalDecoder(lm, batch_size=len(prompts), max_length=cfg.seq_length, prompt_bucket=1)
    prefill = []

    def go():
        t = time.perf_counter()
        logits = dec.start(prompts)
        prefill.append(time.perf_counter() - t)
        for _ in range(n_new - 1):
            logits = dec.step(np.argmax(logits, -1))

    first, med = _timed(go, repeats)
    pre = statistics.median(prefill[1:]) if len(prefill) > 1 else prefill[0]
    return {"first_run_s": first, "decode_s": med, "prefill_s": pre,
            "per_token_ms": 1e3 * (med - pre) / max(n_new - 1, 1)}


def run_recompute(lm, cfg, prompts, n_new: int, repeats: int, bucket: int) -> dict:
    import numpy as np
    from mindspore import Tensor

    b = len(prompts)
    limit = len(prompts[0]) + n_new

    def go():
        seqs = np.array(prompts, np.int32)
        for _ in range(n_new):
            n = seqs.shape[1]
            s = min(-(-n // bucket) * bucket, cfg.seq_length)
            ids = np.full((b, s), cfg.pad_id, np.int32)
            ids[:, :n] = seqs
            pos = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s))
            doc = np.zeros((b, s), np.int32)  # one document per row: causal
            logits = lm(Tensor(ids), Tensor(np.ascontiguousarray(pos)), Tensor(doc))
            nxt = logits.asnumpy().reshape(b, s, -1)[:, n - 1].argmax(-1).astype(np.int32)
            seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
        assert seqs.shape[1] == limit

    first, med = _timed(go, repeats)
    return {"first_run_s": first, "decode_s": med, "per_token_ms": 1e3 * med / n_new}


def run_recompute_fast(lm, cfg, prompts, n_new: int, repeats: int, bucket: int) -> dict:
    from mindspore import Tensor, nn

    from pangu_ms.infer.decoder import left_pad
    from pangu_ms.infer.kv_cache import DecoderCore

    class LastLogits(nn.Cell):
        """(ids, positions [B, S], pad_len [B]) -> logits of the last slot [B, V]; nothing cached."""

        def __init__(self, core: DecoderCore):
            super().__init__(auto_prefix=False)
            self.core = core

        def construct(self, input_ids, position_ids, pad_len):
            return self.core.prefill(input_ids, position_ids, pad_len)[0]

    b = len(prompts)
    net = LastLogits(DecoderCore(lm, cfg.seq_length, batch_size=b))
    net.set_train(False)

    def go():
        seqs = [list(p) for p in prompts]
        for _ in range(n_new):
            n = len(seqs[0])
            s = min(-(-n // bucket) * bucket, cfg.seq_length)
            ids, pos, pad = left_pad(seqs, s, cfg.pad_id)
            logits = net(Tensor(ids), Tensor(pos), Tensor(pad)).asnumpy()
            for row, tok in zip(seqs, logits.argmax(-1)):
                row.append(int(tok))

    first, med = _timed(go, repeats)
    return {"first_run_s": first, "decode_s": med, "per_token_ms": 1e3 * med / n_new}


def run_mindformers(cfg, args) -> dict | None:
    mf_script = Path(args.shared_bench) / "mindformers_pangu.py"
    if not (args.mf_python and Path(args.mf_python).is_file() and mf_script.is_file()):
        return {"skipped": f"needs --mf-python (a venv's python) and {mf_script}"}
    # its cached decode advances positions faster than one per token (the position bug the
    # shared README mentions) and fails past the position table (seq 256, prompt 16: 100 new
    # tokens run, 116 fail): ask for what fits and compare rates
    n_mf = min(args.new_tokens, (cfg.seq_length - args.prompt_length) * 5 // 12)
    cmd = [args.mf_python, str(mf_script), "--layers", str(cfg.num_layers), "--hidden", str(cfg.hidden_size),
           "--heads", str(cfg.num_heads), "--ffn", str(cfg.ffn_hidden_size), "--seq", str(cfg.seq_length),
           "--vocab", str(cfg.vocab_size), "--steps", "0", "--decode-tokens", str(n_mf),
           "--decode-prompt", str(args.prompt_length), "--decode-reps", str(args.repeats)]
    env = dict(os.environ, GLOG_v="3")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/tmp")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"rc={proc.returncode}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"}
    r = json.loads(lines[-1])
    return {"first_run_s": r.get("decode_first_call_s"), "decode_s": r.get("decode_s"),
            "prefill_s": r.get("decode_prefill_s"), "per_token_ms": 1e3 * r.get("decode_per_token_s", 0.0),
            "generated": r.get("decode_tokens"), "dtype": r.get("decode_dtype"), "use_past": r.get("decode_use_past")}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms
    import numpy as np

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    for name in args.models.split(","):
        cfg, lm, params = build_model(name)
        if args.prompt_length + args.new_tokens > cfg.seq_length:
            sys.exit(f"prompt {args.prompt_length} + new tokens {args.new_tokens} exceed seq_length {cfg.seq_length}")
        rng = np.random.default_rng(0)
        prompts = [list(rng.integers(10, cfg.vocab_size, args.prompt_length)) for _ in range(args.batch)]
        base = {"model": name, "params": params, "batch": args.batch, "prompt": args.prompt_length,
                "new_tokens": args.new_tokens, "cpu_count": os.cpu_count()}
        results = {"cache": run_cache(lm, cfg, prompts, args.new_tokens, args.repeats)}
        if not args.no_recompute:
            results["recompute"] = run_recompute(lm, cfg, prompts, args.new_tokens, args.repeats, args.bucket)
            results["recompute_fast"] = run_recompute_fast(lm, cfg, prompts, args.new_tokens, args.repeats,
                                                           args.bucket)
        if not args.no_mindformers:
            results["mindformers"] = run_mindformers(cfg, args)
        for method, r in results.items():
            if r.get("decode_s"):
                gen = r.get("generated") or args.new_tokens
                r["tokens_per_s"] = args.batch * gen / r["decode_s"]
            print(json.dumps({**base, "method": method, **r}), flush=True)
        tps = {m: r.get("tokens_per_s") for m, r in results.items()}
        summary = {**base, "method": "summary", "tokens_per_s": tps}
        for other in ("recompute", "recompute_fast", "mindformers"):
            if tps.get(other):
                summary[f"cache_vs_{other}"] = tps["cache"] / tps[other]
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
