"""`python -m pangu_ms rank-table {build,merge,superpod,check}`: HCCL rank tables for Ascend.

    # on each Atlas 800/900 server (910A/910B): this server's table, version 1.0
    python -m pangu_ms rank-table build --hccn-conf /etc/hccn.conf --devices 0-7 --out server0.json
    # on one machine: all servers, in the rank order you want
    python -m pangu_ms rank-table merge server0.json server1.json --out rank_table.json
    # Atlas A3 SuperPoD: version 1.2 from a description (format: pangu_ms/cluster/superpod.py)
    python -m pangu_ms rank-table superpod --input cluster.yaml --out rank_table.json
"""
from __future__ import annotations

import argparse
import json

from pangu_ms.cluster import sources
from pangu_ms.cluster.build import build_server_table, check_explicit_order, device_ips, summary
from pangu_ms.cluster.rank_table import RankTableError, load_table, merge_tables, write_table
from pangu_ms.cluster.superpod import __doc__ as SUPERPOD_DOC
from pangu_ms.cluster.superpod import load_superpod_input


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("rank-table", help="build, merge and check HCCL rank tables (Ascend clusters)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="<action>", required=True)

    b = sub.add_parser("build", help="this server's version 1.0 table (Atlas 800/900, 910A/910B)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--hccn-conf", metavar="FILE", help=f"hccn.conf with address_<id>=<ip> lines "
                     f"(default when no source is given: {sources.HCCN_CONF}, then running hccn_tool)")
    src.add_argument("--hccn-tool-output", metavar="FILE",
                     help="saved `hccn_tool -i N -ip -g` outputs (blocks marked `device N`, or in --devices order)")
    src.add_argument("--hccn-tool", action="store_true", help="run hccn_tool -i N -ip -g on this machine")
    src.add_argument("--ips", metavar="IP,IP,...", help="device IPs in --devices order")
    b.add_argument("--devices", default="0-7", help="device ids: 0-7, 8-15, 0,1,2,3 (default 0-7)")
    b.add_argument("--server-id", help="this server's IP (default: first non-loopback address; 127.x is refused)")
    b.add_argument("--out", required=True, help="output JSON (written atomically)")

    m = sub.add_parser("merge", help="concatenate per-server tables in the order given, renumbering ranks 0..N-1")
    m.add_argument("tables", nargs="+", help="server tables in rank order (not a directory)")
    m.add_argument("--as-given", action="store_true",
                   help="accept names whose alphabetical order differs from their numeric order "
                        "(e.g. server10 before server2) as the intended order")
    m.add_argument("--out", required=True, help="output JSON (written atomically)")

    s = sub.add_parser("superpod", help="version 1.2 table for an Atlas A3 SuperPoD cluster",
                       description=SUPERPOD_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--input", required=True, help="cluster description (YAML or JSON)")
    s.add_argument("--out", required=True, help="output JSON (written atomically)")

    c = sub.add_parser("check", help="validate a table and print its servers and ranks")
    c.add_argument("table")
    c.add_argument("--devices-per-server", type=int, help="also require this many devices on every server")
    c.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.action == "build":
        ids = sources.parse_devices(args.devices)
        ips = device_ips(ids, ips=args.ips, hccn_tool_output=args.hccn_tool_output, hccn_tool=args.hccn_tool,
                         hccn_conf=args.hccn_conf)
        table = build_server_table(server_id=args.server_id, device_ids=ids, ips=ips)
    elif args.action == "merge":
        check_explicit_order(args.tables, as_given=args.as_given)
        table = merge_tables([(p, load_table(p)) for p in args.tables])
    elif args.action == "superpod":
        table = load_superpod_input(args.input)
    else:
        table = load_table(args.table)
        if args.devices_per_server is not None:
            for s in table.servers:
                if len(s.devices) != args.devices_per_server:
                    raise RankTableError(f"{args.table}: server {s.server_id} has {len(s.devices)} devices, "
                                         f"expected {args.devices_per_server}")
        info = summary(table)
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(f"{args.table}: version {info['version']}, {info['server_count']} server(s), "
                  f"{info['rank_size']} ranks")
            for s in info["servers"]:
                pod = f" super pod {s['super_pod_id']}" if s["super_pod_id"] is not None else ""
                print(f"  [{s['index']}] {s['server_id']}{pod}: devices {s['devices']} -> ranks "
                      f"{s['ranks'][0]}..{s['ranks'][-1]}")
        return 0
    out = write_table(table, args.out)
    print(f"wrote {out}: version {table.version}, {len(table.servers)} server(s), {table.rank_size} ranks")
    return 0
