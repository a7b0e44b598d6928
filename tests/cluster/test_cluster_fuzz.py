"""Fuzzing the rank-table inputs (hypothesis): hccn.conf text, saved hccn_tool output, rank-table
JSON and SuperPoD descriptions, each through the `rank-table` CLI in-process.

What holds for any input: the command returns 0 and writes a table, or returns 2 with one
`error: ...` line and writes nothing (no output file, no temporary file left beside it); no
traceback. Where the input is well formed by construction, the table holds exactly the
addresses a reference parse (written here, independently) reads from it.

Bugs found and fixed (pangu_ms/cluster/): `--devices 0-99999999` built the whole range before
checking the bound (seconds of CPU and memory); device ids and ports written in non-ASCII
digits ('²', '٣') passed str.isdigit() and then int() raised ValueError; a rank-table JSON whose
server_id / device_ip / host_ip was a list, mapping or boolean, whose `device` was not a list,
or whose super_pod_list entries were not mappings ended in AttributeError/TypeError; JSON nested
a few thousand levels deep ended in RecursionError; a SuperPoD YAML with a syntax error gave
PyYAML's multi-line message, and a non-UTF-8 one a UnicodeDecodeError traceback.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import tempfile
from datetime import timedelta
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pangu_ms.cli import main
from pangu_ms.cluster.rank_table import RankTableError
from pangu_ms.cluster.sources import parse_devices

FUZZ = settings(max_examples=100, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
FIX = Path(__file__).parent / "fixtures"
ips = st.tuples(st.integers(1, 126), *[st.integers(1, 254)] * 3).map(lambda t: ".".join(map(str, t)))


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(["rank-table", *argv])
    return rc, err.getvalue()


def outcome(argv: list[str], out: Path) -> dict | None:
    """The written table, or None after checking the failure was one error line and left nothing."""
    rc, err = run_cli([*argv, "--out", str(out)])
    if rc == 0:
        assert not err.strip(), err
        return json.loads(out.read_text(encoding="utf-8"))
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and list(out.parent.iterdir()) == [p for p in out.parent.iterdir() if p.name == "in"]
    return None


def device_ips(doc: dict) -> dict[int, str]:
    (server,) = doc["server_list"]
    return {int(d["device_id"]): d["device_ip"] for d in server["device"]}


# --------------------------------------------------------------------------- --devices


@FUZZ
@given(text=st.text(st.sampled_from("0123456789-, ²٣x"), max_size=14) | st.text(max_size=10))
@example(text="0-99999999")
@example(text="٣")
def test_devices_spec_parses_or_is_one_error(text):
    try:
        got = parse_devices(text)
    except RankTableError as exc:
        assert "\n" not in str(exc) and "--devices" in str(exc)
        return
    assert got == sorted(set(got)) and all(0 <= i <= 15 for i in got)
    want = []
    for part in text.replace(" ", "").split(","):  # reference: ASCII ids and ranges
        lo, _, hi = part.partition("-")
        want.extend(range(int(lo), int(hi or lo) + 1))
    assert got == sorted(want)


# --------------------------------------------------------------------------- hccn.conf


conf_line = st.one_of(
    st.builds(lambda i, ip: f"address_{i}={ip}", st.integers(0, 17), ips),
    st.builds(lambda k, i, v: f"{k}_{i}={v}", st.sampled_from(["netmask", "netdetect", "address"]),
              st.integers(0, 9), ips),
    st.builds(lambda i, v: f"address_{i}={v}", st.integers(0, 9), st.text(max_size=8)),
    st.text(max_size=20))


@FUZZ
@given(lines=st.lists(conf_line, max_size=12), devices=st.sampled_from(["0-7", "0-3", "0,2", "8-15", "0"]))
def test_hccn_conf_of_any_text_builds_or_is_one_error(lines, devices):
    with tempfile.TemporaryDirectory() as d:
        conf = Path(d) / "in"
        conf.write_text("\n".join(lines), encoding="utf-8", errors="surrogateescape")
        doc = outcome(["build", "--hccn-conf", str(conf), "--devices", devices, "--server-id", "10.0.0.1"],
                      Path(d) / "table.json")
    if doc is None:
        return
    want = {}
    for line in "\n".join(lines).splitlines():  # reference: the last address_<id>= line wins
        m = re.fullmatch(r"\s*address_([0-9]+)\s*=\s*(.*?)\s*", line)
        if m:
            want[int(m.group(1))] = m.group(2)
    assert device_ips(doc) == {i: want[i] for i in parse_devices(devices)}


@FUZZ
@given(blob=st.binary(max_size=200))
def test_hccn_conf_of_any_bytes_is_handled(blob):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "in").write_bytes(blob)
        outcome(["build", "--hccn-conf", str(Path(d) / "in"), "--devices", "0", "--server-id", "10.0.0.1"],
                Path(d) / "table.json")


# --------------------------------------------------------------------------- hccn_tool output


@st.composite
def tool_output(draw):
    """Marked or unmarked hccn_tool -ip -g blocks for devices 0-3, plus noise lines."""
    marked = draw(st.booleans())
    addrs = draw(st.lists(ips, min_size=4, max_size=4, unique=True))
    order = draw(st.permutations(range(4))) if marked else list(range(4))
    lines = []
    for i in order:
        if marked:
            lines.append(draw(st.sampled_from([f"device {i}", f"$ hccn_tool -i {i} -ip -g", f"# device: {i}"])))
        lines += [f"ipaddr:{addrs[i]}", "netmask:255.255.255.0"]
        noise = st.characters(blacklist_categories=("Cs",),
                              blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
        lines += draw(st.lists(st.text(noise, max_size=12).filter(lambda s: "ipaddr" not in s.lower()
                                                           and "device" not in s.lower()
                                                           and "hccn_tool" not in s), max_size=2))
    return "\n".join(lines), dict(enumerate(addrs))


@FUZZ
@given(case=tool_output())
def test_hccn_tool_output_gives_each_devices_address(case):
    text, want = case
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "in").write_text(text, encoding="utf-8")
        doc = outcome(["build", "--hccn-tool-output", str(Path(d) / "in"), "--devices", "0-3",
                       "--server-id", "10.0.0.1"], Path(d) / "table.json")
    assert doc is not None and device_ips(doc) == want


@FUZZ
@given(text=st.text(max_size=120) | st.lists(st.sampled_from(["device 1", "ipaddr:10.0.0.1", "ipaddr:", "ipaddr: x",
                                                              "hccn_tool -i 0", "device 99", "-.-.-.-"]),
                                             max_size=8).map("\n".join))
def test_hccn_tool_output_of_any_text_builds_or_is_one_error(text):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "in").write_text(text, encoding="utf-8", errors="surrogateescape")
        outcome(["build", "--hccn-tool-output", str(Path(d) / "in"), "--devices", "0-1", "--server-id", "10.0.0.1"],
                Path(d) / "table.json")


# --------------------------------------------------------------------------- rank-table JSON


json_leaf = st.none() | st.booleans() | st.integers(-3, 20) | st.text(max_size=6) | ips
json_tree = st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                          max_size=3), max_leaves=12)
TABLE = {"version": "1.0", "server_count": "1", "status": "completed",
         "server_list": [{"server_id": "10.0.0.1", "device": [
             {"device_id": "0", "device_ip": "192.168.1.6", "rank_id": "0"},
             {"device_id": "1", "device_ip": "192.168.1.7", "rank_id": "1"}]}]}
FIELDS = [("server_id",), ("device",), ("device", 0), ("device", 0, "device_id"), ("device", 0, "device_ip"),
          ("device", 0, "rank_id"), ("host_ip",), ("device", 1, "super_device_id")]


@st.composite
def mutated_table(draw):
    """The valid table with one field replaced by an arbitrary JSON value, or top-level noise."""
    doc = json.loads(json.dumps(TABLE))
    kind = draw(st.sampled_from(["field", "top", "tree"]))
    if kind == "tree":
        return draw(json_tree)
    if kind == "top":
        doc[draw(st.sampled_from(["server_list", "server_count", "status", "version", "super_pod_list"]))] = \
            draw(json_tree)
        return doc
    *path, last = draw(st.sampled_from(FIELDS))
    node = doc["server_list"][0]
    for key in path:
        node = node[key]
    node[last] = draw(json_tree)
    return doc


@FUZZ
@given(doc=mutated_table())
@example(doc={**TABLE, "super_pod_list": [{"super_pod_id": "0", "server_list": ["10.0.0.1"]}]})
@example(doc={**TABLE, "server_list": [{**TABLE["server_list"][0], "server_id": ["x"]}]})
def test_rank_table_json_of_any_shape_checks_or_is_one_error(doc):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "in").write_text(json.dumps(doc), encoding="utf-8")
        merged = outcome(["merge", str(Path(d) / "in")], Path(d) / "table.json")
    if merged is not None:  # accepted: what was written is what was read, ranks renumbered
        assert [d["device_ip"] for s in merged["server_list"] for d in s["device"]] == \
               [d["device_ip"] for s in doc["server_list"] for d in s["device"]]


def test_deeply_nested_json_is_one_error(tmp_path):
    (tmp_path / "in").write_text("[" * 100_000 + "]" * 100_000)
    assert outcome(["merge", str(tmp_path / "in")], tmp_path / "table.json") is None
    (tmp_path / "in").write_bytes(b"\xff\xfe{}")
    assert outcome(["merge", str(tmp_path / "in")], tmp_path / "table.json") is None


# --------------------------------------------------------------------------- SuperPoD input


SUPERPOD = yaml.safe_load((FIX / "superpod_2x2.yaml").read_text())
yaml_noise = st.text(st.sampled_from("{}[]:-,&*!|>'\"#% \nab1"), max_size=40)


@st.composite
def superpod_doc(draw):
    doc = json.loads(json.dumps(SUPERPOD))
    pod = doc["super_pods"][draw(st.integers(0, 1))]
    server = pod["servers"][draw(st.integers(0, 1))]
    device = server["devices"][draw(st.integers(0, 3))]
    target, key = draw(st.sampled_from([(doc, "devices_per_server"), (doc, "super_pods"), (pod, "super_pod_id"),
                                        (pod, "servers"), (server, "server_id"), (server, "host_ip"),
                                        (server, "devices"), (device, "device_id"), (device, "device_ip"),
                                        (device, "super_device_id"), (doc, "version")]))
    target[key] = draw(json_tree | st.sampled_from(["²", "٣", "-1", "127.0.0.1", "-.-.-.-"]))
    return doc


@FUZZ
@given(doc=superpod_doc(), as_json=st.booleans())
def test_superpod_input_of_any_shape_builds_or_is_one_error(doc, as_json):
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / ("in.json" if as_json else "in.yaml")
        src.write_text(json.dumps(doc) if as_json else yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        (Path(d) / "in").mkdir()
        outcome(["superpod", "--input", str(src)], Path(d) / "in" / "table.json")


@FUZZ
@given(text=yaml_noise | st.text(max_size=40), raw=st.binary(max_size=20))
@example(text="!!python/object/apply:os.system ['true']", raw=b"")
@example(text="", raw=b"\xff: x")
def test_superpod_yaml_text_of_any_kind_is_handled(text, raw):
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in.yaml"
        src.write_bytes(text.encode("utf-8", "surrogateescape") + raw)
        (Path(d) / "in").mkdir()
        outcome(["superpod", "--input", str(src)], Path(d) / "in" / "table.json")
