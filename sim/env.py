"""MujocoEnv: the in-process Environment of mbpl_core, and the stepping API the ROS sim node wraps.

One control period = ``substeps`` physics steps with the command held constant (zero-order hold),
commands clipped to the effort limits. The state follows mbpl_core.containers.StateLayout:
x = [q (dQ), qd (dQ), ee points − targets (3P), ee point velocities (3P)], computed from q, qd by
:class:`EndEffectorKinematics` exactly as the sampler does on hardware.
"""

from __future__ import annotations

from typing import Protocol

import mujoco
import numpy as np

from mbpl_core.config import ConfigError
from mbpl_core.containers import SampleBatch, ShapeError, StateLayout, check_finite, check_shape
from mbpl_sim.experiment import ExperimentConfig
from mbpl_sim.kinematics import EndEffectorKinematics
from mbpl_sim.robot import actuated_joint_ids
from mbpl_sim.scenes import build_scene_spec, task_body_name
from mbpl_sim.task import CONDITION_SETS, Condition, ConditionSetName


class Policy(Protocol):
    """Anything with act(t, x (dX,), noise (dU,) | None) -> u (dU,) (LG controller, neural policy)."""

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray: ...


class SimulationError(RuntimeError):
    """The physics became unstable (MuJoCo reported bad accelerations or non-finite state)."""


# Warnings that mean the state is no longer trustworthy: MuJoCo resets the data silently otherwise.
_FATAL_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQACC, mujoco.mjtWarning.mjWARN_BADQVEL, mujoco.mjtWarning.mjWARN_BADQPOS,
)


class MujocoEnv:
    """A MuJoCo scene of one experiment, with its training or held-out conditions.

    Attributes: T, dX, dU, dt (control period, s), num_conditions, layout (StateLayout),
    joint_names (dU,), effort_limits (dU,), kinematics, model, data, conditions.
    """

    def __init__(self, experiment: ExperimentConfig,
                 condition_set: ConditionSetName = "train") -> None:
        if condition_set not in CONDITION_SETS:
            raise ConfigError(f"condition_set must be one of {CONDITION_SETS}, got {condition_set!r}")
        self.experiment = experiment
        self.conditions: list[Condition] = experiment.conditions(condition_set)
        if not self.conditions:
            raise ConfigError(f"task.{'conditions' if condition_set == 'train' else condition_set}: "
                              f"no {condition_set} conditions configured")
        self.model = build_scene_spec(experiment).compile()
        self.data = mujoco.MjData(self.model)
        robot = experiment.robot
        self.joint_names = tuple(robot.joints)
        jids = actuated_joint_ids(self.model, self.joint_names)
        self._qpos_adr = self.model.jnt_qposadr[jids]
        self._dof_adr = self.model.jnt_dofadr[jids]
        self.effort_limits = self.model.actuator_ctrlrange[:, 1].copy()
        self.effort_limits.setflags(write=False)
        self.kinematics = EndEffectorKinematics(self.model, self.joint_names, robot.ee.frame, robot.ee.points)
        self.layout: StateLayout = experiment.layout
        self.T, self.dX, self.dU = experiment.task.T, self.layout.dX, robot.dQ
        self.dt, self.substeps = experiment.task.dt, experiment.task.substeps
        self.num_conditions = len(self.conditions)
        self._mocap = int(self.model.body_mocapid[mujoco.mj_name2id(
            self.model, mujoco.mjtObj.mjOBJ_BODY, task_body_name(experiment))])
        self._targets = [experiment.target_points(c) for c in self.conditions]
        self._condition = 0

    def _check_condition(self, condition: int) -> int:
        if not 0 <= int(condition) < self.num_conditions:
            raise IndexError(f"condition {condition} out of range [0, {self.num_conditions})")
        return int(condition)

    def target_points(self, condition: int) -> np.ndarray:
        """(P, 3) world targets of the ee points in a condition."""
        return self._targets[self._check_condition(condition)].copy()

    def reset(self, condition: int) -> np.ndarray:
        """Start a trial: q = initial_q, qd = 0, task objects placed; returns x (dX,)."""
        cond = self.conditions[self._check_condition(condition)]
        return self.place(condition, cond.initial_q, np.zeros(self.dU))

    def place(self, condition: int, q: np.ndarray, qd: np.ndarray) -> np.ndarray:
        """Start from a given joint state: the condition's scene with q (dQ,), qd (dQ,); returns x (dX,).
        :meth:`reset` places the initial state; a perfect model places any state of a trajectory."""
        self._condition = self._check_condition(condition)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._qpos_adr] = np.asarray(q, dtype=np.float64)
        self.data.qvel[self._dof_adr] = np.asarray(qd, dtype=np.float64)
        self.data.mocap_pos[self._mocap] = self.conditions[self._condition].position
        mujoco.mj_forward(self.model, self.data)
        return self.state()

    def x0(self, condition: int) -> np.ndarray:
        """Initial state of a condition (dX,), without touching the running simulation."""
        condition = self._check_condition(condition)
        q0 = self.conditions[condition].initial_q
        return self.kinematics.state_vector(q0, np.zeros(self.dU), self._targets[condition])

    def state(self) -> np.ndarray:
        """Current x (dX,)."""
        return self.kinematics.state_vector(self.joint_positions(), self.joint_velocities(),
                                            self._targets[self._condition])

    def joint_positions(self) -> np.ndarray:
        """q (dQ,) of the actuated joints."""
        return self.data.qpos[self._qpos_adr].copy()

    def joint_velocities(self) -> np.ndarray:
        """qd (dQ,) of the actuated joints."""
        return self.data.qvel[self._dof_adr].copy()

    @property
    def time(self) -> float:
        """Simulated time since reset (s)."""
        return float(self.data.time)

    def clip_action(self, u: np.ndarray) -> np.ndarray:
        """u (dU,) clipped to ±effort_limits; ShapeError on wrong shape or NaN/Inf."""
        u = np.asarray(u, dtype=np.float64)
        check_shape("u", u, (self.dU,))
        check_finite("u", u)
        return np.clip(u, -self.effort_limits, self.effort_limits)

    def step(self, u: np.ndarray) -> np.ndarray:
        """Apply clipped u for one control period (substeps physics steps); returns the new x (dX,).

        Raises SimulationError if MuJoCo flags unstable accelerations or the state is non-finite.
        """
        self.advance(u)
        return self.state()

    def advance(self, u: np.ndarray) -> None:
        """:meth:`step` without computing x (for a caller that reads only the joints)."""
        self.data.ctrl[:] = self.clip_action(u)
        for _ in range(self.substeps):
            mujoco.mj_step(self.model, self.data)
        unstable = any(self.data.warning[w].number for w in _FATAL_WARNINGS)
        if unstable or not np.all(np.isfinite(self.data.qpos)):
            raise SimulationError(f"simulation unstable at t={self.data.time:.4f} s: {self.warning_counts()}")

    def warning_counts(self) -> dict[str, int]:
        """Non-zero MuJoCo warning counters since the last reset, by warning name."""
        return {mujoco.mjtWarning(i).name: int(self.data.warning[i].number)
                for i in range(len(self.data.warning)) if self.data.warning[i].number}

    def ee_distance(self, x: np.ndarray) -> float:
        """Mean Euclidean distance of the ee points to their targets, read from x (dX,)."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[-1] != self.dX:
            raise ShapeError(f"x has last dimension {x.shape[-1]}, expected dX={self.dX}")
        diff = x[..., self.layout.ee_points].reshape(*x.shape[:-1], self.layout.n_points, 3)
        return float(np.mean(np.linalg.norm(diff, axis=-1)))

    def sample(self, policy: Policy, condition: int, noise: np.ndarray | None = None) -> SampleBatch:
        """Run one trial: u_t = clip(policy.act(t, x_t, noise_t)); returns SampleBatch with N = 1.

        X: (1, T, dX); U: (1, T, dU) the applied (clipped) actions; ee_jacobians: (1, T, 3P, dQ).
        noise: (T, dU) standard-normal draws passed to the policy, or None.
        """
        if noise is not None:
            noise = np.asarray(noise, dtype=np.float64)
            check_shape("noise", noise, (self.T, self.dU))
        X = np.empty((self.T, self.dX))
        U = np.empty((self.T, self.dU))
        J = np.empty((self.T, self.layout.dP, self.dU))
        self.reset(condition)
        target = self._targets[self._condition]
        for t in range(self.T):
            X[t], J[t] = self.kinematics.state_and_jacobian(
                self.joint_positions(), self.joint_velocities(), target)
            U[t] = self.clip_action(policy.act(t, X[t], None if noise is None else noise[t]))
            if t < self.T - 1:
                self.step(U[t])
        return SampleBatch(X[None], U[None], J[None])

    def rollout_qpos(self, condition: int, actions: np.ndarray) -> np.ndarray:
        """Full qpos (T+1, nq) when replaying actions (T, dU) from the condition's start (for rendering)."""
        actions = np.asarray(actions, dtype=np.float64)
        self.reset(condition)
        frames = [self.data.qpos.copy()]
        for u in actions:
            self.step(u)
            frames.append(self.data.qpos.copy())
        return np.asarray(frames)
