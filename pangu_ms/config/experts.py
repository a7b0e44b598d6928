"""PanGu-Sigma's sparse layers (`experts:` section): which layers route, the domains and their
expert groups, the routing seed, capacity, and the expert optimizer's settings.

A job is the `pangu_sigma` family when its config has an `experts:` section (`JobConfig.family`);
the dense shape stays in `model:` (the PanGu-alpha config the Sigma model nests).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pangu_ms.config.loader import check_choices, require


@dataclass
class DomainConfig:
    """One domain and the size of its expert group in every sparse layer."""

    name: str = "default"
    """domain name; data sources name it (`data.sources[].domain`)."""
    experts: int = 1
    """experts of this domain in each sparse layer."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(bool(self.name) and self.name.strip() == self.name, "name", self.name,
                "must be a non-empty name without surrounding spaces")
        require(self.experts >= 1, "experts", self.experts, "must be >= 1")


@dataclass
class ExpertsConfig:
    """Random Routed Experts (Ren et al. 2023): two-level routing with no learned gate.

    A token's domain picks that domain's expert group; inside it a fixed random map, drawn once
    from `routing_seed` per layer and domain, sends each token id to one expert (top-1).
    """

    domains: list[DomainConfig] = field(default_factory=lambda: [DomainConfig()])
    """domains in id order (a batch carries these ids); the paper's split of its 640 experts
    across its domains is not public, so the shipped configs choose one and say so."""
    num_sparse_layers: int = 8
    """the top this many layers are sparse (counting the query layer as the top one)."""
    sparse_layers: list[int] = field(default_factory=list)
    """explicit sparse layer indices in [0, model.num_layers) (the query layer is the last);
    empty: the top `num_sparse_layers`."""
    routing_seed: int = 2023
    """seed of the token-id -> expert maps (drawn once; the tables are saved, never trained)."""
    capacity_factor: float | None = None
    """None: every expert has room for all T tokens of a batch (nothing drops); a number c: each
    expert holds ceil(c * T / experts) tokens, further tokens skip the FFN and are counted."""
    expert_eps: float = 1e-12
    """Adam epsilon of the expert weights (the dense weights use `optimizer.eps`); the paper's
    value is not public, only that it is much smaller than the dense one."""
    host_expert_state: bool = False
    """keep the expert weights' Adam moments in host memory and update only the experts that
    received tokens in a step (the paper's expert computation and storage separation)."""

    def __post_init__(self) -> None:
        check_choices(self)
        require(len(self.domains) >= 1, "domains", self.domains, "list at least one domain")
        names = [d.name for d in self.domains]
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, "domains", names, f"domain names must be unique; repeated: {', '.join(dup)}")
        require(self.num_sparse_layers >= 0, "num_sparse_layers", self.num_sparse_layers, "must be >= 0")
        require(len(set(self.sparse_layers)) == len(self.sparse_layers), "sparse_layers", self.sparse_layers,
                "lists a layer twice")
        require(all(i >= 0 for i in self.sparse_layers), "sparse_layers", self.sparse_layers,
                "layer indices must be >= 0")
        if self.capacity_factor is not None:
            require(self.capacity_factor > 0, "capacity_factor", self.capacity_factor, "must be > 0 (or null)")
        require(self.expert_eps > 0, "expert_eps", self.expert_eps, "must be > 0")

    @property
    def num_experts(self) -> int:
        """experts per sparse layer, over all domains."""
        return sum(d.experts for d in self.domains)

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    def domain_id(self, name: str) -> int:
        """The id of domain `name`; ValueError naming the known ones otherwise."""
        names = self.domain_names
        if name not in names:
            raise ValueError(f"domain {name!r} is not one of the config's domains ({', '.join(names)})")
        return names.index(name)

    def expert_offsets(self) -> list[int]:
        """First expert index of each domain's group (groups are contiguous, in domain order)."""
        out, n = [], 0
        for d in self.domains:
            out.append(n)
            n += d.experts
        return out

    def layer_indices(self, num_layers: int) -> list[int]:
        """The sparse layers of a `num_layers`-layer model, ascending; ValueError when out of range."""
        if self.sparse_layers:
            bad = [i for i in self.sparse_layers if i >= num_layers]
            if bad:
                raise ValueError(f"experts.sparse_layers={self.sparse_layers}: {bad} not below "
                                 f"model.num_layers={num_layers}")
            return sorted(self.sparse_layers)
        if self.num_sparse_layers > num_layers:
            raise ValueError(f"experts.num_sparse_layers={self.num_sparse_layers} exceeds "
                             f"model.num_layers={num_layers}")
        return list(range(num_layers - self.num_sparse_layers, num_layers))

    def capacity(self, tokens: int) -> int:
        """Slots per expert for a batch of `tokens` tokens."""
        if self.capacity_factor is None:
            return tokens
        return max(1, min(tokens, math.ceil(self.capacity_factor * tokens / self.num_experts)))
