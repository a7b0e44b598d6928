#!/usr/bin/env python
"""Independent check of `convert --to mindformers`: MindFormers 1.3.2's own PanguAlphaHeadModel,
loaded with our exported checkpoint, gives our model's logits.

Not a test (MindFormers is not a dependency). Runs in two processes:
  1. this venv: a PanGu-alpha of the given shape with every weight random (biases and LayerNorm
     included, so a wrong name or orientation anywhere shows), saved as our checkpoint, exported
     with `python -m pangu_ms convert --to mindformers`, and our logits on random ids;
  2. MindFormers' venv (--mf-python, default /work/mfref/bin/python): PanguAlphaHeadModel in fp32
     (`hidden_act: gelu`, fp32 softmax, the fp16 compute attributes MindFormers hard-codes set to
     fp32 after construction, the removed `py_transforms` module stubbed; nothing in site-packages
     is edited), strict-loads the .ckpt and returns its logits for the same ids (batch 1, an
     explicit causal mask: without one it masks every token equal to the pad id).

Prints one JSON line: max_abs_diff, max_abs_logit, missing/unexpected parameter counts.

    python bench/mindformers_compat.py [--layers 4 --hidden 64 --heads 4 --ffn 256 --vocab 1000 --seq 32]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=4, help="num_layers, the top query layer included")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mf-python", default=str(Path(__file__).resolve().parents[2] / "mfref" / "bin" / "python"),
                   help="python of a venv with mindformers 1.3.2 (default: ../mfref beside the checkout)")
    p.add_argument("--mindformers-side", nargs=2, metavar=("CKPT", "NPZ"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def ours(args, work: Path) -> tuple[Path, Path]:
    import numpy as np
    import mindspore as ms

    from pangu_ms.checkpoint.convert import export_weights, write_converted
    from pangu_ms.config import ModelConfig
    from pangu_ms.models.pangu_alpha import PanguAlphaLM

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    cfg = ModelConfig(vocab_size=args.vocab, seq_length=args.seq, num_layers=args.layers, hidden_size=args.hidden,
                      ffn_hidden_size=args.ffn, num_heads=args.heads, dropout=0.0)
    lm = PanguAlphaLM(cfg)
    lm.set_train(False)
    rng = np.random.default_rng(args.seed)
    weights = {}
    for name, p in lm.parameters_and_names():
        base = 1.0 if name.endswith(".gamma") else 0.0
        value = (base + 0.1 * rng.standard_normal(p.shape)).astype(np.float32)
        p.set_data(ms.Tensor(value))
        weights[f"lm.{name}"] = value
    write_converted(work / "ours", cfg, weights, source="bench", fmt="random")
    ckpt = export_weights("mindformers", work / "ours", work / "mf.ckpt")
    ids = rng.integers(10, args.vocab, (1, args.seq)).astype(np.int32)
    pos = np.arange(args.seq, dtype=np.int32)[None]
    doc = np.zeros((1, args.seq), np.int32)  # one document: a plain causal mask
    logits = lm(ms.Tensor(ids), ms.Tensor(pos), ms.Tensor(doc)).asnumpy()  # [S, V]
    npz = work / "ours.npz"
    np.savez(npz, ids=ids, logits=logits, shape=np.array([args.layers, args.hidden, args.heads, args.ffn,
                                                          args.vocab, args.seq]))
    return ckpt, npz


def mindformers_side(ckpt: str, npz: str) -> dict:
    """Runs under MindFormers' python: its model, our exported weights, its logits vs ours."""
    import types

    import numpy as np
    import mindspore as ms
    from mindspore.dataset.transforms import transforms as ds_transforms

    stub = types.ModuleType("mindspore.dataset.transforms.py_transforms")  # removed after MindSpore 2.3
    stub.PyTensorOperation = ds_transforms.PyTensorOperation
    sys.modules[stub.__name__] = stub
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    from mindformers.models.pangualpha import PanguAlphaConfig, PanguAlphaHeadModel

    data = np.load(npz)
    layers, hidden, heads, ffn, vocab, seq = (int(x) for x in data["shape"])
    cfg = PanguAlphaConfig(batch_size=1, seq_length=seq, vocab_size=vocab, hidden_size=hidden, ffn_hidden_size=ffn,
                           num_layers=layers, num_heads=heads, hidden_act="gelu", param_init_type="float32",
                           compute_dtype="float32", softmax_compute_type="float32", embedding_dropout_prob=0.0,
                           hidden_dropout_rate=0.0, attention_dropout_rate=0.0, use_past=False)
    net = PanguAlphaHeadModel(cfg)
    for _, cell in net.cells_and_names():  # MindFormers 1.3.2 hard-codes fp16 compute in these cells
        for attr in ("dtype", "compute_dtype"):
            if vars(cell).get(attr) == ms.float16:
                setattr(cell, attr, ms.float32)
    net.set_train(False)
    params = ms.load_checkpoint(ckpt)
    not_loaded, unused = ms.load_param_into_net(net, params, strict_load=True)
    seq_mask = ms.Tensor(np.tril(np.ones((1, seq, seq), np.float32)))
    logits = net(ms.Tensor(data["ids"]), attention_mask=seq_mask)[0].asnumpy().reshape(seq, vocab)
    diff = np.abs(logits - data["logits"])
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "max_abs_logit": float(np.abs(data["logits"]).max()), "params_not_loaded": len(not_loaded),
            "ckpt_entries_unused": len(unused), "mindformers": __import__("mindformers").__version__,
            "mindspore": ms.__version__}


def main() -> None:
    args = _args()
    if args.mindformers_side:
        print(json.dumps(mindformers_side(*args.mindformers_side)))
        return
    with tempfile.TemporaryDirectory(prefix="mf_compat_") as tmp:
        ckpt, npz = ours(args, Path(tmp))
        env = {**os.environ, "GLOG_v": "3"}
        done = subprocess.run([args.mf_python, __file__, "--mindformers-side", str(ckpt), str(npz)],
                              capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            sys.exit(f"MindFormers side failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(shape={"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "ffn": args.ffn,
                         "vocab": args.vocab, "seq": args.seq}, within_1e_5=result["max_abs_diff"] < 1e-5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
