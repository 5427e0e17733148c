"""Fitting time-varying linear-Gaussian dynamics p(x_{t+1} | x_t, u_t) = N(Fm_t [x_t; u_t] + fv_t, Σ_t).

Two fits, both vectorised over time:

* :func:`fit_linear_dynamics` — per step t the joint Gaussian of y = [x_t; u_t; x_{t+1}] over the N samples,
  conditioned on [x_t; u_t] (plain linear-Gaussian regression).
* :func:`fit_dynamics_with_gmm_prior` — Bayesian linear regression with a normal-inverse-Wishart prior from a
  GMM over recent tuples (Levine & Abbeel, NIPS 2014, Sec. 3.2 and Appendix A.3; GPS
  ``dynamics_lr_prior.py`` / ``gauss_fit_joint_prior``). With prior (μ0, Φ, m, n0) and the samples'
  empirical mean ȳ and covariance S (1/N normalised):

      Σ = (N S + Φ + N m / (N + m) (ȳ − μ0)(ȳ − μ0)ᵀ) / (N + n0),   μ = ȳ,

  and the regression is read off the joint: Fm = Σ_yx Σ_xx⁻¹, fv = μ_y − Fm μ_x,
  dyn_covar = Σ_yy − Fm Σ_xx Fmᵀ (Σ_xx with ``regularization``·I added). The mean stays at the data mean,
  as in GPS, so the fit passes through the observed trajectories even when the prior is far away.

:class:`DynamicsFitter` keeps the prior and is what the loop and the fitting node call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mbpl_core.blas import single_threaded_blas
from mbpl_core.config import ConfigError
from mbpl_core.containers import LinearDynamics, SampleBatch, ShapeError, check_finite
from mbpl_core.local.gmm import GaussianMixture, NormalInverseWishart


@dataclass(frozen=True)
class DynamicsFitConfig:
    """Dynamics fitting settings (YAML section ``algorithm.dynamics``).

    regularization: added to Σ_xx before solving the regression; prior_strength: multiplies the prior's
    pseudo-counts m and n0 (0 = plain regression); max_clusters / min_samples_per_cluster: the GMM uses
    K = max(1, min(max_clusters, floor(N·T / min_samples_per_cluster))) clusters for N kept trajectories;
    max_samples: trajectories kept for the prior; em_iterations / em_tolerance: EM stops after em_iterations
    or when the mean log-likelihood per tuple gains less than em_tolerance nats (warm-started refits get
    most of their gain in the first 1–3 iterations; each further one costs ~10–20 ms at robot size);
    gmm_regularization: added to every cluster covariance; initial_state_var: floor of the x0 variance.
    """

    regularization: float = 1e-6
    prior_strength: float = 1.0
    max_clusters: int = 20
    min_samples_per_cluster: int = 40
    max_samples: int = 20
    em_iterations: int = 100
    em_tolerance: float = 0.1
    gmm_regularization: float = 1e-6
    initial_state_var: float = 1e-6

    def __post_init__(self) -> None:
        for name in (
            "regularization", "prior_strength", "em_tolerance", "gmm_regularization", "initial_state_var"
        ):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0.0:
                raise ConfigError(f"dynamics.{name} must be a finite number >= 0, got {value}")
        for name in ("max_clusters", "min_samples_per_cluster", "max_samples", "em_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dynamics.{name} must be >= 1, got {getattr(self, name)}")


def _validate_batch(batch: SampleBatch, what: str = "batch") -> None:
    if not isinstance(batch, SampleBatch):
        raise TypeError(f"{what} must be a SampleBatch, got {type(batch).__name__}")
    if batch.T < 2:
        raise ShapeError(f"{what}.X has shape {batch.X.shape}: fitting dynamics needs T >= 2 time steps")
    # SampleBatch checks on construction; repeated here because callers may hand over arrays built elsewhere.
    check_finite(f"{what}.X", batch.X)
    check_finite(f"{what}.U", batch.U)


def transition_tuples(batch: SampleBatch) -> np.ndarray:
    """Time-major tuples y = [x_t; u_t; x_{t+1}]: (T−1, N, dX+dU+dX)."""
    Y = np.concatenate([batch.X[:, :-1], batch.U[:, :-1], batch.X[:, 1:]], axis=2)
    return np.ascontiguousarray(np.swapaxes(Y, 0, 1))


def _empirical_moments(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (T, D) and 1/N-normalised covariance (T, D, D) of Y: (T, N, D) over N."""
    mean = Y.mean(axis=1)
    diff = Y - mean[:, None, :]
    cov = np.swapaxes(diff, 1, 2) @ diff / Y.shape[1]
    return mean, cov


def condition_joint_gaussian(
    mu: np.ndarray, sigma: np.ndarray, dXU: int, regularization: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regression x' | [x; u] from a joint Gaussian over [x; u; x'].

    mu: (T, D), sigma: (T, D, D) with D = dXU + dX. Returns Fm: (T, dX, dXU) = Σ_yx (Σ_xx + λI)⁻¹,
    fv: (T, dX) = μ_y − Fm μ_x, dyn_covar: (T, dX, dX) = Σ_yy − Fm (Σ_xx + λI) Fmᵀ (symmetrised).
    Raises ShapeError if Σ_xx + λI is singular (e.g. too few samples and no regularization).
    """
    sxx = sigma[:, :dXU, :dXU] + regularization * np.eye(dXU)
    sxy = sigma[:, :dXU, dXU:]
    try:
        Fm = np.swapaxes(np.linalg.solve(sxx, sxy), 1, 2)
    except np.linalg.LinAlgError as err:
        raise ShapeError(
            "the [x; u] covariance is singular: use more samples (N > dX + dU) or a positive regularization"
        ) from err
    fv = mu[:, dXU:] - np.einsum("tij,tj->ti", Fm, mu[:, :dXU])
    dyn_covar = sigma[:, dXU:, dXU:] - Fm @ sxx @ np.swapaxes(Fm, 1, 2)
    dyn_covar = 0.5 * (dyn_covar + np.swapaxes(dyn_covar, 1, 2))
    return Fm, fv, dyn_covar


def _assemble(
    Fm: np.ndarray, fv: np.ndarray, dyn_covar: np.ndarray, x0mu: np.ndarray, x0sigma: np.ndarray
) -> LinearDynamics:
    """Pad the T−1 fitted transitions to T steps (the last repeats the one before, so every step is
    well-formed; the forward pass never uses it) and check the result is finite."""
    for name, arr in (("Fm", Fm), ("fv", fv), ("dyn_covar", dyn_covar)):
        check_finite(f"fitted {name}", arr)
    pad = lambda a: np.concatenate([a, a[-1:]], axis=0)  # noqa: E731
    return LinearDynamics(pad(Fm), pad(fv), pad(dyn_covar), x0mu, x0sigma)


def fit_linear_dynamics(
    batch: SampleBatch, regularization: float = 1e-6, initial_state_var: float = 1e-6
) -> LinearDynamics:
    """Plain per-step linear-Gaussian regression of x_{t+1} on [x_t; u_t] over the N samples.

    Joint Gaussian of [x_t; u_t; x_{t+1}] (empirical mean, 1/N covariance) conditioned on [x_t; u_t], see
    :func:`condition_joint_gaussian`. x0mu: (dX,) = mean of X[:, 0];
    x0sigma: (dX, dX) = diag(max(var X[:, 0], initial_state_var)).
    Recovers time-varying (A_t, B_t, c_t) exactly from noiseless data with N > dX + dU and λ → 0.
    """
    _validate_batch(batch)
    if regularization < 0.0:
        raise ValueError(f"regularization must be >= 0, got {regularization}")
    with single_threaded_blas():
        mu, sigma = _empirical_moments(transition_tuples(batch))
        Fm, fv, dyn_covar = condition_joint_gaussian(mu, sigma, batch.dX + batch.dU, regularization)
    x0 = batch.X[:, 0]
    x0sigma = np.diag(np.maximum(np.var(x0, axis=0), initial_state_var))
    return _assemble(Fm, fv, dyn_covar, x0.mean(axis=0), x0sigma)


class DynamicsPriorGMM:
    """GMM prior over the (x_t, u_t, x_{t+1}) tuples of the last ``max_samples`` trajectories.

    X: (S, T, dX), U: (S, T, dU) kept samples; the GMM is refitted (warm-started when K is unchanged, else
    initialised with clusters = contiguous time segments) on every :meth:`update`.
    """

    def __init__(self, config: DynamicsFitConfig | None = None) -> None:
        self.config = DynamicsFitConfig() if config is None else config
        self.X: np.ndarray | None = None
        self.U: np.ndarray | None = None
        self.gmm = GaussianMixture(
            regularization=self.config.gmm_regularization,
            max_iterations=self.config.em_iterations,
            tolerance=self.config.em_tolerance,
            warm_start=True,
        )

    @property
    def num_samples(self) -> int:
        return 0 if self.X is None else int(self.X.shape[0])

    def update(self, batch: SampleBatch) -> int:
        """Add the batch's trajectories, drop the oldest beyond max_samples, refit; returns EM iterations."""
        _validate_batch(batch)
        if self.X is not None and self.U is not None:
            if batch.X.shape[1:] != self.X.shape[1:] or batch.U.shape[1:] != self.U.shape[1:]:
                raise ShapeError(
                    f"batch X {batch.X.shape} / U {batch.U.shape} do not match the prior's "
                    f"(T, dX) = {self.X.shape[1:]} / (T, dU) = {self.U.shape[1:]}"
                )
            X, U = np.concatenate([self.X, batch.X]), np.concatenate([self.U, batch.U])
        else:
            X, U = batch.X.copy(), batch.U.copy()
        keep = self.config.max_samples
        self.X, self.U = X[-keep:], U[-keep:]
        S, T = self.X.shape[:2]
        data = np.concatenate([self.X[:, :-1], self.U[:, :-1], self.X[:, 1:]], axis=2)
        data = data.reshape(S * (T - 1), -1)
        K = max(1, min(self.config.max_clusters, (S * T) // self.config.min_samples_per_cluster))
        K = min(K, data.shape[0])
        labels = np.tile((np.arange(T - 1) * K) // (T - 1), S)
        with single_threaded_blas():
            return self.gmm.fit(data, K, init_labels=labels)

    def eval(self, points: np.ndarray) -> NormalInverseWishart:
        """Unscaled NIW prior (m = 1) for each time step's tuples; points: (T−1, N, D)."""
        if self.gmm.mu is None:
            raise RuntimeError("DynamicsPriorGMM.eval called before any update")
        with single_threaded_blas():
            return self.gmm.inference(points)

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean (dX,) and variance (dX,) of x_0 over the kept trajectories."""
        if self.X is None:
            raise RuntimeError("DynamicsPriorGMM.initial_state called before any update")
        return self.X[:, 0].mean(axis=0), self.X[:, 0].var(axis=0)


def fit_dynamics_with_gmm_prior(
    batch: SampleBatch, prior: DynamicsPriorGMM, config: DynamicsFitConfig | None = None
) -> LinearDynamics:
    """Bayesian linear regression per time step with the GMM's NIW prior (module docstring; GPS
    ``gauss_fit_joint_prior``). prior_strength s scales m and n0 and Φ ← s Φ (Φ is a covariance).

    x0: NIW posterior of a diagonal x_0 covariance with prior (mean and variance of the kept x_0s,
    pseudo-count s), floored at initial_state_var. Finite for N = 1; Fm → the prior's regression as s → ∞.
    """
    config = prior.config if config is None else config
    _validate_batch(batch)
    N, s = batch.N, config.prior_strength
    with single_threaded_blas():
        Y = transition_tuples(batch)
        mean, emp = _empirical_moments(Y)
        niw = prior.eval(Y)
        m, n0 = niw.m * s, niw.n0 * s
        d = mean - niw.mu0
        shrink = N * m / (N + m)
        sigma = (N * emp + m * niw.Phi + shrink * d[:, :, None] * d[:, None, :]) / (N + n0)
        Fm, fv, dyn_covar = condition_joint_gaussian(mean, sigma, batch.dX + batch.dU, config.regularization)
    x0 = batch.X[:, 0]
    x0mu = x0.mean(axis=0)
    pmu, pvar = prior.initial_state()
    x0var = (N * x0.var(axis=0) + s * pvar + N * s / (N + s) * (x0mu - pmu) ** 2) / (N + s)
    x0sigma = np.diag(np.maximum(x0var, config.initial_state_var))
    return _assemble(Fm, fv, dyn_covar, x0mu, x0sigma)


class DynamicsFitter:
    """Per-condition dynamics fitting state: the GMM prior over recent samples and the last fit.

    :meth:`update` adds the batch to the prior (refitting the warm-started GMM), then fits the batch by
    BLR with that prior — on the first update the prior is built from this same batch, as in GPS.
    With prior_strength = 0 it is the plain regression. Picklable (numpy arrays and plain objects only).
    ``timings`` holds the seconds of the last update: ``prior`` (EM) and ``regression`` (BLR).
    """

    def __init__(self, config: DynamicsFitConfig | None = None) -> None:
        self.config = DynamicsFitConfig() if config is None else config
        self.prior = DynamicsPriorGMM(self.config)
        self.dynamics: LinearDynamics | None = None
        self.timings: dict[str, float] = {"prior": 0.0, "regression": 0.0}
        self.em_iterations = 0

    def update(self, batch: SampleBatch) -> LinearDynamics:
        """Fit p(x_{t+1} | x_t, u_t) to batch X: (N, T, dX), U: (N, T, dU); returns T-step LinearDynamics."""
        _validate_batch(batch)
        if self.dynamics is not None and (batch.dX, batch.dU, batch.T) != (
            self.dynamics.dX,
            self.dynamics.dU,
            self.dynamics.T,
        ):
            raise ShapeError(
                f"batch has (T, dX, dU) = {(batch.T, batch.dX, batch.dU)} but this fitter was fitted with "
                f"{(self.dynamics.T, self.dynamics.dX, self.dynamics.dU)}"
            )
        with single_threaded_blas():
            dyn = self._timed_fit(batch)
        self.dynamics = dyn
        return dyn

    def _timed_fit(self, batch: SampleBatch) -> LinearDynamics:
        start = time.perf_counter()
        if self.config.prior_strength == 0.0:
            self.em_iterations = 0
            middle = time.perf_counter()
            dyn = fit_linear_dynamics(batch, self.config.regularization, self.config.initial_state_var)
        else:
            self.em_iterations = self.prior.update(batch)
            middle = time.perf_counter()
            dyn = fit_dynamics_with_gmm_prior(batch, self.prior, self.config)
        self.timings = {"prior": middle - start, "regression": time.perf_counter() - middle}
        return dyn
