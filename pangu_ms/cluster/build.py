"""Assembling rank tables: one server's table from its device-IP source, merges in an explicit
rank order, and the summary that `rank-table check` and the launch pre-flight print."""
from __future__ import annotations

import glob
import re
from pathlib import Path

from pangu_ms.cluster import sources
from pangu_ms.cluster.rank_table import Device, RankTable, RankTableError, Server, check_server_id, renumber


def device_ips(ids: list[int], *, ips: str | None = None, hccn_tool_output: str | None = None,
               hccn_tool: bool = False, hccn_conf: str | None = None) -> dict[int, str]:
    """Device id -> IP from the first source given: an explicit list, saved `hccn_tool` output,
    running `hccn_tool`, an hccn.conf; with none, /etc/hccn.conf, then `hccn_tool`."""
    if ips:
        return sources.ips_from_list(ips, ids)
    if hccn_tool_output:
        text = Path(hccn_tool_output)
        if not text.is_file():
            raise RankTableError(f"hccn_tool output file not found: {text}")
        return sources.parse_hccn_tool_output(text.read_text(encoding="utf-8", errors="replace"), ids, str(text))
    if hccn_tool:
        return sources.ips_from_hccn_tool(ids)
    if hccn_conf:
        return sources.ips_from_hccn_conf(hccn_conf, ids)
    if Path(sources.HCCN_CONF).is_file():
        return sources.ips_from_hccn_conf(sources.HCCN_CONF, ids)
    try:
        return sources.ips_from_hccn_tool(ids)
    except RankTableError as exc:
        raise RankTableError(f"no device IP source: {sources.HCCN_CONF} does not exist and {exc}") from None


def build_server_table(*, server_id: str | None, device_ids: list[int], ips: dict[int, str]) -> RankTable:
    """One server's version 1.0 table (ranks 0..n-1)."""
    sid = check_server_id(server_id, "--server-id") if server_id else sources.detect_server_id()
    devices = [Device(device_id=i, device_ip=ips[i]) for i in device_ids]
    return renumber(RankTable(servers=[Server(server_id=sid, devices=devices)], version="1.0"))


def check_explicit_order(paths: list[str], *, as_given: bool = False) -> None:
    """Refuse merge inputs whose order may be an accident of a shell glob or a directory listing."""
    for p in paths:
        if Path(p).is_dir():
            raise RankTableError(f"{p} is a directory: list the server tables in rank order, "
                                 f"e.g. merge {p}/server0.json {p}/server1.json ... --out rank_table.json")
        if glob.has_magic(p) and not Path(p).exists():
            raise RankTableError(f"{p!r} is a wildcard pattern: its expansion order is not a rank order; "
                                 "list the tables explicitly in the order ranks should be numbered")

    def natural(s: str) -> list:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]

    want = sorted(paths, key=natural)
    if not as_given and paths == sorted(paths) and want != paths:
        first = next(i for i, (a, b) in enumerate(zip(paths, want)) if a != b)
        raise RankTableError(
            f"the tables are in alphabetical order, which puts {paths[first]} before {want[first]}: this looks "
            f"like a shell glob. List them in rank order ({' '.join(want)}) or pass --as-given if this order "
            "is intended")


def summary(table: RankTable) -> dict:
    """Servers, devices and ranks of a table (for `check` and the launch pre-flight)."""
    return {"version": table.version, "server_count": len(table.servers), "rank_size": table.rank_size,
            "servers": [{"index": i, "server_id": s.server_id, "super_pod_id": s.super_pod_id,
                         "devices": [d.device_id for d in s.devices], "ranks": [d.rank_id for d in s.devices]}
                        for i, s in enumerate(table.servers)]}
