"""Derivative-free optimizers over action sequences: random shooting and the cross-entropy method.

Both minimise an objective over U: (N, H, dU) → costs (N,) inside the box lower ≤ u ≤ upper (the
effort limits), starting from an initial sequence (H, dU) — the MPC loop's warm start — which is always
one of the evaluated candidates, so a plan is never worse (under the objective) than its warm start.

CEM (Rubinstein 1999; as PETS, Chua et al. 2018, and mbrl-lib use it): sample N sequences from
N(mean, std²) clipped to the box, keep the K cheapest (elites), move mean/std towards the elites'
mean/std with momentum α (mean ← α mean + (1−α) elite_mean), repeat. The candidate evaluated first
in each iteration is the current mean itself. The result is the cheapest candidate evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from mbpl_core.config import ConfigError

Objective = Callable[[torch.Tensor], torch.Tensor]
"""U: (N, H, dU) → cost per candidate (N,); +inf marks an invalid candidate."""


@dataclass(frozen=True)
class PlannerConfig:
    """YAML ``pets.planner``: the MPC planner over the learned model.

    method: "cem" or "random" (random shooting: one population drawn uniformly in the effort box);
    horizon H (steps); population N; elites K (CEM); iterations (CEM); alpha: CEM momentum in [0, 1);
    particles P per candidate (a multiple of the ensemble size, TS-∞); init_std: CEM's initial std as a
    fraction of the effort range (upper − lower; 0.25 = mbrl-lib's var = range²/16);
    terminal_state_cost: also cost the state reached after the window (see expected_costs);
    sample_model: particles draw from the members' predictive distributions (PETS) rather than use
    their means; seed of the planner's torch.Generator; torch_threads: torch's intra-op threads while
    planning (restored afterwards; None leaves them) — the planner's small batched ops run ~10x faster
    on one thread than on two contended cores.
    """

    method: Literal["cem", "random"] = "cem"
    horizon: int = 25
    population: int = 400
    elites: int = 40
    iterations: int = 5
    alpha: float = 0.1
    particles: int = 20
    init_std: float = 0.25
    terminal_state_cost: bool = True
    sample_model: bool = True
    seed: int = 0
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        if self.method not in ("cem", "random"):
            raise ConfigError(f"pets.planner.method: {self.method!r} is not one of ['cem', 'random']")
        for name in ("horizon", "population", "iterations", "particles"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pets.planner.{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.elites <= self.population:
            raise ConfigError(f"pets.planner.elites must be in [1, population={self.population}], "
                              f"got {self.elites}")
        if not 0.0 <= self.alpha < 1.0:
            raise ConfigError(f"pets.planner.alpha must be in [0, 1), got {self.alpha}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"pets.planner.torch_threads must be >= 1 or null, got {self.torch_threads}")
        if not self.init_std > 0.0:
            raise ConfigError(f"pets.planner.init_std must be > 0, got {self.init_std}")


@dataclass(frozen=True, eq=False)
class OptimizerResult:
    """actions: (H, dU) the cheapest sequence evaluated; cost: its objective value."""

    actions: torch.Tensor
    cost: float


class Optimizer(Protocol):
    """Minimises an objective over action sequences in a box, from an initial sequence (H, dU)."""

    def optimize(self, objective: Objective, initial: torch.Tensor,
                 generator: torch.Generator) -> OptimizerResult: ...


def _finite_costs(costs: torch.Tensor, n: int) -> torch.Tensor:
    if costs.shape != (n,):
        raise ValueError(f"objective returned shape {tuple(costs.shape)}, expected ({n},)")
    return torch.where(torch.isfinite(costs), costs, torch.full_like(costs, float("inf")))


class _BoxOptimizer:
    """Shared parts: the box lower/upper: (dU,) and the running best candidate."""

    def __init__(self, config: PlannerConfig, lower: torch.Tensor, upper: torch.Tensor) -> None:
        if lower.shape != upper.shape or lower.ndim != 1 or not bool(torch.all(lower < upper)):
            raise ValueError("lower and upper must be (dU,) tensors with lower < upper")
        self.config, self.lower, self.upper = config, lower, upper

    def _clip(self, U: torch.Tensor) -> torch.Tensor:
        return torch.clamp(U, self.lower, self.upper)

    @staticmethod
    def _better(best: OptimizerResult | None, U: torch.Tensor, costs: torch.Tensor) -> OptimizerResult:
        i = int(torch.argmin(costs))
        c = float(costs[i])
        if best is not None and not c < best.cost:
            return best
        return OptimizerResult(U[i].clone(), c)


class RandomShootingOptimizer(_BoxOptimizer):
    """N sequences uniform in the box (candidate 0 = the initial sequence); the cheapest wins."""

    def optimize(self, objective: Objective, initial: torch.Tensor,
                 generator: torch.Generator) -> OptimizerResult:
        """initial: (H, dU) → the cheapest of the population."""
        N = self.config.population
        H, dU = initial.shape
        unit = torch.rand((N, H, dU), generator=generator, dtype=initial.dtype, device=initial.device)
        U = self.lower + (self.upper - self.lower) * unit
        U[0] = self._clip(initial)
        return self._better(None, U, _finite_costs(objective(U), N))


class CEMOptimizer(_BoxOptimizer):
    """Cross-entropy method with momentum α over clipped Gaussian samples (see the module docstring)."""

    def optimize(self, objective: Objective, initial: torch.Tensor,
                 generator: torch.Generator) -> OptimizerResult:
        """initial: (H, dU) is the first mean → the cheapest candidate of all iterations."""
        cfg = self.config
        mean = self._clip(initial)
        std = (cfg.init_std * (self.upper - self.lower)).expand_as(mean).clone()
        best: OptimizerResult | None = None
        for _ in range(cfg.iterations):
            noise = torch.randn((cfg.population, *mean.shape), generator=generator, dtype=mean.dtype,
                                device=mean.device)
            U = self._clip(mean + std * noise)
            U[0] = mean
            costs = _finite_costs(objective(U), cfg.population)
            best = self._better(best, U, costs)
            elites = U[torch.topk(costs, cfg.elites, largest=False, sorted=False).indices]
            mean = self._clip(cfg.alpha * mean + (1.0 - cfg.alpha) * elites.mean(dim=0))
            std = cfg.alpha * std + (1.0 - cfg.alpha) * elites.std(dim=0, correction=0)
        assert best is not None
        return best


def make_optimizer(config: PlannerConfig, lower: torch.Tensor, upper: torch.Tensor) -> Optimizer:
    """The optimizer named by config.method over the box lower ≤ u ≤ upper: (dU,)."""
    if config.method == "cem":
        return CEMOptimizer(config, lower, upper)
    return RandomShootingOptimizer(config, lower, upper)
