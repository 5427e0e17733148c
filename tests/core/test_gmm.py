"""Gaussian mixture EM and the normal-inverse-Wishart prior it induces."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from mbpl_core.containers import ShapeError
from mbpl_core.local.gmm import GaussianMixture

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
