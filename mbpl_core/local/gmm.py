"""Gaussian mixture model fitted by EM, and the normal-inverse-Wishart prior it induces.

This is the dynamics prior of Levine & Abbeel (NIPS 2014, Sec. 3.2 / Appendix A.3) as implemented in the
GPS code (``gmm.py``): a GMM over all recent (x_t, u_t, x_{t+1}) tuples; for the N tuples of one time step
the prior is the mixture collapsed to one Gaussian, weighted by the tuples' mean responsibilities:

    w_k = (1/N) Σ_n p(k | y_n),   μ0 = Σ_k w_k μ_k,   Φ = Σ_k w_k (Σ_k + (μ_k − μ0)(μ_k − μ0)ᵀ),

with pseudo-counts m = 1 and n0 = (P − 2 − D) / P after normalising by the number P of points the GMM
was fitted on (the caller scales both by the prior strength).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from mbpl_core.containers import ShapeError, check_finite

_LOG_2PI = float(np.log(2.0 * np.pi))
# Clusters whose total responsibility drops below this many points keep their previous parameters,
# since their mean and covariance would be estimated from (numerically) nothing.
_DEAD_CLUSTER_MASS = 1e-8
_NEGLIGIBLE_RESPONSIBILITY = 1e-14


@dataclass(frozen=True)
class _Whitening:
    """Per-cluster quantities of the E-step for one set of GMM parameters (see GaussianMixture._whitening)."""

    params: tuple[np.ndarray, np.ndarray, np.ndarray]
    centre: np.ndarray
    stacked64: np.ndarray
    stacked32: np.ndarray
    logdet: np.ndarray


def _logsumexp(a: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    """scipy.special.logsumexp(a, axis) for a real float array, bit for bit, at a third of its cost.

    The same steps as SciPy's (the maxima taken out of the sum, log1p of the rest, the direct
    log Σ exp where that is not finite) without its array-API dispatch, which dominates at (P, K) size.
    """
    a_max = np.max(a, axis=axis, keepdims=True)
    is_max = a == a_max
    m = np.sum(is_max, axis=axis, keepdims=True, dtype=a.dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        rest = np.where(is_max, -np.inf, a)
        rest -= a_max
        np.exp(rest, out=rest)
        s = np.sum(rest, axis=axis, keepdims=True)
        s = np.where(s == 0, s, s / m)
        out = np.log1p(s) + np.log(m) + a_max
        bad = ~np.isfinite(out)
        if bad.any():
            out = np.where(bad, np.log(np.sum(np.exp(a), axis=axis, keepdims=True)), out)
    return out if keepdims else np.squeeze(out, axis=axis)


@dataclass(frozen=True)
class NormalInverseWishart:
    """Normal-inverse-Wishart prior on a joint Gaussian N(μ, Σ), batched over leading axes.

    mu0: (..., D) prior mean; Phi: (..., D, D) prior scatter (a covariance before strength scaling);
    m: pseudo-count of the mean; n0: pseudo-count of the covariance.
    """

    mu0: np.ndarray
    Phi: np.ndarray
    m: float
    n0: float


class GaussianMixture:
    """Gaussian mixture p(y) = Σ_k π_k N(y | μ_k, Σ_k) fitted by EM in log space.

    Parameters after :meth:`fit`: mu: (K, D), sigma: (K, D, D), logmass: (K,) = log π_k.
    Covariances get ``regularization``·I added in every M-step so they stay positive definite.
    With ``warm_start`` a refit with the same K and D starts from the previous parameters. EM stops when
    the mean log-likelihood per point gains less than ``tolerance`` nats. Callers run it inside
    :func:`mbpl_core.blas.single_threaded_blas`.
    """

    def __init__(
        self,
        regularization: float = 1e-6,
        max_iterations: int = 100,
        tolerance: float = 1e-3,
        warm_start: bool = True,
    ) -> None:
        if regularization < 0.0 or max_iterations < 1 or tolerance < 0.0:
            raise ValueError("GaussianMixture needs regularization >= 0, max_iterations >= 1, tolerance >= 0")
        self.regularization = float(regularization)
        self.max_iterations = int(max_iterations)
        self.tolerance = float(tolerance)
        self.warm_start = bool(warm_start)
        self.mu: np.ndarray | None = None
        self.sigma: np.ndarray | None = None
        self.logmass: np.ndarray | None = None
        self.num_points = 0
        self.last_iterations = 0
        self.last_warm_started = False
        self.last_log_likelihood = -np.inf
        self._whitening_cache: _Whitening | None = None

    def __getstate__(self) -> dict:
        # The E-step cache is derived data (~1 MB at robot size): left out of pickles, rebuilt on use.
        state = self.__dict__.copy()
        state["_whitening_cache"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_whitening_cache", None)

    @property
    def K(self) -> int:
        return 0 if self.mu is None else int(self.mu.shape[0])

    @property
    def D(self) -> int:
        return 0 if self.mu is None else int(self.mu.shape[1])

    def log_joint(self, data: np.ndarray, fast: bool = False) -> np.ndarray:
        """log π_k + log N(y_p | μ_k, Σ_k) for data: (P, D); returns (P, K).

        ``fast`` does the whitening product (the dominant cost, P·D·K·D flops) in float32: the
        responsibilities EM needs change by ~1e-6 relative, and the step runs twice as fast.
        """
        if self.mu is None or self.sigma is None or self.logmass is None:
            raise RuntimeError("GaussianMixture has not been fitted")
        return self._log_joint(_check_points("data", data, self.D), fast)

    def _whitening(self) -> _Whitening:
        """The per-cluster quantities of :meth:`log_joint`, computed once per set of parameters.

        Cached against the identity of the mu / sigma / logmass arrays (every M-step assigns new ones), so
        the last E-step of :meth:`fit` and :meth:`inference` share them; changing the arrays in place would
        leave the cache stale — assign new ones instead.
        """
        assert self.mu is not None and self.sigma is not None and self.logmass is not None
        params = (self.mu, self.sigma, self.logmass)
        cached = self._whitening_cache
        if cached is not None and all(a is b for a, b in zip(cached.params, params, strict=True)):
            return cached
        try:
            chol = np.linalg.cholesky(self.sigma)
        except np.linalg.LinAlgError as err:
            raise ShapeError(
                "a GMM cluster covariance is not positive definite: use a positive regularization"
            ) from err
        K, D = self.K, self.D
        chol_inv = np.empty_like(chol)
        for k in range(K):
            # LAPACK's triangular inverse is ~3x cheaper than a general solve against the identity.
            chol_inv[k] = scipy.linalg.lapack.dtrtri(chol[k], lower=1)[0]
        # z_pk = L_k⁻¹ (y_p − μ_k) for all clusters through one (P, D) × (D, K·D) GEMM: far faster than K
        # small products on one BLAS thread.
        # Centring on the cluster means' centre keeps x·L⁻¹ − μ·L⁻¹ free of cancellation for offset data.
        # The means enter the same GEMM through a column of ones: [y − c, 1] [[L⁻ᵀ], [−(L⁻¹ (μ − c))ᵀ]].
        centre = self.mu.mean(axis=0)
        stacked = np.empty((D + 1, K * D))
        stacked[:D] = np.swapaxes(chol_inv, 1, 2).transpose(1, 0, 2).reshape(D, K * D)
        stacked[D] = -np.einsum("kij,kj->ki", chol_inv, self.mu - centre).reshape(K * D)
        logdet = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
        # Rounding the float64 matrix gives the same float32 entries as assigning into a float32 one.
        whitening = _Whitening(
            params=params, centre=centre, stacked64=stacked, stacked32=stacked.astype(np.float32),
            logdet=logdet,
        )
        self._whitening_cache = whitening
        return whitening

    def _log_joint(self, data: np.ndarray, fast: bool, work: np.ndarray | None = None) -> np.ndarray:
        """:meth:`log_joint` for checked data; ``work``: optional (P, K·D) buffer of the GEMM's dtype."""
        assert self.logmass is not None
        w = self._whitening()
        K, D = self.K, self.D
        dtype = np.float32 if fast else np.float64
        shifted = np.empty((data.shape[0], D + 1), dtype=dtype)
        np.subtract(data, w.centre, out=shifted[:, :D], casting="same_kind")
        shifted[:, D] = 1.0
        stacked = w.stacked32 if fast else w.stacked64
        if work is not None and work.shape == (data.shape[0], K * D) and work.dtype == dtype:
            # Reusing the buffer spares the page faults of a fresh (P, K·D) array; same GEMM, same result.
            z = np.matmul(shifted, stacked, out=work).reshape(-1, K, D)
        else:
            z = (shifted @ stacked).reshape(-1, K, D)
        maha = np.einsum("pkd,pkd->pk", z, z).astype(np.float64)
        return -0.5 * (maha + w.logdet[None, :] + D * _LOG_2PI) + self.logmass[None, :]

    def fit(
        self,
        data: np.ndarray,
        K: int,
        rng: np.random.Generator | None = None,
        init_labels: np.ndarray | None = None,
    ) -> int:
        """Fit K clusters to data: (P, D) by EM; returns the number of M-steps taken.

        Start: the previous parameters (warm start, same K and D); else one-hot responsibilities from
        ``init_labels`` (P,) in [0, K); else K distinct points drawn by ``rng`` as means with the data
        covariance; else contiguous blocks of the data order. Stops when the log-likelihood
        (1/P) Σ_p log Σ_k π_k N(y_p | μ_k, Σ_k) improves by less than ``tolerance`` nats per point (a
        per-point rule, unlike GPS's relative one, does not depend on the units of the data).
        """
        data = _check_points("data", data, None)
        P, D = data.shape
        if K < 1 or K > P:
            raise ValueError(f"GaussianMixture.fit needs 1 <= K <= P, got K={K}, P={P}")
        self.last_warm_started = self.warm_start and self.K == K and self.D == D
        if not self.last_warm_started:
            self._initialize(data, K, rng, init_labels)
        prev_ll = -np.inf
        iterations = 0
        work = np.empty((P, K * D), dtype=np.float32)
        for _ in range(self.max_iterations):
            logjoint = self._log_joint(data, fast=True, work=work)
            lognorm = _logsumexp(logjoint, axis=1)
            ll = float(np.sum(lognorm))
            if (ll - prev_ll) / P <= self.tolerance:
                break
            prev_ll = ll
            logjoint -= lognorm[:, None]
            self._m_step(data, logjoint)
            iterations += 1
        self.num_points = P
        self.last_iterations = iterations
        self.last_log_likelihood = max(ll, prev_ll)
        return iterations

    def _initialize(
        self, data: np.ndarray, K: int, rng: np.random.Generator | None, labels: np.ndarray | None
    ) -> None:
        P, D = data.shape
        if labels is None and rng is not None:
            centres = data[rng.choice(P, size=K, replace=False)]
            cov = np.cov(data, rowvar=False, bias=True).reshape(D, D) + self.regularization * np.eye(D)
            self.mu = centres.copy()
            self.sigma = np.repeat(cov[None], K, axis=0)
            self.logmass = np.full(K, -np.log(K))
            return
        if labels is None:
            labels = (np.arange(P) * K) // P
        labels = np.asarray(labels)
        if labels.shape != (P,):
            raise ShapeError(f"init_labels has shape {labels.shape}, expected ({P},)")
        if labels.min() < 0 or labels.max() >= K:
            raise ShapeError(f"init_labels must lie in [0, {K}), got [{labels.min()}, {labels.max()}]")
        logresp = np.full((P, K), -np.inf)
        logresp[np.arange(P), labels] = 0.0
        self.mu, self.sigma, self.logmass = None, None, None
        self._m_step(data, logresp)

    def _m_step(self, data: np.ndarray, logresp: np.ndarray) -> None:
        """Responsibility-weighted means, covariances (+ regularization·I) and masses; logresp: (P, K)."""
        P, D = data.shape
        K = logresp.shape[1]
        log_nk = _logsumexp(logresp, axis=0)
        alive = np.exp(log_nk) > _DEAD_CLUSTER_MASS
        if np.all(alive):
            w = np.exp(logresp - log_nk)
        else:
            w = np.exp(logresp[:, alive] - log_nk[alive])
        mu = np.empty((K, D)) if self.mu is None else self.mu.copy()
        sigma = np.empty((K, D, D)) if self.sigma is None else self.sigma.copy()
        if self.mu is None and not np.all(alive):
            # A cluster empty at initialisation gets the data's moments rather than undefined ones.
            mu[~alive] = data.mean(axis=0)
            cov = np.cov(data, rowvar=False, bias=True).reshape(D, D)
            sigma[~alive] = cov + self.regularization * np.eye(D)
        mu[alive] = w.T @ data
        eye = self.regularization * np.eye(D)
        wt = np.ascontiguousarray(w.T)  # one cluster's responsibilities contiguous, for the row scans
        for j, k in enumerate(np.flatnonzero(alive)):
            # Points with negligible responsibility change the covariance by < 1e-12 relative; skipping
            # them makes the M-step ~K times cheaper once the clusters have separated.
            rows = np.flatnonzero(wt[j] > _NEGLIGIBLE_RESPONSIBILITY)
            diff = data[rows]  # a copy: centred and weighted in place
            diff -= mu[k]
            diff *= np.sqrt(wt[j, rows])[:, None]
            s = diff.T @ diff
            sigma[k] = 0.5 * (s + s.T) + eye
        log_nk = np.maximum(log_nk, np.log(_DEAD_CLUSTER_MASS))
        self.mu, self.sigma = mu, sigma
        self.logmass = log_nk - _logsumexp(log_nk, axis=0)

    def inference(self, points: np.ndarray) -> NormalInverseWishart:
        """NIW prior for each set of points: (..., N, D) → mu0 (..., D), Phi (..., D, D), m = 1, n0.

        w_k = mean_n p(k | y_n); μ0 = Σ_k w_k μ_k; Φ = Σ_k w_k (Σ_k + (μ_k − μ0)(μ_k − μ0)ᵀ) (GPS
        ``inference``/``moments``). m = 1 and n0 = max(P − 2 − D, 1) / P for the P fitted points.
        """
        points = np.asarray(points, dtype=np.float64)
        if points.ndim < 2 or points.shape[-1] != self.D or points.shape[-2] < 1:
            raise ShapeError(f"points has shape {points.shape}, expected (..., N >= 1, {self.D})")
        check_finite("points", points)
        lead, N = points.shape[:-2], points.shape[-2]
        logjoint = self._log_joint(points.reshape(-1, self.D), fast=False).reshape(*lead, N, self.K)
        logresp = logjoint - _logsumexp(logjoint, axis=-1, keepdims=True)
        wts = np.exp(_logsumexp(logresp, axis=-2) - np.log(N))
        wts = wts / np.sum(wts, axis=-1, keepdims=True)
        assert self.mu is not None and self.sigma is not None
        mu0 = wts @ self.mu
        D = self.D
        phi = (wts @ self.sigma.reshape(self.K, D * D)).reshape(*lead, D, D)
        diff = (self.mu - mu0[..., None, :]) * np.sqrt(wts)[..., :, None]
        phi = phi + np.swapaxes(diff, -1, -2) @ diff
        n0 = max(self.num_points - 2 - D, 1) / self.num_points
        return NormalInverseWishart(mu0=mu0, Phi=0.5 * (phi + np.swapaxes(phi, -1, -2)), m=1.0, n0=float(n0))


def _check_points(name: str, data: np.ndarray, D: int | None) -> np.ndarray:
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or (D is not None and data.shape[1] != D):
        raise ShapeError(f"{name} has shape {data.shape}, expected (P, {'D' if D is None else D})")
    check_finite(name, data)
    return data
