"""`python -m pangu_ms sigma init|add-domain|remove-domain|extract ...`: PanGu-Sigma checkpoints.

    sigma init          --from CKPT --config SIGMA.yaml --out DIR     FFN2MoE from a dense PanGu-alpha
    sigma add-domain    --ckpt DIR --name NAME --experts N (--from-domain D | --from-dense CKPT) --out DIR
    sigma remove-domain --ckpt DIR --name NAME --out DIR
    sigma extract       --ckpt DIR --domain NAME --out DIR             one domain's standalone model

`init` copies every dense weight and makes each expert of a sparse layer a copy of that layer's
FFN, so the new model computes the dense model's function for every domain. The editing
commands leave the other domains' experts and routes untouched. Each writes a weights-only
one-rank checkpoint (run dir with checkpoints/step_XXXXXXXX/) whose config.yaml holds the new
`experts:` section; `--ckpt` takes a run dir, its checkpoints/ dir or one step dir.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sigma", help="PanGu-Sigma: dense-to-sparse init, add/remove a domain, extract one",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)
    i = sub.add_parser("init", help="a Sigma checkpoint from a dense PanGu-alpha one (every expert a copy)")
    i.add_argument("--from", dest="src", required=True, help="dense checkpoint: run dir, checkpoints/ or step dir")
    i.add_argument("--config", required=True, help="PanGu-Sigma config YAML (with an experts: section)")
    i.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set experts.routing_seed=7 (repeatable)")
    a = sub.add_parser("add-domain", help="append a domain with its own experts")
    a.add_argument("--name", required=True, help="the new domain's name")
    a.add_argument("--experts", type=int, required=True, help="experts of the new domain per sparse layer")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-domain", default=None, help="start its experts as copies of this domain's")
    src.add_argument("--from-dense", default=None, metavar="CKPT", help="start them as this dense model's FFNs")
    r = sub.add_parser("remove-domain", help="delete a domain and its experts")
    r.add_argument("--name", required=True, help="the domain to delete")
    e = sub.add_parser("extract", help="the shared layers plus one domain's experts, as a model of its own")
    e.add_argument("--domain", required=True, help="the domain to keep")
    for sp in (a, r, e):
        sp.add_argument("--ckpt", required=True, help="Sigma checkpoint: run dir, checkpoints/ or step dir")
    for sp in (i, a, r, e):
        sp.add_argument("--out", required=True, help="output run directory (gets checkpoints/step_XXXXXXXX/)")
        sp.set_defaults(func=run)
    return p


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def run(args: argparse.Namespace) -> int:
    from pangu_ms.checkpoint import sigma

    t0 = time.perf_counter()
    if args.action == "init":
        from pangu_ms.config import load_config

        out, report = sigma.init_from_dense(args.src, load_config(args.config, args.overrides), args.out)
        print(f"sigma init: {report['from']} ({_mb(report['dense_bytes'])}) -> {out} "
              f"({_mb(report['sigma_bytes'])}), {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    else:
        name = args.domain if args.action == "extract" else args.name
        out, report = sigma.edit_domains(args.ckpt, args.out, args.action, name,
                                         num_experts=getattr(args, "experts", 0),
                                         from_domain=getattr(args, "from_domain", None),
                                         from_dense=getattr(args, "from_dense", None))
        print(f"sigma {args.action} {name}: {report['from']} ({_mb(report['source_bytes'])}, domains "
              f"{', '.join(report['domains_before'])}) -> {out} ({_mb(report['output_bytes'])}, domains "
              f"{', '.join(report['domains_after'])}), {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(json.dumps({"out": str(out), **report}))
    return 0
