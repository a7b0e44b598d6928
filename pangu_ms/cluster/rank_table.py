"""HCCL rank tables: the model, validation, JSON reading/writing and merging.

Version "1.0" (Atlas 800/900 training servers with 910A or 910B), every value a string:

    {"version": "1.0", "server_count": "1", "status": "completed",
     "server_list": [{"server_id": "10.0.0.1", "host_nic_ip": "reserve",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}, ...]}]}

Version "1.2" (Atlas A3 SuperPoD) adds per server `host_ip`, per device `super_device_id`,
and a top-level `super_pod_list: [{"super_pod_id": "0", "server_list": [{"server_id": ...}]}]`.
Each A3 NPU has two dies and each die is one device (one rank), so device ids come in pairs
2n, 2n+1.

Ranks are numbered 0..N-1 in table order: servers in the order given, devices by device id.
"""
from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pangu_ms.errors import PanguError

VERSIONS = ("1.0", "1.2")
_DEVICE_FIELDS = {"device_id", "device_ip", "rank_id", "super_device_id"}
_SERVER_FIELDS = {"server_id", "host_ip", "device", "host_nic_ip"}
MAX_DEVICE_ID = 15  # 8 NPUs per 910A/910B server (0-7); 16 dies per A3 server (0-15)


class RankTableError(PanguError, ValueError):
    """A rank table, or an input to build one, is missing, malformed or inconsistent."""


@dataclass
class Device:
    """One NPU (one die on A3): one rank."""

    device_id: int
    device_ip: str
    rank_id: int = -1
    super_device_id: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    """other HCCL device fields, kept as given (1.2: device_port, backup_device_ip, backup_device_port, host_port)."""


@dataclass
class Server:
    """One AI server and its devices (sorted by device id)."""

    server_id: str
    devices: list[Device]
    host_ip: str | None = None
    super_pod_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    """other server fields, kept as given (e.g. container_ip)."""


@dataclass
class RankTable:
    """A whole cluster: servers in rank order."""

    servers: list[Server]
    version: str = "1.0"
    extra: dict[str, Any] = field(default_factory=dict)
    """unknown top-level keys kept from a loaded file (written back unchanged)."""

    @property
    def rank_size(self) -> int:
        return sum(len(s.devices) for s in self.servers)

    def server_ranks(self, index: int) -> list[Device]:
        """The devices (with rank ids) of server `index` (0-based, table order)."""
        if not 0 <= index < len(self.servers):
            raise RankTableError(f"server index {index} is out of range: the table lists {len(self.servers)} "
                                 f"server(s), use 0..{len(self.servers) - 1}")
        return self.servers[index].devices


# --------------------------------------------------------------------------- checks


def is_decimal(text: str) -> bool:
    """ASCII digits only (str.isdigit also takes '²' or '٣', which int() refuses or misreads)."""
    return text.isascii() and text.isdecimal()


def check_ip(value: str, what: str) -> str:
    """Return `value` if it is a usable IPv4 address, else raise naming `what` and the value."""
    if not isinstance(value, str):
        raise RankTableError(f"{what}: {value!r} is not a valid IPv4 address (expected a string like '192.168.1.6')")
    hint = ""
    if value.strip() in ("-.-.-.-", ""):
        hint = (" (hccn_tool shows -.-.-.- for a device whose NIC has no address: set one with "
                "`hccn_tool -i <device> -ip -s address <ip> netmask <mask>`)")
    try:
        addr = ipaddress.IPv4Address(value.strip())
    except ValueError:
        raise RankTableError(f"{what}: {value!r} is not a valid IPv4 address{hint}") from None
    if addr.is_loopback or addr.is_unspecified:
        raise RankTableError(f"{what}: {value} is a loopback/unspecified address; other servers cannot reach it")
    return str(addr)


def check_server_id(value: str, what: str = "server_id") -> str:
    """A server id: any unique string; if it looks like an IPv4 address it must be a usable one."""
    value = str(value).strip()
    if not value:
        raise RankTableError(f"{what} is empty: pass this server's IP address")
    if all(is_decimal(part) for part in value.split(".")):  # looks like an IPv4 address
        if value.startswith("127."):
            raise RankTableError(
                f"{what} {value} is a loopback address (a hostname that resolves to 127.0.1.1 in /etc/hosts "
                "gives this): pass the address other servers reach this one at, e.g. --server-id 10.0.0.1")
        check_ip(value, what)
    return value


def _check_devices(server: Server, version: str, seen_ips: dict[str, str]) -> None:
    where = f"server {server.server_id}"
    if not server.devices:
        raise RankTableError(f"{where}: no devices")
    ids = [d.device_id for d in server.devices]
    for d in server.devices:
        dwhere = f"{where} device {d.device_id}"
        if not 0 <= d.device_id <= MAX_DEVICE_ID:
            raise RankTableError(f"{where}: device_id {d.device_id} is out of range 0-{MAX_DEVICE_ID}")
        if ids.count(d.device_id) > 1:
            raise RankTableError(f"{where}: device_id {d.device_id} is listed {ids.count(d.device_id)} times")
        d.device_ip = check_ip(d.device_ip, f"{dwhere} device_ip")
        if d.device_ip in seen_ips:
            raise RankTableError(f"{dwhere}: device_ip {d.device_ip} is also used by {seen_ips[d.device_ip]}; "
                                 "every device needs its own address")
        seen_ips[d.device_ip] = dwhere
        for key, value in d.extra.items():
            if key.endswith("_ip"):
                d.extra[key] = check_ip(value, f"{dwhere} {key}")
            elif key.endswith("_port") and not (is_decimal(str(value)) and 0 < int(value) < 65536):
                raise RankTableError(f"{dwhere}: {key} {value!r} is not a port number (1-65535)")
        if version == "1.2" and d.super_device_id is None:
            raise RankTableError(f"{dwhere}: version 1.2 needs a super_device_id")
    if version == "1.2":
        for npu in sorted({i // 2 for i in ids}):
            if 2 * npu not in ids or 2 * npu + 1 not in ids:
                raise RankTableError(f"{where}: NPU {npu} has dies {2 * npu} and {2 * npu + 1} but only device "
                                     f"{2 * npu if 2 * npu in ids else 2 * npu + 1} is listed; an A3 NPU is two "
                                     "devices (two ranks), list both")


def _check_super_pods(table: RankTable) -> None:
    order: list[str] = []
    for s in table.servers:
        if s.super_pod_id is None:
            raise RankTableError(f"server {s.server_id}: version 1.2 needs the server in a super pod")
        if s.super_pod_id not in order:
            order.append(s.super_pod_id)
        elif order[-1] != s.super_pod_id:
            raise RankTableError(f"super pod {s.super_pod_id}: its servers are not consecutive (server {s.server_id} "
                                 "comes after another pod's servers); HCCL needs each super pod's ranks contiguous")
    for pod in order:
        seen: dict[int, str] = {}
        for s in table.servers:
            for d in s.devices if s.super_pod_id == pod else []:
                key = f"server {s.server_id} device {d.device_id}"
                if d.super_device_id in seen:
                    raise RankTableError(f"super pod {pod}: super_device_id {d.super_device_id} is used by both "
                                         f"{seen[d.super_device_id]} and {key}")
                seen[d.super_device_id] = key


def validate_table(table: RankTable, *, devices_per_server: int | None = None) -> None:
    """Raise `RankTableError` naming the server, device and value of the first problem."""
    if table.version not in VERSIONS:
        raise RankTableError(f"version {table.version!r}: use one of {', '.join(VERSIONS)}")
    if not table.servers:
        raise RankTableError("the table lists no servers")
    seen_servers: set[str] = set()
    seen_ips: dict[str, str] = {}
    for s in table.servers:
        s.server_id = check_server_id(s.server_id)
        if s.server_id in seen_servers:
            raise RankTableError(f"server {s.server_id} is listed twice; server ids must be unique")
        seen_servers.add(s.server_id)
        if s.host_ip is not None:
            s.host_ip = check_ip(s.host_ip, f"server {s.server_id} host_ip")
        _check_devices(s, table.version, seen_ips)
        if devices_per_server is not None and len(s.devices) != devices_per_server:
            raise RankTableError(f"server {s.server_id}: {len(s.devices)} devices, expected {devices_per_server}")
    ranks = sorted(d.rank_id for s in table.servers for d in s.devices)
    if ranks != list(range(table.rank_size)):
        dup = sorted({r for r in ranks if ranks.count(r) > 1})
        raise RankTableError(f"rank ids must be 0..{table.rank_size - 1}, each once; got {ranks}"
                             + (f" (repeated: {dup})" if dup else ""))
    if table.version == "1.2":
        _check_super_pods(table)


def renumber(table: RankTable) -> RankTable:
    """Sort each server's devices by id and number ranks 0..N-1 in table order (in place)."""
    rank = 0
    for s in table.servers:
        s.devices.sort(key=lambda d: d.device_id)
        for d in s.devices:
            d.rank_id = rank
            rank += 1
    return table


# --------------------------------------------------------------------------- JSON


def to_json(table: RankTable) -> dict[str, Any]:
    """The HCCL JSON document (all values strings, as HCCL expects)."""
    servers = []
    for s in table.servers:
        entry: dict[str, Any] = {"server_id": s.server_id}
        if table.version == "1.0":
            entry["host_nic_ip"] = "reserve"
        if s.host_ip is not None:
            entry["host_ip"] = s.host_ip
        devs = []
        for d in s.devices:
            dev = {"device_id": str(d.device_id), "device_ip": d.device_ip}
            if d.super_device_id is not None:
                dev["super_device_id"] = str(d.super_device_id)
            dev.update({k: str(v) for k, v in d.extra.items()})
            dev["rank_id"] = str(d.rank_id)
            devs.append(dev)
        entry.update({k: v for k, v in s.extra.items() if k not in entry})
        entry["device"] = devs
        servers.append(entry)
    doc: dict[str, Any] = {"version": table.version, "server_count": str(len(table.servers)), "server_list": servers}
    if table.version == "1.2":
        pods: dict[str, list[dict[str, str]]] = {}
        for s in table.servers:
            pods.setdefault(str(s.super_pod_id), []).append({"server_id": s.server_id})
        doc["super_pod_list"] = [{"super_pod_id": p, "server_list": sl} for p, sl in pods.items()]
    doc.update({k: v for k, v in table.extra.items() if k not in doc})
    doc["status"] = "completed"
    return doc


def _int_field(value: Any, what: str) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not is_decimal(text.removeprefix("-")):
        raise RankTableError(f"{what}: {value!r} is not an integer")
    return int(text)


def _string_field(value: Any, what: str) -> str:
    """HCCL writes every value as a string; numbers are accepted and written back as strings."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RankTableError(f"{what}: {value!r} is not a string")
    return str(value)


def _server_from_json(entry: Any, i: int, pod_of: dict[str, str], src: str) -> Server:
    if not isinstance(entry, dict) or "server_id" not in entry:
        raise RankTableError(f"{src}: server_list[{i}] needs a server_id")
    sid = _string_field(entry["server_id"], f"{src}: server_list[{i}] server_id")
    listed = entry.get("device") if entry.get("device") is not None else []
    if not isinstance(listed, list):
        raise RankTableError(f"{src}: server {sid}: device must be a list of devices, got {listed!r}")
    devices = []
    for j, dev in enumerate(listed):
        where = f"{src}: server {sid} device[{j}]"
        if not isinstance(dev, dict) or "device_id" not in dev or "device_ip" not in dev:
            raise RankTableError(f"{where}: needs device_id and device_ip")
        sdid = dev.get("super_device_id")
        devices.append(Device(device_id=_int_field(dev["device_id"], f"{where} device_id"),
                              device_ip=_string_field(dev["device_ip"], f"{where} device_ip"),
                              rank_id=_int_field(dev.get("rank_id", -1), f"{where} rank_id"),
                              super_device_id=None if sdid is None else _int_field(sdid, f"{where} super_device_id"),
                              extra={k: str(v) for k, v in dev.items() if k not in _DEVICE_FIELDS}))
    extra = {k: v for k, v in entry.items() if k not in _SERVER_FIELDS}
    host_ip = entry.get("host_ip")
    return Server(server_id=sid, devices=devices, super_pod_id=pod_of.get(sid), extra=extra,
                  host_ip=None if host_ip is None else _string_field(host_ip, f"{src}: server {sid} host_ip"))


def from_json(doc: Any, source: str = "<table>") -> RankTable:
    """Parse and validate a rank-table document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("server_list"), list):
        raise RankTableError(f"{source}: not a rank table (no server_list)")
    version = str(doc.get("version", "1.0"))
    if doc.get("status", "completed") != "completed":
        raise RankTableError(f"{source}: status is {doc.get('status')!r}, HCCL only accepts 'completed'")
    pod_of = {}
    pods = doc.get("super_pod_list") if doc.get("super_pod_list") is not None else []
    for k, pod in enumerate(pods if isinstance(pods, list) else [pods]):
        members = pod.get("server_list") if isinstance(pod, dict) else None
        if not isinstance(members, list) or not all(isinstance(m, dict) and "server_id" in m for m in members):
            raise RankTableError(f"{source}: super_pod_list[{k}] must be a mapping whose server_list lists "
                                 "{\"server_id\": ...} entries")
        for m in members:
            pod_of[str(m["server_id"])] = str(pod.get("super_pod_id"))
    servers = [_server_from_json(e, i, pod_of, source) for i, e in enumerate(doc["server_list"])]
    if "server_count" in doc and _int_field(doc["server_count"], f"{source}: server_count") != len(servers):
        raise RankTableError(f"{source}: server_count is {doc['server_count']} but server_list has {len(servers)}")
    known = {"version", "server_count", "server_list", "super_pod_list", "status"}
    table = RankTable(servers=servers, version=version, extra={k: v for k, v in doc.items() if k not in known})
    try:
        validate_table(table)
    except RankTableError as exc:
        raise RankTableError(f"{source}: {exc}") from None
    return table


def load_table(path: str | Path) -> RankTable:
    """Read and validate a rank-table JSON file."""
    p = Path(path)
    if not p.is_file():
        raise RankTableError(f"rank table not found: {p} (build one with `python -m pangu_ms rank-table build`)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RankTableError(f"{p}: not valid JSON: {exc}") from None
    except RecursionError:
        raise RankTableError(f"{p}: not a rank table (JSON nested too deeply)") from None
    return from_json(doc, str(p))


def write_table(table: RankTable, path: str | Path) -> Path:
    """Validate, then write atomically (temporary file in the same directory, then rename)."""
    validate_table(table)
    return write_json_atomic(to_json(table), path)


def write_json_atomic(doc: Any, path: str | Path) -> Path:
    """Write JSON so a reader sees either the old file or the complete new one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=4)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


# --------------------------------------------------------------------------- merge


def merge_tables(tables: list[tuple[str, RankTable]]) -> RankTable:
    """Concatenate servers of `(source, table)` pairs in the given order and renumber ranks."""
    if not tables:
        raise RankTableError("merge needs at least one table")
    versions = {t.version for _, t in tables}
    if len(versions) > 1:
        listing = ", ".join(f"{src} is {t.version}" for src, t in tables)
        raise RankTableError(f"cannot merge tables of different versions ({listing})")
    servers: list[Server] = []
    origin: dict[str, str] = {}
    for src, t in tables:
        for s in t.servers:
            if s.server_id in origin:
                raise RankTableError(f"server {s.server_id} appears in both {origin[s.server_id]} and {src}")
            origin[s.server_id] = src
            servers.append(s)
    merged = renumber(RankTable(servers=servers, version=tables[0][1].version))
    validate_table(merged)
    return merged
