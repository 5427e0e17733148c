"""Gaussian mixture EM and the normal-inverse-Wishart prior it induces."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats

from mbpl_core.containers import ShapeError
from mbpl_core.local.gmm import GaussianMixture, _logsumexp

MEANS = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, -5.0], [0.0, 12.0, 6.0]])


def _clustered(rng: np.random.Generator, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated clusters with distinct covariances; returns data (3n, 3) and labels."""
    scales = [0.5, 1.0, 0.3]
    parts = [m + s * rng.standard_normal((n, 3)) for m, s in zip(MEANS, scales, strict=True)]
    labels = np.repeat(np.arange(3), n)
    order = rng.permutation(3 * n)
    return np.concatenate(parts)[order], labels[order]


def test_em_recovers_well_separated_cluster_means_and_masses() -> None:
    rng = np.random.default_rng(0)
    data, labels = _clustered(rng)
    gmm = GaussianMixture()
    gmm.fit(data, 3, rng=np.random.default_rng(1))
    assert gmm.mu is not None and gmm.logmass is not None
    for k, mean in enumerate(MEANS):
        j = int(np.argmin(np.linalg.norm(gmm.mu - mean, axis=1)))
        np.testing.assert_allclose(gmm.mu[j], data[labels == k].mean(axis=0), atol=1e-3)
        np.testing.assert_allclose(np.exp(gmm.logmass[j]), 1.0 / 3.0, atol=1e-3)


def test_log_joint_matches_scipy_densities() -> None:
    rng = np.random.default_rng(2)
    data, labels = _clustered(rng, 40)
    gmm = GaussianMixture()
    gmm.fit(data, 3, init_labels=labels)
    assert gmm.mu is not None and gmm.sigma is not None and gmm.logmass is not None
    expected = np.stack(
        [
            scipy.stats.multivariate_normal(gmm.mu[k], gmm.sigma[k]).logpdf(data) + gmm.logmass[k]
            for k in range(3)
        ],
        axis=1,
    )
    np.testing.assert_allclose(gmm.log_joint(data), expected, rtol=1e-10, atol=1e-8)
    # the float32 whitening product EM uses: the log-densities agree to single precision
    np.testing.assert_allclose(gmm.log_joint(data, fast=True), expected, rtol=1e-5, atol=1e-3)


def test_log_joint_is_exact_for_data_far_from_the_origin() -> None:
    rng = np.random.default_rng(3)
    data, labels = _clustered(rng, 40)
    offset = np.array([1.0e4, -2.0e4, 5.0e3])
    near, far = GaussianMixture(), GaussianMixture()
    near.fit(data, 3, init_labels=labels)
    far.fit(data + offset, 3, init_labels=labels)
    for fast, rtol in ((False, 1e-8), (True, 1e-4)):
        np.testing.assert_allclose(far.log_joint(data + offset, fast=fast), near.log_joint(data), rtol=rtol,
                                   atol=1e-3)


def test_em_log_likelihood_never_decreases() -> None:
    data, _ = _clustered(np.random.default_rng(3), 60)
    lls = []
    for iterations in range(1, 6):
        gmm = GaussianMixture(max_iterations=iterations, tolerance=0.0, warm_start=False)
        gmm.fit(data, 4, init_labels=np.arange(len(data)) % 4)
        lls.append(float(np.sum(np.logaddexp.reduce(gmm.log_joint(data), axis=1))))
    assert all(b >= a - 1e-9 for a, b in zip(lls, lls[1:], strict=False))


def test_warm_start_reuses_previous_fit_when_k_is_unchanged() -> None:
    data, _ = _clustered(np.random.default_rng(4))
    gmm = GaussianMixture()
    first = gmm.fit(data, 3, rng=np.random.default_rng(0))
    assert not gmm.last_warm_started
    second = gmm.fit(data, 3)
    assert gmm.last_warm_started
    assert second <= 1 < first
    gmm.fit(data, 2, rng=np.random.default_rng(0))
    assert not gmm.last_warm_started


def test_inference_of_points_from_one_cluster_gives_that_cluster() -> None:
    rng = np.random.default_rng(5)
    data, labels = _clustered(rng)
    gmm = GaussianMixture()
    gmm.fit(data, 3, init_labels=labels)
    assert gmm.mu is not None and gmm.sigma is not None
    j = int(np.argmin(np.linalg.norm(gmm.mu - MEANS[1], axis=1)))
    niw = gmm.inference(data[labels == 1][:5])
    np.testing.assert_allclose(niw.mu0, gmm.mu[j], atol=1e-9)
    np.testing.assert_allclose(niw.Phi, gmm.sigma[j], atol=1e-9)
    assert niw.m == 1.0
    assert niw.n0 == pytest.approx((len(data) - 2 - 3) / len(data))


def test_inference_is_the_moment_matched_mixture_of_the_responsible_clusters() -> None:
    rng = np.random.default_rng(6)
    data, labels = _clustered(rng)
    gmm = GaussianMixture()
    gmm.fit(data, 3, init_labels=labels)
    assert gmm.mu is not None and gmm.sigma is not None
    a, b = (int(np.argmin(np.linalg.norm(gmm.mu - MEANS[i], axis=1))) for i in (0, 2))
    points = np.concatenate([data[labels == 0][:3], data[labels == 2][:3]])
    niw = gmm.inference(points)
    d = gmm.mu[a] - gmm.mu[b]
    np.testing.assert_allclose(niw.mu0, 0.5 * (gmm.mu[a] + gmm.mu[b]), atol=1e-9)
    expected = 0.5 * (gmm.sigma[a] + gmm.sigma[b]) + 0.25 * np.outer(d, d)
    np.testing.assert_allclose(niw.Phi, expected, atol=1e-8)
    batched = gmm.inference(np.stack([points, points[::-1]]))
    np.testing.assert_allclose(batched.mu0[1], niw.mu0, atol=1e-12)


def test_bad_input_raises_naming_the_array() -> None:
    data, _ = _clustered(np.random.default_rng(7), 20)
    data[3, 1] = np.nan
    with pytest.raises(ShapeError, match="data contains NaN"):
        GaussianMixture().fit(data, 2, rng=np.random.default_rng(0))
    with pytest.raises(ShapeError, match="data has shape"):
        GaussianMixture().fit(np.zeros(10), 2)
    with pytest.raises(ValueError, match="K"):
        GaussianMixture().fit(np.zeros((3, 2)), 5)


# --- The EM as it was before the E-/M-step caching and the NumPy logsumexp: the oracle of the fast path ---


def _reference_log_joint(mu: np.ndarray, sigma: np.ndarray, logmass: np.ndarray, data: np.ndarray,
                         fast: bool) -> np.ndarray:
    K, D = mu.shape
    chol = np.linalg.cholesky(sigma)
    chol_inv = np.empty_like(chol)  # C order: the einsum below rounds differently on other layouts
    for k in range(K):
        chol_inv[k] = scipy.linalg.lapack.dtrtri(chol[k], lower=1)[0]
    centre = mu.mean(axis=0)
    dtype = np.float32 if fast else np.float64
    stacked = np.empty((D + 1, K * D), dtype=dtype)
    stacked[:D] = np.swapaxes(chol_inv, 1, 2).transpose(1, 0, 2).reshape(D, K * D)
    stacked[D] = -np.einsum("kij,kj->ki", chol_inv, mu - centre).reshape(K * D)
    shifted = np.empty((data.shape[0], D + 1), dtype=dtype)
    shifted[:, :D] = data - centre
    shifted[:, D] = 1.0
    z = (shifted @ stacked).reshape(-1, K, D)
    maha = np.einsum("pkd,pkd->pk", z, z).astype(np.float64)
    logdet = 2.0 * np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)
    return -0.5 * (maha + logdet[None, :] + D * np.log(2.0 * np.pi)) + logmass[None, :]


def _reference_m_step(state: dict, data: np.ndarray, logresp: np.ndarray, reg: float) -> None:
    P, D = data.shape
    K = logresp.shape[1]
    log_nk = scipy.special.logsumexp(logresp, axis=0)
    alive = np.exp(log_nk) > 1e-8
    w = np.exp(logresp[:, alive] - log_nk[alive])
    mu = np.empty((K, D)) if state["mu"] is None else state["mu"].copy()
    sigma = np.empty((K, D, D)) if state["sigma"] is None else state["sigma"].copy()
    if state["mu"] is None and not np.all(alive):
        mu[~alive] = data.mean(axis=0)
        sigma[~alive] = np.cov(data, rowvar=False, bias=True).reshape(D, D) + reg * np.eye(D)
    mu[alive] = w.T @ data
    for j, k in enumerate(np.flatnonzero(alive)):
        rows = np.flatnonzero(w[:, j] > 1e-14)
        diff = (data[rows] - mu[k]) * np.sqrt(w[rows, j])[:, None]
        s = diff.T @ diff
        sigma[k] = 0.5 * (s + s.T) + reg * np.eye(D)
    log_nk = np.maximum(log_nk, np.log(1e-8))
    logmass = log_nk - scipy.special.logsumexp(log_nk)
    state.update(mu=mu, sigma=sigma, logmass=logmass, dead=int(np.sum(~alive)))


def _reference_fit(state: dict, data: np.ndarray, K: int, labels: np.ndarray, reg: float, tol: float) -> int:
    """Warm start when K is unchanged, else one-hot labels; EM until the per-point gain is <= tol."""
    P = data.shape[0]
    if state["mu"] is None or state["mu"].shape[0] != K:
        logresp = np.full((P, K), -np.inf)
        logresp[np.arange(P), labels] = 0.0
        state.update(mu=None, sigma=None, logmass=None)
        _reference_m_step(state, data, logresp, reg)
    prev_ll, iterations = -np.inf, 0
    for _ in range(100):
        logjoint = _reference_log_joint(state["mu"], state["sigma"], state["logmass"], data, fast=True)
        lognorm = scipy.special.logsumexp(logjoint, axis=1)
        ll = float(np.sum(lognorm))
        if (ll - prev_ll) / P <= tol:
            break
        prev_ll = ll
        _reference_m_step(state, data, logjoint - lognorm[:, None], reg)
        iterations += 1
    state["ll"] = max(ll, prev_ll)
    return iterations


def _reference_inference(state: dict, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lead, N = points.shape[:-2], points.shape[-2]
    mu, sigma, K, D = state["mu"], state["sigma"], *state["mu"].shape
    logjoint = _reference_log_joint(mu, sigma, state["logmass"], points.reshape(-1, D), fast=False)
    logjoint = logjoint.reshape(*lead, N, K)
    logresp = logjoint - scipy.special.logsumexp(logjoint, axis=-1, keepdims=True)
    wts = np.exp(scipy.special.logsumexp(logresp, axis=-2) - np.log(N))
    wts = wts / np.sum(wts, axis=-1, keepdims=True)
    mu0 = wts @ mu
    phi = (wts @ sigma.reshape(K, D * D)).reshape(*lead, D, D)
    diff = (mu - mu0[..., None, :]) * np.sqrt(wts)[..., :, None]
    phi = phi + np.swapaxes(diff, -1, -2) @ diff
    return mu0, 0.5 * (phi + np.swapaxes(phi, -1, -2))


def _rollouts(
    rng: np.random.Generator, n: int, spread: float, T: int = 60, dX: int = 10, dU: int = 4
) -> np.ndarray:
    """(n, T−1, 2·dX + dU) transition tuples of a stable linear system with a degenerate state block
    (the last dX/2 coordinates a linear map of the first, as the end-effector points of a robot state);
    ``spread`` scales the action noise, so shrinking it collapses the data as a converging policy does."""
    half = dX // 2
    A = 0.9 * np.eye(half) + 0.05 * rng.standard_normal((half, half))
    B = 0.1 * rng.standard_normal((half, dU))
    J = rng.standard_normal((dX - half, half))
    out = np.empty((n, T - 1, 2 * dX + dU))
    for i in range(n):
        q, prev = rng.standard_normal(half), None
        for t in range(T):
            x = np.concatenate([q, J @ q])
            u = -0.5 * B.T @ q + spread * rng.standard_normal(dU)
            if prev is not None:
                out[i, t - 1] = np.concatenate([prev[0], prev[1], x])
            prev = (x, u)
            q = A @ q + B @ u + 0.01 * rng.standard_normal(half)
    return out


def test_fit_and_inference_are_bit_identical_to_the_reference_em_over_warm_started_refits() -> None:
    # A sliding window of trajectories, refitted after every batch as DynamicsPriorGMM does: the number
    # of clusters grows (cold starts), then stays (warm starts) while the data collapse and clusters die.
    rng = np.random.default_rng(11)
    batches = [_rollouts(rng, 4, spread) for spread in (1.0, 1.0, 0.8, 0.5, 0.3, 0.1, 0.05, 0.02, 0.01)]
    reg, tol, keep = 1e-6, 0.05, 12
    gmm = GaussianMixture(regularization=reg, tolerance=tol)
    state: dict = {"mu": None, "sigma": None, "logmass": None}
    window = np.empty((0, *batches[0].shape[1:]))
    warm, dead = 0, 0
    for batch in batches:
        window = np.concatenate([window, batch])[-keep:]
        data = window.reshape(-1, window.shape[-1])
        S, Tm1 = window.shape[:2]
        K = min(10, S * (Tm1 + 1) // 25)
        labels = np.tile((np.arange(Tm1) * K) // Tm1, S)
        expected_its = _reference_fit(state, data, K, labels, reg, tol)
        assert gmm.fit(data, K, init_labels=labels) == expected_its
        warm += gmm.last_warm_started
        dead = max(dead, state["dead"])
        for name in ("mu", "sigma", "logmass"):
            np.testing.assert_array_equal(getattr(gmm, name), state[name], err_msg=name)
        assert gmm.last_log_likelihood == state["ll"]
        points = np.swapaxes(batch, 0, 1)  # the batch's tuples, time-major, as the regression asks
        mu0, phi = _reference_inference(state, points)
        niw = gmm.inference(points)
        np.testing.assert_array_equal(niw.mu0, mu0)
        np.testing.assert_array_equal(niw.Phi, phi)
    # the sequence exercised both starts and the dead-cluster branch of the M-step
    assert warm >= 4 and dead >= 1


def test_numpy_logsumexp_is_scipys_bit_for_bit() -> None:
    rng = np.random.default_rng(12)
    for trial in range(60):
        a = 40.0 * rng.standard_normal((300, 9))
        if trial % 3 == 0:
            a[:, 2] = -np.inf  # an empty cluster
        if trial % 4 == 0:
            a[:, 5] = a[:, 6]  # ties at the maximum
        if trial % 5 == 0:
            a[:7] = -np.inf
        for axis in (0, 1):
            with np.errstate(all="ignore"):
                expected = scipy.special.logsumexp(a, axis=axis)
            np.testing.assert_array_equal(_logsumexp(a, axis=axis), expected)
            np.testing.assert_array_equal(_logsumexp(a, axis=axis, keepdims=True),
                                          np.expand_dims(expected, axis))


def test_e_step_cache_follows_new_parameters_and_stays_out_of_pickles() -> None:
    data, labels = _clustered(np.random.default_rng(13), 40)
    gmm = GaussianMixture()
    gmm.fit(data, 3, init_labels=labels)
    assert gmm.mu is not None and gmm.sigma is not None and gmm.logmass is not None
    before = gmm.log_joint(data)
    assert len(pickle.dumps(gmm)) < 20_000  # parameters only, not the (D+1, K·D) whitening matrices
    clone = pickle.loads(pickle.dumps(gmm))
    np.testing.assert_array_equal(clone.log_joint(data), before)
    gmm.sigma = 2.0 * gmm.sigma
    expected = _reference_log_joint(gmm.mu, gmm.sigma, gmm.logmass, data, fast=False)
    np.testing.assert_array_equal(gmm.log_joint(data), expected)
