"""PETS in one process: a probabilistic ensemble learned from all data so far, MPC over it, data aggregation.

Chua et al., NeurIPS 2018, "Deep Reinforcement Learning in a Handful of Trials using Probabilistic
Dynamics Models" (Algorithm 1), with the material's "simple fix" for the distribution mismatch (collect
data with the current planner, add it to the data set, refit):

1. before the first model: ``random_trials`` trials per condition of uniformly random efforts;
2. every iteration: fit the ensemble to every transition collected so far
   (:func:`mbpl_core.models.train_ensemble`, continuing from the previous weights or from scratch);
3. run ``trials_per_condition`` MPC trials per condition (:class:`mbpl_core.planning.mpc.MPCController`:
   CEM or random shooting with TS-∞ particles over the ensemble, the experiment's own cost);
4. aggregate those trials into the data set.

The planner can then be distilled into the deployable Gaussian MLP policy GPS uses
(:func:`mbpl_core.planning.distill.distill_planner`, DAgger-style). Same seed, same run: every random
draw comes from ``numpy.random.default_rng(config.seed)`` and generators derived from it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
import torch

from mbpl_core.config import ConfigError
from mbpl_core.containers import SampleBatch, StateLayout
from mbpl_core.costs import Cost
from mbpl_core.limits import bounded_limits, check_action_limits
from mbpl_core.local.lqr_flm import Policy
from mbpl_core.models import EnsembleConfig, ProbabilisticEnsemble, TrainReport, torch_threads, train_ensemble
from mbpl_core.models.ensemble import transitions_from_trajectories
from mbpl_core.planning.distill import DistillConfig
from mbpl_core.planning.mpc import MPCController
from mbpl_core.planning.optimizers import PlannerConfig


class PlanningEnvironment(Protocol):
    """What PETS needs of a task: the LQR-FLM Environment plus the effort limits (dU,) it clips to."""

    T: int
    dX: int
    dU: int
    num_conditions: int
    layout: StateLayout
    effort_limits: np.ndarray

    def sample(self, policy: Policy, condition: int, noise: np.ndarray | None) -> SampleBatch: ...


@dataclass(frozen=True)
class PETSConfig:
    """YAML section ``pets``.

    iterations: model-fit + MPC rounds; trials_per_condition: MPC trials per condition per iteration;
    random_trials: trials of uniformly random efforts per condition before the first fit; retrain:
    "continue" (warm start from the last weights, mbrl-lib's default) | "scratch" (fresh weights every
    iteration); seed: of every random draw; model, planner, distill: the parts' settings;
    action_limits: per-joint bound (N m, dU values, or one value for every joint) of the efforts PETS
    explores with — the random trials, the planner's search box and the distilled policy's scale — within
    the robot's effort limits (null: the effort limits themselves). A 7-DoF arm with 87 N m joints needs a
    few N m to reach: uniformly random 87 N m torques fling it far from anything a task visits;
    evaluate_held_out: at the end of ``mbpl train``, one MPC trial per held-out condition (how the planner
    generalises; the trials are not added to the data).
    """

    iterations: int = 10
    trials_per_condition: int = 1
    random_trials: int = 1
    retrain: Literal["continue", "scratch"] = "continue"
    seed: int = 0
    model: EnsembleConfig = field(default_factory=EnsembleConfig)
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    action_limits: tuple[float, ...] | None = None
    evaluate_held_out: bool = True

    def __post_init__(self) -> None:
        check_action_limits("pets", self)
        for name in ("iterations", "random_trials"):
            if getattr(self, name) < 0:
                raise ConfigError(f"pets.{name} must be >= 0, got {getattr(self, name)}")
        if self.trials_per_condition < 1:
            raise ConfigError(f"pets.trials_per_condition must be >= 1, got {self.trials_per_condition}")
        if self.retrain not in ("continue", "scratch"):
            raise ConfigError(f"pets.retrain must be 'continue' or 'scratch', got {self.retrain!r}")
        if self.random_trials == 0 and self.iterations > 0:
            raise ConfigError("pets.random_trials must be >= 1: the first model needs data")
        if self.planner.particles % self.model.elites:
            raise ConfigError(f"pets.planner.particles ({self.planner.particles}) must be a multiple of "
                              f"pets.model.elites ({self.model.elites}): TS-inf gives each elite member the "
                              "same number of particles")


def action_box(config: PETSConfig, effort_limits: np.ndarray) -> np.ndarray:
    """(dU,) the bound PETS explores and plans within: min(effort_limits, config.action_limits)."""
    return bounded_limits(config.action_limits, effort_limits, "pets.action_limits")


class UniformRandomPolicy:
    """u_t ~ U(−effort_limits, effort_limits), drawn from ``rng``: PETS's first data."""

    def __init__(self, effort_limits: np.ndarray, rng: np.random.Generator) -> None:
        self.effort_limits = np.asarray(effort_limits, dtype=np.float64)
        self.rng = rng

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """A fresh uniform draw (dU,); t, x and noise are not used."""
        return self.rng.uniform(-self.effort_limits, self.effort_limits)


class EliteModel:
    """The ensemble restricted to its elite members, as the planner's DynamicsModel (TS-∞ over elites)."""

    def __init__(self, ensemble: ProbabilisticEnsemble) -> None:
        self.ensemble = ensemble
        self.members = tuple(ensemble.elite_indices)
        self.num_members = len(self.members)
        # every member, in order: no gather of the weights on each step
        self._index = None if self.members == tuple(range(ensemble.num_members)) else list(self.members)

    def step(self, x: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None,
             sample: bool = True) -> torch.Tensor:
        """x_next (B, M, dX) from x (B, M, dX), u (B, M, dU); row block b propagates on elite b."""
        return self.ensemble.step(x, u, generator, sample, members=self._index)


@dataclass(frozen=True)
class PETSIterationReport:
    """One PETS iteration. Per condition: mean_cost (mean over its trials of Σ_t c(x_t, u_t)) and the
    final ee distance of its last trial. model: the ensemble's training report; env_steps: total real
    steps so far; planning_ms_p50/p99: planning latency per control step of this iteration's trials."""

    iteration: int
    mean_cost: tuple[float, ...]
    final_distance: tuple[float, ...]
    env_steps: int
    model: TrainReport
    holdout_nll: float
    planning_ms_p50: float
    planning_ms_p99: float
    model_s: float
    sampling_s: float


class PETS:
    """The PETS loop over every condition of ``env`` (see the module docstring).

    cost: the experiment's Cost (targets live in the state, so one cost serves every condition).
    Attributes: ``model`` (the ensemble), ``mpc`` (the controller over it), ``data`` (every trajectory,
    a SampleBatch per trial), ``reports``.
    """

    def __init__(self, env: PlanningEnvironment, cost: Cost, config: PETSConfig | None = None) -> None:
        self.env, self.cost = env, cost
        self.config = config if config is not None else PETSConfig()
        self.rng = np.random.default_rng(self.config.seed)
        self.model = ProbabilisticEnsemble(env.dX, env.dU, self.config.model, self.rng)
        planner = replace(self.config.planner, seed=int(self.rng.integers(2**62)))
        self.action_limits = action_box(self.config, env.effort_limits)
        self.mpc = MPCController(EliteModel(self.model), cost, self.action_limits, env.T, planner,
                                 device=self.model.device, dtype=_dtype_of(self.model))
        self.data: list[SampleBatch] = []
        self.reports: list[PETSIterationReport] = []
        self.env_steps = 0

    @property
    def iteration_count(self) -> int:
        """Iterations done."""
        return len(self.reports)

    def _collect(self, policy: Policy, condition: int) -> SampleBatch:
        batch = self.env.sample(policy, condition, None)
        self.data.append(batch)
        self.env_steps += batch.T
        return batch

    def collect_random(self) -> None:
        """``random_trials`` uniformly random trials per condition (once, before the first fit)."""
        policy = UniformRandomPolicy(self.action_limits, self.rng)
        for _ in range(self.config.random_trials):
            for m in range(self.env.num_conditions):
                self._collect(policy, m)

    def fit_model(self) -> TrainReport:
        """Fit the ensemble to every transition collected so far."""
        X, U, X_next = refit_inputs(self.model, self.data, self.config.retrain, self.rng)
        # One CPU thread: the same result whatever the machine's core count (torch's reductions split
        # differently over threads), and faster than two on small shared machines (bench/ensemble.py).
        threads = torch_threads(1) if self.model.device.type == "cpu" else contextlib.nullcontext()
        with threads:
            report = train_ensemble(self.model, X, U, X_next, self.config.model, self.rng)
        self.mpc.model = EliteModel(self.model)  # the elites may have changed
        return report

    def iteration(self) -> PETSIterationReport:
        """Fit the model to all data, run the MPC trials of every condition, aggregate them."""
        if not self.data:
            self.collect_random()
        start = time.perf_counter()
        report = self.fit_model()
        model_s = time.perf_counter() - start
        costs, distances, latencies = [], [], []
        start = time.perf_counter()
        for m in range(self.env.num_conditions):
            trials = []
            for _ in range(self.config.trials_per_condition):
                trials.append(self._collect(self.mpc, m))
                latencies.extend(self.mpc.planning_times)
            costs.append(float(np.mean([self._trajectory_cost(b) for b in trials])))
            distances.append(final_tip_distance(self.env.layout, trials[-1]))
        sampling_s = time.perf_counter() - start
        ms = 1e3 * np.asarray(latencies)
        result = PETSIterationReport(
            iteration=self.iteration_count, mean_cost=tuple(costs), final_distance=tuple(distances),
            env_steps=self.env_steps, model=report, holdout_nll=report.elite_holdout_nll,
            planning_ms_p50=float(np.percentile(ms, 50)), planning_ms_p99=float(np.percentile(ms, 99)),
            model_s=model_s, sampling_s=sampling_s)
        self.reports.append(result)
        return result

    def run(self, iterations: int | None = None) -> list[PETSIterationReport]:
        """config.iterations (or ``iterations``) iterations; returns their reports."""
        n = self.config.iterations if iterations is None else iterations
        return [self.iteration() for _ in range(n)]

    def _trajectory_cost(self, batch: SampleBatch) -> float:
        return float(trajectory_costs(self.cost, [batch])[0])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: config, data, model weights, rng and planner generator states."""
        return {"config": self.config, "data": list(self.data), "env_steps": self.env_steps,
                "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
                "rng": self.rng.bit_generator.state, "reports": list(self.reports)}


def refit_inputs(model: ProbabilisticEnsemble, data: Sequence[SampleBatch], retrain: str,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Before a refit on every trajectory so far: the transitions (X, U, X_next) of ``data``; with
    ``retrain == "scratch"`` the ensemble gets fresh weights first (drawn from ``rng``)."""
    X, U, X_next = transitions_from_trajectories(np.concatenate([b.X for b in data]),
                                                 np.concatenate([b.U for b in data]))
    if retrain == "scratch":
        fresh = ProbabilisticEnsemble(model.dX, model.dU, model.config, rng)
        model.load_state_dict(fresh.state_dict())
    return X, U, X_next


def final_tip_distance(layout: StateLayout, batch: SampleBatch) -> float:
    """Euclidean distance of the first ee point to its target at the last step of a trajectory (m)."""
    d = batch.X[0, -1, layout.ee_points].reshape(-1, 3)
    return float(np.linalg.norm(d[0]))


def _dtype_of(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def trajectory_costs(cost: Cost, batches: Sequence[SampleBatch]) -> np.ndarray:
    """Σ_t c(x_t, u_t) of each trajectory (one per batch, N = 1)."""
    out = []
    for b in batches:
        J = None if b.ee_jacobians is None else b.ee_jacobians[0]
        out.append(float(np.sum(cost.evaluate(b.X[0], b.U[0], J).l)))
    return np.array(out)
