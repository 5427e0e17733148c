"""Seeded malformed inputs for the robot side, one generator per class of the fault campaign (issue 8).

Each ``bad_*`` function returns ``(class_name, message)``; every message it returns must be rejected by
the sampler (and counted on /diagnostics). ``good_controller`` and ``good_policy`` are accepted ones,
so a test can check that the graph still works between the attacks. Shapes: T, dU, dX of the robot.
"""

from __future__ import annotations

import array
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mbpl_msgs.msg import LinearGaussianController as ControllerMsg
from mbpl_msgs.msg import PolicyParameters
from mbpl_msgs.srv import RunTrial
from sensor_msgs.msg import JointState

from mbpl_core.containers import LinearGaussianController
from mbpl_core.policy import PolicyParams
from mbpl_ros import conversions


@dataclass(frozen=True)
class Robot:
    """What the fuzzer knows of the robot: horizon, dimensions, joints, conditions, the run token."""

    T: int
    dU: int
    dX: int
    joints: tuple[str, ...]
    num_conditions: int
    token: str


def good_controller(robot: Robot, rng: np.random.Generator, scale: float = 0.1) -> LinearGaussianController:
    T, dU, dX = robot.T, robot.dU, robot.dX
    return LinearGaussianController.from_covariance(
        scale * rng.standard_normal((T, dU, dX)), scale * rng.standard_normal((T, dU)),
        np.tile(0.01 * np.eye(dU), (T, 1, 1)))


def good_policy(robot: Robot, rng: np.random.Generator) -> PolicyParams:
    dX, dU, H = robot.dX, robot.dU, 8
    return PolicyParams.from_layers(
        weights=(0.1 * rng.standard_normal((H, dX)), 0.1 * rng.standard_normal((dU, H))),
        biases=(np.zeros(H), np.zeros(dU)), activation="tanh", obs_mean=np.zeros(dX), obs_std=np.ones(dX),
        action_covar=0.01 * np.eye(dU), state_dim=dX)


def _controller_msg(robot: Robot, rng: np.random.Generator, cid: int) -> ControllerMsg:
    msg = conversions.controller_to_msg(good_controller(robot, rng), int(rng.integers(robot.num_conditions)),
                                        cid, run_token=robot.token)
    return msg


def _with(msg: ControllerMsg, field: str, values: np.ndarray) -> ControllerMsg:
    setattr(msg, field, array.array("d", np.asarray(values, dtype=np.float64).ravel()))
    return msg


def _bad_controllers(robot: Robot) -> dict[str, Callable[[np.random.Generator, int], ControllerMsg]]:
    T, dU, dX = robot.T, robot.dU, robot.dX

    def overflow(rng: np.random.Generator, cid: int) -> ControllerMsg:
        msg = ControllerMsg(condition=0, controller_id=cid, run_token=robot.token)
        msg.t_steps, msg.du, msg.dx = [(2**22, 2**21, 2**21), (2**32 - 1,) * 3, (2**16, 2**16, 2**32 - 1)][
            int(rng.integers(3))]
        return msg

    def dims(rng: np.random.Generator, cid: int) -> ControllerMsg:
        msg = _controller_msg(robot, rng, cid)
        which = int(rng.integers(4))
        if which == 0:
            msg.t_steps = T + 1 + int(rng.integers(5))
        elif which == 1:
            msg.dx = dX + 1
        elif which == 2:
            msg.du = 0
        else:
            msg.t_steps = 0
        return msg

    def length(rng: np.random.Generator, cid: int) -> ControllerMsg:
        msg = _controller_msg(robot, rng, cid)
        field = ["k_gains", "k_offsets", "pol_covar"][int(rng.integers(3))]
        data = np.frombuffer(getattr(msg, field), dtype=np.float64)
        return _with(msg, field, data[: max(0, data.size - 1 - int(rng.integers(data.size)))])

    def non_finite(rng: np.random.Generator, cid: int) -> ControllerMsg:
        msg = _controller_msg(robot, rng, cid)
        field = ["k_gains", "k_offsets", "pol_covar"][int(rng.integers(3))]
        data = np.frombuffer(getattr(msg, field), dtype=np.float64).copy()
        data[int(rng.integers(data.size))] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
        return _with(msg, field, data)

    def covariance(rng: np.random.Generator, cid: int) -> ControllerMsg:
        msg = _controller_msg(robot, rng, cid)
        covar = np.frombuffer(msg.pol_covar, dtype=np.float64).reshape(T, dU, dU).copy()
        t = int(rng.integers(T))
        kind = int(rng.integers(3))
        if kind == 0:
            covar[t] = -np.eye(dU)  # not positive definite
        elif kind == 1:
            covar[t, 0, dU - 1] += 1.0  # not symmetric
        else:
            covar[:] = 1e300 * np.eye(dU)  # a std beyond any effort limit
        return _with(msg, "pol_covar", covar)

    def gains(rng: np.random.Generator, cid: int) -> ControllerMsg:
        msg = _controller_msg(robot, rng, cid)
        K = np.frombuffer(msg.k_gains, dtype=np.float64).copy()
        K[int(rng.integers(K.size))] = float(rng.choice([-1.0, 1.0])) * 10.0 ** rng.uniform(5, 300)
        return _with(msg, "k_gains", K)

    def offsets(rng: np.random.Generator, cid: int) -> ControllerMsg:
        msg = _controller_msg(robot, rng, cid)
        k = np.frombuffer(msg.k_offsets, dtype=np.float64).copy()
        k[int(rng.integers(k.size))] = float(rng.choice([-1.0, 1.0])) * 10.0 ** rng.uniform(6, 300)
        return _with(msg, "k_offsets", k)

    def condition(rng: np.random.Generator, cid: int) -> ControllerMsg:
        msg = _controller_msg(robot, rng, cid)
        msg.condition = robot.num_conditions + int(rng.integers(2**31))
        return msg

    def foreign(rng: np.random.Generator, cid: int) -> ControllerMsg:
        msg = _controller_msg(robot, rng, cid)  # well-formed, but not from this run
        msg.run_token = ["", "guess", robot.token + "x", robot.token[:-1]][int(rng.integers(4))]
        return msg

    return {"controller_overflow": overflow, "controller_dims": dims, "controller_length": length,
            "controller_non_finite": non_finite, "controller_covariance": covariance,
            "controller_gain": gains, "controller_offset": offsets, "controller_condition": condition,
            "controller_foreign_token": foreign}


def _policy_msg(robot: Robot, rng: np.random.Generator, pid: int) -> PolicyParameters:
    return conversions.policy_params_to_msg(good_policy(robot, rng), pid, run_token=robot.token)


def _bad_policies(robot: Robot) -> dict[str, Callable[[np.random.Generator, int], PolicyParameters]]:
    def layers(rng: np.random.Generator, pid: int) -> PolicyParameters:
        msg = _policy_msg(robot, rng, pid)
        msg.layer_sizes = array.array("I", [[robot.dX], [robot.dX, 0, robot.dU], [robot.dX + 1, 8, robot.dU],
                                            [robot.dX, 2**31, robot.dU]][int(rng.integers(4))])
        return msg

    def wrong_robot(rng: np.random.Generator, pid: int) -> PolicyParameters:
        msg = _policy_msg(robot, rng, pid)
        msg.state_dim = robot.dX + 1 + int(rng.integers(3))
        return msg

    def non_finite(rng: np.random.Generator, pid: int) -> PolicyParameters:
        msg = _policy_msg(robot, rng, pid)
        w = np.frombuffer(msg.weights, dtype=np.float64).copy()
        w[int(rng.integers(w.size))] = [np.nan, np.inf][int(rng.integers(2))]
        msg.weights = array.array("d", w)
        return msg

    def huge(rng: np.random.Generator, pid: int) -> PolicyParameters:
        msg = _policy_msg(robot, rng, pid)
        w = np.frombuffer(msg.weights, dtype=np.float64).copy()
        w[: 8 * robot.dX] *= 10.0 ** rng.uniform(150, 250)  # first layer: finite at x = 0, huge elsewhere
        msg.weights = array.array("d", w)
        return msg

    def normalisation(rng: np.random.Generator, pid: int) -> PolicyParameters:
        msg = _policy_msg(robot, rng, pid)
        std = np.ones(robot.dX)
        std[int(rng.integers(robot.dX))] = [0.0, -1.0, np.nan][int(rng.integers(3))]
        msg.obs_std = array.array("d", std)
        return msg

    def covariance(rng: np.random.Generator, pid: int) -> PolicyParameters:
        msg = _policy_msg(robot, rng, pid)
        msg.action_covar = array.array("d", (-np.eye(robot.dU)).ravel())
        return msg

    def activation(rng: np.random.Generator, pid: int) -> PolicyParameters:
        msg = _policy_msg(robot, rng, pid)
        msg.activation = ["sigmoid", "", "RELU", "relu "][int(rng.integers(4))]
        return msg

    def indices(rng: np.random.Generator, pid: int) -> PolicyParameters:
        msg = _policy_msg(robot, rng, pid)
        msg.obs_indices = array.array("I", [0] * robot.dX)  # not unique
        return msg

    def foreign(rng: np.random.Generator, pid: int) -> PolicyParameters:
        msg = _policy_msg(robot, rng, pid)
        msg.run_token = ["", "guess"][int(rng.integers(2))]
        return msg

    return {"policy_layers": layers, "policy_wrong_robot": wrong_robot, "policy_non_finite": non_finite,
            "policy_huge_weights": huge, "policy_normalisation": normalisation,
            "policy_covariance": covariance,
            "policy_activation": activation, "policy_obs_indices": indices, "policy_foreign_token": foreign}


def _bad_states(robot: Robot) -> dict[str, Callable[[np.random.Generator, int], JointState]]:
    def state(rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
        return list(robot.joints), rng.uniform(-1, 1, robot.dU), rng.uniform(-1, 1, robot.dU)

    def non_finite(rng: np.random.Generator, _n: int) -> JointState:
        names, q, qd = state(rng)
        (q if rng.integers(2) else qd)[int(rng.integers(robot.dU))] = [np.nan, np.inf, -np.inf][
            int(rng.integers(3))]
        return conversions.arrays_to_joint_state(names, q, qd)

    def missing(rng: np.random.Generator, _n: int) -> JointState:
        names, q, qd = state(rng)
        drop = int(rng.integers(robot.dU))
        keep = [i for i in range(robot.dU) if i != drop]
        return conversions.arrays_to_joint_state([names[i] for i in keep], q[keep], qd[keep])

    def short(rng: np.random.Generator, _n: int) -> JointState:
        names, q, qd = state(rng)
        msg = conversions.arrays_to_joint_state(names, q, qd)
        msg.velocity = array.array("d", qd[:-1])
        return msg

    return {"state_non_finite": non_finite, "state_missing_joint": missing, "state_short_arrays": short}


def _bad_trials(robot: Robot) -> dict[str, Callable[[np.random.Generator, int], RunTrial.Request]]:
    def base(rng: np.random.Generator, n: int) -> RunTrial.Request:
        return RunTrial.Request(condition=0, trial_id=10**9 + n, policy_kind="lg", seed=int(rng.integers(99)),
                                add_noise=True, controller_id=0, run_token=robot.token)

    def condition(rng: np.random.Generator, n: int) -> RunTrial.Request:
        r = base(rng, n)
        r.condition = robot.num_conditions + int(rng.integers(2**31))
        return r

    def kind(rng: np.random.Generator, n: int) -> RunTrial.Request:
        r = base(rng, n)
        r.policy_kind = ["neural", "", "LG", "lg "][int(rng.integers(4))]
        return r

    def unknown_controller(rng: np.random.Generator, n: int) -> RunTrial.Request:
        r = base(rng, n)
        r.controller_id = 2**63 + int(rng.integers(2**32))
        return r

    def foreign(rng: np.random.Generator, n: int) -> RunTrial.Request:
        r = base(rng, n)
        r.run_token = ["", "guess", robot.token.upper() + "!"][int(rng.integers(3))]
        return r

    return {"trial_condition": condition, "trial_policy_kind": kind,
            "trial_unknown_controller": unknown_controller, "trial_foreign_token": foreign}


def bad_inputs(robot: Robot) -> dict[str, dict[str, Callable[[np.random.Generator, int], object]]]:
    """{"controller" | "policy" | "state" | "trial": {class name: make(rng, n) -> message}}."""
    return {"controller": _bad_controllers(robot), "policy": _bad_policies(robot),
            "state": _bad_states(robot), "trial": _bad_trials(robot)}
