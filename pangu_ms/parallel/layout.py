"""Rank layout: global rank <-> (pipeline stage, data-parallel index, model-parallel index).

Model-parallel is fastest, then data-parallel, then the pipeline stage (DESIGN.md): with
(pp, dp, mp) = (4, 2, 4) over 32 devices, rank = stage*8 + dp_index*4 + mp_index. Ranks that
share a stage and a data-parallel index form a model-parallel group (they hold slices of the
same layers and exchange activations); ranks that share a stage and a model-parallel index
form a data-parallel group (gradient all-reduce, optimizer-state sharding); ranks that share
the data-parallel and model-parallel index form a pipeline group (send/receive between stages).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RankCoords:
    """Where one rank sits in the (pp, dp, mp) mesh."""

    stage: int
    """pipeline stage."""
    dp: int
    """data-parallel index within the stage."""
    mp: int
    """model-parallel index within the data-parallel replica."""


@dataclass(frozen=True)
class RankLayout:
    """The device mesh (pp, dp, mp); `dp * mp * pp` ranks, model-parallel fastest."""

    dp: int = 1
    mp: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "mp", "pp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")

    @property
    def world_size(self) -> int:
        return self.dp * self.mp * self.pp

    @property
    def ranks_per_stage(self) -> int:
        return self.dp * self.mp

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside 0..{self.world_size - 1} "
                             f"(dp={self.dp} x mp={self.mp} x pp={self.pp} = {self.world_size} devices)")

    def coords(self, rank: int) -> RankCoords:
        """Global rank -> (stage, dp index, mp index)."""
        self._check_rank(rank)
        stage, rest = divmod(rank, self.ranks_per_stage)
        dp_index, mp_index = divmod(rest, self.mp)
        return RankCoords(stage=stage, dp=dp_index, mp=mp_index)

    def rank(self, stage: int, dp: int, mp: int) -> int:
        """(stage, dp index, mp index) -> global rank."""
        for name, v, n in (("stage", stage, self.pp), ("dp", dp, self.dp), ("mp", mp, self.mp)):
            if not 0 <= v < n:
                raise ValueError(f"{name} index {v} is outside 0..{n - 1}")
        return stage * self.ranks_per_stage + dp * self.mp + mp

    def mp_group(self, rank: int) -> list[int]:
        """Ranks holding the other model-parallel slices of `rank`'s layers."""
        c = self.coords(rank)
        return [self.rank(c.stage, c.dp, m) for m in range(self.mp)]

    def dp_group(self, rank: int) -> list[int]:
        """Ranks holding the same parameter slices as `rank` (gradient all-reduce group)."""
        c = self.coords(rank)
        return [self.rank(c.stage, d, c.mp) for d in range(self.dp)]

    def pp_group(self, rank: int) -> list[int]:
        """Ranks of the same (dp, mp) position on every stage (point-to-point chain)."""
        c = self.coords(rank)
        return [self.rank(s, c.dp, c.mp) for s in range(self.pp)]

    def stage_ranks(self, stage: int) -> list[int]:
        """All ranks of one pipeline stage."""
        return list(range(stage * self.ranks_per_stage, (stage + 1) * self.ranks_per_stage))

    def groups(self, rank: int) -> dict[str, list[int]]:
        """Every communication group `rank` belongs to, by name."""
        c = self.coords(rank)
        return {"mp": self.mp_group(rank), "dp": self.dp_group(rank), "pp": self.pp_group(rank),
                "stage": self.stage_ranks(c.stage)}
