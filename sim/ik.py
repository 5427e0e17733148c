"""Damped least-squares inverse kinematics of the end-effector points (for initial poses and tests).

Solves min_q Σ_i |p_i(q) − target_i|² with steps Δq = Jᵀ (J Jᵀ + λ² I)⁻¹ (target − p) (3P,)
(Levenberg–Marquardt / damped pseudo-inverse), clipped to the joint limits after each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbpl_core.containers import ShapeError, check_finite
from mbpl_sim.kinematics import EndEffectorKinematics
from mbpl_sim.robot import actuated_joint_ids


@dataclass(frozen=True)
class IKResult:
    """q: (dQ,) solution; error: max point distance (m) to the targets; iterations used."""

    q: np.ndarray
    error: float
    iterations: int


def joint_limits(kinematics: EndEffectorKinematics) -> tuple[np.ndarray, np.ndarray]:
    """(lower (dQ,), upper (dQ,)) joint position limits; ±inf for unlimited joints."""
    model = kinematics.model
    jids = actuated_joint_ids(model, kinematics.joint_names)
    limited = model.jnt_limited[jids].astype(bool)
    lower = np.where(limited, model.jnt_range[jids, 0], -np.inf)
    upper = np.where(limited, model.jnt_range[jids, 1], np.inf)
    return lower, upper


def solve_ik(kinematics: EndEffectorKinematics, targets: np.ndarray, q0: np.ndarray,
             damping: float = 1e-2, tolerance: float = 1e-5, max_iterations: int = 500) -> IKResult:
    """Joint positions placing the ee points at targets (P, 3), starting from q0 (dQ,).

    Returns the best iterate found; the caller checks ``error`` (the problem may be unreachable).
    """
    targets = np.asarray(targets, dtype=np.float64)
    if targets.shape != (kinematics.n_points, 3):
        raise ShapeError(f"targets has shape {targets.shape}, expected ({kinematics.n_points}, 3)")
    check_finite("targets", targets)
    lower, upper = joint_limits(kinematics)
    q = np.clip(np.asarray(q0, dtype=np.float64), lower, upper)
    zeros = np.zeros(kinematics.dQ)
    best = IKResult(q.copy(), np.inf, 0)
    for it in range(1, max_iterations + 1):
        ee = kinematics.compute(q, zeros)
        residual = (targets - ee.points).ravel()
        error = float(np.max(np.linalg.norm(residual.reshape(-1, 3), axis=1)))
        if error < best.error:
            best = IKResult(q.copy(), error, it)
        if error < tolerance:
            break
        J = ee.jacobian
        step = J.T @ np.linalg.solve(J @ J.T + damping**2 * np.eye(len(residual)), residual)
        q = np.clip(q + step, lower, upper)
    return best
