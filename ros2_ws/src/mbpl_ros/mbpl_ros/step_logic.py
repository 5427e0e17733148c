"""The fitting and iLQR nodes' logic without ROS: per-condition state that is idempotent and persisted.

Both services are answered exactly once per (condition, iteration): :class:`PersistentCondition` keeps
the per-condition state (a DynamicsFitter or a ConditionOptimizer) and the results of the last few
iterations, pickled atomically to ``<folder>/condition_<m>.pkl`` after every new result and reloaded
at start. A repeated request returns the stored result without touching the state, so the trainer may
retry after a timeout, and a restarted node resumes where it was. The state is updated on a copy and
swapped in only once the result is persisted, so a failed computation leaves it unchanged.
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from mbpl_core.containers import LinearDynamics, LinearGaussianController, SampleBatch, StateLayout
from mbpl_core.costs import Cost, quadratic_cost_model
from mbpl_core.local.dynamics import DynamicsFitConfig, DynamicsFitter
from mbpl_core.local.init import InitConfig, initial_controller
from mbpl_core.local.lqr_flm import AlgorithmConfig
from mbpl_core.local.traj_opt import ConditionOptimizer, KLStepConfig, UpdateInfo

S = TypeVar("S")
R = TypeVar("R")


class StaleRequestError(ValueError):
    """A request for an iteration older than the stored results (its result is no longer kept)."""


class PersistentCondition(Generic[S, R]):
    """State of one condition plus {iteration: result} for the last ``keep`` iterations, on disk.

    make_state: builds the initial state when no pickle exists.
    """

    def __init__(self, folder: str | Path, condition: int, make_state: Callable[[], S],
                 keep: int = 3) -> None:
        self.path = Path(folder) / f"condition_{condition}.pkl"
        self.condition, self.keep = condition, keep
        self.state: S
        self.results: dict[int, R]
        if self.path.exists():
            with open(self.path, "rb") as f:
                saved = pickle.load(f)
            self.state, self.results = saved["state"], saved["results"]
        else:
            self.state, self.results = make_state(), {}

    @property
    def last_iteration(self) -> int | None:
        """The newest iteration with a stored result, or None."""
        return max(self.results) if self.results else None

    def run(self, iteration: int, compute: Callable[[S], R]) -> tuple[R, bool]:
        """(result, computed_now): the stored result of ``iteration``, else ``compute(state)`` persisted.

        Raises StaleRequestError for an iteration older than the newest stored one and not kept.
        """
        if iteration in self.results:
            return self.results[iteration], False
        newest = self.last_iteration
        if newest is not None and iteration < newest:
            raise StaleRequestError(f"condition {self.condition}: iteration {iteration} is older than the "
                                    f"stored iteration {newest} and its result is no longer kept")
        state = copy.deepcopy(self.state)
        result = compute(state)
        results = dict(self.results)
        results[iteration] = result
        for old in sorted(results)[: max(0, len(results) - self.keep)]:
            del results[old]
        self._save(state, results)
        self.state, self.results = state, results
        return result, True

    def _save(self, state: S, results: dict[int, R]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump({"state": state, "results": results}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def fitting_conditions(folder: str | Path, num_conditions: int, config: DynamicsFitConfig,
                       keep: int = 3) -> list[PersistentCondition[DynamicsFitter, LinearDynamics]]:
    """One persisted DynamicsFitter per condition (``<run_dir>/fitting``)."""
    return [PersistentCondition(folder, m, lambda: DynamicsFitter(config), keep)
            for m in range(num_conditions)]


def fit(condition: PersistentCondition[DynamicsFitter, LinearDynamics], iteration: int,
        batch: SampleBatch) -> tuple[LinearDynamics, bool]:
    """DynamicsFitter.update(batch) once per iteration: batch X (N, T, dX), U (N, T, dU) → LinearDynamics."""
    return condition.run(iteration, lambda fitter: fitter.update(batch))


LqrResult = tuple[LinearGaussianController, UpdateInfo]


def lqr_conditions(folder: str | Path, x0s: list[Any], layout: StateLayout, dU: int, T: int, dt: float,
                   init: InitConfig, kl: KLStepConfig,
                   keep: int = 3) -> list[PersistentCondition[ConditionOptimizer, LqrResult]]:
    """One persisted ConditionOptimizer per condition (``<run_dir>/ilqr``), from initial_controller(x0)."""
    def maker(x0: Any) -> Callable[[], ConditionOptimizer]:
        return lambda: ConditionOptimizer(initial_controller(init, layout, dU, T, dt, x0), kl)
    return [PersistentCondition(folder, m, maker(x0), keep) for m, x0 in enumerate(x0s)]


def lqr_step(condition: PersistentCondition[ConditionOptimizer, LqrResult], iteration: int,
             dynamics: LinearDynamics, batch: SampleBatch, cost: Cost,
             reference: LinearGaussianController | None,
             step_mult: float | None = None) -> tuple[LqrResult, bool]:
    """One KL-constrained LQR step per iteration: cost model of ``batch``, then ConditionOptimizer.update.

    reference None → LQR-FLM (KL to the current controller); otherwise MDGPS (KL to ``reference``).
    step_mult None → the optimizer adapts its step multiplier by the LQR-FLM rule; a number → the step
    is taken with that multiplier (MDGPS's rule, decided by the trainer), clipped to the configured bounds
    (ValueError unless finite and > 0).
    """
    def compute(optimizer: ConditionOptimizer) -> LqrResult:
        _, quad = quadratic_cost_model(cost, batch)
        if step_mult is None:
            return optimizer.update(dynamics, quad, reference)
        optimizer.step_mult = step_mult
        return optimizer.update(dynamics, quad, reference, adapt_step=False)
    return condition.run(iteration, compute)


def settings_not_honoured(algorithm: AlgorithmConfig) -> list[str]:
    """One message per setting of ``algorithm`` that the graph's C-step does not carry out (empty: none).

    algorithm.step_check: the check runs each candidate controller once without noise on the system before
    it becomes current (:mod:`mbpl_core.local.step_check`). Here the iLQR service takes one step per
    condition and iteration and makes it current at once, and only the trainer can run trials, so every
    step is taken unchecked.
    """
    if algorithm.step_check.enabled:
        return ["algorithm.step_check is enabled but not honoured through the graph: every C-step is "
                "taken unchecked (the check runs in `mbpl train`)"]
    return []
