"""The sampler's model-based action sources: plans from the planner node ("mpc") and random efforts.

"mpc" — :class:`PlanSource`: at step t of a trial the sampler publishes a plan request with x_t and
executes a plan of the same trial planned from step t0 ≤ t: u_t = actions[t − t0]. In lockstep the
sampler waits for the plan of step t itself (deterministic: the same states give the same plans);
without one within ``plan_timeout`` the trial aborts. In realtime it never waits: it uses the newest
plan of the trial if t − t0 < min(h, max_plan_age + 1) and otherwise commands zero effort while the
first plan is awaited (t ≤ max(first_plan_wait, max_plan_age)) or aborts the trial (the plan is stale:
the safe hold takes over). Plans are validated on arrival (:meth:`PlanInbox.offer`): dimensions, finite
actions within the effort limits, the run token, a running MPC trial — anything else is rejected and counted.

"random" — :class:`RandomEfforts`: u_t ~ U(−effort_limits, effort_limits) drawn from the request's seed
before the trial (replayable), PETS's first data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mbpl_core.containers import ShapeError


@dataclass(frozen=True, eq=False)
class PlanData:
    """A receding-horizon plan of trial ``trial_id`` from the state of step t: actions (h, dU)."""

    trial_id: int
    t: int
    actions: np.ndarray
    predicted_cost: float = 0.0
    model_version: int = 0
    planning_time: float = 0.0
    run_token: str = ""


@dataclass(frozen=True, eq=False)
class PlanRequestData:
    """The sampler's request for a plan from x (dX,) at step t of an MPC trial."""

    trial_id: int
    condition: int
    t: int
    seed: int
    model_version: int
    x: np.ndarray
    run_token: str = ""


class PlanAbortError(RuntimeError):
    """No usable plan for the current step: the trial is aborted with this reason."""


class PlanInbox:
    """The newest valid plan of each MPC trial, and a way to wait for the plan of a step (thread-safe)."""

    def __init__(self, dU: int, effort_limits: np.ndarray) -> None:
        self.dU = dU
        self.effort_limits = np.asarray(effort_limits, dtype=np.float64)
        self._cond = threading.Condition()
        self._plans: dict[int, PlanData] = {}
        self._open: set[int] = set()

    def open(self, trial_id: int) -> None:
        """Accept plans of ``trial_id`` from now on (its trial started)."""
        with self._cond:
            self._open.add(trial_id)

    def close(self, trial_id: int) -> None:
        """The trial ended: forget its plans; late ones are rejected."""
        with self._cond:
            self._open.discard(trial_id)
            self._plans.pop(trial_id, None)

    def offer(self, plan: PlanData) -> None:
        """Store a plan; ShapeError with the reason if it does not fit a running trial or the robot."""
        if plan.actions.ndim != 2 or plan.actions.shape[0] == 0:
            raise ShapeError(f"plan actions must be an (h >= 1, dU) array, got shape {plan.actions.shape}")
        if plan.actions.shape[1] != self.dU:
            raise ShapeError(f"plan has {plan.actions.shape[1]} actions per step, the robot has "
                             f"dU = {self.dU}")
        if not np.all(np.isfinite(plan.actions)):
            raise ShapeError("plan actions with non-finite entries")
        over = np.abs(plan.actions) > self.effort_limits * (1.0 + 1e-9)
        if np.any(over):
            step, joint = np.argwhere(over)[0]
            raise ShapeError(f"plan action {plan.actions[step, joint]:.4g} at step {step}, joint {joint} "
                             f"exceeds the effort limit {self.effort_limits[joint]:g}")
        with self._cond:
            if plan.trial_id not in self._open:
                raise ShapeError(f"plan for trial {plan.trial_id}, which is not a running MPC trial")
            current = self._plans.get(plan.trial_id)
            if current is None or plan.t >= current.t:
                self._plans[plan.trial_id] = plan
            self._cond.notify_all()

    def latest(self, trial_id: int) -> PlanData | None:
        """The newest plan of a trial, or None."""
        with self._cond:
            return self._plans.get(trial_id)

    def wait_for(self, trial_id: int, t: int, timeout: float, stop: threading.Event | None = None,
                 ) -> PlanData | None:
        """The plan of ``trial_id`` planned from step t (or later); None after ``timeout`` s or on stop."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                plan = self._plans.get(trial_id)
                if plan is not None and plan.t >= t:
                    return plan
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return None
                self._cond.wait(min(remaining, 0.05))


class PlanSource:
    """Actions of one MPC trial from the planner's plans (see the module docstring)."""

    def __init__(self, inbox: PlanInbox, request_plan: Callable[[PlanRequestData], None], trial_id: int,
                 condition: int, seed: int, model_version: int, lockstep: bool, plan_timeout: float,
                 max_plan_age: int, run_token: str = "", stop: threading.Event | None = None,
                 first_plan_wait: int | None = None) -> None:
        self.inbox, self.request_plan = inbox, request_plan
        self.trial_id, self.condition = trial_id, condition
        self.seed, self.model_version = seed, model_version
        self.lockstep, self.plan_timeout, self.max_plan_age = lockstep, plan_timeout, max_plan_age
        self.run_token, self.stop = run_token, stop
        # realtime: steps at zero effort the first plan may take (it carries the planner's start-up on a new
        # model version); later plans must be within max_plan_age
        self.first_plan_wait = max_plan_age if first_plan_wait is None else max(first_plan_wait, max_plan_age)
        self.plan_ages: list[int] = []
        """t − t0 of the plan each step executed (0 in lockstep): how stale plans got."""

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """u_t (dU,) from the trial's plans; PlanAbortError when there is none fresh enough."""
        if t == 0:
            self.inbox.open(self.trial_id)
        self.request_plan(PlanRequestData(self.trial_id, self.condition, t, self.seed, self.model_version,
                                          np.asarray(x, dtype=np.float64), self.run_token))
        if self.lockstep:
            plan = self.inbox.wait_for(self.trial_id, t, self.plan_timeout, self.stop)
            if plan is None:
                raise PlanAbortError(f"no plan for step {t} within plan_timeout = {self.plan_timeout:g} s")
            return self._take(plan, t)
        plan = self.inbox.latest(self.trial_id)
        if plan is None:
            if t > self.first_plan_wait:
                raise PlanAbortError(f"stale plan at step {t} (none yet; first_plan_wait = "
                                     f"{self.first_plan_wait} steps)")
            self.plan_ages.append(-1)
            return np.zeros(self.inbox.dU)  # awaiting the first plan: no effort
        if t - plan.t > self.max_plan_age or t - plan.t >= plan.actions.shape[0]:
            if t > self.max_plan_age:
                raise PlanAbortError(f"stale plan at step {t} (newest from step {plan.t}; max_plan_age = "
                                     f"{self.max_plan_age})")
            self.plan_ages.append(-1)
            return np.zeros(self.inbox.dU)  # no fresh action yet this early in the trial: no effort
        return self._take(plan, t)

    def _take(self, plan: PlanData, t: int) -> np.ndarray:
        age = t - plan.t
        self.plan_ages.append(age)
        return plan.actions[age].copy()

    def close(self) -> None:
        """The trial ended: later plans of it are rejected."""
        self.inbox.close(self.trial_id)


class RandomEfforts:
    """u_t ~ U(−effort_limits, effort_limits), all T drawn from ``seed`` before the trial."""

    def __init__(self, seed: int, T: int, effort_limits: np.ndarray) -> None:
        limits = np.asarray(effort_limits, dtype=np.float64)
        self.U = np.random.default_rng(int(seed)).uniform(-limits, limits, size=(T, limits.size))

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """The pre-drawn u_t (dU,)."""
        return self.U[t].copy()
