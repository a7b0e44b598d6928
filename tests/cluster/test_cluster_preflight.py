"""Pre-flight checks: each problem a launcher must catch before starting any process."""
from __future__ import annotations

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
    assert "pre-flight ok: data: 1 training shard(s)" in out.err
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
