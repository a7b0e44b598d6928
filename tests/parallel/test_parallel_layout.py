"""Rank layout: model-parallel fastest, then data-parallel, then pipeline stage (DESIGN.md)."""
from __future__ import annotations

import pytest

from pangu_ms.parallel.layout import RankCoords, RankLayout


def test_design_example_rank_formula():
    lay = RankLayout(dp=2, mp=4, pp=4)  # 32 devices: rank = stage*8 + dp*4 + mp
    assert lay.world_size == 32
    assert lay.coords(0) == RankCoords(0, 0, 0)
    assert lay.coords(5) == RankCoords(stage=0, dp=1, mp=1)
    assert lay.coords(13) == RankCoords(stage=1, dp=1, mp=1)
    assert lay.coords(31) == RankCoords(stage=3, dp=1, mp=3)
    assert lay.rank(stage=2, dp=1, mp=3) == 2 * 8 + 1 * 4 + 3


@pytest.mark.parametrize("dp,mp,pp", [(1, 1, 1), (2, 4, 4), (16, 8, 16), (3, 1, 2)])
def test_round_trip_covers_every_rank_once(dp, mp, pp):
    lay = RankLayout(dp=dp, mp=mp, pp=pp)
    coords = [lay.coords(r) for r in range(lay.world_size)]
    assert len(set(coords)) == lay.world_size
    assert all(lay.rank(c.stage, c.dp, c.mp) == r for r, c in enumerate(coords))


def test_groups_partition_the_mesh():
    lay = RankLayout(dp=2, mp=4, pp=4)
    g = lay.groups(13)  # stage 1, dp 1, mp 1
    assert g["mp"] == [12, 13, 14, 15]  # same stage and replica, consecutive ranks
    assert g["dp"] == [9, 13]  # same stage and mp slice
    assert g["pp"] == [5, 13, 21, 29]  # same (dp, mp) on every stage
    assert g["stage"] == list(range(8, 16))
    for kind, size in (("mp", 4), ("dp", 2), ("pp", 4)):
        groups = {tuple(lay.groups(r)[kind]) for r in range(32)}
        assert len(groups) == 32 // size and all(len(x) == size for x in groups)
        assert sorted(r for x in groups for r in x) == list(range(32))


def test_out_of_range_is_a_clear_error():
    lay = RankLayout(dp=2, mp=2, pp=1)
    with pytest.raises(ValueError, match=r"rank 4 is outside 0..3"):
        lay.coords(4)
    with pytest.raises(ValueError, match="mp index 2"):
        lay.rank(0, 0, 2)
