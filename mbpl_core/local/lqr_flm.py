"""LQR-FLM in one process: sample, fit dynamics, model the cost, take the KL-constrained LQR step.

Levine & Abbeel (NIPS 2014), "Learning Neural Network Policies with Guided Policy Search under Unknown
Dynamics", Sec. 3: for every condition, per iteration,

1. run the current LG controller p(u_t | x_t) = N(K_t x_t + k_t, Σ_t) N times with pre-drawn noise;
2. fit p(x_{t+1} | x_t, u_t) by BLR with the GMM prior (:class:`mbpl_core.local.dynamics.DynamicsFitter`);
3. expand the cost to second order around the samples (:func:`mbpl_core.costs.quadratic_cost_model`);
4. minimise E[cost] s.t. KL(p_new(τ) ‖ p_old(τ)) ≤ ε = kl_step·step_mult·T (Eq. 2–3, dual search on η),
   adapting step_mult from predicted vs. actual improvement
   (:class:`mbpl_core.local.traj_opt.ConditionOptimizer`).

The ROS graph runs the same steps in separate nodes; this class is how the algorithm is tested,
benchmarked and debugged in one process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mbpl_core.config import ConfigError
from mbpl_core.containers import (
    LinearDynamics,
    LinearGaussianController,
    SampleBatch,
    ShapeError,
    StateLayout,
)
from mbpl_core.costs import Cost, QuadraticCost, quadratic_cost_model
from mbpl_core.local.dynamics import DynamicsFitConfig, DynamicsFitter
from mbpl_core.local.init import InitConfig, initial_controller
from mbpl_core.local.step_check import StepCheckConfig, StepCheckResult, checked_update
from mbpl_core.local.traj_opt import ConditionOptimizer, KLStepConfig, UpdateInfo
from mbpl_core.noise import NoiseConfig, generate_noise


@runtime_checkable
class Policy(Protocol):
    """Anything that maps (t, x: (dX,), noise: (dU,) | None) to an action u: (dU,)."""

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray: ...


@runtime_checkable
class Environment(Protocol):
    """A task with ``num_conditions`` initial conditions, sampled one trajectory at a time.

    T: horizon; dX, dU: state and action sizes (dX = layout.dX); dt: control period in seconds (used by
    the initial controller); ``x0(condition)`` -> (dX,) the nominal initial state of a condition;
    ``sample(policy, condition, noise)`` runs the policy from that condition with noise: (T, dU) passed to
    ``policy.act(t, x_t, noise[t])`` (None = noiseless) and returns a SampleBatch with N = 1.
    """

    T: int
    dX: int
    dU: int
    dt: float
    num_conditions: int
    layout: StateLayout

    def x0(self, condition: int) -> np.ndarray: ...

    def sample(self, policy: Policy, condition: int, noise: np.ndarray | None) -> SampleBatch: ...


@dataclass(frozen=True)
class AlgorithmConfig:
    """YAML section ``algorithm``: iterations, samples per condition, seed and the parts' settings.

    step_check: validate every C-step with a noiseless trial before taking it
    (:mod:`mbpl_core.local.step_check`; off by default). Used by :class:`mbpl_core.guided.mdgps.MDGPS`.
    """

    iterations: int = 10
    samples_per_condition: int = 5
    seed: int = 0
    kl: KLStepConfig = field(default_factory=KLStepConfig)
    dynamics: DynamicsFitConfig = field(default_factory=DynamicsFitConfig)
    init: InitConfig = field(default_factory=InitConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    step_check: StepCheckConfig = field(default_factory=StepCheckConfig)

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ConfigError(f"algorithm.iterations must be >= 0, got {self.iterations}")
        if self.samples_per_condition < 1:
            raise ConfigError(
                f"algorithm.samples_per_condition must be >= 1, got {self.samples_per_condition}"
            )


@dataclass(frozen=True)
class IterationReport:
    """What one LQR-FLM iteration did, one entry per condition in every tuple.

    mean_cost: mean over the samples of Σ_t c(x_t, u_t) of the controllers that were sampled (before the
    update); step_mult, eta, kl, eta_iterations: of the KL step; *_s: wall-clock seconds summed over the
    conditions for sampling, dynamics fitting, the cost model and the LQR step (η search); check_trials:
    the noiseless trials algorithm.step_check ran this iteration (T steps each on the system, beside the
    samples_per_condition · num_conditions sampled trials).
    """

    iteration: int
    mean_cost: tuple[float, ...]
    step_mult: tuple[float, ...]
    eta: tuple[float, ...]
    kl: tuple[float, ...]
    eta_iterations: tuple[int, ...]
    sampling_s: float
    dynamics_s: float
    cost_s: float
    lqr_s: float
    check_trials: int = 0


class LQRFLM:
    """The LQR-FLM loop over all conditions of ``env`` (see the module docstring).

    cost: one Cost for every condition, or a sequence with one per condition. rng: source of all
    exploration noise (default: ``numpy.random.default_rng(config.seed)``); the same seed gives the same
    run bit for bit. initial_controllers: one per condition; default from
    :func:`mbpl_core.local.init.initial_controller` at ``env.x0(condition)``.
    Checkpoint with :meth:`state_dict` / :meth:`from_state` (the environment is not part of the state).
    """

    def __init__(
        self,
        env: Environment,
        cost: Cost | Sequence[Cost],
        config: AlgorithmConfig | None = None,
        rng: np.random.Generator | None = None,
        initial_controllers: Sequence[LinearGaussianController] | None = None,
    ) -> None:
        self.env = env
        self.config = AlgorithmConfig() if config is None else config
        M = int(env.num_conditions)
        self.costs = _per_condition_costs(cost, M)
        self.rng = np.random.default_rng(self.config.seed) if rng is None else rng
        if initial_controllers is None:
            initial_controllers = [
                initial_controller(self.config.init, env.layout, env.dU, env.T, env.dt, np.asarray(env.x0(m)))
                for m in range(M)
            ]
        _check_controllers(initial_controllers, M, env)
        self.optimizers = [ConditionOptimizer(c, self.config.kl) for c in initial_controllers]
        self.fitters = [DynamicsFitter(self.config.dynamics) for _ in range(M)]
        self.iteration_count = 0
        self.reports: list[IterationReport] = []
        # Noiseless cost Σ_t c of each condition's current controller (config.step_check), once measured.
        self.noiseless_costs: list[float | None] = [None] * M
        self.check_trials = 0  # noiseless trials run by the step check so far

    @property
    def controllers(self) -> list[LinearGaussianController]:
        """The current LG controller of every condition."""
        return [opt.controller for opt in self.optimizers]

    def sample_condition(
        self, condition: int, controller: LinearGaussianController | None = None
    ) -> SampleBatch:
        """samples_per_condition trajectories of ``controller`` (default: the current one), noise from rng."""
        controller = self.optimizers[condition].controller if controller is None else controller
        env = self.env
        samples = [
            env.sample(controller, condition, generate_noise(env.T, env.dU, self.rng, self.config.noise))
            for _ in range(self.config.samples_per_condition)
        ]
        return SampleBatch.concatenate(samples)

    def noiseless_cost(self, condition: int, controller: LinearGaussianController) -> float:
        """Σ_t c of one noiseless trial of ``controller`` from ``condition`` (counted in check_trials)."""
        batch = self.env.sample(controller, condition, None)
        self.check_trials += 1
        return float(np.sum(quadratic_cost_model(self.costs[condition], batch)[0]))

    def checked_c_step(self, condition: int, dynamics: LinearDynamics, quad: QuadraticCost,
                       reference: LinearGaussianController | None = None
                       ) -> tuple[LinearGaussianController, UpdateInfo, StepCheckResult]:
        """The KL step of ``condition`` behind the step check (:func:`~mbpl_core.local.step_check.
        checked_update`), at the optimizer's current step_mult; keeps :attr:`noiseless_costs` current."""
        opt = self.optimizers[condition]
        baseline = self.noiseless_costs[condition]
        if baseline is None:
            baseline = self.noiseless_cost(condition, opt.controller)
        controller, info, result = checked_update(
            opt, dynamics, quad, reference, lambda c: self.noiseless_cost(condition, c), baseline,
            self.config.step_check)
        self.noiseless_costs[condition] = result.costs[-1] if result.accepted else baseline
        return controller, info, result

    def c_step(self, condition: int, dynamics: LinearDynamics, quad: QuadraticCost) -> UpdateInfo:
        """LQR-FLM step of one condition: adapt step_mult, then the KL step (checked when enabled)."""
        opt = self.optimizers[condition]
        if not self.config.step_check.enabled:
            return opt.update(dynamics, quad)[1]
        opt.adapt(dynamics, quad)
        return self.checked_c_step(condition, dynamics, quad)[1]

    def iteration(self) -> IterationReport:
        """One LQR-FLM iteration over all conditions; returns (and keeps) its report."""
        clock = {"sampling": 0.0, "dynamics": 0.0, "cost": 0.0, "lqr": 0.0}
        rows, checks_before = [], self.check_trials
        for m, (fitter, cost) in enumerate(zip(self.fitters, self.costs, strict=True)):
            start = time.perf_counter()
            batch = self.sample_condition(m)
            t1 = time.perf_counter()
            dynamics = fitter.update(batch)
            t2 = time.perf_counter()
            sample_costs, quad = quadratic_cost_model(cost, batch)
            t3 = time.perf_counter()
            info = self.c_step(m, dynamics, quad)
            t4 = time.perf_counter()
            for key, dt in zip(clock, (t1 - start, t2 - t1, t3 - t2, t4 - t3), strict=True):
                clock[key] += dt
            mean_cost = float(np.mean(np.sum(sample_costs, axis=1)))
            rows.append((mean_cost, info.step_mult, info.eta, info.kl, info.eta_iterations))
        cols = list(zip(*rows, strict=True))
        report = IterationReport(
            iteration=self.iteration_count,
            mean_cost=tuple(float(v) for v in cols[0]),
            step_mult=tuple(float(v) for v in cols[1]),
            eta=tuple(float(v) for v in cols[2]),
            kl=tuple(float(v) for v in cols[3]),
            eta_iterations=tuple(int(v) for v in cols[4]),
            sampling_s=clock["sampling"],
            dynamics_s=clock["dynamics"],
            cost_s=clock["cost"],
            lqr_s=clock["lqr"],
            check_trials=self.check_trials - checks_before,
        )
        self.iteration_count += 1
        self.reports.append(report)
        return report

    def run(
        self, iterations: int | None = None, callback: Callable[[IterationReport], None] | None = None
    ) -> list[IterationReport]:
        """Run ``iterations`` (default config.iterations) iterations; callback(report) after each."""
        n = self.config.iterations if iterations is None else int(iterations)
        if n < 0:
            raise ValueError(f"iterations must be >= 0, got {n}")
        out = []
        for _ in range(n):
            report = self.iteration()
            if callback is not None:
                callback(report)
            out.append(report)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: config, rng state, per-condition fitters and optimizers, reports.

        All values are picklable; the environment and costs are not included (pass them to from_state).
        """
        return {
            "config": self.config,
            "rng_state": self.rng.bit_generator.state,
            "rng_type": type(self.rng.bit_generator).__name__,
            "fitters": self.fitters,
            "optimizers": self.optimizers,
            "iteration_count": self.iteration_count,
            "reports": list(self.reports),
            "noiseless_costs": list(self.noiseless_costs),
            "check_trials": self.check_trials,
        }

    @classmethod
    def from_state(cls, env: Environment, cost: Cost | Sequence[Cost], state: dict[str, Any]) -> LQRFLM:
        """Rebuild a loop from :meth:`state_dict` output; continuing it matches the original run."""
        bit_gen = getattr(np.random, state["rng_type"])()
        bit_gen.state = state["rng_state"]
        optimizers = state["optimizers"]
        obj = cls(env, cost, state["config"], np.random.Generator(bit_gen),
                  initial_controllers=[opt.controller for opt in optimizers])
        obj.optimizers = list(optimizers)
        obj.fitters = list(state["fitters"])
        obj.iteration_count = int(state["iteration_count"])
        obj.reports = list(state["reports"])
        obj.noiseless_costs = list(state.get("noiseless_costs", obj.noiseless_costs))
        obj.check_trials = int(state.get("check_trials", 0))
        return obj


def _per_condition_costs(cost: Cost | Sequence[Cost], M: int) -> list[Cost]:
    if isinstance(cost, Cost):
        return [cost] * M
    costs = list(cost)
    if len(costs) != M:
        raise ValueError(f"got {len(costs)} costs for {M} conditions")
    return costs


def _check_controllers(controllers: Sequence[LinearGaussianController], M: int, env: Environment) -> None:
    if len(controllers) != M:
        raise ValueError(f"got {len(controllers)} initial controllers for {M} conditions")
    for m, c in enumerate(controllers):
        if (c.T, c.dX, c.dU) != (env.T, env.dX, env.dU):
            raise ShapeError(
                f"initial controller {m} has (T, dX, dU) = {(c.T, c.dX, c.dU)}, "
                f"the environment needs {(env.T, env.dX, env.dU)}"
            )
