"""The command line: `python -m pangu_ms <command> [--help]`.

Each command lives in its own module under `pangu_ms.cli` exposing
`add_parser(subparsers) -> argparse.ArgumentParser` (which sets `func=run`). Modules import
only light dependencies at top level so `--help` stays fast; MindSpore is imported inside
`run`.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

# command name -> module under pangu_ms.cli, in the order `--help` lists them
COMMANDS: dict[str, str] = {
    "tokenizer": "tokenizer",
    "prepare": "prepare",
    "pretrain": "pretrain",
    "generate": "generate",
    "eval": "evaluate",
    "finetune": "finetune",
    "checkpoint": "checkpoint",
    "convert": "convert",
    "sigma": "sigma",
    "plan": "plan",
    "rank-table": "rank_table",
    "preflight": "preflight",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pangu_ms",
        description="PanGu-alpha / PanGu-Sigma on MindSpore: data, training, inference, parallel plans, launch.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"pangu_ms.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"pangu_ms.cli.{module}":
                raise
            continue  # command not built yet
        mod.add_parser(sub)
    return parser


def add_config_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The shared `--config FILE` and repeatable `--set section.field=value` options."""
    p.add_argument("--config", required=required, help="run config YAML (ascend_configs/...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=100 (repeatable)")


def add_checkpoint_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """The shared `--ckpt DIR` and `--device` options of the commands that load a checkpoint."""
    p.add_argument("--ckpt", required=required, help="run dir, its checkpoints/ dir or one step_XXXXXXXX dir")
    p.add_argument("--device", choices=["CPU", "Ascend"], default=None,
                   help="device to run on (default: the checkpoint's run.device)")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GLOG_v", "3")  # silence MindSpore's [WARNING] lines; workers inherit it
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from pangu_ms.errors import PanguError

    try:
        return int(args.func(args) or 0)
    except PanguError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        full = disk_full(exc)
        if full is None:
            raise
        print(f"error: {disk_full_message(args.command, exc, full)}", file=sys.stderr)
        return 2


_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: OSError) -> str | None:
    """'' or the file being written if `exc` is a full filesystem (or quota); None otherwise.
    `shutil.copytree` reports its failures as one `shutil.Error` listing (src, dst, reason)."""
    if exc.errno in _FULL:
        return str(exc.filename or "")
    import shutil

    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        for entry in exc.args[0]:
            if len(entry) == 3 and any(os.strerror(e) in str(entry[2]) for e in _FULL):
                return str(entry[1])
    return None


def disk_full_message(command: str, exc: OSError, path: str = "") -> str:
    """One line for a write that failed because the filesystem (or quota) is full."""
    where = f" writing {path}" if path else ""
    resume = "; then continue with --resume RUN_DIR" if command == "pretrain" else ""
    return (f"{command}: no space left on the device{where} ({os.strerror(errno.ENOSPC)}): free space and run it again{resume} "
            "(checkpoints and shards are renamed into place only when complete, so the last complete ones are intact)")
