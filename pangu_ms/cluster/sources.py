"""Where a server's rank-table inputs come from: device ids, device IPs, the server id.

Device IPs (one per device id):
- `/etc/hccn.conf`-style text: lines `address_<device_id>=<ip>` (other keys such as
  `netmask_0=` or `netdetect_0=` are ignored);
- the output of `hccn_tool -i <id> -ip -g` (lines `ipaddr:<ip>`), either run here or
  saved to a file. A saved file may mark each block with a line naming the device
  (`device 3`, or the command itself `hccn_tool -i 3 -ip -g`); without markers the blocks
  are taken in the order of the requested device ids;
- an explicit list, in the order of the requested device ids.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import shutil
import socket
import subprocess
from pathlib import Path

from pangu_ms.cluster.rank_table import MAX_DEVICE_ID, RankTableError

log = logging.getLogger(__name__)

HCCN_CONF = "/etc/hccn.conf"
HCCN_TOOL_PATHS = ("hccn_tool", "/usr/local/Ascend/driver/tools/hccn_tool")
_MARKER = re.compile(r"^\s*(?:#\s*)?(?:device\s*[:=]?\s*(\d+)\b|.*hccn_tool\s+-i\s+(\d+)\b)", re.IGNORECASE)
_IPADDR = re.compile(r"^\s*ipaddr\s*:\s*(\S*)\s*$", re.IGNORECASE)
_ADDRESS = re.compile(r"^\s*address_(\d+)\s*=\s*(.*?)\s*$")


def parse_devices(text: str) -> list[int]:
    """`0-7`, `8-15`, `0,1,2,3` or `0-3,6,7` -> sorted device ids (no repeats, 0..15)."""
    ids: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if not m:
            raise RankTableError(f"--devices {text!r}: {part!r} is not a device id or range; use e.g. 0-7, 8-15 "
                                 "or 0,1,2,3")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise RankTableError(f"--devices {text!r}: range {part} is empty (write low-high)")
        if hi > MAX_DEVICE_ID:  # checked before expanding: '0-99999999' must not build the range
            raise RankTableError(f"--devices {text!r}: device id {max(lo, MAX_DEVICE_ID + 1)} is out of range "
                                 f"0-{MAX_DEVICE_ID}")
        ids.extend(range(lo, hi + 1))
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise RankTableError(f"--devices {text!r}: device(s) {dup} listed more than once")
    return sorted(ids)


def _read(path: str | Path, what: str, hint: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise RankTableError(f"{what} not found: {p}; {hint}")
    return p.read_text(encoding="utf-8", errors="replace")


def ips_from_hccn_conf(path: str | Path, device_ids: list[int]) -> dict[int, str]:
    """Device IPs from an `/etc/hccn.conf`-style file (`address_<id>=<ip>` lines)."""
    text = _read(path, "hccn.conf", "it is written when the NPU NICs are configured (hccn_tool -i N -ip -s ...); "
                 "pass --hccn-tool-output FILE or --ips IP,IP,... instead")
    found: dict[int, str] = {}
    for line in text.splitlines():
        m = _ADDRESS.match(line)
        if m:
            found[int(m.group(1))] = m.group(2)
    return _pick(found, device_ids, f"{path}", "address_{id}=<ip>")


def parse_hccn_tool_output(text: str, device_ids: list[int], source: str = "hccn_tool output") -> dict[int, str]:
    """Device IPs from concatenated `hccn_tool -i N -ip -g` outputs (see module docstring)."""
    current: int | None = None
    marked: dict[int, str] = {}
    unmarked: list[str] = []
    for line in text.splitlines():
        m = _MARKER.match(line)
        if m and not _IPADDR.match(line):
            current = int(m.group(1) or m.group(2))
            continue
        ip = _IPADDR.match(line)
        if ip:
            if current is None:
                unmarked.append(ip.group(1))
            else:
                marked[current] = ip.group(1)
                current = None
    if marked and unmarked:
        raise RankTableError(f"{source}: some ipaddr lines name their device and some do not; mark every block "
                             "(e.g. `echo device $i; hccn_tool -i $i -ip -g`)")
    if not marked:
        if len(unmarked) != len(device_ids):
            raise RankTableError(f"{source}: {len(unmarked)} ipaddr line(s) for {len(device_ids)} device(s) "
                                 f"{device_ids}; without device markers there must be one per device, in order")
        marked = dict(zip(device_ids, unmarked))
    return _pick(marked, device_ids, source, "an ipaddr line for device {id}")


def ips_from_hccn_tool(device_ids: list[int], tool: str | None = None) -> dict[int, str]:
    """Run `hccn_tool -i <id> -ip -g` for each device on this machine."""
    exe = next((p for p in ([tool] if tool else HCCN_TOOL_PATHS) if p and shutil.which(p)), None)
    if exe is None:
        raise RankTableError(f"hccn_tool not found (looked for {', '.join([tool] if tool else HCCN_TOOL_PATHS)}); "
                             "it ships with the Ascend driver. Pass --hccn-conf /etc/hccn.conf, "
                             "--hccn-tool-output FILE or --ips IP,IP,... instead")
    chunks = []
    for i in device_ids:
        res = subprocess.run([exe, "-i", str(i), "-ip", "-g"], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RankTableError(f"`{exe} -i {i} -ip -g` failed (exit {res.returncode}): "
                                 f"{(res.stderr or res.stdout).strip()[:200]}")
        chunks.append(f"device {i}\n{res.stdout}")
    return parse_hccn_tool_output("\n".join(chunks), device_ids, source=f"{exe} output")


def ips_from_list(text: str, device_ids: list[int]) -> dict[int, str]:
    """`--ips a,b,c`: one IP per device id, in order."""
    ips = [x.strip() for x in str(text).split(",") if x.strip()]
    if len(ips) != len(device_ids):
        raise RankTableError(f"--ips lists {len(ips)} address(es) for {len(device_ids)} device(s) {device_ids}: "
                             "give one per device, in device order")
    return dict(zip(device_ids, ips))


def _pick(found: dict[int, str], device_ids: list[int], source: str, form: str) -> dict[int, str]:
    missing = [i for i in device_ids if i not in found]
    if missing:
        have = ",".join(str(i) for i in sorted(found)) or "none"
        raise RankTableError(f"{source}: no address for device {missing[0]} (expected {form.format(id=missing[0])}; "
                             f"devices it has: {have}); check --devices or the file")
    return {i: found[i] for i in device_ids}


# --------------------------------------------------------------------------- server id


def local_addresses() -> list[str]:
    """IPv4 addresses this machine appears to have: the default-route source, then the hostname's."""
    out: list[str] = []
    try:  # a UDP "connect" sends nothing; it only asks the kernel which source address it would use
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            out.append(s.getsockname()[0])
    except OSError:
        pass
    try:
        out.extend(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    except OSError:
        pass
    return list(dict.fromkeys(out))


def detect_server_id(candidates: list[str] | None = None) -> str:
    """The first non-loopback IPv4 address among `candidates` (default: `local_addresses()`)."""
    cands = local_addresses() if candidates is None else candidates
    for a in cands:
        try:
            addr = ipaddress.IPv4Address(a)
        except ValueError:
            continue
        if not (addr.is_loopback or addr.is_unspecified or addr.is_link_local):
            log.info("server id: %s (first non-loopback address of this machine)", a)
            return str(addr)
    raise RankTableError(
        f"could not find a non-loopback address for this server (found {', '.join(cands) or 'none'}; a hostname "
        "mapped to 127.0.1.1 in /etc/hosts gives this): pass --server-id <the IP other servers reach this one at>")
