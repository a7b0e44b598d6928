"""`python -m pangu_ms generate --ckpt DIR (--prompt TEXT | --input FILE.jsonl) [options]`.

Generates with the K/V cache (one compiled prompt graph per padded prompt length, one step
graph). With `--prompt` the text streams to the terminal as tokens are produced; `--input`
reads one JSON object per line (field `prompt`, or `text`) and runs them in batches of
`--batch-size`. `--json` prints one JSON line per prompt instead. `--export-mindir DIR`
writes the prompt and step graphs as MindIR and exits.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from pangu_ms.cli import add_checkpoint_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="generate text from a checkpoint (K/V-cached decoding)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--input", help="JSON lines file, one {\"prompt\": ...} per line")
    src.add_argument("--export-mindir", metavar="DIR", help="export prompt.mindir and step.mindir to DIR and exit")
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per prompt (default 64)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most probable tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus: smallest set reaching p (default 0.95)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL penalty (1.0 = off)")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="per-occurrence penalty")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="once-per-token penalty")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--stop-id", type=int, action="append", default=None,
                   help="stop token id (repeatable; default: <eod>)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (--input)")
    p.add_argument("--max-length", type=int, default=None,
                   help="K/V cache length = prompt + new tokens limit (default: the model's seq_length)")
    p.add_argument("--prompt-length", type=int, default=32, help="padded prompt length of the exported graph")
    p.add_argument("--json", action="store_true", help="one JSON line per prompt")
    p.set_defaults(func=run)
    return p


def _read_prompts(path: str) -> list[str]:
    from pangu_ms.data.corpora import read_json_lines
    from pangu_ms.errors import DataError

    prompts = []
    for n, obj in read_json_lines(path, "--input"):
        text = obj.get("prompt", obj.get("text")) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{path}:{n}: expected an object with a string field 'prompt' (or 'text')")
        prompts.append(text)
    if not prompts:
        raise DataError(f"--input {path}: no prompts")
    return prompts


class _Streamer:
    """Prints the new text of one sequence as tokens arrive (waits out partial characters)."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.shown = tokenizer, [], ""

    def __call__(self, row: int, token: int) -> None:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return
        sys.stdout.write(text[len(self.shown):])
        sys.stdout.flush()
        self.shown = text


def run(args: argparse.Namespace) -> int:
    from pangu_ms.errors import ConfigError
    from pangu_ms.infer.decoder import IncrementalDecoder
    from pangu_ms.infer.generate import generate
    from pangu_ms.infer.sampling import SamplingParams
    from pangu_ms.runtime import setup_context
    from pangu_ms.train.checkpoint import load_for_inference

    try:
        params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                repetition_penalty=args.repetition_penalty,
                                frequency_penalty=args.frequency_penalty,
                                presence_penalty=args.presence_penalty, seed=args.seed)
    except ValueError as exc:
        raise ConfigError(f"sampling option {exc}") from None
    job, lm, tok = load_for_inference(args.ckpt)
    setup_context(job.run, args.device)
    if args.export_mindir:
        from pangu_ms.infer.export import export_mindir

        paths = export_mindir(lm, args.export_mindir, batch_size=args.batch_size,
                              prompt_length=args.prompt_length, max_length=args.max_length)
        print(json.dumps({"prompt_graph": str(paths[0]), "step_graph": str(paths[1])}))
        return 0
    texts = [args.prompt] if args.prompt is not None else _read_prompts(args.input)
    prompts = [tok.encode(t) or [tok.eod_id] for t in texts]
    batch = max(1, min(args.batch_size, len(prompts)))
    decoder = IncrementalDecoder(lm, batch_size=batch, max_length=args.max_length)
    stop_ids = tuple(args.stop_id) if args.stop_id else (tok.eod_id,)
    stream = args.prompt is not None and not args.json
    streamer = _Streamer(tok) if stream else None
    if stream:
        sys.stdout.write(texts[0])
        sys.stdout.flush()
    first: list[float] = []

    def on_token(row: int, token: int) -> None:
        if not first:
            first.append(time.perf_counter())
        if streamer is not None:
            streamer(row, token)

    t0 = time.perf_counter()
    outs = generate(decoder, prompts, params, max_new_tokens=args.max_new_tokens, stop_ids=stop_ids,
                    on_token=on_token)
    t_end = time.perf_counter()
    if stream:
        sys.stdout.write("\n")
    n_new = sum(len(o.tokens) for o in outs)
    for text, ids, out in zip(texts, prompts, outs):
        completion = tok.decode(out.tokens)
        if args.json:
            print(json.dumps({"prompt": text, "completion": completion, "prompt_tokens": len(ids),
                              "new_tokens": len(out.tokens), "finish_reason": out.finish_reason},
                             ensure_ascii=False))
        elif not stream:
            print(f"{text}{completion}")
    if first:  # the first token's wait includes compiling the prompt graph (and later the step graph)
        rate = (n_new - len(outs)) / max(t_end - first[0], 1e-9)
        print(f"[{n_new} tokens in {t_end - t0:.2f} s; first token after {first[0] - t0:.2f} s, "
              f"then {rate:.1f} tokens/s incl. step-graph compile]", file=sys.stderr)
    return 0
