"""Trial logic of the sampler node in plain Python (no rclpy): testable in-process against MujocoEnv.

One trial of condition m runs a policy π for T steps::

    x_t = [q_t, q̇_t, p(q_t) − p*_m, J(q_t) q̇_t]        (EndEffectorKinematics.state_and_jacobian)
    u_t = clip(K_t x_t + k'_t, ±effort_limits),  k'_t = k_t + chol(pol_covar_t) ε_t   ("lg")
    u_t = clip(f_θ(x_t) + chol(action_covar) ε_t, ±effort_limits)                     ("policy")

with ε = generate_noise(T, dU, numpy.random.default_rng(seed), algorithm.noise) pre-drawn from the
request's seed (zero when add_noise is false), so a trial is replayed exactly by
``MujocoEnv.sample(controller, m, ε)``. Shapes: x (dX,), u (dU,), ε (T, dU), X (T, dX), U (T, dU),
ee_jacobians (T, dP, dQ).

Timing modes (:class:`SamplerParams.mode`):

* ``lockstep`` — one command per received joint state: x_0 after the reset, then u_t is published and
  the sim answers with x_{t+1}. u_{T-1} is recorded but not published (as MujocoEnv.sample does not
  step after it, and a late command could otherwise pair with the next trial's reset state).
  Between trials nothing is published: a lockstep sim does not move without commands.
* ``realtime`` — a :class:`~mbpl_ros.rt_loop.DeadlineLoop` ticks at ``rate_hz`` and uses the latest
  joint state; every command of the trial is published; between trials and after a fault it keeps
  publishing the safe hold u = clip(hold_kp (q_hold − q) − hold_kd q̇) (zero effort by default, and
  zero whenever the state is stale or invalid).

A trial is aborted (its sample published with aborted = true and the reason) when no joint state
arrives within ``state_timeout`` s (lockstep: each step; realtime: the first), when the latest joint
state is older than ``max_state_age`` (realtime: a few control periods; zero effort in that same tick),
when a joint state is invalid (NaN/Inf, missing joints), or when the action is not finite; any other
error of a step aborts it too, so the control loop never dies. Controllers and policies are validated
on arrival (run token, dimensions, gain bound, action and noise bounds over the reachable state box:
:mod:`mbpl_ros.action_bounds`); a rejected one is counted with its reason and the last good one stays,
and RunTrial requests with another run token are refused. A trial request snapshots the controller it
will run, so a controller arriving during a trial only affects later trials (the swap happens at a
trial boundary); the controller a queued or the last requested trial names is never evicted.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import LinearGaussianController, SampleBatch, ShapeError, StateLayout
from mbpl_core.limits import bounded_limits
from mbpl_core.noise import NoiseConfig, generate_noise
from mbpl_core.policy import GPSConfig, NumpyPolicy, PolicyParams
from mbpl_ros.action_bounds import (
    StateBox,
    check_action_bound,
    lg_action_bound,
    policy_action_bound,
    policy_gain_bound,
    reachable_state_box,
    require_params_shape,
    urdf_velocity_limits,
)
from mbpl_ros.params import param
from mbpl_ros.plan_source import (
    PlanAbortError,
    PlanData,
    PlanInbox,
    PlanRequestData,
    PlanSource,
    RandomEfforts,
)
from mbpl_ros.rt_loop import NS_PER_S, DeadlineLoop, LoopStats, TickInfo
from mbpl_sim.experiment import METHOD_SECTIONS, ExperimentConfig
from mbpl_sim.kinematics import EndEffectorKinematics
from mbpl_sim.robot import load_robot_spec
from mbpl_sim.task import CONDITION_SETS

POLICY_KINDS = ("lg", "policy", "mpc", "random")
MODES = ("lockstep", "realtime")


@dataclass(frozen=True)
class SamplerParams:
    """Parameters of the sampler node (declared on the node with these defaults and descriptions)."""

    config: str = param("experiment YAML file (robot, task, conditions, algorithm.noise, gps)", "")
    mode: str = param('"lockstep": one command per joint state (sim); "realtime": deadline thread',
                      "lockstep")
    controller: str = param("efforts are published on <controller>/commands", "effort_controller")
    rate_hz: float = param("realtime mode: control rate in Hz; 0 = 1/dt of the experiment", 0.0)
    state_timeout: float = param(
        "seconds to wait for a joint state: a trial's first (after the reset), each step's in lockstep",
        1.0)
    max_state_age: float = param(
        "realtime mode: a joint state older than this (s) engages the safe hold and aborts the running "
        "trial; 0: 5 control periods", 0.0)
    reset_service: str = param("ResetSim service called before every trial; empty: none (hardware)",
                               "reset_sim")
    reset_timeout: float = param("seconds to wait for the reset service to answer", 10.0)
    hold_kp: float = param("safe hold (realtime): u = hold_kp (q_hold - q) - hold_kd qd; 0, 0: zero", 0.0)
    hold_kd: float = param("safe hold damping gain (see hold_kp)", 0.0)
    max_gain: float = param("controllers with any |K| entry above this are rejected", 1.0e4)
    max_policy_gain: float = param(
        "policies whose sound bound of any |du_i/dx_j| (product of |W| and 1/obs_std) exceeds this are "
        "rejected", 1.0e5)
    max_action_ratio: float = param(
        "controllers/policies whose largest action over the reachable state box exceeds this × the effort "
        "limits are rejected (clipping stays the last line)", 1.0e4)
    max_noise_ratio: float = param(
        "controllers/policies whose exploration std exceeds this × the effort limits are rejected", 10.0)
    joint_velocity_limit: float = param(
        "rad/s bounding q̇ in the reachable state box for joints without a URDF velocity limit", 10.0)
    run_token: str = param(
        "the run this sampler serves: controllers, policies and RunTrial requests carrying another "
        "run_token are rejected and counted (mbpl launch sets one per run; empty: accept only empty)", "")
    max_queued_trials: int = param("trial requests accepted beyond the running one; more are refused", 16)
    controller_history: int = param("accepted controllers kept per condition (looked up by id)", 8)
    diagnostics_period: float = param("seconds between /diagnostics messages", 1.0)
    run_dir: str = param("run folder shared by the graph's nodes; empty: runs/<experiment name>", "")
    policy_checkpoint: str = param(
        "policy checkpoint (folder or policy.npz) deployed at start as policy 0; empty: wait for mbpl/policy",
        "")
    condition_set: str = param('conditions RunTrial indexes: "train", "held_out" or "validation"',
                               "train")
    gil_switch_interval: float = param(
        "realtime mode: seconds another thread may keep Python's GIL once the control thread wants it "
        "(sys.setswitchinterval; Python's 0.005 delays control ticks by up to 5 ms)", 1.0e-4)
    plan_timeout: float = param(
        'lockstep, policy_kind "mpc": seconds to wait for the plan of a step before the trial aborts', 10.0)
    max_plan_age: int = param(
        'realtime, policy_kind "mpc": control steps a plan may be behind before the trial aborts (its '
        "actions for the current step are executed meanwhile)", 5)
    first_plan_wait: int = param(
        'realtime, policy_kind "mpc": control steps at zero effort a trial waits for its first plan (the '
        "planner's first plan of a model version includes loading it) before it aborts; at least "
        "max_plan_age", 25)
    sim_in_process: bool = param(
        "lockstep simulation: the sampler steps the experiment's MuJoCo model itself (no sim node, no "
        "message per control step; joint_states is still published as the sim node would); false: the "
        "states come on joint_states from a sim node or a robot driver", False)
    realtime_priority: int = param(
        "realtime mode: SCHED_FIFO priority 1-99 of the control thread (needs root or CAP_SYS_NICE; "
        "refused: logged, normal priority, as ros2_control's controller manager does); 0: normal scheduling",
        50)

    def __post_init__(self) -> None:
        if not self.config:
            raise ConfigError("sampler: parameter 'config' (experiment YAML path) is required")
        if self.mode not in MODES:
            raise ConfigError(f"sampler: mode must be one of {MODES}, got {self.mode!r}")
        if not self.controller or any(c.isspace() for c in self.controller):
            raise ConfigError(f"sampler: invalid controller name {self.controller!r}")
        positive = ("state_timeout", "reset_timeout", "max_gain", "diagnostics_period", "max_action_ratio",
                    "plan_timeout",
                    "max_policy_gain",
                    "max_noise_ratio", "joint_velocity_limit")
        for name in positive:
            if not np.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ConfigError(f"sampler: {name} must be a positive number, got {getattr(self, name)}")
        if not 0 < self.gil_switch_interval <= 0.1:
            raise ConfigError("sampler: gil_switch_interval must be in (0, 0.1] s, got "
                              f"{self.gil_switch_interval}")
        if not 0 <= self.realtime_priority <= 99:
            raise ConfigError(f"sampler: realtime_priority must be in [0, 99], got {self.realtime_priority}")
        for name in ("rate_hz", "hold_kp", "hold_kd", "max_state_age"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"sampler: {name} must be >= 0, got {getattr(self, name)}")
        if self.condition_set not in CONDITION_SETS:
            raise ConfigError(f"sampler: condition_set must be one of {CONDITION_SETS}, got "
                              f"{self.condition_set!r}")
        if self.max_plan_age < 0 or self.first_plan_wait < 0:
            raise ConfigError(f"sampler: max_plan_age and first_plan_wait must be >= 0 steps, got "
                              f"{self.max_plan_age}, {self.first_plan_wait}")
        if self.sim_in_process and (self.mode != "lockstep" or not self.reset_service):
            raise ConfigError("sampler: sim_in_process needs mode 'lockstep' and a reset before every trial "
                              f"(reset_service not empty), got mode {self.mode!r}, reset_service "
                              f"{self.reset_service!r}")
        if self.max_queued_trials < 0 or self.controller_history < 1:
            raise ConfigError("sampler: max_queued_trials must be >= 0 and controller_history >= 1, got "
                              f"{self.max_queued_trials}, {self.controller_history}")


# ------------------------------------------------------------------------------------------- robot
@dataclass(frozen=True, eq=False)
class RobotSetup:
    """Everything a trial needs from the experiment, built from the robot model alone (as on hardware).

    targets[m]: (P, 3) ee targets of condition m; effort_limits: (dU,); obs_indices: (dO,) state
    entries the neural policy sees (gps.observation); velocity_limits: (dU,) from the URDF, NaN where
    it gives none (None: none known); random_limits: (dU,) bound of the "random" source's efforts
    (PETS's first data, SAC's / MBPO's random steps, BPTT's random trials: the running method's
    ``action_limits`` within the effort limits; None: the effort limits).
    """

    kinematics: EndEffectorKinematics
    joint_names: tuple[str, ...]
    effort_limits: np.ndarray
    targets: tuple[np.ndarray, ...]
    T: int
    dt: float
    noise: NoiseConfig
    obs_indices: np.ndarray
    velocity_limits: np.ndarray | None = None
    random_limits: np.ndarray | None = None

    @classmethod
    def from_experiment(cls, experiment: ExperimentConfig) -> RobotSetup:
        """Setup from the robot model alone (no scene), the training conditions, algorithm.noise and gps."""
        model = load_robot_spec(experiment.robot).compile()
        robot = experiment.robot
        kinematics = EndEffectorKinematics(model, robot.joints, robot.ee.frame, robot.ee.points)
        targets = tuple(experiment.target_points(c) for c in experiment.conditions("train"))
        noise = from_dict(NoiseConfig, dict(experiment.algorithm.get("noise") or {}), "algorithm.noise")
        gps = from_dict(GPSConfig, dict(experiment.gps or {}), "gps")
        known = urdf_velocity_limits(robot.description, tuple(robot.joints))
        effort_limits = model.actuator_ctrlrange[:, 1].copy()
        # the robot side imports no torch: the raw setting of the running method, checked as its config does
        entry = METHOD_SECTIONS.get(experiment.method)
        section = entry[0] if entry is not None else "algorithm"
        own = experiment.section(section).get("action_limits") if entry is not None else None
        random_limits = bounded_limits(own, effort_limits, f"{section}.action_limits")
        return cls(kinematics=kinematics, joint_names=tuple(robot.joints), random_limits=random_limits,
                   effort_limits=effort_limits, targets=targets,
                   T=experiment.task.T, dt=experiment.task.dt, noise=noise,
                   obs_indices=gps.observation_indices(experiment.layout.dX),
                   velocity_limits=np.array([known.get(j, np.nan) for j in robot.joints]))

    @property
    def layout(self) -> StateLayout:
        """x = [q, q̇, ee points − target, ee velocities] of this robot."""
        return self.kinematics.layout

    @property
    def dX(self) -> int:
        """State dimension 2 dQ + 6 P."""
        return self.layout.dX

    @property
    def dU(self) -> int:
        """Action dimension (one effort per actuated joint)."""
        return len(self.joint_names)

    @property
    def num_conditions(self) -> int:
        """Number of training conditions."""
        return len(self.targets)

    def state_box(self, default_velocity: float) -> StateBox:
        """The reachable state box (mbpl_ros.action_bounds); q̇ bound default_velocity where none is known."""
        v = np.full(self.dU, np.nan) if self.velocity_limits is None else self.velocity_limits
        return reachable_state_box(self.kinematics, self.targets, np.where(np.isnan(v), default_velocity, v))


def plan_age_summary(ages: list[int]) -> str:
    """How stale an MPC trial's plans were: ``ages`` per executed step (t − t0 of the plan used; −1: zero
    effort while the first plan was awaited). "plan age (steps) median M, max X, W waiting"."""
    executed = [a for a in ages if a >= 0]
    if not executed:
        return f"no plan executed, {len(ages)} steps waiting"
    return (f"plan age (steps) median {float(np.median(executed)):g}, max {max(executed)}, "
            f"{len(ages) - len(executed)} waiting")


def trial_noise(seed: int, T: int, dU: int, config: NoiseConfig) -> np.ndarray:
    """ε: (T, dU) = generate_noise(T, dU, numpy.random.default_rng(seed), config): the trial's noise."""
    return generate_noise(T, dU, np.random.default_rng(int(seed)), config)


# -------------------------------------------------------------------------------------- validation
@dataclass(frozen=True)
class ActionLimits:
    """What a controller or policy may ask of the robot: max |K| entry, the reachable state box, and the
    largest action and exploration std over it as multiples of the effort limits (mbpl_ros.action_bounds)."""

    max_gain: float
    max_policy_gain: float
    box: StateBox
    effort_limits: np.ndarray
    max_action_ratio: float
    max_noise_ratio: float

    def check(self, what: str, bound: tuple[np.ndarray, np.ndarray]) -> None:
        """ShapeError unless the (action, std) bound is within the ratios × the effort limits."""
        action, std = bound
        check_action_bound(what, (action, np.zeros_like(std)), self.effort_limits, self.max_action_ratio)
        check_action_bound(what, (np.zeros_like(action), std), self.effort_limits, self.max_noise_ratio)


def validate_controller(controller: LinearGaussianController, setup: RobotSetup,
                        limits: ActionLimits) -> None:
    """ShapeError unless K: (T, dU, dX) matches the experiment, every |K_tij| <= max_gain, and the largest
    action |K_t x + k_t| over the reachable state box and the std sqrt(diag pol_covar_t) are bounded.

    Finiteness and positive-definite pol_covar are already guaranteed by the container.
    """
    expected = (setup.T, setup.dU, setup.dX)
    if controller.K.shape != expected:
        raise ShapeError(f"K has shape {controller.K.shape}, expected (T, dU, dX) = {expected}")
    gain = float(np.max(np.abs(controller.K)))
    if not gain <= limits.max_gain:
        t, i, j = np.unravel_index(int(np.argmax(np.abs(controller.K))), controller.K.shape)
        raise ShapeError(f"max |K| = {gain:.3g} (at t={t}, u{i}, x{j}) exceeds the gain bound "
                         f"max_gain = {limits.max_gain:g}")
    limits.check("controller", lg_action_bound(controller, limits.box))


def build_numpy_policy(params: PolicyParams, setup: RobotSetup,
                       limits: ActionLimits | None = None) -> NumpyPolicy:
    """NumpyPolicy u = f((x[obs_indices] − obs_mean)/obs_std) for this robot; ShapeError if it does not fit.

    params: mbpl_core.policy.PolicyParams (the message carries obs_indices and state_dim). Checks
    state_dim = dX and dU of the robot; with ``limits``, that a sound bound of the action over the whole
    reachable state box (interval propagation) and the action std are within them, so a policy whose
    weights would command huge or non-finite efforts anywhere the robot can be is never deployed.
    """
    require_params_shape(params, setup.dX, setup.dU)
    if limits is not None:
        gain = policy_gain_bound(params)
        if not gain <= limits.max_policy_gain:
            raise ShapeError(f"policy gain bound max |du/dx| <= {gain:.3g} exceeds max_policy_gain = "
                             f"{limits.max_policy_gain:g}")
        limits.check("policy", policy_action_bound(params, limits.box))
    policy = NumpyPolicy(params)
    policy.act(0, np.zeros(setup.dX), None)  # raises ShapeError on a non-finite action
    return policy


class ControllerStore:
    """Accepted LG controllers per condition, the newest ``history`` kept and looked up by id.

    Not thread-safe by itself: :class:`Sampler` calls it under its lock.
    """

    def __init__(self, num_conditions: int, history: int) -> None:
        self._by_condition: list[OrderedDict[int, LinearGaussianController]] = [
            OrderedDict() for _ in range(num_conditions)]
        self.history = history

    def add(self, condition: int, controller_id: int, controller: LinearGaussianController,
            keep: frozenset[int] = frozenset()) -> None:
        """Store a validated controller as the newest of its condition, evicting the oldest beyond history.

        Ids in ``keep`` (those a queued, running or last refused request names) are never evicted, so
        however many other controllers arrive, the one the trainer asked for stays.
        """
        store = self._by_condition[condition]
        store.pop(controller_id, None)  # a re-sent id becomes the newest again
        store[controller_id] = controller
        evictable = [cid for cid in store if cid not in keep and cid != controller_id]
        while len(store) > self.history and evictable:
            del store[evictable.pop(0)]

    def get(self, condition: int, controller_id: int) -> tuple[int, LinearGaussianController] | None:
        """(id, controller); controller_id 0 means the newest accepted one. None if not received."""
        store = self._by_condition[condition]
        if controller_id == 0:
            return next(reversed(store.items()), None)
        found = store.get(controller_id)
        return None if found is None else (controller_id, found)


# ------------------------------------------------------------------------------------ state inbox
@dataclass(frozen=True)
class JointReading:
    """One joint_states message: q, qd (dQ,), header stamp (s), receipt time (monotonic ns), sequence.

    fault: non-empty when the message was invalid (NaN/Inf, missing joints); q, qd are then empty.
    """

    q: np.ndarray
    qd: np.ndarray
    stamp: float
    received_ns: int
    seq: int
    fault: str = ""


class StateInbox:
    """The latest joint state, and a way to wait for a newer one (thread-safe)."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._cond = threading.Condition()
        self._latest: JointReading | None = None
        self._clock = clock

    def put(self, q: np.ndarray, qd: np.ndarray, stamp: float, fault: str = "") -> JointReading:
        """Store a reading (stamped with the receipt time) and wake the waiters; returns it."""
        with self._cond:
            seq = 1 if self._latest is None else self._latest.seq + 1
            self._latest = JointReading(q, qd, float(stamp), self._clock(), seq, fault)
            self._cond.notify_all()
            return self._latest

    @property
    def seq(self) -> int:
        """Sequence number of the latest reading (0 before the first)."""
        latest = self._latest
        return 0 if latest is None else latest.seq

    def latest(self) -> JointReading | None:
        """The newest reading, or None before the first."""
        return self._latest

    def wait_newer(self, seq: int, timeout: float,
                   stop: threading.Event | None = None) -> JointReading | None:
        """The latest reading once its seq > ``seq``; None after ``timeout`` s or when ``stop`` is set."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.seq <= seq:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return None
                self._cond.wait(min(remaining, 0.05))
            return self._latest


# ----------------------------------------------------------------------------------------- trials
class TrialAbortError(RuntimeError):
    """A running trial cannot go on; the message is the abort reason published with the sample."""


class TrialRefusedError(ValueError):
    """A trial request cannot be accepted; the message is the RunTrial answer."""


@dataclass(frozen=True)
class TrialRequest:
    """RunTrial: condition m, trial id, "lg" | "policy", noise seed, add_noise, expected controller id.

    controller_id 0 means the newest accepted controller of the condition (ignored for "policy");
    run_token: the run the caller belongs to (refused unless it is the sampler's).
    """

    condition: int
    trial_id: int
    policy_kind: str = "lg"
    seed: int = 0
    add_noise: bool = True
    controller_id: int = 0
    run_token: str = ""


@dataclass(frozen=True)
class TrialResult:
    """A finished or aborted trial: X (n, dX), U (n, dU), ee_jacobians (n, dP, dQ), n = steps recorded.

    n = T for a complete trial; an aborted one keeps the steps recorded before the fault (maybe none).
    controller_id: the LG controller's id, or the policy id for policy_kind "policy".
    Times: seconds (sim time in lockstep, wall time in realtime); deadline_misses during the trial.
    """

    request: TrialRequest
    controller_id: int
    X: np.ndarray
    U: np.ndarray
    ee_jacobians: np.ndarray
    aborted: bool = False
    abort_reason: str = ""
    start_time: float = 0.0
    end_time: float = 0.0
    deadline_misses: int = 0

    @property
    def steps(self) -> int:
        """Steps recorded (T unless aborted)."""
        return int(self.X.shape[0])

    def batch(self) -> SampleBatch | None:
        """SampleBatch with N = 1 (X (1, n, dX), ...), or None when no step was recorded."""
        if self.steps == 0:
            return None
        return SampleBatch(self.X[None], self.U[None], self.ee_jacobians[None])


@dataclass(frozen=True, eq=False)
class QueuedTrial:
    """An accepted request with the controller or policy it will run (snapshot taken at acceptance)."""

    request: TrialRequest
    controller_id: int
    source: LinearGaussianController | NumpyPolicy | PlanSource | RandomEfforts


class TrialRecorder:
    """Runs one trial step by step: x_t from (q_t, q̇_t), u_t = clip(π_t(x_t)), and records X, U, J."""

    def __init__(self, setup: RobotSetup, queued: QueuedTrial) -> None:
        request = queued.request
        T, dU = setup.T, setup.dU
        noise = trial_noise(request.seed, T, dU, setup.noise) if request.add_noise else None
        self._act = self._action_function(queued.source, noise)
        self.setup, self.queued = setup, queued
        self._target = setup.targets[request.condition]
        self.X = np.zeros((T, setup.dX))
        self.U = np.zeros((T, dU))
        self.J = np.zeros((T, setup.layout.dP, dU))
        self.t = 0
        self.start_time = self.end_time = 0.0

    @staticmethod
    def _action_function(source: LinearGaussianController | NumpyPolicy | PlanSource | RandomEfforts,
                         noise: np.ndarray | None) -> Callable[[int, np.ndarray], np.ndarray]:
        if isinstance(source, LinearGaussianController):
            # k'_t = k_t + chol_t ε_t once per trial: one matrix-vector product per step, and replayable
            folded = source if noise is None else source.with_noise_folded(noise)
            return lambda t, x: folded.act(t, x)
        return lambda t, x: source.act(t, x, None if noise is None else noise[t])

    @property
    def finished(self) -> bool:
        """All T steps recorded."""
        return self.t >= self.setup.T

    def step(self, reading: JointReading | None, time_s: float) -> np.ndarray:
        """Record step t of ``reading``; returns the clipped command u_t (dU,). TrialAbortError on faults."""
        if reading is None:
            raise TrialAbortError("no joint state received")
        if reading.fault:
            raise TrialAbortError(f"invalid joint state: {reading.fault}")
        t = self.t
        try:
            x, jac = self.setup.kinematics.state_and_jacobian(reading.q, reading.qd, self._target)
            u = self._act(t, x)
        except (ShapeError, PlanAbortError) as err:
            raise TrialAbortError(f"step {t}: {err}") from err
        if not np.all(np.isfinite(u)):
            raise TrialAbortError(f"step {t}: action is not finite: {u}")
        limits = self.setup.effort_limits
        u = np.clip(u, -limits, limits)
        self.X[t], self.U[t], self.J[t] = x, u, jac
        if t == 0:
            self.start_time = time_s
        self.end_time = time_s
        self.t += 1
        return u

    def result(self, abort_reason: str = "", deadline_misses: int = 0) -> TrialResult:
        """The steps recorded so far as a TrialResult; aborted iff abort_reason is non-empty."""
        n = self.t
        return TrialResult(request=self.queued.request, controller_id=self.queued.controller_id,
                           X=self.X[:n].copy(), U=self.U[:n].copy(), ee_jacobians=self.J[:n].copy(),
                           aborted=bool(abort_reason), abort_reason=abort_reason,
                           start_time=self.start_time, end_time=self.end_time,
                           deadline_misses=deadline_misses)


class SafeHold:
    """The command held between trials and after faults: u = clip(kp (q_hold − q) − kd q̇), (dU,).

    q_hold is latched from the first state after :meth:`engage`; zero effort when kp = kd = 0, and
    whenever the state is missing, stale or invalid (a hold on a stale state could push anywhere).
    """

    def __init__(self, kp: float, kd: float, effort_limits: np.ndarray) -> None:
        self.kp, self.kd = float(kp), float(kd)
        self.limits = np.asarray(effort_limits, dtype=np.float64)
        self._q_hold: np.ndarray | None = None

    def engage(self) -> None:
        """Hold the position of the next state (called whenever a trial ends)."""
        self._q_hold = None

    def command(self, reading: JointReading | None, fresh: bool) -> np.ndarray:
        """The hold command (dU,) for the latest reading; ``fresh``: it is younger than state_timeout."""
        if self.kp == 0.0 and self.kd == 0.0 or reading is None or reading.fault or not fresh:
            return np.zeros_like(self.limits)
        if self._q_hold is None:
            self._q_hold = reading.q.copy()
        u = self.kp * (self._q_hold - reading.q) - self.kd * reading.qd
        return np.clip(u, -self.limits, self.limits)


@dataclass
class SamplerCounters:
    """What the sampler reports on /diagnostics (besides loop timing)."""

    states_received: int = 0
    states_rejected: int = 0
    controllers_received: int = 0
    controllers_rejected: int = 0
    policies_received: int = 0
    policies_rejected: int = 0
    trials_requested: int = 0
    trials_refused: int = 0
    trials_completed: int = 0
    trials_aborted: int = 0
    commands_published: int = 0
    tokens_rejected: int = 0
    plans_received: int = 0
    plans_rejected: int = 0
    plan_age_max: int = 0
    stale_states: int = 0
    last_reject_reason: str = ""
    last_refuse_reason: str = ""
    last_abort_reason: str = ""

    @property
    def messages_rejected(self) -> int:
        """Rejected joint states, controllers, policies and plans."""
        return self.states_rejected + self.controllers_rejected + self.policies_rejected + self.plans_rejected


class Percentiles:
    """Ring buffer of the last ``window`` values with p50/p99 (thread-safe enough: one writer)."""

    def __init__(self, window: int = 10_000) -> None:
        self._values = np.zeros(window)
        self._count = 0

    def add(self, value: float) -> None:
        """Record one value (overwrites the oldest once the window is full)."""
        self._values[self._count % self._values.size] = value
        self._count += 1

    def summary(self, name: str) -> dict[str, float]:
        """{name_p50, name_p99} over the window; empty before the first value."""
        n = min(self._count, self._values.size)
        if n == 0:
            return {}
        values = self._values[:n].copy()
        p50, p99 = np.percentile(values, [50, 99])
        return {f"{name}_p50": float(p50), f"{name}_p99": float(p99)}


# ---------------------------------------------------------------------------------------- sampler
class SamplerIO(Protocol):
    """What the sampler needs from the outside world (the ROS node, or a test's in-process sim)."""

    def publish_command(self, u: np.ndarray) -> None: ...  # (dU,) efforts

    def publish_sample(self, result: TrialResult) -> None: ...

    def reset(self, condition: int, timeout: float) -> None: ...  # raises TrialAbortError with the reason

    def log(self, level: str, text: str) -> None: ...  # level: "info" | "warn" | "error"

    def publish_plan_request(self, request: PlanRequestData) -> None: ...  # policy_kind "mpc"


@dataclass
class _ActiveTrial:
    """The realtime loop's current trial and how the worker learns that it ended."""

    recorder: TrialRecorder
    misses_at_start: int
    done: threading.Event = field(default_factory=threading.Event)
    abort_reason: str = ""


class Sampler:
    """Trial requests, controller/policy stores, the trial worker thread and (realtime) the control loop.

    Threads: the caller's (ROS callbacks: :meth:`on_state`, :meth:`offer_controller`,
    :meth:`request_trial`, ...), the worker (:meth:`serve`: resets, lockstep steps, sample publication)
    and, in realtime mode, the :class:`DeadlineLoop` calling :meth:`tick`.
    """

    def __init__(self, params: SamplerParams, setup: RobotSetup, io: SamplerIO,
                 clock: Callable[[], int] = time.monotonic_ns, wall: Callable[[], float] = time.time) -> None:
        self.params, self.setup, self.io = params, setup, io
        self.clock, self.wall = clock, wall
        self.inbox = StateInbox(clock)
        self.counters = SamplerCounters()
        self.period_s = 1.0 / params.rate_hz if params.rate_hz > 0 else setup.dt
        self.realtime = params.mode == "realtime"
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._controllers = ControllerStore(setup.num_conditions, params.controller_history)
        self._wanted: dict[int, int] = {}  # condition → controller id the last RunTrial of it named
        self.limits = ActionLimits(params.max_gain, params.max_policy_gain,
                                   setup.state_box(params.joint_velocity_limit),
                                   setup.effort_limits, params.max_action_ratio, params.max_noise_ratio)
        self.max_state_age_s = params.max_state_age or 5.0 * (1.0 / params.rate_hz if params.rate_hz > 0
                                                               else setup.dt)
        self.trial_running = threading.Event()  # set while the control loop runs a trial (realtime)
        self._last_reject_log_ns = -NS_PER_S * 10
        self._unlogged_rejects = 0
        self._policy: tuple[int, NumpyPolicy] | None = None
        self.plans = PlanInbox(setup.dU, setup.effort_limits)
        self._queue: deque[QueuedTrial] = deque()
        self._running_id: int | None = None
        self._plan_ages: list[int] | None = None  # the last MPC trial's plan ages (PlanSource.plan_ages)
        self._consumed_seq = 0
        self._last_state_warning_ns = -NS_PER_S * 10
        self._active: _ActiveTrial | None = None
        self._hold = SafeHold(params.hold_kp, params.hold_kd, setup.effort_limits)
        self._stop = threading.Event()
        self.loop = None
        if self.realtime:
            self.loop = DeadlineLoop(self.period_s, self.tick, name="sampler_rt",
                                     priority=params.realtime_priority)
        self.step_stats = self.loop.stats if self.loop else LoopStats(int(round(self.period_s * NS_PER_S)))
        self.state_age_us = Percentiles()
        self._worker = threading.Thread(target=self.serve, name="sampler_worker", daemon=True)
        if self.realtime and abs(self.period_s - setup.dt) > 1e-9 * setup.dt:
            io.log("warn", f"rate_hz = {params.rate_hz:g} is not the experiment's 1/dt = {1 / setup.dt:g}: "
                           "controllers fitted at dt run at another period")

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, control_loop: bool = True) -> None:
        """Start the worker thread and, in realtime mode, the control loop (the safe hold begins).

        control_loop False: the caller drives :meth:`tick` itself (tests on a fake clock).
        """
        self._worker.start()
        if self.loop is not None and control_loop:
            self.loop.start()
            if self.loop.priority and self.loop.started.wait(5.0):
                level = "warn" if self.loop.scheduling.startswith("normal") else "info"
                self.io.log(level, f"control thread scheduling: {self.loop.scheduling}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker and the control loop (a running trial is aborted and not published)."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if self.loop is not None:
            self.loop.stop(timeout)
        if self._worker.is_alive():
            self._worker.join(timeout)

    # -- inputs --------------------------------------------------------------------------------------
    def on_state(self, q: np.ndarray, qd: np.ndarray, stamp: float) -> None:
        """A valid joint state: q, qd (dQ,) in the experiment's joint order; stamp (s)."""
        self.counters.states_received += 1
        self.inbox.put(q, qd, stamp)

    def on_bad_state(self, reason: str) -> None:
        """An invalid joint state (NaN/Inf, missing joints): counted, and it aborts a running trial."""
        self.counters.states_received += 1
        self.counters.states_rejected += 1
        self.counters.last_reject_reason = f"joint state: {reason}"
        self.inbox.put(np.zeros(0), np.zeros(0), 0.0, fault=reason)
        now = self.clock()
        if now - self._last_state_warning_ns > NS_PER_S:  # a faulty driver can send 1000 of them a second
            self._last_state_warning_ns = now
            self.io.log("warn", f"invalid joint state ({self.counters.states_rejected} so far): {reason}")

    def _reject(self, kind: str, reason: str) -> None:
        setattr(self.counters, f"{kind}_rejected", getattr(self.counters, f"{kind}_rejected") + 1)
        self.counters.last_reject_reason = reason
        now = self.clock()
        if now - self._last_reject_log_ns < NS_PER_S:  # a flood of bad messages must not flood the log
            self._unlogged_rejects += 1
            return
        self._last_reject_log_ns = now
        more = f" (and {self._unlogged_rejects} more in the last second)" if self._unlogged_rejects else ""
        self._unlogged_rejects = 0
        self.io.log("warn", f"rejected {reason}; the last good one stays{more}")

    def token_ok(self, run_token: str) -> bool:
        """True iff ``run_token`` is this sampler's (constant-time comparison)."""
        return hmac.compare_digest(str(run_token).encode(), self.params.run_token.encode())

    def _foreign(self, run_token: str) -> bool:
        """True (and counted) when ``run_token`` is not this sampler's."""
        if self.token_ok(run_token):
            return False
        self.counters.tokens_rejected += 1
        return True

    def offer_controller(self, condition: int, controller_id: int,
                         controller: LinearGaussianController | Exception, run_token: str = "") -> bool:
        """Validate and store a controller (or count the conversion error it is); True if accepted."""
        self.counters.controllers_received += 1
        what = f"controller {controller_id} for condition {condition}"
        if self._foreign(run_token):
            self._reject("controllers", f"{what}: unknown run_token (not from this run)")
            return False
        if isinstance(controller, Exception):
            self._reject("controllers", f"{what}: {controller}")
            return False
        try:
            if not 0 <= condition < self.setup.num_conditions:
                raise ShapeError(f"condition out of range [0, {self.setup.num_conditions})")
            validate_controller(controller, self.setup, self.limits)
        except Exception as err:  # noqa: BLE001 - any failure is a rejection, never a sampler exit
            self._reject("controllers", f"{what}: {err}")
            return False
        with self._lock:
            self._controllers.add(condition, controller_id, controller, self._pinned(condition))
        self.io.log("info", f"accepted {what}")
        return True

    def _pinned(self, condition: int) -> frozenset[int]:
        """Controller ids of a condition that queued, running or the last requested trials name."""
        ids = {q.controller_id for q in self._queue if q.request.condition == condition}
        wanted = self._wanted.get(condition)
        return frozenset(ids | ({wanted} if wanted else set()))

    def offer_policy(self, policy_id: int, weights: PolicyParams | Exception, run_token: str = "") -> bool:
        """Validate and deploy policy weights (or count the conversion error); True if accepted."""
        self.counters.policies_received += 1
        if self._foreign(run_token):
            self._reject("policies", f"policy {policy_id}: unknown run_token (not from this run)")
            return False
        if isinstance(weights, Exception):
            self._reject("policies", f"policy {policy_id}: {weights}")
            return False
        try:
            policy = build_numpy_policy(weights, self.setup, self.limits)
        except Exception as err:  # noqa: BLE001 - any failure is a rejection, never a sampler exit
            self._reject("policies", f"policy {policy_id}: {err}")
            return False
        with self._lock:
            self._policy = (policy_id, policy)
        self.io.log("info", f"deployed policy {policy_id}")
        return True

    def request_trial(self, request: TrialRequest) -> tuple[bool, str]:
        """Accept (queue) or refuse a RunTrial request at once; returns (accepted, message)."""
        with self._wake:
            self.counters.trials_requested += 1
            if self._foreign(request.run_token):
                self.counters.trials_refused += 1
                self.counters.last_refuse_reason = "unknown run_token (not from this run)"
                return False, self.counters.last_refuse_reason
            if request.policy_kind == "lg" and request.controller_id and \
                    0 <= request.condition < self.setup.num_conditions:
                self._wanted[request.condition] = request.controller_id
            queued_ids = [q.request.trial_id for q in self._queue]
            if request.trial_id == self._running_id or request.trial_id in queued_ids:
                return True, f"trial {request.trial_id} is already queued"
            try:
                queued = self._resolve(request)
                limit = self.params.max_queued_trials + (self._running_id is None)
                if len(self._queue) >= limit:
                    raise TrialRefusedError(f"busy: {len(self._queue)} trials queued")
            except TrialRefusedError as err:
                self.counters.trials_refused += 1
                self.counters.last_refuse_reason = str(err)
                return False, str(err)
            self._queue.append(queued)
            self._wake.notify_all()
        return True, f"trial {request.trial_id} queued at position {len(queued_ids) + 1}"

    def _resolve(self, request: TrialRequest) -> QueuedTrial:
        """The request with its controller or policy snapshot; TrialRefusedError naming what is missing."""
        m = request.condition
        if request.policy_kind not in POLICY_KINDS:
            raise TrialRefusedError(f"policy_kind must be one of {POLICY_KINDS}, got {request.policy_kind!r}")
        if not 0 <= m < self.setup.num_conditions:
            raise TrialRefusedError(f"condition {m} out of range [0, {self.setup.num_conditions})")
        if request.policy_kind == "random":
            limits = self.setup.random_limits
            limits = self.setup.effort_limits if limits is None else limits
            efforts = RandomEfforts(request.seed, self.setup.T, limits)
            return QueuedTrial(request, 0, efforts)
        if request.policy_kind == "mpc":
            if request.controller_id < 1:
                raise TrialRefusedError('policy_kind "mpc" needs the model version (>= 1) in controller_id')
            source = PlanSource(self.plans, self.io.publish_plan_request, request.trial_id, m, request.seed,
                                request.controller_id, not self.realtime, self.params.plan_timeout,
                                self.params.max_plan_age, request.run_token, self._stop,
                                self.params.first_plan_wait)
            return QueuedTrial(request, request.controller_id, source)
        if request.policy_kind == "policy":
            if self._policy is None:
                raise TrialRefusedError("no policy received yet")
            return QueuedTrial(request, self._policy[0], self._policy[1])
        found = self._controllers.get(m, request.controller_id)
        if found is None:
            which = f"controller {request.controller_id}" if request.controller_id else "a controller"
            raise TrialRefusedError(f"{which} for condition {m} not received yet")
        return QueuedTrial(request, found[0], found[1])

    # -- worker ----------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Worker thread: run queued trials one after another and publish each sample."""
        while not self._stop.is_set():
            with self._wake:
                if not self._queue:
                    self._wake.wait(0.1)
                    continue
                queued = self._queue.popleft()
                self._running_id = queued.request.trial_id
            result = self.run_trial(queued)
            with self._lock:
                self._running_id = None
            if self._stop.is_set():
                return  # a trial cut short by shutdown is not a sample
            try:
                self._report(result)
            except Exception as err:  # noqa: BLE001 - the worker must outlive one failed publication
                self.io.log("error", f"could not publish trial {queued.request.trial_id}: {err!r}")

    def _report(self, result: TrialResult) -> None:
        what = f"trial {result.request.trial_id} (condition {result.request.condition})"
        if self._plan_ages is not None:
            what += f" [{plan_age_summary(self._plan_ages)}]"
        if result.aborted:
            self.counters.trials_aborted += 1
            self.counters.last_abort_reason = f"{what}: {result.abort_reason}"
            self.io.log("warn", f"{what} aborted after {result.steps} steps: {result.abort_reason}")
        else:
            self.counters.trials_completed += 1
            misses = result.deadline_misses
            self.io.log("info", f"{what} done: {result.steps} steps, {misses} deadline misses")
        self.io.publish_sample(result)

    def run_trial(self, queued: QueuedTrial) -> TrialResult:
        """Reset, wait for the first state, run T steps; aborted results carry the reason."""
        recorder = TrialRecorder(self.setup, queued)
        try:
            first = self._first_state(queued.request.condition)
            if self.realtime:
                return self._run_realtime(recorder)
            self._run_lockstep(recorder, first)
        except TrialAbortError as err:
            return recorder.result(abort_reason=str(err))
        except Exception as err:  # noqa: BLE001 - e.g. a failed publish: abort the trial, keep serving
            return recorder.result(abort_reason=f"internal error: {err!r}")
        finally:
            self._plan_ages = None
            if isinstance(queued.source, PlanSource):
                queued.source.close()
                self._plan_ages = list(queued.source.plan_ages)
                executed = [a for a in self._plan_ages if a >= 0]
                self.counters.plan_age_max = max([self.counters.plan_age_max, *executed])
        return recorder.result()

    def offer_plan(self, plan: PlanData | Exception, run_token: str = "") -> bool:
        """Validate and store a plan of a running MPC trial (or count the conversion error); True if kept."""
        self.counters.plans_received += 1
        try:
            if isinstance(plan, Exception):
                raise plan
            if self._foreign(run_token):
                raise ShapeError("unknown run_token (not from this run)")
            self.plans.offer(plan)
        except (ShapeError, ValueError) as err:
            self.counters.plans_rejected += 1
            self.counters.last_reject_reason = f"plan: {err}"
            return False
        return True

    def _first_state(self, condition: int) -> JointReading:
        """The state a trial starts from: the first one after the reset (or, without one, an unused one).

        Lockstep: the sim publishes x_0 before answering the reset and nothing else until a command,
        so any state newer than the last one before the call is x_0. Realtime: states stream, and one
        published just before the reset may still be in flight, so only a state received after the
        answer counts.
        """
        seq = self.inbox.seq if self.realtime else self._consumed_seq
        after = ""
        if self.params.reset_service:
            seq, after = self.inbox.seq, " after the reset"
            self.io.reset(condition, self.params.reset_timeout)
            if self.realtime:
                seq = self.inbox.seq
        reading = self.inbox.wait_newer(seq, self.params.state_timeout, self._stop)
        if reading is None:
            raise TrialAbortError(self._no_state_reason(after))
        return reading

    def _no_state_reason(self, after: str = "") -> str:
        if self._stop.is_set():
            return "sampler shutting down"
        return f"stale state: no joint_states within state_timeout = {self.params.state_timeout:g} s{after}"

    def _run_lockstep(self, recorder: TrialRecorder, reading: JointReading) -> None:
        """One step per received state; u_{T-1} is recorded but not published (see the module docstring)."""
        T = self.setup.T
        for t in range(T):
            start = self.clock()
            self._consumed_seq = reading.seq
            u = recorder.step(reading, reading.stamp)
            if t < T - 1:
                self.io.publish_command(u)
                self.counters.commands_published += 1
            end = self.clock()
            self.step_stats.record(TickInfo(t, start, start), end)
            self.state_age_us.add((end - reading.received_ns) * 1e-3)
            if t < T - 1:
                nxt = self.inbox.wait_newer(reading.seq, self.params.state_timeout, self._stop)
                if nxt is None:
                    raise TrialAbortError(self._no_state_reason())
                reading = nxt

    def _run_realtime(self, recorder: TrialRecorder) -> TrialResult:
        """Hand the trial to the control loop and wait until it completes or aborts."""
        assert self.loop is not None
        active = _ActiveTrial(recorder, self.step_stats.deadline_misses)
        self._active = active
        self.trial_running.set()
        try:
            return self._await_active(active, recorder)
        finally:
            self.trial_running.clear()

    def _await_active(self, active: _ActiveTrial, recorder: TrialRecorder) -> TrialResult:
        assert self.loop is not None
        while not active.done.wait(0.1):
            if self._stop.is_set() or (self.loop.started.is_set() and not self.loop.running):
                self._active = None
                died = f"control loop died: {self.loop.error}"
                reason = "sampler shutting down" if self._stop.is_set() else died
                return recorder.result(abort_reason=reason)
        misses = self.step_stats.deadline_misses - active.misses_at_start
        return recorder.result(abort_reason=active.abort_reason, deadline_misses=misses)

    # -- realtime control loop ---------------------------------------------------------------------------
    def _fresh(self, reading: JointReading | None, now_ns: int) -> bool:
        """The reading is at most max_state_age old (a few control periods: a reading reused longer
        than that is a driver fault, not jitter)."""
        return reading is not None and now_ns - reading.received_ns <= self.max_state_age_s * NS_PER_S

    def _stale_reason(self, reading: JointReading | None, now_ns: int) -> str:
        if reading is None:
            return self._no_state_reason()
        age_ms = (now_ns - reading.received_ns) * 1e-6
        return (f"stale state: the latest joint state is {age_ms:.1f} ms old, beyond max_state_age = "
                f"{self.max_state_age_s * 1e3:g} ms")

    def tick(self, info: TickInfo) -> None:
        """One control period: a step of the active trial, or the safe hold between trials.

        Total: any error of a step aborts the trial and commands the hold with zero effort, so the control
        loop never dies on a message.
        """
        reading = self.inbox.latest()
        fresh = self._fresh(reading, info.start_ns)
        active = self._active
        if active is None:
            self._publish(self._hold.command(reading, fresh))
            return
        try:
            if not fresh:
                self.counters.stale_states += 1
                raise TrialAbortError(self._stale_reason(reading, info.start_ns))
            u = active.recorder.step(reading, self.wall())
        except Exception as err:  # noqa: BLE001 - TrialAbortError, or anything else: abort, hold
            active.abort_reason = str(err) if isinstance(err, TrialAbortError) else f"internal error: {err!r}"
            self._end_active(active)
            self._publish(self._hold.command(reading, fresh=False))
            return
        self._publish(u)
        assert reading is not None
        self.state_age_us.add((self.clock() - reading.received_ns) * 1e-3)
        if active.recorder.finished:
            self._end_active(active)

    def _end_active(self, active: _ActiveTrial) -> None:
        self._active = None
        self._hold.engage()
        active.done.set()

    def _publish(self, u: np.ndarray) -> None:
        self.io.publish_command(u)
        self.counters.commands_published += 1

    # -- diagnostics -------------------------------------------------------------------------------------
    def diagnostics(self) -> tuple[bool, str, dict[str, str]]:
        """(ok, one-line summary, key → value) for /diagnostics.

        Timing keys: achieved_rate_hz, deadline_misses, period_jitter_p50/p99_us, compute_p50/p99_us
        (realtime: per tick; lockstep: per step, rate in steps per wall-clock second, no deadlines) and
        state_age_us_p50/p99 (joint state receipt → command published).
        """
        c = self.counters
        timing = self.step_stats.summary() | self.state_age_us.summary("state_age_us")
        values = {k: v for k, v in vars(c).items()} | {"messages_rejected": c.messages_rejected}
        values |= {k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in timing.items()}
        values |= {"mode": self.params.mode, "rate_hz": f"{1.0 / self.period_s:g}",
                   "queued_trials": len(self._queue), "running_trial": self._running_id}
        if self.loop is not None:
            values["control_loop"] = "running" if self.loop.running else f"stopped: {self.loop.error!r}"
            values["control_scheduling"] = self.loop.scheduling
        loop_dead = self.loop is not None and self.loop.error is not None
        ok = not (c.messages_rejected or c.trials_aborted or self.step_stats.deadline_misses or loop_dead)
        message = (f"{self.params.mode}: {c.trials_completed} trials done, {c.trials_aborted} aborted, "
                   f"{c.messages_rejected} messages rejected")
        return ok, message, {k: str(v) for k, v in values.items()}
