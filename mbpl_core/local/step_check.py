"""Acceptance of a C-step on the system: a step whose noiseless trial regresses is shrunk, then rejected.

The KL step trusts the fitted local linear model inside ε = kl_step · step_mult · T. GPS's step rule
(:func:`mbpl_core.local.traj_opt.adapt_step_mult`) compares predicted and actual improvement only one
iteration later, and it never undoes a step: the controller that regressed stays and is sampled. Where
the model is blind to what the step runs into, that is the wrong way round. On peg insertion
(bench/gps_peg.py, seed 0) every late jam was a C-step that took an *inserting* trust-region centre to a
controller that the fitted dynamics predicted to insert (predicted final tip 0.1-0.6 cm) and that rested
on the block (6 cm) when run: the linear model, fitted on trajectories that went down the hole, has no
rim. Those steps were 40-300 nats; their noiseless cost Σ_t c rose by 75-110 % while every other step
changed it by less than ±6 %.

The remedy is the trust-region method's own acceptance test (Nocedal & Wright, Alg. 4.1: reject a step
whose actual reduction is negative, shrink the radius): before a candidate controller becomes current,
run it once without noise and compare its cost with the current controller's noiseless cost. A regression
beyond ``regression_tolerance`` (relative) shrinks step_mult by ``backtrack_factor`` and solves again, up
to ``max_backtracks`` times; if every candidate regresses, the current controller is kept and step_mult
stays shrunk. The check costs one noiseless trial per condition and iteration (plus one per backtrack),
and it does not touch the sampling noise: the run's samples are those of the same seed without the check
up to the first rejected step.

Backtracking shrinks the step around the controller whose cost *is* the baseline. In LQR-FLM that is the
trust region's centre itself. In MDGPS the centre is the policy linearisation π̄, not the current LG
controller: shrinking ε around π̄ moves the candidate towards π̄, and where the policy does worse than the
controller it was trained on, no backtrack can pass. On peg insertion (seed 1, 9 holes) that froze 5 of 9
controllers from iteration 5-7 on (backtracked costs 10.0, 9.5, 9.3 and later 9.0 → π̄'s own, against a
baseline 5.2), among them one stalled 1.1 cm above the hole bottom that the nearby held-out holes then
copied. So the backtracks of an MDGPS step are KL steps around the current controller (``checked_update``
with a reference): as ε shrinks they tend to the baseline controller, as in LQR-FLM.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from mbpl_core.blas import single_threaded_blas
from mbpl_core.config import ConfigError
from mbpl_core.containers import LinearDynamics, LinearGaussianController
from mbpl_core.costs import QuadraticCost
from mbpl_core.local.traj_opt import (
    ConditionOptimizer,
    UpdateInfo,
    lqr_forward_pass,
    total_expected_cost,
    trajectory_kl,
)

Candidate = TypeVar("Candidate")


@dataclass(frozen=True)
class StepCheckConfig:
    """YAML ``algorithm.step_check``: validate each C-step with a noiseless trial before taking it.

    enabled: off by default (no extra trials); regression_tolerance: a candidate regresses when its
    noiseless cost exceeds baseline + tolerance · |baseline|; max_backtracks: re-solves at a smaller
    step before the current controller is kept; backtrack_factor: step_mult multiplier per backtrack.
    """

    enabled: bool = False
    regression_tolerance: float = 0.1
    max_backtracks: int = 2
    backtrack_factor: float = 0.25

    def __post_init__(self) -> None:
        if not (math.isfinite(self.regression_tolerance) and self.regression_tolerance >= 0):
            raise ConfigError(f"algorithm.step_check.regression_tolerance must be >= 0, got "
                              f"{self.regression_tolerance}")
        if self.max_backtracks < 0:
            raise ConfigError(f"algorithm.step_check.max_backtracks must be >= 0, got {self.max_backtracks}")
        if not (0 < self.backtrack_factor < 1):
            raise ConfigError(f"algorithm.step_check.backtrack_factor must be in (0, 1), got "
                              f"{self.backtrack_factor}")


@dataclass(frozen=True, eq=False)
class StepCheckResult(Generic[Candidate]):
    """Outcome of :func:`check_step`.

    candidate: the accepted candidate, None when every one regressed (keep the current controller);
    step_mult: the multiplier it was solved at (after a rejection: the shrunk multiplier for the next
    step); costs: noiseless cost of each candidate tried, in order; baseline: the current controller's.
    """

    candidate: Candidate | None
    step_mult: float
    costs: tuple[float, ...]
    baseline: float

    @property
    def accepted(self) -> bool:
        return self.candidate is not None

    @property
    def trials(self) -> int:
        """Noiseless trials this check ran."""
        return len(self.costs)


def regressed(cost: float, baseline: float, tolerance: float) -> bool:
    """True when ``cost`` is worse than ``baseline`` by more than tolerance · |baseline| (or not finite)."""
    return not math.isfinite(cost) or cost > baseline + tolerance * abs(baseline)


def check_step(propose: Callable[[float], Candidate], evaluate: Callable[[Candidate], float],
               baseline: float, step_mult: float, config: StepCheckConfig,
               min_step_mult: float = 0.0,
               backtrack: Callable[[float], Candidate] | None = None) -> StepCheckResult[Candidate]:
    """Backtracking acceptance of a C-step (module docstring).

    propose(step_mult) → candidate (the KL step solved at that multiplier); evaluate(candidate) → its
    noiseless cost Σ_t c on the system; baseline: the current controller's noiseless cost. Tries
    step_mult, step_mult · f, step_mult · f², … (f = backtrack_factor, never below min_step_mult; at most
    1 + max_backtracks candidates) and returns the first that does not regress; if none, candidate None
    and step_mult shrunk once more (the next iteration starts from the smaller trust region).
    backtrack(step_mult) → the candidates after the first (default: propose), e.g. steps around the
    baseline controller when propose steps around another centre.
    """
    if not math.isfinite(baseline):
        raise ValueError(f"check_step: the baseline cost must be finite, got {baseline}")
    mult, costs = float(step_mult), []
    for attempt in range(config.max_backtracks + 1):
        candidate = propose(mult) if attempt == 0 or backtrack is None else backtrack(mult)
        cost = float(evaluate(candidate))
        costs.append(cost)
        if not regressed(cost, baseline, config.regression_tolerance):
            return StepCheckResult(candidate, mult, tuple(costs), baseline)
        smaller = max(mult * config.backtrack_factor, min_step_mult)
        if attempt == config.max_backtracks or smaller >= mult:
            # Out of backtracks, or at the smallest step (another solve would give the same candidate).
            return StepCheckResult(None, smaller, tuple(costs), baseline)
        mult = smaller
    raise AssertionError("unreachable")  # pragma: no cover


def checked_update(optimizer: ConditionOptimizer, dynamics: LinearDynamics, quad: QuadraticCost,
                   reference: LinearGaussianController | None,
                   evaluate: Callable[[LinearGaussianController], float], baseline: float,
                   config: StepCheckConfig) -> tuple[LinearGaussianController, UpdateInfo, StepCheckResult]:
    """:meth:`ConditionOptimizer.update` (without the step adaptation) behind :func:`check_step`.

    evaluate(controller) → its noiseless cost on the system; baseline: that of optimizer.controller.
    The first candidate is the KL step around ``reference`` (None: the current controller); the backtracks
    are KL steps around the current controller, the one the baseline was measured on (module docstring).
    The accepted candidate becomes current; after a rejection the current controller stays (info: its KL
    to ``reference`` and expected cost under the new model, ``rejected`` set). optimizer.step_mult ends at
    the check's multiplier either way.
    """
    result = check_step(lambda mult: optimizer.solve(dynamics, quad, reference, mult),
                        lambda candidate: evaluate(candidate[0]), baseline, optimizer.step_mult, config,
                        optimizer.config.min_step_mult,
                        backtrack=lambda mult: optimizer.solve(dynamics, quad, None, mult))
    if result.candidate is not None:
        controller, info = result.candidate
        optimizer.accept(controller, info, dynamics, quad)
    else:
        controller = optimizer.controller
        ref = controller if reference is None else reference
        with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore"):
            kl = trajectory_kl(lqr_forward_pass(controller, dynamics), controller, ref)
            cost = total_expected_cost(controller, dynamics, quad)
        epsilon = optimizer.config.kl_step * result.step_mult * dynamics.T
        info = UpdateInfo(optimizer.eta, kl, epsilon, result.step_mult, 0, cost, rejected=True)
        optimizer.keep(dynamics, quad)
    optimizer.step_mult = result.step_mult
    return controller, dataclasses.replace(info, step_mult=result.step_mult), result
