"""Initial linear-Gaussian controllers (GPS's init_lqr and init_pd).

Both assume torque control with one action per joint (dU = layout.dQ) and the state layout
x = [q, q̇, ee points − target, ee velocities] of :class:`mbpl_core.containers.StateLayout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from mbpl_core.blas import single_threaded_blas
from mbpl_core.config import ConfigError
from mbpl_core.containers import LinearDynamics, LinearGaussianController, StateLayout
from mbpl_core.costs import QuadraticCost
from mbpl_core.local.traj_opt import NotPositiveDefiniteError, lqr_backward_pass


@dataclass(frozen=True)
class InitConfig:
    """YAML ``algorithm.init``: how the first controller of each condition is made.

    type "lqr": LQR on a guessed unit-mass double integrator with stiffness cost on q − q0,
    stiffness·stiffness_vel on q̇, unit action cost, all divided by init_var (so pol_covar scales with
    init_var), last step weighted by final_weight.
    type "pd": u = Kp (q0 − q) − Kd q̇ with covariance init_var·I; pd_gains/pd_damping (dQ,) default to
    stiffness and stiffness·stiffness_vel per joint.
    init_var may be one variance per joint (dU,): the covariance is then D Σ₁ D with D = diag(√init_var)
    and Σ₁ the covariance for init_var = 1 (the gains do not change). mbpl_sim.checks.scaled_defaults
    derives it from the robot's joint inertias.
    """

    type: Literal["lqr", "pd"] = "lqr"
    init_var: float | list[float] = 1.0
    stiffness: float = 1.0
    stiffness_vel: float = 0.5
    final_weight: float = 1.0
    pd_gains: list[float] | None = None
    pd_damping: list[float] | None = None

    def __post_init__(self) -> None:
        if self.type not in ("lqr", "pd"):
            raise ConfigError(f"algorithm.init.type: {self.type!r} is not one of ['lqr', 'pd']")
        for name in ("stiffness", "final_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"algorithm.init.{name} must be finite and > 0, got {value}")
        variances = [self.init_var] if isinstance(self.init_var, (int, float)) else list(self.init_var)
        if not variances or not all(math.isfinite(v) and v > 0 for v in variances):
            raise ConfigError(f"algorithm.init.init_var must be finite and > 0, got {self.init_var}")
        if not (math.isfinite(self.stiffness_vel) and self.stiffness_vel >= 0):
            raise ConfigError(
                f"algorithm.init.stiffness_vel must be finite and >= 0, got {self.stiffness_vel}"
            )
        for name in ("pd_gains", "pd_damping"):
            values = getattr(self, name)
            if values is not None:
                arr = np.asarray(values, dtype=np.float64)
                if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
                    raise ConfigError(f"algorithm.init.{name} must be a list of finite numbers >= 0, "
                                      f"got {values!r}")


def _per_joint(name: str, values: list[float] | None, default: float, dQ: int) -> np.ndarray:
    if values is None:
        return np.full(dQ, default)
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (dQ,):
        raise ConfigError(f"algorithm.init.{name} has {arr.size} entries, the robot has {dQ} joints")
    return arr


def _joint_variances(config: InitConfig, dU: int) -> np.ndarray | None:
    """(dU,) per-joint init_var, or None when it is one number."""
    if isinstance(config.init_var, (int, float)):
        return None
    return _per_joint("init_var", config.init_var, 1.0, dU)


def guessed_double_integrator(layout: StateLayout, T: int, dt: float, x0: np.ndarray) -> LinearDynamics:
    """GPS init_lqr's dynamics guess: per joint q' = q + dt q̇ + dt² u, q̇' = q̇ + dt u; other states → 0.

    Fm: (T, dX, dX+dU) with dU = dQ; fv = 0; dyn_covar = I (unused by the backward pass).
    """
    dX, dQ = layout.dX, layout.dQ
    eye = np.eye(dQ)
    Fd = np.zeros((dX, dX + dQ))
    Fd[layout.q, layout.q] = eye
    Fd[layout.q, layout.qd] = dt * eye
    Fd[layout.q, dX:] = dt**2 * eye
    Fd[layout.qd, layout.qd] = eye
    Fd[layout.qd, dX:] = dt * eye
    return LinearDynamics(np.broadcast_to(Fd, (T, dX, dX + dQ)), np.zeros((T, dX)),
                          np.broadcast_to(np.eye(dX), (T, dX, dX)), x0, np.eye(dX))


def _stiffness_cost(config: InitConfig, layout: StateLayout, T: int, x0: np.ndarray) -> QuadraticCost:
    """c_t = 0.5 (z − z*)ᵀ W (z − z*) / init_var with z* = [q0, 0…; 0] and W = diag(s, s·s_vel, 0…, 1)."""
    dX, dQ = layout.dX, layout.dQ
    w = np.zeros(dX + dQ)
    w[layout.q] = config.stiffness
    w[layout.qd] = config.stiffness * config.stiffness_vel
    w[dX:] = 1.0
    W = np.diag(w) / np.asarray(config.init_var, dtype=np.float64)  # one number here (see init_lqr)
    target = np.zeros(dX + dQ)
    target[layout.q] = x0[layout.q]
    ramp = np.ones(T)
    ramp[-1] = config.final_weight
    Cm = ramp[:, None, None] * W
    cv = ramp[:, None] * -(W @ target)
    cc = ramp * (0.5 * target @ W @ target)
    return QuadraticCost(Cm, cv, cc)


def init_lqr(config: InitConfig, layout: StateLayout, T: int, dt: float,
             x0: np.ndarray) -> LinearGaussianController:
    """GPS init_lqr: LQR on :func:`guessed_double_integrator`, :func:`_stiffness_cost`; pol_covar = Q_uu⁻¹."""
    dynamics = guessed_double_integrator(layout, T, dt, x0)
    variances = _joint_variances(config, layout.dQ)
    unit = config if variances is None else replace(config, init_var=1.0)
    try:
        with single_threaded_blas():
            controller = lqr_backward_pass(_stiffness_cost(unit, layout, T, x0), dynamics).controller
    except NotPositiveDefiniteError as err:  # cannot happen for valid configs: the action weight is > 0
        raise ConfigError(f"algorithm.init: LQR initialisation failed: {err}") from err
    if variances is None:
        return controller
    scale = np.sqrt(variances)
    return LinearGaussianController.from_covariance(
        controller.K, controller.k, scale[None, :, None] * controller.pol_covar * scale[None, None, :])


def init_pd(config: InitConfig, layout: StateLayout, T: int, x0: np.ndarray) -> LinearGaussianController:
    """PD hold of q0: K_t = [−diag(Kp), −diag(Kd), 0], k_t = Kp ⊙ q0, pol_covar_t = init_var·I."""
    dQ = layout.dQ
    Kp = _per_joint("pd_gains", config.pd_gains, config.stiffness, dQ)
    Kd = _per_joint("pd_damping", config.pd_damping, config.stiffness * config.stiffness_vel, dQ)
    K = np.zeros((dQ, layout.dX))
    K[:, layout.q] = -np.diag(Kp)
    K[:, layout.qd] = -np.diag(Kd)
    k = Kp * x0[layout.q]
    variances = _joint_variances(config, dQ)
    covar = np.diag(variances) if variances is not None else np.asarray(config.init_var) * np.eye(dQ)
    return LinearGaussianController.from_covariance(
        np.broadcast_to(K, (T, dQ, layout.dX)), np.broadcast_to(k, (T, dQ)),
        np.broadcast_to(covar, (T, dQ, dQ)),
    )


def initial_controller(config: InitConfig, layout: StateLayout, dU: int, T: int, dt: float,
                       x0: np.ndarray) -> LinearGaussianController:
    """The first controller of a condition starting at x0: (dX,). K: (T, dU, dX), k: (T, dU).

    Raises ConfigError if dU != layout.dQ (both initialisations command one torque per joint), if T < 1,
    dt <= 0, or x0 has the wrong shape or NaN/Inf.
    """
    if dU != layout.dQ:
        raise ConfigError(f"algorithm.init.type={config.type!r} needs one action per joint: dU={dU}, "
                          f"dQ={layout.dQ}")
    if T < 1 or not (math.isfinite(dt) and dt > 0):
        raise ConfigError(f"initial_controller needs T >= 1 and dt > 0, got T={T}, dt={dt}")
    x0 = np.asarray(x0, dtype=np.float64)
    if x0.shape != (layout.dX,):
        raise ConfigError(f"x0 has shape {x0.shape}, the state layout needs ({layout.dX},)")
    if not np.all(np.isfinite(x0)):
        raise ConfigError(f"x0 contains NaN or Inf: {x0}")
    if config.type == "lqr":
        return init_lqr(config, layout, T, dt, x0)
    return init_pd(config, layout, T, x0)
