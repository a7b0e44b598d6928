"""Pre-flight checks: each problem a launcher must catch before starting any process."""
from __future__ import annotations

from pathlib import Path

import pytest

from pangu_ms.errors import ConfigError, DataError
from pangu_ms.cli import main as cli_main
from pangu_ms.cluster.preflight import check_local_devices, preflight, warn_if_not_local
from pangu_ms.cluster.rank_table import RankTableError


def test_rank_table_plan_for_second_server(two_server_table, make_config):
    plan = preflight(config=str(make_config(dp=16)), overrides=["run.device=Ascend"],
                     rank_table=str(two_server_table), server_index=1)
    assert plan.rank_size == 16 and plan.server_id == "10.0.0.2"
    assert plan.local == [(8 + i, i) for i in range(8)]


def test_device_count_must_equal_dp_mp_pp(two_server_table, make_config):
    with pytest.raises(ConfigError, match=r"dp\*mp\*pp = 2\*1\*1 = 2 but the rank table .* has 16 rank\(s\): "
                                          r".*--set parallel.dp=16"):
        preflight(config=str(make_config(dp=2)), rank_table=str(two_server_table), server_index=0)


def test_parallel_validation_runs(two_server_table, make_config):
    # 16 ranks as dp=4 x mp=4 is the right count, but a global batch of 2 does not split over dp=4
    with pytest.raises(ConfigError, match="global_batch_size=2 is not divisible"):
        preflight(config=str(make_config(dp=4, batch=2)), overrides=["parallel.mp=4", "run.device=Ascend"],
                  rank_table=str(two_server_table), server_index=0)


def test_missing_data_and_table_and_bad_index(tmp_path, two_server_table, make_config):
    cfg = str(make_config(dp=16))
    with pytest.raises(DataError, match="prepare"):
        preflight(config=cfg, overrides=[f"data.output_dir={tmp_path / 'none'}"], rank_table=str(two_server_table),
                  server_index=0)
    with pytest.raises(RankTableError, match="rank table not found"):
        preflight(config=cfg, rank_table=str(tmp_path / "none.json"), server_index=0)
    with pytest.raises(RankTableError, match=r"server index 2 is out of range: the table lists 2 server\(s\), use 0..1"):
        preflight(config=cfg, rank_table=str(two_server_table), server_index=2)
    with pytest.raises(ConfigError, match="unknown key 'parallel.dpp'"):
        preflight(config=cfg, overrides=["parallel.dpp=2"], rank_table=str(two_server_table), server_index=0)


def test_msrun_mode_counts_workers(make_config):
    cfg = str(make_config(dp=2))
    assert preflight(config=cfg).rank_size == 2  # default: the config's dp*mp*pp
    plan = preflight(config=str(make_config("dp1.yaml", dp=1)), workers=4)  # dp-only config left at 1
    assert plan.rank_size == 4 and "runs as 4-way data parallel" in plan.checks[1]
    with pytest.raises(ConfigError, match="has 4 rank"):
        preflight(config=cfg, workers=4)
    with pytest.raises(ConfigError, match="--local-workers 3"):
        preflight(config=cfg, workers=2, local_workers=3)


def test_main_prints_the_plan_for_the_shell(two_server_table, make_config, capsys):
    argv = ["preflight", "--config", str(make_config(dp=16)), "--rank-table", str(two_server_table), "--server-index", "0",
            "--set", "run.device=Ascend"]
    assert cli_main(argv) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == ["RANK_SIZE=16", "SERVER_ID=10.0.0.1"] + [f"RANK {i} {i}" for i in range(8)]
    assert "pre-flight ok: data: train 32 rows in 2 shard(s), heldout 8 rows in 2 shard(s) of 17 ids" in out.err
    assert cli_main(argv[:-4]) == 2
    assert "error: pre-flight: --server-index is required with --rank-table" in capsys.readouterr().err


def test_local_device_nodes_on_an_ascend_host(tmp_path):
    assert "not checked" in check_local_devices([0, 1], dev_dir=str(tmp_path))
    for name in ("davinci_manager", "davinci0", "davinci1"):
        (tmp_path / name).touch()
    assert "exist" in check_local_devices([0, 1], dev_dir=str(tmp_path))
    with pytest.raises(RankTableError, match=r"davinci8 does not exist \(this machine has devices \[0, 1\]\)"):
        check_local_devices([8, 9], dev_dir=str(tmp_path))


def test_server_id_of_another_machine_is_a_warning(caplog):
    with caplog.at_level("WARNING"):
        warn_if_not_local("203.0.113.77", 3)
    assert "server index 3 is 203.0.113.77, which is not among this machine's addresses" in caplog.text


@pytest.fixture()
def data_job(job_files, make_config):
    """(config path, data dir) of the toy run with its small real shards."""
    return str(make_config(dp=1)), job_files["data"]


def _manifest(data):
    import json

    return json.loads((data / "manifest.json").read_text())


def _write_manifest(data, manifest):
    import json

    (data / "manifest.json").write_text(json.dumps(manifest))


def test_shard_header_row_counts_equal_mindspores(job_files, tmp_path):
    """The header reader's rows per file against MindSpore's own reader, for shards written by
    prepare's writer (one file per shard, odd sizes) and by a multi-file writer."""
    import mindspore.dataset as ds
    import numpy as np

    from pangu_ms.cluster.preflight import _shard_rows
    from pangu_ms.data.packing import write_shards

    rows = np.arange(37 * 9, dtype=np.int32).reshape(37, 9)
    files = write_shards(rows, tmp_path / "p", "train", 4)
    for f in files + sorted(str(p) for p in (job_files["data"] / "train").glob("train.mindrecord?")):
        want = ds.MindDataset([f], shuffle=False).get_dataset_size()
        assert _shard_rows(Path(f), 9 if "/p/" in f else 17, "fix") == want, f
    assert sum(_shard_rows(Path(f), 9, "fix") for f in files) == 37


def test_zero_byte_truncated_or_unreadable_shard_fails(data_job):
    cfg, data = data_job
    shard = data / "train" / "train.mindrecord1"
    good = shard.read_bytes()
    for broken, msg in ((b"", r"train\.mindrecord1 is empty \(0 bytes\)"),
                        (good[:100], "not a readable MindRecord shard"),
                        (b"\xff" * 4096, "not a readable MindRecord shard")):
        shard.write_bytes(broken)
        with pytest.raises(DataError, match=msg):
            preflight(config=cfg)
    shard.write_bytes(good)
    assert "train 32 rows" in preflight(config=cfg).checks[-1]
    shard.with_name("train.mindrecord1.db").unlink()
    with pytest.raises(DataError, match=r"mindrecord1\.db: the shard's index file is missing"):
        preflight(config=cfg)


def test_shards_must_match_the_manifest(data_job, make_config):
    cfg, data = data_job
    manifest = _manifest(data)
    _write_manifest(data, {**manifest, "splits": {**manifest["splits"], "train": {**manifest["splits"]["train"],
                                                                                  "rows": 33}}})
    with pytest.raises(DataError, match=r"lists 33 train rows but the shards hold 32 \(train\.mindrecord0: 16, "
                                        r"train\.mindrecord1: 16\)"):
        preflight(config=cfg)
    listed = manifest["splits"]["train"]["files"]
    _write_manifest(data, {**manifest, "splits": {**manifest["splits"], "train": {"files": listed[:1], "rows": 16}}})
    with pytest.raises(DataError, match=r"train\.mindrecord1 is not in manifest\.json"):
        preflight(config=cfg)
    _write_manifest(data, {**manifest, "splits": {**manifest["splits"],
                                                  "train": {"files": listed + ["train/train.mindrecord2"], "rows": 32}}})
    with pytest.raises(DataError, match=r"train\.mindrecord2: listed in the manifest but missing"):
        preflight(config=cfg)
    _write_manifest(data, {"toy": True})
    with pytest.raises(DataError, match="lists no train split"):
        preflight(config=cfg)
    (data / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: unreadable"):
        preflight(config=cfg)
    _write_manifest(data, manifest)
    with pytest.raises(DataError, match=r"holds rows of \[17\] ids but model\.seq_length=32 needs \[33\]"):
        preflight(config=cfg, overrides=["model.seq_length=32"])
    assert preflight(config=cfg, data=False).checks[-1].startswith("parallel layout")  # --no-data-check
