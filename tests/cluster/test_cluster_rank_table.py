"""Rank tables from fixture inputs: what HCCL reads, and the errors users hit on real clusters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pangu_ms.cli import main
from pangu_ms.cluster import sources
from pangu_ms.cluster.rank_table import RankTableError, load_table
from pangu_ms.cluster.superpod import superpod_table

FIX = Path(__file__).parent / "fixtures"
CONF0 = FIX / "hccn_8dev.conf"
CONF1 = FIX / "hccn_server1.conf"
CONF0_IPS = ["192.168.100.101", "192.168.101.101", "192.168.102.101", "192.168.103.101",
             "192.168.100.100", "192.168.101.100", "192.168.102.100", "192.168.103.100"]


def cli(*argv: str) -> int:
    return main(["rank-table", *argv])


def build(tmp_path: Path, name: str, *argv: str) -> dict:
    out = tmp_path / name
    assert cli("build", *argv, "--out", str(out)) == 0
    return json.loads(out.read_text())


def test_single_server_from_hccn_conf_is_hccl_1_0(tmp_path):
    doc = build(tmp_path, "s0.json", "--hccn-conf", str(CONF0), "--devices", "0-7", "--server-id", "10.0.0.1")
    assert doc == {
        "version": "1.0", "server_count": "1",
        "server_list": [{"server_id": "10.0.0.1", "host_nic_ip": "reserve",
                         "device": [{"device_id": str(i), "device_ip": CONF0_IPS[i], "rank_id": str(i)}
                                    for i in range(8)]}],
        "status": "completed"}


def test_sixteen_device_server_from_marked_hccn_tool_output(tmp_path):
    doc = build(tmp_path, "s16.json", "--hccn-tool-output", str(FIX / "hccn_tool_16dev_marked.txt"),
                "--devices", "0-15", "--server-id", "10.0.0.3")
    devs = doc["server_list"][0]["device"]
    assert [d["device_id"] for d in devs] == [str(i) for i in range(16)]
    assert [d["rank_id"] for d in devs] == [str(i) for i in range(16)]
    assert devs[9]["device_ip"] == "10.20.1.19"


def test_unmarked_hccn_tool_output_follows_device_order(tmp_path):
    doc = build(tmp_path, "s8.json", "--hccn-tool-output", str(FIX / "hccn_tool_8dev_unmarked.txt"),
                "--devices", "8-15", "--server-id", "10.0.0.4")
    devs = doc["server_list"][0]["device"]
    assert [(d["device_id"], d["device_ip"], d["rank_id"]) for d in devs][:2] == [
        ("8", "10.30.0.8", "0"), ("9", "10.30.0.9", "1")]


def test_explicit_ips_and_device_list(tmp_path):
    doc = build(tmp_path, "s.json", "--ips", "10.1.0.1,10.1.0.2", "--devices", "4,6", "--server-id", "10.0.0.9")
    assert [(d["device_id"], d["device_ip"]) for d in doc["server_list"][0]["device"]] == [
        ("4", "10.1.0.1"), ("6", "10.1.0.2")]


@pytest.mark.parametrize("text,ids", [("0-7", list(range(8))), ("8-15", list(range(8, 16))),
                                      ("0,1,2,3", [0, 1, 2, 3]), ("0-3,6,7", [0, 1, 2, 3, 6, 7])])
def test_device_ranges(text, ids):
    assert sources.parse_devices(text) == ids


@pytest.mark.parametrize("text,msg", [("7-0", "empty"), ("0,0", "more than once"), ("16", "out of range"),
                                      ("a", "not a device id")])
def test_bad_device_ranges(text, msg):
    with pytest.raises(RankTableError, match=msg):
        sources.parse_devices(text)


def test_two_servers_merged_in_given_order(tmp_path):
    build(tmp_path, "a.json", "--hccn-conf", str(CONF0), "--server-id", "10.0.0.1")
    build(tmp_path, "b.json", "--hccn-conf", str(CONF1), "--server-id", "10.0.0.2")
    out = tmp_path / "merged.json"
    assert cli("merge", str(tmp_path / "b.json"), str(tmp_path / "a.json"), "--out", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["server_count"] == "2"
    assert [s["server_id"] for s in doc["server_list"]] == ["10.0.0.2", "10.0.0.1"]
    ranks = [[d["rank_id"] for d in s["device"]] for s in doc["server_list"]]
    assert ranks == [[str(i) for i in range(8)], [str(i) for i in range(8, 16)]]
    table = load_table(out)
    assert [(d.rank_id, d.device_id) for d in table.server_ranks(1)][:2] == [(8, 0), (9, 1)]


def test_merge_refuses_unclear_order_and_duplicates(tmp_path, capsys):
    build(tmp_path, "server2.json", "--hccn-conf", str(CONF0), "--server-id", "10.0.0.1")
    build(tmp_path, "server10.json", "--hccn-conf", str(CONF1), "--server-id", "10.0.0.2")
    out = str(tmp_path / "m.json")
    alphabetical = [str(tmp_path / "server10.json"), str(tmp_path / "server2.json")]  # what a shell glob gives
    assert cli("merge", *alphabetical, "--out", out) == 2
    assert "server10.json before" in capsys.readouterr().err
    assert cli("merge", *alphabetical, "--as-given", "--out", out) == 0
    assert cli("merge", str(tmp_path), "--out", out) == 2
    assert "is a directory" in capsys.readouterr().err
    assert cli("merge", str(tmp_path / "server*.json"), "--out", out) == 2
    assert "wildcard" in capsys.readouterr().err
    assert cli("merge", alphabetical[1], alphabetical[1], "--out", out) == 2
    assert "appears in both" in capsys.readouterr().err


@pytest.mark.parametrize("conf,devices,msg", [
    ("address_0=192.168.1.1\naddress_1=-.-.-.-\n", "0-1", "server 10.0.0.1 device 1 device_ip: '-.-.-.-'"),
    ("address_0=192.168.1.1\naddress_1=192.168.1\n", "0-1", "device 1 device_ip: '192.168.1' is not a valid"),
    ("address_0=192.168.1.1\naddress_1=192.168.1.1\n", "0-1", "device 1: device_ip 192.168.1.1 is also used by "
                                                              "server 10.0.0.1 device 0"),
    ("address_0=127.0.0.1\n", "0", "device 0 device_ip: 127.0.0.1 is a loopback"),
    ("address_0=192.168.1.1\n", "0-1", "no address for device 1"),
])
def test_bad_device_ips_name_server_device_and_value(tmp_path, capsys, conf, devices, msg):
    path = tmp_path / "hccn.conf"
    path.write_text(conf)
    assert cli("build", "--hccn-conf", str(path), "--devices", devices, "--server-id", "10.0.0.1",
               "--out", str(tmp_path / "x.json")) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_missing_files(tmp_path, capsys):
    out = str(tmp_path / "x.json")
    assert cli("build", "--hccn-conf", str(tmp_path / "nope.conf"), "--server-id", "10.0.0.1", "--out", out) == 2
    assert "hccn.conf not found" in capsys.readouterr().err
    assert cli("build", "--hccn-tool-output", str(tmp_path / "nope.txt"), "--server-id", "10.0.0.1", "--out", out) == 2
    assert "not found" in capsys.readouterr().err
    assert cli("check", str(tmp_path / "nope.json")) == 2
    assert "rank table not found" in capsys.readouterr().err
    with pytest.raises(RankTableError, match="hccn_tool not found"):
        sources.ips_from_hccn_tool([0], tool="surely_not_hccn_tool")


def test_loopback_server_id_is_refused(tmp_path, capsys):
    assert cli("build", "--hccn-conf", str(CONF0), "--server-id", "127.0.1.1", "--out", str(tmp_path / "x.json")) == 2
    assert "--server-id 127.0.1.1 is a loopback address" in capsys.readouterr().err
    with pytest.raises(RankTableError, match="non-loopback"):
        sources.detect_server_id(["127.0.1.1", "127.0.0.1"])
    assert sources.detect_server_id(["127.0.1.1", "10.1.2.3"]) == "10.1.2.3"


def test_check_and_atomic_rewrite(tmp_path, capsys):
    out = tmp_path / "t.json"
    build(tmp_path, "t.json", "--hccn-conf", str(CONF0), "--server-id", "10.0.0.1")
    build(tmp_path, "t.json", "--hccn-conf", str(CONF1), "--server-id", "10.0.0.2")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]  # no temporary file left behind
    capsys.readouterr()
    assert cli("check", str(out), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rank_size"] == 8 and info["servers"][0]["server_id"] == "10.0.0.2"
    assert cli("check", str(out), "--devices-per-server", "16") == 2


def test_hand_edited_tables_are_validated(tmp_path):
    build(tmp_path, "t.json", "--hccn-conf", str(CONF0), "--server-id", "10.0.0.1")
    doc = json.loads((tmp_path / "t.json").read_text())
    doc["server_list"][0]["device"][3]["rank_id"] = "0"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(RankTableError, match=r"repeated: \[0\]"):
        load_table(tmp_path / "bad.json")
    doc["server_list"][0]["device"][3]["rank_id"] = "3"
    doc["server_count"] = "2"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(RankTableError, match="server_count is 2 but server_list has 1"):
        load_table(tmp_path / "bad.json")


# --------------------------------------------------------------------------- A3 SuperPoD (version 1.2)


def test_superpod_table_is_hccl_1_2(tmp_path):
    out = tmp_path / "sp.json"
    assert cli("superpod", "--input", str(FIX / "superpod_2x2.yaml"), "--out", str(out)) == 0
    doc = json.loads(out.read_text())
    assert doc["version"] == "1.2" and doc["server_count"] == "4" and doc["status"] == "completed"
    assert doc["super_pod_list"] == [
        {"super_pod_id": "0", "server_list": [{"server_id": "node_0"}, {"server_id": "node_1"}]},
        {"super_pod_id": "1", "server_list": [{"server_id": "node_2"}, {"server_id": "node_3"}]}]
    node1 = doc["server_list"][1]
    assert node1["host_ip"] == "172.16.0.101" and "host_nic_ip" not in node1
    assert node1["device"][0] == {"device_id": "0", "device_ip": "192.168.1.10", "super_device_id": "4",
                                  "rank_id": "4"}
    assert [d["rank_id"] for s in doc["server_list"] for d in s["device"]] == [str(i) for i in range(16)]
    assert load_table(out).rank_size == 16  # what run_distributed.sh reads back


def _pod_doc() -> dict:
    import yaml
    return yaml.safe_load((FIX / "superpod_2x2.yaml").read_text())


def test_superpod_needs_both_dies_of_each_npu():
    doc = _pod_doc()
    del doc["super_pods"][0]["servers"][0]["devices"][3]
    with pytest.raises(RankTableError, match="server node_0: NPU 1 has dies 2 and 3 but only device 2"):
        superpod_table(doc)


def test_superpod_validation_errors():
    doc = _pod_doc()
    doc["super_pods"][0]["servers"][1]["devices"][0]["super_device_id"] = 1
    with pytest.raises(RankTableError, match="super pod 0: super_device_id 1 is used by both server node_0 "
                                             "device 1 and server node_1 device 0"):
        superpod_table(doc)
    doc = _pod_doc()
    doc["super_pods"][1]["super_pod_id"] = "0"
    with pytest.raises(RankTableError, match="super pod 0 is listed twice"):
        superpod_table(doc)
    doc = _pod_doc()
    doc["super_pods"][1]["servers"][0]["server_id"] = "node_0"
    with pytest.raises(RankTableError, match="server node_0 is listed twice"):
        superpod_table(doc)
    doc = _pod_doc()
    doc["super_pods"][0]["servers"][0]["devices"][0]["deviceip"] = "1.2.3.4"
    with pytest.raises(RankTableError, match="unknown key"):
        superpod_table(doc)
    doc = _pod_doc()
    doc["devices_per_server"] = 16
    with pytest.raises(RankTableError, match="server node_0: 4 devices, expected 16"):
        superpod_table(doc)


def test_superpod_tables_merge_with_contiguous_pods(tmp_path):
    sp = tmp_path / "sp.json"
    assert cli("superpod", "--input", str(FIX / "superpod_2x2.yaml"), "--out", str(sp)) == 0
    doc = json.loads(sp.read_text())
    # split into one file per super pod, then merge back in the other order
    for k, pod in enumerate(doc["super_pod_list"]):
        names = {s["server_id"] for s in pod["server_list"]}
        part = dict(doc, server_list=[s for s in doc["server_list"] if s["server_id"] in names],
                    super_pod_list=[pod], server_count="2")
        for r, dev in enumerate(d for srv in part["server_list"] for d in srv["device"]):
            dev["rank_id"] = str(r)  # a stand-alone table numbers its ranks from 0
        (tmp_path / f"pod{k}.json").write_text(json.dumps(part))
    merged = tmp_path / "m.json"
    assert cli("merge", str(tmp_path / "pod1.json"), str(tmp_path / "pod0.json"), "--out", str(merged)) == 0
    table = load_table(merged)
    assert [s.server_id for s in table.servers] == ["node_2", "node_3", "node_0", "node_1"]
    assert [d.rank_id for d in table.server_ranks(2)] == [8, 9, 10, 11]
    assert json.loads(merged.read_text())["super_pod_list"][0]["super_pod_id"] == "1"


def test_optional_hccl_fields_are_checked_and_kept(tmp_path):
    doc = _pod_doc()
    dev = doc["super_pods"][0]["servers"][0]["devices"][0]
    dev.update(device_port=16666, backup_device_ip="192.168.1.7", backup_device_port=16667, host_port=16665)
    out = tmp_path / "sp.json"
    from pangu_ms.cluster.rank_table import write_table
    write_table(superpod_table(doc), out)
    first = json.loads(out.read_text())["server_list"][0]["device"][0]
    assert first == {"device_id": "0", "device_ip": "192.168.1.6", "super_device_id": "0",
                     "backup_device_ip": "192.168.1.7", "backup_device_port": "16667", "device_port": "16666",
                     "host_port": "16665", "rank_id": "0"}
    dev["device_port"] = 70000
    with pytest.raises(RankTableError, match="server node_0 device 0: device_port '70000' is not a port number"):
        superpod_table(doc)
    dev["device_port"], dev["backup_device_ip"] = 16666, "-.-.-.-"
    with pytest.raises(RankTableError, match="device 0 backup_device_ip: '-.-.-.-'"):
        superpod_table(doc)


def test_merge_keeps_fields_it_does_not_manage(tmp_path):
    build(tmp_path, "a.json", "--hccn-conf", str(CONF0), "--server-id", "10.0.0.1")
    doc = json.loads((tmp_path / "a.json").read_text())
    doc["server_list"][0]["container_ip"] = "172.17.0.2"  # e.g. written by a cluster scheduler
    (tmp_path / "a.json").write_text(json.dumps(doc))
    build(tmp_path, "b.json", "--hccn-conf", str(CONF1), "--server-id", "10.0.0.2")
    out = tmp_path / "m.json"
    assert cli("merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)) == 0
    merged = json.loads(out.read_text())["server_list"]
    assert merged[0]["container_ip"] == "172.17.0.2" and "container_ip" not in merged[1]


def test_running_hccn_tool(tmp_path):
    tool = tmp_path / "hccn_tool"
    tool.write_text('#!/usr/bin/env bash\n[ "$2" = 3 ] && { echo "device 3 not found" >&2; exit 1; }\n'
                    'echo "ipaddr:192.168.7.$2"; echo "netmask:255.255.255.0"\n')
    tool.chmod(0o755)
    assert sources.ips_from_hccn_tool([0, 1], tool=str(tool)) == {0: "192.168.7.0", 1: "192.168.7.1"}
    with pytest.raises(RankTableError, match="-i 3 -ip -g` failed \\(exit 1\\): device 3 not found"):
        sources.ips_from_hccn_tool([2, 3], tool=str(tool))
