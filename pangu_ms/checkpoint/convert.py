"""`convert`: the released 2021, MindFormers 1.3.2 and HF-style PanGu-alpha weights, in and out.

Import (`import_weights`) turns a foreign checkpoint into a one-rank checkpoint of ours under
`OUT/checkpoints/step_00000000/` (weights only, with config.yaml and, when given or found beside
the source, the tokenizer's `vocab.model`), which `generate`, `eval` and `finetune` take with
`--ckpt OUT`. Export (`export_weights`) writes our model weights as a MindFormers `.ckpt` or an
HF directory (`model.safetensors` + `config.json`). Names and orientations come from
`pangu_ms.checkpoint.formats`; every mismatch is refused with the names and shapes that differ.

The released format is merged with MindSpore's own strategy reader and slice merging
(`transform_checkpoints` over `rank_<i>/` links to the slices, which handles the strategy's
model-parallel and optimizer-shard layout), which holds the whole model in memory while it runs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from pangu_ms.checkpoint import store
from pangu_ms.checkpoint.formats import NPY_TABLES, from_format, is_non_weight, model_shapes, to_format
from pangu_ms.checkpoint.layout import build_layout
from pangu_ms.config import JobConfig, ModelConfig
from pangu_ms.errors import CheckpointError

logger = logging.getLogger(__name__)

SLICE_RE = re.compile(r"^(?:filerted|filtered)_(\d+)\.ckpt$")
"""the released slices: `filerted_<rank>.ckpt` (sic, as released) or `filtered_<rank>.ckpt`."""
HF_CONFIG, HF_WEIGHTS = "config.json", "model.safetensors"


# --------------------------------------------------------------------------- model config


def shipped_model_configs() -> list[Path]:
    from importlib import resources

    try:
        root = Path(str(resources.files("pangu_ms.ascend_configs"))) / "models"
    except ModuleNotFoundError:
        root = Path(__file__).resolve().parents[2] / "ascend_configs" / "models"
    return sorted(root.glob("*.yaml"))


def model_config_for(shapes: dict[str, tuple[int, ...]], config: str | None) -> ModelConfig:
    """The model config of `--config`, or the shipped size whose dimensions `shapes` (ours, `lm.*`) have."""
    from pangu_ms.config import load_config

    if config is not None:
        return load_config(config).model
    dims = _dims(shapes)
    for path in shipped_model_configs():
        cfg = load_config(path).model
        if dims == (cfg.vocab_size, cfg.hidden_size, cfg.ffn_hidden_size, cfg.seq_length, cfg.num_layers):
            logger.info("the weights match the shipped model config %s", path.name)
            return cfg
    raise CheckpointError(f"no shipped model size has these dimensions (vocab, hidden, ffn, seq, layers) = {dims}; "
                          "pass --config MODEL.yaml (the number of attention heads cannot be read from the weights)")


def _dims(shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    from pangu_ms.models.pangu_alpha import LAYER_WEIGHTS, MODEL_WEIGHTS

    v, h = shapes.get(f"lm.{MODEL_WEIGHTS['word_table']}", (0, 0))
    s = shapes.get(f"lm.{MODEL_WEIGHTS['position_table']}", (0, 0))[0]
    f = shapes.get(f"lm.backbone.query_layer.{LAYER_WEIGHTS['w1']}", (0, 0))[1]
    layers = 1 + sum(1 for n in shapes if n.endswith(f".{LAYER_WEIGHTS['ln1_gamma']}") and ".blocks." in n)
    return v, h, f, s, layers


def _shapes_from_foreign(fmt: str, theirs: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Our shapes implied by a foreign set of weights (for matching a shipped config)."""
    from pangu_ms.checkpoint.formats import MODEL_TABLE, mappings

    word = theirs.get(MODEL_TABLE["word_table"][fmt])
    pos = theirs.get(MODEL_TABLE["position_table"][fmt])
    if word is None or pos is None:
        raise CheckpointError(f"no {fmt} word/position embedding tables found: not a {fmt} PanGu-alpha checkpoint")
    marker = "transformer.h." if fmt == "hf" else "backbone.blocks."
    idx = {int(n[len(marker):].split(".")[0]) for n in theirs if n.startswith(marker)}
    num_layers = (max(idx) + 1 if fmt == "hf" else max(idx) + 2) if idx else 2
    out = {}
    for m in mappings(fmt, num_layers):
        if m.theirs in theirs:
            shp = tuple(theirs[m.theirs].shape)
            out[m.ours] = shp[::-1] if m.transposed else shp
    return out


# --------------------------------------------------------------------------- writing ours


def write_converted(out_run_dir: str | Path, cfg: ModelConfig, weights: dict[str, np.ndarray], *,
                    source: str, fmt: str, vocab_model: str | Path | None = None) -> Path:
    """Our one-rank checkpoint of `weights` (`lm.*`, full arrays) under `out_run_dir`."""
    from pangu_ms.checkpoint.reshard import write_step

    out_run_dir = Path(out_run_dir)
    step_dir = store.checkpoints_root(out_run_dir) / store.step_dir_name(0)
    job = JobConfig(model=cfg)
    job.tokenizer = dataclasses.replace(job.tokenizer, path=str(step_dir / store.TOKENIZER), vocab_size=cfg.vocab_size)
    job.run = dataclasses.replace(job.run, output_dir=str(out_run_dir), name=f"converted_{fmt}")
    entries = [(n, a.shape, a.dtype.name) for n, a in weights.items()]
    layout = build_layout(entries, {})
    meta = {"step": 0, "data_step": 0, "tokens_seen": 0, "converted_from": fmt, "source": str(source)}
    with tempfile.TemporaryDirectory(prefix="pangu_tok_") as tmp:
        tok_dir = None
        if vocab_model is not None:
            tok_dir = Path(tmp) / "tokenizer"
            tok_dir.mkdir()
            shutil.copyfile(vocab_model, tok_dir / "vocab.model")
        return write_step(store.checkpoints_root(out_run_dir), 0, layout, lambda n: weights[n], meta=meta,
                          config_yaml=job.to_yaml(), tokenizer_dir=str(tok_dir) if tok_dir else None,
                          params=set(weights))


def _vocab_beside(src: Path, given: str | None) -> Path | None:
    if given:
        if not Path(given).is_file():
            raise CheckpointError(f"--tokenizer {given}: no such file (the released vocab.model)")
        return Path(given)
    for d in (src if src.is_dir() else src.parent, (src if src.is_dir() else src.parent) / "tokenizer"):
        if (d / "vocab.model").is_file():
            return d / "vocab.model"
    logger.warning("no vocab.model beside %s: the converted checkpoint has no tokenizer (pass --tokenizer)", src)
    return None


# --------------------------------------------------------------------------- released (2021)


def released_parts(src: Path, strategy: str | None) -> tuple[dict[int, Path], Path, dict[str, Path]]:
    """(rank -> slice file, strategy file, role -> .npy table) of a released checkpoint directory."""
    if not src.is_dir():
        raise CheckpointError(f"--src {src}: expected the directory holding filerted_<rank>.ckpt files")
    slices = {int(m.group(1)): p for p in src.rglob("*.ckpt") if (m := SLICE_RE.match(p.name))}
    if not slices:
        raise CheckpointError(f"{src}: no filerted_<rank>.ckpt slices found")
    if strategy is None:
        found = [p for p in src.rglob("*.ckpt") if "strategy" in p.name.lower()]
        if len(found) != 1:
            raise CheckpointError(f"{src}: found {len(found)} strategy files ({', '.join(p.name for p in found)}); "
                                  "pass --strategy FILE")
        strategy_file = found[0]
    else:
        strategy_file = Path(strategy)
    tables = {}
    for role, name in NPY_TABLES.items():
        hits = list(src.rglob(name))
        if not hits:
            raise CheckpointError(f"{src}: {name} is missing (the released embedding tables ship as .npy files)")
        tables[role] = hits[0]
    return slices, strategy_file, tables


def import_released(src: str | Path, config: str | None, *, strategy: str | None = None) -> tuple[ModelConfig, dict]:
    """(model config, our weights) of the 2021 release layout (see the module docstring)."""
    import mindspore as ms

    from pangu_ms.checkpoint.strategy import read_strategy_file

    src = Path(src)
    slices, strategy_file, tables = released_parts(src, strategy)
    entries = read_strategy_file(strategy_file)
    stages = {e.stage for e in entries.values()}
    per_stage = math.prod(next(iter(entries.values())).dev_matrix)
    need = per_stage * len(stages)
    missing = [r for r in range(need) if r not in slices]
    if missing:
        raise CheckpointError(f"{src}: the strategy {strategy_file.name} needs {need} slices but rank(s) "
                              f"{_short(missing)} are missing")
    arrays = {role: np.load(p) for role, p in tables.items()}
    with tempfile.TemporaryDirectory(prefix="pangu_released_") as tmp:
        for r in range(need):
            (Path(tmp) / "in" / f"rank_{r}").mkdir(parents=True)
            (Path(tmp) / "in" / f"rank_{r}" / slices[r].name).symlink_to(slices[r].resolve())
        try:
            ms.transform_checkpoints(str(Path(tmp) / "in"), str(Path(tmp) / "out"), "merged_", str(strategy_file))
        except (ValueError, RuntimeError, KeyError, IndexError, TypeError) as exc:
            raise CheckpointError(f"{src}: MindSpore could not merge the slices with {strategy_file.name} "
                                  f"({str(exc).splitlines()[0]}); is the strategy file the one of these slices?") \
                from None
        merged = ms.load_checkpoint(str(Path(tmp) / "out" / "rank_0" / "merged_0.ckpt"))
    theirs = {n: p.asnumpy() for n, p in merged.items() if not is_non_weight(n)}
    from pangu_ms.checkpoint.formats import MODEL_TABLE

    for role, a in arrays.items():
        name = MODEL_TABLE[role]["released"]
        if name in theirs:
            logger.info("%s is in the slices too; the released %s is used", name, NPY_TABLES[role])
        theirs[name] = a
    cfg = model_config_for(_shapes_from_foreign("released", theirs), config)
    return cfg, from_format("released", theirs, model_shapes(cfg), source=str(src))


def _short(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks)) if len(ranks) <= 8 else f"{', '.join(map(str, ranks[:8]))}, ... ({len(ranks)})"


# --------------------------------------------------------------------------- MindFormers 1.3.2


def import_mindformers(src: str | Path, config: str | None) -> tuple[ModelConfig, dict]:
    """(model config, our weights) of a MindFormers PanguAlphaHeadModel `.ckpt` / `.safetensors`."""
    import mindspore as ms

    src = Path(src)
    if not src.is_file():
        raise CheckpointError(f"--src {src}: expected a MindFormers .ckpt or .safetensors file")
    try:
        params = ms.load_checkpoint(str(src), format="safetensors" if src.suffix == ".safetensors" else "ckpt")
    except (ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{src}: truncated or corrupt ({str(exc).splitlines()[0]})") from None
    theirs = {n: p.asnumpy() for n, p in params.items()}
    skipped = sum(1 for n in theirs if is_non_weight(n))
    if skipped:
        logger.info("%s: %d optimizer/loop tensors skipped (weights only)", src, skipped)
    cfg = model_config_for(_shapes_from_foreign("mindformers", theirs), config)
    return cfg, from_format("mindformers", theirs, model_shapes(cfg), source=str(src))


def export_mindformers(weights: dict[str, np.ndarray], cfg: ModelConfig, out: str | Path) -> Path:
    """Our weights as a MindFormers 1.3.2 PanguAlphaHeadModel checkpoint (`.ckpt`)."""
    import mindspore as ms

    out = Path(out)
    if out.suffix != ".ckpt":
        out = out / "pangu_alpha_mindformers.ckpt"
    out.parent.mkdir(parents=True, exist_ok=True)
    theirs = to_format("mindformers", weights, cfg.num_layers)
    tmp = out.with_name(f".{out.stem}.tmp.ckpt")  # save_checkpoint appends .ckpt to other names
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in theirs.items()], str(tmp))
    tmp.replace(out)
    return out


# --------------------------------------------------------------------------- HF-style


def hf_config(cfg: ModelConfig) -> dict:
    """config.json of the GPTPangu layout for `cfg`."""
    return {"architectures": ["GPTPanguForCausalLM"], "model_type": "gpt_pangu", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.ffn_hidden_size, "num_layers": cfg.num_layers,
            "num_heads": cfg.num_heads, "max_position_embeddings": cfg.seq_length,
            "layer_norm_epsilon": cfg.layernorm_eps, "activation_function": "gelu_new", "scale_attn_weights": True,
            "initializer_range": cfg.init_std, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "resid_pdrop": cfg.dropout, "tie_word_embeddings": True, "eos_token_id": cfg.eod_id,
            "pad_token_id": cfg.pad_id, "torch_dtype": "float32"}


def model_config_from_hf(conf: dict, source: str) -> ModelConfig:
    keys = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "intermediate_size": "ffn_hidden_size",
            "num_layers": "num_layers", "num_heads": "num_heads", "max_position_embeddings": "seq_length"}
    missing = [k for k in keys if k not in conf]
    if missing:
        raise CheckpointError(f"{source}: config.json lacks {', '.join(missing)}")
    act = conf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
        raise CheckpointError(f"{source}: activation_function={act!r}; PanGu-alpha uses the tanh GELU (gelu_new)")
    if act == "gelu":
        logger.warning("%s: activation_function 'gelu' (erf) is read as the tanh GELU PanGu-alpha uses", source)
    extra = {"layernorm_eps": float(conf.get("layer_norm_epsilon", 1e-5)), "dropout": 0.0}
    if "eos_token_id" in conf and conf["eos_token_id"] is not None:
        extra["eod_id"] = int(conf["eos_token_id"])
    if "pad_token_id" in conf and conf["pad_token_id"] is not None:
        extra["pad_id"] = int(conf["pad_token_id"])
    return ModelConfig(**{ours: int(conf[k]) for k, ours in keys.items()}, **extra)


def import_hf(src: str | Path, config: str | None) -> tuple[ModelConfig, dict]:
    """(model config, our weights) of an HF-style directory (config.json + model.safetensors)."""
    from pangu_ms.checkpoint.safetensors_io import Reader
    from pangu_ms.config import load_config

    src = Path(src)
    d = src if src.is_dir() else src.parent
    weights_file = src if src.is_file() else d / HF_WEIGHTS
    if not weights_file.is_file():
        raise CheckpointError(f"{d}: no {HF_WEIGHTS}")
    cfg = load_config(config).model if config else model_config_from_hf(
        json.loads((d / HF_CONFIG).read_text(encoding="utf-8")) if (d / HF_CONFIG).is_file() else
        _no_hf_config(d), str(d))
    r = Reader(weights_file)
    theirs = {n: r.read(n) for n in r.names()}
    r.close()
    return cfg, from_format("hf", theirs, model_shapes(cfg), source=str(weights_file))


def _no_hf_config(d: Path) -> dict:
    raise CheckpointError(f"{d}: no {HF_CONFIG}; pass --config MODEL.yaml")


def export_hf(weights: dict[str, np.ndarray], cfg: ModelConfig, out: str | Path, *,
              vocab_model: Path | None = None) -> Path:
    """Our weights as an HF-style directory: model.safetensors (tied head not duplicated) + config.json."""
    from pangu_ms.checkpoint.safetensors_io import StreamWriter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    theirs = to_format("hf", weights, cfg.num_layers)
    with StreamWriter(out / HF_WEIGHTS, [(n, a.dtype.name, a.shape) for n, a in theirs.items()],
                      metadata={"format": "pt"}) as w:
        for n, a in theirs.items():
            w.write(n, a)
    store.write_json(out / HF_CONFIG, hf_config(cfg))
    if vocab_model is not None:
        shutil.copyfile(vocab_model, out / "vocab.model")
    return out


# --------------------------------------------------------------------------- entry points


IMPORTERS = {"released": import_released, "mindformers": import_mindformers, "hf": import_hf}


def import_weights(fmt: str, src: str | Path, out: str | Path, *, config: str | None = None,
                   tokenizer: str | None = None, strategy: str | None = None) -> Path:
    """Convert a `fmt` checkpoint at `src` into our checkpoint under `out` (returns the step dir)."""
    if fmt not in IMPORTERS:
        raise CheckpointError(f"--from {fmt!r}: use one of {', '.join(IMPORTERS)}")
    kwargs = {"strategy": strategy} if fmt == "released" else {}
    cfg, weights = IMPORTERS[fmt](src, config, **kwargs)
    return write_converted(out, cfg, weights, source=str(src), fmt=fmt, vocab_model=_vocab_beside(Path(src), tokenizer))


def export_weights(fmt: str, ckpt: str | Path, out: str | Path) -> Path:
    """Write the newest complete checkpoint under `ckpt` as `fmt` (mindformers or hf) at `out`."""
    from pangu_ms.checkpoint.inference import model_weights, newest_complete
    from pangu_ms.checkpoint.training import load_job_config

    step_dir = newest_complete(ckpt)
    cfg = load_job_config(step_dir).model
    weights = model_weights(step_dir)
    if fmt == "mindformers":
        return export_mindformers(weights, cfg, out)
    if fmt == "hf":
        vocab = step_dir / store.TOKENIZER / "vocab.model"
        return export_hf(weights, cfg, out, vocab_model=vocab if vocab.is_file() else None)
    raise CheckpointError(f"--to {fmt!r}: use mindformers or hf")
