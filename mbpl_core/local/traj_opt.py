"""KL-constrained LQR step of LQR-FLM (Levine & Abbeel, NIPS 2014, Sec. 3).

The C-step solves   min_p E_p[Σ_t c(x_t, u_t)]   s.t.   KL(p(τ) ‖ p_ref(τ)) ≤ ε
through its dual variable η: for fixed η the Lagrangian is minimised by an LQR backward pass on the
augmented cost c/η − log p_ref(u_t | x_t) whose max-entropy solution is the linear-Gaussian controller
u_t ~ N(K_t x_t + k_t, Q_uu,t⁻¹) (the paper's Lagrangian and dual step); η is then searched
geometrically until the KL is within a tolerance of ε. The structure follows GPS's traj_opt_lqr_python.py.

Shapes: K (T, dU, dX), k (T, dU), pol_covar (T, dU, dU); Fm (T, dX, dX+dU), fv (T, dX);
Cm (T, dX+dU, dX+dU), cv (T, dX+dU); marginals mu (T, dX+dU), sigma (T, dX+dU, dX+dU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg.lapack import dpotrf as _potrf
from scipy.linalg.lapack import dpotrs as _potrs

from mbpl_core.blas import single_threaded_blas
from mbpl_core.config import ConfigError
from mbpl_core.containers import (
    LinearDynamics,
    LinearGaussianController,
    ShapeError,
    TrajectoryMarginals,
)
from mbpl_core.costs import QuadraticCost


class NotPositiveDefiniteError(ValueError):
    """Q_uu at step t is not positive definite (or not finite): the η search must raise η."""

    def __init__(self, t: int, detail: str = "is not positive definite") -> None:
        super().__init__(f"Q_uu at time step {t} {detail}")
        self.t = t
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[int, str]]:
        return (type(self), (self.t, self.detail))


class KLSearchError(ValueError):
    """No η in [min_eta, max_eta] gives a controller meeting the KL constraint."""


@dataclass(frozen=True, eq=False)
class BackwardPassResult:
    """Controller of one backward pass and its value function V_t(x) = 0.5 xᵀ Vxx_t x + xᵀ Vx_t + const.

    controller: LinearGaussianController; Vxx: (T, dX, dX); Vx: (T, dX). The value is that of the
    augmented cost c/η − log p_ref (plain cost for reference None and η = 1), without entropy constants.
    """

    controller: LinearGaussianController
    Vxx: np.ndarray
    Vx: np.ndarray


def _check_problem(quad: QuadraticCost, dynamics: LinearDynamics,
                   reference: LinearGaussianController | None) -> None:
    T, dX, dU = dynamics.T, dynamics.dX, dynamics.dU
    if quad.Cm.shape != (T, dX + dU, dX + dU):
        raise ShapeError(f"cost model Cm has shape {quad.Cm.shape}, expected {(T, dX + dU, dX + dU)} "
                         "to match the dynamics")
    if reference is not None and (reference.T, reference.dU, reference.dX) != (T, dU, dX):
        got = (reference.T, reference.dU, reference.dX)
        raise ShapeError(f"reference controller has (T, dU, dX) = {got}, dynamics have {(T, dU, dX)}")


def reference_log_density_terms(reference: LinearGaussianController) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic form of −log p_ref(u | x) in z = [x; u] (GPS compute_costs), constants dropped.

    −log N(u; K x + k, Σ) = 0.5 zᵀ M z + zᵀ v + const with P = Σ⁻¹,
    M = [[KᵀPK, −KᵀP], [−PK, P]]: (T, dXU, dXU), v = [KᵀPk; −Pk]: (T, dXU).
    """
    dX = reference.dX
    P, K, k = reference.inv_pol_covar, reference.K, reference.k
    PK = P @ K
    M = np.empty((reference.T, dX + reference.dU, dX + reference.dU))
    M[:, :dX, :dX] = np.swapaxes(K, 1, 2) @ PK
    M[:, :dX, dX:] = -np.swapaxes(PK, 1, 2)
    M[:, dX:, :dX] = -PK
    M[:, dX:, dX:] = P
    v_x = (np.swapaxes(PK, 1, 2) @ k[:, :, None])[:, :, 0]
    v = np.concatenate([v_x, -(P @ k[:, :, None])[:, :, 0]], axis=1)
    return M, v


def augmented_cost(quad: QuadraticCost, eta: float,
                   reference: LinearGaussianController | None) -> tuple[np.ndarray, np.ndarray]:
    """Cost of the η-Lagrangian divided by η: fCm = Cm/η + M_t, fcv = cv/η + v_t (see
    :func:`reference_log_density_terms`; no M, v for reference None). Returns (T, dXU, dXU), (T, dXU).
    """
    fCm = (0.5 / eta) * (quad.Cm + np.swapaxes(quad.Cm, 1, 2))
    fcv = quad.cv / eta
    if reference is not None:
        M, v = reference_log_density_terms(reference)
        fCm += M
        fcv += v
    return fCm, fcv


def _homogeneous_cost(Cm: np.ndarray, cv: np.ndarray, dX: int) -> np.ndarray:
    """C̃: (T, dX+1+dU, dX+1+dU) over z̃ = [x; 1; u] with 0.5 z̃ᵀC̃z̃ = 0.5 zᵀCm z + zᵀcv (no constant)."""
    T, dXU, _ = Cm.shape
    n = dXU + 1
    orig = np.r_[0:dX, dX + 1:n]
    C = np.zeros((T, n, n))
    C[:, orig[:, None], orig[None, :]] = Cm
    C[:, dX, orig] = cv
    C[:, orig, dX] = cv
    return C


@dataclass(frozen=True, eq=False)
class _LQRProblem:
    """The parts of the η-Lagrangian's LQR problem that an η search does not change.

    Homogeneous coordinates x̃ = [x; 1], z̃ = [x; 1; w] fold the affine terms into matrices, so one triple
    product per step carries the quadratic and linear value terms together. With a reference controller
    the action coordinate is its deviation w = u − K_ref x − k_ref (without one, w = u):
    C_cost: (T, n, n), n = dX+1+dU, the cost (Cm symmetrised) in these coordinates;
    P_ref: (T, dU, dU) reference precision, −log p_ref = 0.5 wᵀ P_ref w + const (None without reference);
    F: (T, dX+1, n) = [[A, c, Fm_u], [0, 1, 0]] with A = Fm_x + Fm_u K_ref, c = fv + Fm_u k_ref, so x̃' = F z̃;
    ref_gains: (T, dU, dX+1) = [K_ref, k_ref], added back to the solved gains (None without reference).
    """

    C_cost: np.ndarray
    P_ref: np.ndarray | None
    F: np.ndarray
    ref_gains: np.ndarray | None
    dX: int
    dU: int


def _prepare_problem(quad: QuadraticCost, dynamics: LinearDynamics,
                     reference: LinearGaussianController | None) -> _LQRProblem:
    """The η-independent problem; with a reference, in coordinates relative to the reference's action.

    Why the change of coordinates: written in u, −log p_ref puts KᵀPK into Q_xx and the Schur complement
    Q_xx − Q_xu Q_uu⁻¹ Q_ux must cancel it back to zero. The rounding left over is carried backwards through
    the reference's closed loop A = Fm_x + Fm_u K_ref; when that loop is expansive under the fitted
    dynamics (a poor policy linearisation), the residue grows by |A|² per step and turns Q_uu indefinite
    at any η (KLSearchError at max_eta). In w = u − K_ref x − k_ref the reference contributes P_ref to Q_ww
    only, nothing cancels, and η → ∞ returns the reference itself (w = 0) whatever its closed loop.
    The cost is moved by the congruence z̃ = J z̃_w with J = [[I, 0, 0], [0, 1, 0], [K_ref, k_ref, I]].
    """
    _check_problem(quad, dynamics, reference)
    dX, dU, T = dynamics.dX, dynamics.dU, dynamics.T
    C_cost = _homogeneous_cost(0.5 * (quad.Cm + np.swapaxes(quad.Cm, 1, 2)), quad.cv, dX)
    F = np.zeros((T, dX + 1, dX + 1 + dU))
    F[:, :dX, :dX] = dynamics.Fm[:, :, :dX]
    F[:, :dX, dX] = dynamics.fv
    F[:, :dX, dX + 1:] = dynamics.Fm[:, :, dX:]
    F[:, dX, dX] = 1.0
    if reference is None:
        return _LQRProblem(C_cost, None, F, None, dX, dU)
    ref_gains = np.concatenate([reference.K, reference.k[:, :, None]], axis=2)  # (T, dU, dX+1)
    J = np.broadcast_to(np.eye(dX + 1 + dU), (T, dX + 1 + dU, dX + 1 + dU)).copy()
    J[:, dX + 1:, :dX + 1] = ref_gains
    C_cost = np.swapaxes(J, 1, 2) @ C_cost @ J
    C_cost = 0.5 * (C_cost + np.swapaxes(C_cost, 1, 2))
    F = F @ J  # the row of the constant 1 stays [0, 1, 0]
    P = 0.5 * (reference.inv_pol_covar + np.swapaxes(reference.inv_pol_covar, 1, 2))
    return _LQRProblem(C_cost, P, F, ref_gains, dX, dU)


def lqr_backward_pass(quad: QuadraticCost, dynamics: LinearDynamics, eta: float = 1.0,
                      reference: LinearGaussianController | None = None) -> BackwardPassResult:
    """Max-entropy LQR backward pass on the augmented cost (LQR-FLM, GPS traj_opt backward).

    With (fCm, fcv) from :func:`augmented_cost`:
    Q_t = fC_t + Fm_tᵀ Vxx_{t+1} Fm_t and q_t = fc_t + Fm_tᵀ (Vx_{t+1} + Vxx_{t+1} fv_t);
    K_t = −Q_uu⁻¹ Q_ux, k_t = −Q_uu⁻¹ q_u, pol_covar_t = Q_uu⁻¹;
    Vxx_t = Q_xx + Q_xu K_t, Vx_t = q_x + Q_xu k_t.
    With reference None and η = 1 this is plain time-varying LQR on the quadratic cost. With a reference
    the same recursion runs on the deviation from the reference's action (see :func:`_prepare_problem`),
    which is exact algebra and keeps large η numerically sound.
    Raises NotPositiveDefiniteError(t) when Q_uu,t is not positive definite or not finite.
    """
    return _solve_backward(_prepare_problem(quad, dynamics, reference), eta)


def _solve_backward(problem: _LQRProblem, eta: float, C: np.ndarray | None = None) -> BackwardPassResult:
    """The recursion of :func:`lqr_backward_pass` in homogeneous coordinates; C: optional (T, n, n) buffer."""
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be finite and > 0, got {eta}")
    dX, dU, F = problem.dX, problem.dU, problem.F
    T, nx = F.shape[0], dX + 1
    # Scratch reuse: fresh ~1 MB arrays per η cost more in page faults than the arithmetic.
    C = np.multiply(problem.C_cost, 1.0 / eta, out=C)
    if problem.P_ref is not None:
        C[:, nx:, nx:] += problem.P_ref
    gains = np.empty((T, dU, nx))
    pol_covar, inv_pol_covar = np.empty((T, dU, dU)), np.empty((T, dU, dU))
    V_all = np.empty((T, nx, nx))
    # One Cholesky solve gives Q_uu⁻¹ [Q_ux̃ | I]: gains, offsets and covariance together.
    rhs = np.zeros((dU, nx + dU))
    rhs[:, nx:] = np.eye(dU)
    V = np.zeros((nx, nx))
    for t in range(T - 1, -1, -1):
        Q = C[t] if t == T - 1 else C[t] + F[t].T @ V @ F[t]
        Quu = 0.5 * (Q[nx:, nx:] + Q[nx:, nx:].T)
        chol, info = _potrf(Quu, lower=1, clean=0)
        if info != 0 or not np.isfinite(chol).all():
            raise NotPositiveDefiniteError(t, "is not finite" if info == 0 else "is not positive definite")
        rhs[:, :nx] = Q[nx:, :nx]
        sol, _ = _potrs(chol, rhs, lower=1)
        gains[t] = -sol[:, :nx]
        pol_covar[t] = sol[:, nx:]
        inv_pol_covar[t] = Quu
        # Q_x̃u taken as Q_ux̃ᵀ: Q is symmetric up to rounding, and this keeps V consistent with the gains.
        V = Q[:nx, :nx] + Q[nx:, :nx].T @ gains[t]
        V = 0.5 * (V + V.T)
        V_all[t] = V
    if problem.ref_gains is not None:
        gains += problem.ref_gains
    controller = _controller_from_parts(gains[:, :, :dX], gains[:, :, dX], pol_covar, inv_pol_covar)
    return BackwardPassResult(controller, V_all[:, :dX, :dX], V_all[:, :dX, dX])


def _controller_from_parts(K: np.ndarray, k: np.ndarray, pol_covar: np.ndarray,
                           inv_pol_covar: np.ndarray) -> LinearGaussianController:
    """Controller without a second per-step loop: the Cholesky factors are computed batched."""
    pol_covar = 0.5 * (pol_covar + np.swapaxes(pol_covar, 1, 2))
    inv_pol_covar = 0.5 * (inv_pol_covar + np.swapaxes(inv_pol_covar, 1, 2))
    for name, arr in (("K", K), ("k", k), ("pol_covar", pol_covar)):
        if not np.isfinite(arr).all():
            t = int(np.argwhere(~np.isfinite(arr))[0][0])
            raise NotPositiveDefiniteError(t, f"gives a non-finite {name}")
    try:
        chol = np.linalg.cholesky(pol_covar)
    except np.linalg.LinAlgError as err:
        raise NotPositiveDefiniteError(-1, "gives a numerically indefinite pol_covar") from err
    return LinearGaussianController(K, k, pol_covar, chol, inv_pol_covar)


def _check_controller(controller: LinearGaussianController, dynamics: LinearDynamics) -> None:
    got, want = (controller.T, controller.dU, controller.dX), (dynamics.T, dynamics.dU, dynamics.dX)
    if got != want:
        raise ShapeError(f"controller has (T, dU, dX) = {got}, dynamics have {want}")


def _state_moments(controller: LinearGaussianController, dynamics: LinearDynamics,
                   Sxx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """State marginals x_t ~ N(mx_t, Sxx_t): (T, dX), (T, dX, dX); Sxx: optional (T, dX, dX) scratch.

    Closed loop, batched over t: x' = A_t x + c_t + N(0, W_t) with A_t = Fm_x + Fm_u K_t,
    c_t = Fm_u k_t + fv_t, W_t = Fm_u pol_covar_t Fm_uᵀ + dyn_covar_t; only the moments recurse.
    """
    T, dX = dynamics.T, dynamics.dX
    K, k = controller.K, controller.k
    Fx, Fu = dynamics.Fm[:, :, :dX], dynamics.Fm[:, :, dX:]
    A = Fx + Fu @ K
    W = Fu @ controller.pol_covar @ np.swapaxes(Fu, 1, 2) + dynamics.dyn_covar
    c = (Fu @ k[:, :, None])[:, :, 0] + dynamics.fv
    Sxx = np.empty((T, dX, dX)) if Sxx is None else Sxx
    mx = np.empty((T, dX))
    S, m = dynamics.x0sigma, dynamics.x0mu
    Sxx[0], mx[0] = S, m
    for t in range(T - 1):
        S = A[t] @ S @ A[t].T + W[t]
        m = A[t] @ m + c[t]
        Sxx[t + 1], mx[t + 1] = S, m
    return mx, Sxx


def lqr_forward_pass(controller: LinearGaussianController, dynamics: LinearDynamics) -> TrajectoryMarginals:
    """Gaussian marginals of [x_t; u_t] under the controller and the linear-Gaussian dynamics.

    x_0 ~ N(x0mu, x0sigma); u_t | x_t ~ N(K_t x_t + k_t, pol_covar_t);
    x_{t+1} ~ N(Fm_t μ_t + fv_t, Fm_t Σ_t Fm_tᵀ + dyn_covar_t). Returns mu (T, dXU), sigma (T, dXU, dXU).
    """
    _check_controller(controller, dynamics)
    T, dX, dU = dynamics.T, dynamics.dX, dynamics.dU
    K = controller.K
    mx, Sxx = _state_moments(controller, dynamics)
    KS = K @ Sxx
    sigma = np.empty((T, dX + dU, dX + dU))
    sigma[:, :dX, :dX] = Sxx
    sigma[:, dX:, :dX] = KS
    sigma[:, :dX, dX:] = np.swapaxes(KS, 1, 2)
    sigma[:, dX:, dX:] = KS @ np.swapaxes(K, 1, 2) + controller.pol_covar
    mu = np.concatenate([mx, (K @ mx[:, :, None])[:, :, 0] + controller.k], axis=1)
    return TrajectoryMarginals(mu, sigma)


def _expected_policy_kl(mx: np.ndarray, Sx: np.ndarray, new: LinearGaussianController,
                        reference: LinearGaussianController) -> np.ndarray:
    """E_{x_t ~ N(mx_t, Sx_t)}[KL(new_t(u|x) ‖ ref_t(u|x))]: (T,); see :func:`trajectory_kl_per_step`."""
    P = reference.inv_pol_covar
    dK, dk = new.K - reference.K, new.k - reference.k
    mean_diff = (dK @ mx[:, :, None])[:, :, 0] + dk
    mean_term = np.sum(mean_diff * (P @ mean_diff[:, :, None])[:, :, 0], axis=1)
    state_term = np.sum(dK * (P @ dK @ Sx), axis=(1, 2))
    trace_term = np.sum(P * new.pol_covar, axis=(1, 2))
    logdet_ref = 2.0 * np.sum(np.log(np.diagonal(reference.chol_pol_covar, axis1=1, axis2=2)), axis=1)
    logdet_new = 2.0 * np.sum(np.log(np.diagonal(new.chol_pol_covar, axis1=1, axis2=2)), axis=1)
    kl = 0.5 * (trace_term + mean_term + state_term - new.dU + logdet_ref - logdet_new)
    # Rounding can leave identical controllers a hair below zero.
    return np.maximum(kl, 0.0)


def trajectory_kl_per_step(marginals: TrajectoryMarginals, new: LinearGaussianController,
                           reference: LinearGaussianController) -> np.ndarray:
    """E_{x_t ~ new marginal}[KL(new_t(u|x) ‖ ref_t(u|x))]: (T,). Dynamics terms cancel in the trajectory KL.

    With ΔK = K_new − K_ref, Δk = k_new − k_ref, P = S_ref⁻¹, x_t ~ N(μ, Σ):
    0.5 [tr(P S_new) + (ΔK μ + Δk)ᵀ P (ΔK μ + Δk) + tr(ΔKᵀ P ΔK Σ) − dU + log|S_ref| − log|S_new|].
    """
    dX, dU = new.dX, new.dU
    if (new.T, dU, dX) != (reference.T, reference.dU, reference.dX) or marginals.mu.shape != (
        new.T, dX + dU
    ):
        raise ShapeError("trajectory_kl: controllers and marginals disagree on (T, dU, dX)")
    return _expected_policy_kl(marginals.mu[:, :dX], marginals.sigma[:, :dX, :dX], new, reference)


def trajectory_kl(marginals: TrajectoryMarginals, new: LinearGaussianController,
                  reference: LinearGaussianController) -> float:
    """KL(p_new(τ) ‖ p_ref(τ)) = Σ_t E_{x_t}[KL(new_t(u|x) ‖ ref_t(u|x))]; zero for identical controllers."""
    return float(np.sum(trajectory_kl_per_step(marginals, new, reference)))


def expected_cost(marginals: TrajectoryMarginals, quad: QuadraticCost) -> np.ndarray:
    """E[c_t] = 0.5 tr(Cm_t Σ_t) + 0.5 μ_tᵀ Cm_t μ_t + μ_tᵀ cv_t + cc_t under N(μ_t, Σ_t): (T,)."""
    mu, sigma = marginals.mu, marginals.sigma
    if quad.Cm.shape != sigma.shape:
        raise ShapeError(f"cost model Cm {quad.Cm.shape} and marginals sigma {sigma.shape} disagree")
    return (
        0.5 * np.sum(quad.Cm * sigma, axis=(1, 2))
        + 0.5 * np.einsum("ti,tij,tj->t", mu, quad.Cm, mu)
        + np.sum(mu * quad.cv, axis=1)
        + quad.cc
    )


@dataclass(frozen=True)
class KLStepConfig:
    """YAML ``algorithm.kl``: the KL step size ε = kl_step · step_mult · T and the η search."""

    kl_step: float = 1.0
    min_step_mult: float = 0.01
    max_step_mult: float = 10.0
    init_eta: float = 1.0
    min_eta: float = 1e-8
    max_eta: float = 1e16
    kl_tolerance: float = 0.1
    max_eta_iterations: int = 50
    # No η ≤ max_eta meets ε (the reference's closed loop is so expansive under the fitted model that
    # cost/η still dominates): take the η → ∞ step, the reference itself, and flag it in UpdateInfo.
    zero_step_when_infeasible: bool = True

    def __post_init__(self) -> None:
        for name in ("kl_step", "min_step_mult", "max_step_mult", "init_eta", "min_eta", "max_eta",
                     "kl_tolerance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"algorithm.kl.{name} must be finite and > 0, got {value}")
        if self.min_step_mult > self.max_step_mult:
            raise ConfigError(f"algorithm.kl: min_step_mult {self.min_step_mult} > max_step_mult "
                              f"{self.max_step_mult}")
        if self.min_eta >= self.max_eta:
            raise ConfigError(f"algorithm.kl: min_eta {self.min_eta} must be < max_eta {self.max_eta}")
        if not self.kl_tolerance < 1:
            raise ConfigError(f"algorithm.kl.kl_tolerance must be < 1, got {self.kl_tolerance}")
        if self.max_eta_iterations < 1:
            raise ConfigError(f"algorithm.kl.max_eta_iterations must be >= 1, got {self.max_eta_iterations}")


@dataclass(frozen=True, eq=False)
class KLStepResult:
    """Outcome of :func:`kl_constrained_update`: the controller, its η and KL, ε and η iterations used."""

    controller: LinearGaussianController
    eta: float
    kl: float
    epsilon: float
    iterations: int


def _check_covariances(dynamics: LinearDynamics) -> None:
    """Dynamics and initial-state covariances must be symmetric positive semi-definite."""
    for name, covs in (("dyn_covar", dynamics.dyn_covar), ("x0sigma", dynamics.x0sigma[None])):
        sym = 0.5 * (covs + np.swapaxes(covs, 1, 2))
        scale = np.maximum(1.0, np.max(np.abs(sym), axis=(1, 2)))
        asym = np.max(np.abs(covs - sym), axis=(1, 2))
        low = np.linalg.eigvalsh(sym)[:, 0]
        bad = np.flatnonzero((low < -1e-9 * scale) | (asym > 1e-8 * scale))
        if bad.size:
            raise ShapeError(f"dynamics {name}[{int(bad[0])}] is not symmetric positive semi-definite "
                             f"(smallest eigenvalue {low[bad[0]]:.3g})")


def _next_eta(eta: float, lo: float, hi: float, too_small: bool, config: KLStepConfig) -> float:
    """GPS's bracketed geometric step: expand ×10 until bracketed, then bisect in log space."""
    if too_small:
        return min(math.sqrt(lo * hi), 10.0 * lo)
    new = max(math.sqrt(lo * hi), 0.1 * hi)
    # Never below min_eta: land on it exactly, so "KL < ε at min_eta" is recognised.
    return config.min_eta if lo <= config.min_eta and 0.1 * hi <= lo else new


def kl_constrained_update(quad: QuadraticCost, dynamics: LinearDynamics, reference: LinearGaussianController,
                          epsilon: float, eta0: float, config: KLStepConfig) -> KLStepResult:
    """LQR-FLM C-step: the controller minimising expected cost with KL(p ‖ p_ref) ≈ ε (dual search on η).

    Accepts when |KL − ε| ≤ kl_tolerance·ε, or when KL < ε already at min_eta. A non-PD Q_uu counts as
    "η too small". If the iterations run out, the feasible (KL ≤ ε(1+tol)) candidate closest to ε is
    returned. Raises KLSearchError when KL > ε (or Q_uu is not PD) at max_eta, or nothing feasible was found.
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon}")
    _check_problem(quad, dynamics, reference)
    _check_covariances(dynamics)
    tol = config.kl_tolerance * epsilon
    lo, hi = config.min_eta, config.max_eta
    eta = min(max(float(eta0), lo), hi) if math.isfinite(eta0) and eta0 > 0 else config.init_eta
    best: KLStepResult | None = None
    history: list[str] = []
    problem = _prepare_problem(quad, dynamics, reference)
    C_scratch = np.empty_like(problem.C_cost)
    Sxx_scratch = np.empty((dynamics.T, dynamics.dX, dynamics.dX))
    with single_threaded_blas():
        for it in range(1, config.max_eta_iterations + 1):
            try:
                controller = _solve_backward(problem, eta, C_scratch).controller
            except NotPositiveDefiniteError as err:
                history.append(f"eta={eta:.3g}: {err}")
                too_small, kl = True, math.inf
            else:
                mx, Sxx = _state_moments(controller, dynamics, Sxx_scratch)
                kl = float(np.sum(_expected_policy_kl(mx, Sxx, controller, reference)))
                history.append(f"eta={eta:.3g}: kl={kl:.4g}")
                result = KLStepResult(controller, eta, kl, epsilon, it)
                if abs(kl - epsilon) <= tol or (kl < epsilon and eta <= config.min_eta):
                    return result
                too_small = kl > epsilon
                if kl <= epsilon + tol and (best is None or abs(kl - epsilon) < abs(best.kl - epsilon)):
                    best = result
            if too_small:
                if eta >= config.max_eta:
                    raise KLSearchError(f"KL constraint eps={epsilon:.4g} cannot be met even at max_eta="
                                        f"{config.max_eta:.3g}: " + "; ".join(history[-3:]))
                lo = eta
            else:
                hi = eta
            eta = _next_eta(eta, lo, hi, too_small, config)
    if best is not None:
        return KLStepResult(best.controller, best.eta, best.kl, epsilon, config.max_eta_iterations)
    raise KLSearchError(f"no eta in [{config.min_eta:.3g}, {config.max_eta:.3g}] met KL <= eps={epsilon:.4g} "
                        f"within {config.max_eta_iterations} iterations: " + "; ".join(history[-3:]))


def adapt_step_mult(step_mult: float, previous: float, predicted: float, actual: float,
                    min_step_mult: float, max_step_mult: float) -> float:
    """GPS LQR-FLM step-size rule from expected costs (sums over t).

    predicted_impr = previous − predicted, actual_impr = previous − actual;
    mult = predicted_impr / (2 max(1e-4, predicted_impr − actual_impr)) clipped to [0.1, 5];
    returns clip(step_mult · mult, min_step_mult, max_step_mult).
    """
    for name, value in (("step_mult", step_mult), ("previous", previous), ("predicted", predicted),
                        ("actual", actual)):
        if not math.isfinite(value):
            raise ValueError(f"adapt_step_mult: {name} is not finite ({value})")
    predicted_impr = previous - predicted
    actual_impr = previous - actual
    mult = predicted_impr / (2.0 * max(1e-4, predicted_impr - actual_impr))
    mult = min(max(mult, 0.1), 5.0)
    return min(max(step_mult * mult, min_step_mult), max_step_mult)


@dataclass(frozen=True)
class UpdateInfo:
    """What one :meth:`ConditionOptimizer.update` did.

    expected_cost: Σ_t E[c_t] of the new controller under the new dynamics and cost model;
    fallback: the η search was infeasible and the step was the zero step (new controller = reference);
    rejected: the step check (:mod:`mbpl_core.local.step_check`) rejected every candidate and the
    controller stayed (kl: its KL to the reference, expected_cost: under the new model).
    """

    eta: float
    kl: float
    epsilon: float
    step_mult: float
    eta_iterations: int
    expected_cost: float
    fallback: bool = False
    rejected: bool = False


def total_expected_cost(controller: LinearGaussianController, dynamics: LinearDynamics,
                        quad: QuadraticCost) -> float:
    """Σ_t E[c_t] of ``controller`` under ``dynamics`` and the cost model ``quad``."""
    with single_threaded_blas():
        return float(np.sum(expected_cost(lqr_forward_pass(controller, dynamics), quad)))


class ConditionOptimizer:
    """Per-condition state of the LQR-FLM / MDGPS C-step: controller, step_mult, η, last update's model.

    Picklable (plain attributes). ``step_mult`` may be set from outside (MDGPS's global step rule);
    it is clipped into [min_step_mult, max_step_mult].
    """

    def __init__(self, initial_controller: LinearGaussianController, config: KLStepConfig) -> None:
        self.config = config
        self.controller = initial_controller
        self.eta = config.init_eta
        self.iteration = 0
        self._step_mult = min(max(1.0, config.min_step_mult), config.max_step_mult)
        self._prev_controller: LinearGaussianController | None = None
        self._prev_dynamics: LinearDynamics | None = None
        self._prev_quad: QuadraticCost | None = None

    @property
    def step_mult(self) -> float:
        return self._step_mult

    @step_mult.setter
    def step_mult(self, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"step_mult must be finite and > 0, got {value}")
        self._step_mult = min(max(float(value), self.config.min_step_mult), self.config.max_step_mult)

    @property
    def has_previous_update(self) -> bool:
        """True once an update has run, so :meth:`step_adjustment` has something to compare against."""
        return self._prev_controller is not None

    def step_adjustment(self, dynamics: LinearDynamics, quad: QuadraticCost) -> tuple[float, float, float]:
        """(previous, predicted, actual) expected costs for the step-size rule.

        previous: previous controller under the previous dynamics and cost model; predicted: current
        controller under those; actual: current controller under the new ``dynamics`` and ``quad``.
        Raises RuntimeError before the first update.
        """
        if self._prev_controller is None or self._prev_dynamics is None or self._prev_quad is None:
            raise RuntimeError("step_adjustment needs a previous update (check has_previous_update)")
        with single_threaded_blas():
            previous = total_expected_cost(self._prev_controller, self._prev_dynamics, self._prev_quad)
            predicted = total_expected_cost(self.controller, self._prev_dynamics, self._prev_quad)
            actual = total_expected_cost(self.controller, dynamics, quad)
        return previous, predicted, actual

    def update(self, dynamics: LinearDynamics, quad: QuadraticCost,
               reference: LinearGaussianController | None = None,
               adapt_step: bool = True) -> tuple[LinearGaussianController, UpdateInfo]:
        """Adapt step_mult (if asked and possible), then take the KL step against ``reference``.

        reference None → the current controller (LQR-FLM); MDGPS passes the policy linearisation.
        ε = kl_step · step_mult · T. Equivalent to :meth:`adapt`, :meth:`solve` and :meth:`accept`.
        """
        if adapt_step:
            self.adapt(dynamics, quad)
        controller, info = self.solve(dynamics, quad, reference)
        self.accept(controller, info, dynamics, quad)
        return controller, info

    def adapt(self, dynamics: LinearDynamics, quad: QuadraticCost) -> None:
        """GPS's step-size rule (:func:`adapt_step_mult`) onto step_mult; nothing before the first update."""
        if not self.has_previous_update:
            return
        with single_threaded_blas():
            previous, predicted, actual = self.step_adjustment(dynamics, quad)
        self._step_mult = adapt_step_mult(self._step_mult, previous, predicted, actual,
                                          self.config.min_step_mult, self.config.max_step_mult)

    def solve(self, dynamics: LinearDynamics, quad: QuadraticCost,
              reference: LinearGaussianController | None = None,
              step_mult: float | None = None) -> tuple[LinearGaussianController, UpdateInfo]:
        """The KL step against ``reference`` (None: the current controller) at ``step_mult`` (None: the
        current one), without changing this optimizer: a candidate that :meth:`accept` makes current.

        An infeasible η search gives the reference itself (info.fallback) unless
        zero_step_when_infeasible is off (KLSearchError).
        """
        mult = self._step_mult if step_mult is None else float(step_mult)
        with single_threaded_blas():
            ref = self.controller if reference is None else reference
            epsilon = self.config.kl_step * mult * dynamics.T
            fallback = False
            try:
                result = kl_constrained_update(quad, dynamics, ref, epsilon, self.eta, self.config)
            except KLSearchError:
                if not self.config.zero_step_when_infeasible:
                    raise
                result = KLStepResult(ref, self.config.max_eta, 0.0, epsilon, self.config.max_eta_iterations)
                fallback = True
            with np.errstate(over="ignore", invalid="ignore"):  # an expansive reference may overflow
                new_cost = total_expected_cost(result.controller, dynamics, quad)
        info = UpdateInfo(result.eta, result.kl, epsilon, mult, result.iterations, new_cost, fallback)
        return result.controller, info

    def accept(self, controller: LinearGaussianController, info: UpdateInfo, dynamics: LinearDynamics,
               quad: QuadraticCost) -> None:
        """Make ``controller`` (from :meth:`solve` on ``dynamics``, ``quad``) current; η from ``info``."""
        self._prev_controller, self._prev_dynamics, self._prev_quad = self.controller, dynamics, quad
        self.controller, self.eta = controller, info.eta
        self.iteration += 1

    def keep(self, dynamics: LinearDynamics, quad: QuadraticCost) -> None:
        """Take no step this iteration (a rejected candidate): the controller stays current, and the next
        :meth:`adapt` compares against it under ``dynamics`` and ``quad``."""
        self._prev_controller, self._prev_dynamics, self._prev_quad = self.controller, dynamics, quad
        self.iteration += 1
