"""Version "1.2" rank tables for Atlas A3 SuperPoD clusters, from a YAML (or JSON) description.

Input format (`python -m pangu_ms rank-table superpod --input cluster.yaml --out table.json`):

    super_pods:                       # in rank order
      - super_pod_id: "0"             # `npu-smi info -t spod-info -i <card> -c <chip>`: "Super Pod ID"
        servers:                      # in rank order inside the pod
          - server_id: node_0         # unique; an IP address or a name
            host_ip: 172.16.0.100     # the server's host NIC address
            devices:                  # one entry per die; NPU n = devices 2n and 2n+1 (both required)
              - {device_id: 0, device_ip: 192.168.1.6, super_device_id: 0}
              - {device_id: 1, device_ip: 192.168.1.7, super_device_id: 1}
    devices_per_server: 16            # optional: refuse servers with another device count

Optional per device, copied into the table as HCCL documents them: `device_port`,
`backup_device_ip`, `backup_device_port`, `host_port`.

`device_ip` is the die's NIC address (`hccn_tool -i <device_id> -ip -g`); `super_device_id`
is its id inside the super pod (`npu-smi info -t spod-info -i <card> -c <chip>`: "SDID",
with card = device_id // 2 and chip = device_id % 2). Ranks are numbered 0..N-1 in the
order written, so every super pod's ranks are contiguous, as HCCL requires.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pangu_ms.cluster.rank_table import (Device, RankTable, RankTableError, Server, is_decimal, renumber,
                                        validate_table)
from pangu_ms.config.loader import yaml_problem

_POD_KEYS = {"super_pod_id", "servers"}
_SERVER_KEYS = {"server_id", "host_ip", "devices"}
_DEVICE_KEYS = {"device_id", "device_ip", "super_device_id"}
_DEVICE_OPTIONAL = {"device_port", "backup_device_ip", "backup_device_port", "host_port"}


def _keys(entry: Any, allowed: set[str], required: set[str], where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise RankTableError(f"{where}: expected a mapping with {', '.join(sorted(required))}")
    unknown = set(entry) - allowed
    if unknown:
        raise RankTableError(f"{where}: unknown key(s) {sorted(unknown)} (valid: {', '.join(sorted(allowed))})")
    missing = required - set(entry)
    if missing:
        raise RankTableError(f"{where}: missing {', '.join(sorted(missing))}")
    return entry


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not is_decimal(str(value).strip()):
        raise RankTableError(f"{where}: {value!r} is not a non-negative integer")
    return int(str(value).strip())


def _server(entry: Any, pod_id: str, where: str) -> Server:
    e = _keys(entry, _SERVER_KEYS, _SERVER_KEYS, where)
    sid = str(e["server_id"])
    if not isinstance(e["devices"], list) or not e["devices"]:
        raise RankTableError(f"{where} (server {sid}): devices must be a non-empty list")
    devices = []
    for j, d in enumerate(e["devices"]):
        dw = f"server {sid} devices[{j}]"
        d = _keys(d, _DEVICE_KEYS | _DEVICE_OPTIONAL, _DEVICE_KEYS, dw)
        devices.append(Device(device_id=_int(d["device_id"], f"{dw} device_id"), device_ip=str(d["device_ip"]),
                              super_device_id=_int(d["super_device_id"], f"{dw} super_device_id"),
                              extra={k: str(d[k]) for k in sorted(_DEVICE_OPTIONAL & set(d))}))
    return Server(server_id=sid, devices=devices, host_ip=str(e["host_ip"]), super_pod_id=pod_id)


def superpod_table(doc: Any, source: str = "<input>") -> RankTable:
    """Build and validate a version 1.2 table from the parsed input document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("super_pods"), list) or not doc["super_pods"]:
        raise RankTableError(f"{source}: expected a top-level `super_pods:` list (see pangu_ms/cluster/superpod.py)")
    unknown = set(doc) - {"super_pods", "devices_per_server", "version"}
    if unknown:
        raise RankTableError(f"{source}: unknown top-level key(s) {sorted(unknown)} "
                             "(valid: super_pods, devices_per_server, version)")
    if str(doc.get("version", "1.2")) != "1.2":
        raise RankTableError(f"{source}: version {doc['version']!r}: SuperPoD tables are version 1.2")
    servers: list[Server] = []
    pod_ids: list[str] = []
    for i, pod in enumerate(doc["super_pods"]):
        p = _keys(pod, _POD_KEYS, _POD_KEYS, f"{source}: super_pods[{i}]")
        pid = str(p["super_pod_id"])
        if pid in pod_ids:
            raise RankTableError(f"{source}: super pod {pid} is listed twice; list each pod once with all its servers")
        pod_ids.append(pid)
        if not isinstance(p["servers"], list) or not p["servers"]:
            raise RankTableError(f"{source}: super pod {pid}: servers must be a non-empty list")
        servers.extend(_server(s, pid, f"{source}: super pod {pid} servers[{j}]") for j, s in enumerate(p["servers"]))
    table = renumber(RankTable(servers=servers, version="1.2"))
    per = doc.get("devices_per_server")
    try:
        validate_table(table, devices_per_server=None if per is None else _int(per, "devices_per_server"))
    except RankTableError as exc:
        raise RankTableError(f"{source}: {exc}") from None
    return table


def load_superpod_input(path: str | Path) -> RankTable:
    """Read a SuperPoD description (YAML or JSON) and build the version 1.2 table."""
    p = Path(path)
    if not p.is_file():
        raise RankTableError(f"SuperPoD input not found: {p} (format: see `rank-table superpod --help`)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RankTableError(f"{p}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    try:
        doc = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise RankTableError(f"{p}: not valid JSON: {exc}") from None
    except yaml.YAMLError as exc:
        raise RankTableError(f"{p}: {yaml_problem(exc)}") from None
    except RecursionError:
        raise RankTableError(f"{p}: nested too deeply to be a cluster description") from None
    return superpod_table(doc, str(p))
