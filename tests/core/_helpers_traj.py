"""Random linear-Gaussian problems and independent oracles for the trajectory-optimisation tests."""

from __future__ import annotations

import numpy as np

from mbpl_core.containers import LinearDynamics, LinearGaussianController
from mbpl_core.costs import QuadraticCost


def random_spd(rng: np.random.Generator, n: int, scale: float = 1.0, floor: float = 0.1) -> np.ndarray:
    """A random symmetric positive-definite (n, n) matrix with eigenvalues >= floor·scale."""
    A = rng.normal(size=(n, n))
    return scale * (A @ A.T / n + floor * np.eye(n))


def random_dynamics(
    rng: np.random.Generator, T: int, dX: int, dU: int, noise: float = 0.01
) -> LinearDynamics:
    """Time-varying x' = A_t x + B_t u + f_t + N(0, noise·S_t), with A_t close to the identity."""
    A = np.eye(dX) + 0.2 * rng.normal(size=(T, dX, dX)) / np.sqrt(dX)
    B = 0.5 * rng.normal(size=(T, dX, dU))
    Fm = np.concatenate([A, B], axis=2)
    fv = 0.1 * rng.normal(size=(T, dX))
    dyn_covar = np.stack([random_spd(rng, dX, noise) for _ in range(T)])
    return LinearDynamics(Fm, fv, dyn_covar, rng.normal(size=dX), random_spd(rng, dX, 0.1))


def random_quadratic_cost(rng: np.random.Generator, T: int, dX: int, dU: int) -> QuadraticCost:
    """Strictly convex random quadratic cost with cross terms: Cm_t SPD on (dX+dU)."""
    Cm = np.stack([random_spd(rng, dX + dU) for _ in range(T)])
    return QuadraticCost(Cm, rng.normal(size=(T, dX + dU)), rng.normal(size=T))


def random_controller(
    rng: np.random.Generator, T: int, dX: int, dU: int, gain: float = 0.3
) -> LinearGaussianController:
    """Random LG controller with SPD covariances."""
    covar = np.stack([random_spd(rng, dU, 0.5) for _ in range(T)])
    return LinearGaussianController.from_covariance(
        gain * rng.normal(size=(T, dU, dX)), rng.normal(size=(T, dU)), covar
    )


def block_qp_value_and_gains(
    quad: QuadraticCost, dynamics: LinearDynamics, t0: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic optimal control from step t0 solved as one quadratic programme over all actions.

    Unknowns w = [x_{t0}; u_{t0}; …; u_{T−1}]; every [x_s; u_s] = Z_s w + z_s by unrolling the mean dynamics.
    Total cost 0.5 wᵀHw + gᵀw + c; minimising over the actions gives
    V(x) = 0.5 xᵀ(H_xx − H_xu H_uu⁻¹ H_ux)x + (g_x − H_xu H_uu⁻¹ g_u)ᵀx + const and
    u_{t0}* = first dU rows of −H_uu⁻¹(H_ux x + g_u). Returns K (dU, dX), k (dU,), Vxx (dX, dX), Vx (dX,).
    """
    T, dX, dU = dynamics.T, dynamics.dX, dynamics.dU
    n_u = (T - t0) * dU
    nw = dX + n_u
    H = np.zeros((nw, nw))
    g = np.zeros(nw)
    X_map = np.zeros((dX, nw))
    X_map[:, :dX] = np.eye(dX)
    x_off = np.zeros(dX)
    for s in range(t0, T):
        U_map = np.zeros((dU, nw))
        U_map[:, dX + (s - t0) * dU: dX + (s - t0 + 1) * dU] = np.eye(dU)
        Z = np.vstack([X_map, U_map])
        z = np.concatenate([x_off, np.zeros(dU)])
        H += Z.T @ quad.Cm[s] @ Z
        g += Z.T @ (quad.Cm[s] @ z + quad.cv[s])
        X_map = dynamics.Fm[s] @ Z
        x_off = dynamics.Fm[s] @ z + dynamics.fv[s]
    Hxx, Hxu, Huu = H[:dX, :dX], H[:dX, dX:], H[dX:, dX:]
    gx, gu = g[:dX], g[dX:]
    sol_x = np.linalg.solve(Huu, H[dX:, :dX])
    sol_g = np.linalg.solve(Huu, gu)
    return -sol_x[:dU], -sol_g[:dU], Hxx - Hxu @ sol_x, gx - Hxu @ sol_g


def joint_trajectory_gaussian(
    controller: LinearGaussianController, dynamics: LinearDynamics
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the whole τ = (x_0, u_0, …, x_{T−1}, u_{T−1}) as a linear map of white noise.

    Independent of the per-step forward pass: each variable is kept as (coefficients over ξ, offset).
    """
    T, dX, dU = dynamics.T, dynamics.dX, dynamics.dU
    n_xi = dX + T * dU + (T - 1) * dX
    cx = np.zeros((dX, n_xi))
    cx[:, :dX] = np.linalg.cholesky(dynamics.x0sigma)
    ox = dynamics.x0mu.copy()
    coefs, offsets = [], []
    col = dX
    for t in range(T):
        cu = controller.K[t] @ cx
        cu[:, col: col + dU] += controller.chol_pol_covar[t]
        col += dU
        ou = controller.K[t] @ ox + controller.k[t]
        coefs += [cx, cu]
        offsets += [ox, ou]
        if t < T - 1:
            A, B = dynamics.Fm[t, :, :dX], dynamics.Fm[t, :, dX:]
            cx_next = A @ cx + B @ cu
            cx_next[:, col: col + dX] += np.linalg.cholesky(dynamics.dyn_covar[t])
            col += dX
            ox = A @ ox + B @ ou + dynamics.fv[t]
            cx = cx_next
    C = np.vstack(coefs)
    return np.concatenate(offsets), C @ C.T


def gaussian_kl(mu1: np.ndarray, S1: np.ndarray, mu2: np.ndarray, S2: np.ndarray) -> float:
    """KL(N(mu1, S1) ‖ N(mu2, S2)) in closed form."""
    d = mu1.size
    S2_inv = np.linalg.inv(S2)
    diff = mu2 - mu1
    _, logdet1 = np.linalg.slogdet(S1)
    _, logdet2 = np.linalg.slogdet(S2)
    return float(0.5 * (np.trace(S2_inv @ S1) + diff @ S2_inv @ diff - d + logdet2 - logdet1))


def expected_total_cost_oracle(
    controller: LinearGaussianController, dynamics: LinearDynamics, quad: QuadraticCost
) -> float:
    """Σ_t E[c_t] from the joint trajectory Gaussian (:func:`joint_trajectory_gaussian`), per step
    E[0.5 zᵀCz + zᵀc + cc] = 0.5 tr(C Σ) + 0.5 μᵀCμ + μᵀc + cc with z = [x_t; u_t] ~ N(μ, Σ)."""
    mean, cov = joint_trajectory_gaussian(controller, dynamics)
    d = dynamics.dX + dynamics.dU
    total = 0.0
    for t in range(dynamics.T):
        mu, sigma = mean[t * d:(t + 1) * d], cov[t * d:(t + 1) * d, t * d:(t + 1) * d]
        C, c = quad.Cm[t], quad.cv[t]
        total += 0.5 * np.trace(C @ sigma) + 0.5 * mu @ C @ mu + mu @ c + quad.cc[t]
    return float(total)


def step_rule_oracle(step_mult: float, previous: float, predicted: float, actual: float,
                     lo: float, hi: float) -> float:
    """GPS's step-size rule written out: mult = pred_impr / (2 max(1e-4, pred_impr − act_impr)) in
    [0.1, 5], then the new multiplier clipped to [lo, hi]."""
    pred_impr, act_impr = previous - predicted, previous - actual
    mult = pred_impr / (2.0 * max(1e-4, pred_impr - act_impr))
    return float(np.clip(step_mult * float(np.clip(mult, 0.1, 5.0)), lo, hi))
