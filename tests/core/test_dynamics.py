"""Dynamics fitting: plain regression, BLR with the GMM prior, the fitter's state and input checks."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import numpy as np
import pytest
from _helpers_niw import niw_posterior_scatter

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import SampleBatch, ShapeError
from mbpl_core.local.dynamics import (
    DynamicsFitConfig,
    DynamicsFitter,
    DynamicsPriorGMM,
    condition_joint_gaussian,
    fit_dynamics_with_gmm_prior,
    fit_linear_dynamics,
    transition_tuples,
)
from mbpl_core.local.gmm import NormalInverseWishart

T, dX, dU = 12, 4, 2


def _batch(system, rng: np.random.Generator, N: int, noise_std: float = 0.0) -> SampleBatch:  # noqa: ANN001
    U = rng.standard_normal((N, T, dU))
    x0 = rng.standard_normal((N, dX))
    noise = noise_std * rng.standard_normal((N, T, dX)) if noise_std > 0 else None
    return SampleBatch(system.rollout(x0, U, noise), U)


def test_regression_recovers_time_varying_system_from_noiseless_data(random_stable_system: Callable) -> None:
    rng = np.random.default_rng(0)
    system = random_stable_system(rng, T, dX, dU)
    batch = _batch(system, rng, N=dX + dU + 4)
    dyn = fit_linear_dynamics(batch, regularization=0.0)
    np.testing.assert_allclose(dyn.Fm[: T - 1, :, :dX], system.A[: T - 1], atol=1e-6)
    np.testing.assert_allclose(dyn.Fm[: T - 1, :, dX:], system.B[: T - 1], atol=1e-6)
    np.testing.assert_allclose(dyn.fv[: T - 1], system.c[: T - 1], atol=1e-6)
    np.testing.assert_allclose(dyn.dyn_covar, 0.0, atol=1e-9)
    np.testing.assert_allclose(dyn.x0mu, batch.X[:, 0].mean(axis=0))


def test_initial_state_is_the_sample_mean_and_floored_variance(random_stable_system: Callable) -> None:
    rng = np.random.default_rng(8)
    batch = _batch(random_stable_system(rng, T, dX, dU), rng, N=dX + dU + 4)
    X = batch.X.copy()
    X[:, 0, 1] = 0.25  # one coordinate of x0 without spread: its variance is the floor
    X[:, 0, 2] *= 1e-3  # one with a spread below the floor
    floor = 1e-4
    dyn = fit_linear_dynamics(SampleBatch(X, batch.U), regularization=1e-6, initial_state_var=floor)
    var = np.array([np.mean((X[:, 0, j] - X[:, 0, j].mean()) ** 2) for j in range(dX)])
    assert var[1] < floor and var[2] < floor < var[0]
    np.testing.assert_allclose(dyn.x0sigma, np.diag([max(v, floor) for v in var]), rtol=1e-12)
    np.testing.assert_allclose(dyn.x0mu, X[:, 0].sum(axis=0) / X.shape[0], rtol=1e-12)


def test_residual_covariance_estimates_the_process_noise(random_stable_system: Callable) -> None:
    rng = np.random.default_rng(1)
    system = random_stable_system(rng, T, dX, dU)
    dyn = fit_linear_dynamics(_batch(system, rng, N=4000, noise_std=0.1))
    expected = np.broadcast_to(0.01 * np.eye(dX), (T - 1, dX, dX))
    np.testing.assert_allclose(dyn.dyn_covar[: T - 1], expected, atol=2e-3)


def _prior_from(system, rng: np.random.Generator, samples: int = 20) -> DynamicsPriorGMM:  # noqa: ANN001
    prior = DynamicsPriorGMM(DynamicsFitConfig(min_samples_per_cluster=40, max_clusters=4))
    prior.update(_batch(system, rng, samples, noise_std=0.05))
    return prior


def test_very_strong_prior_returns_the_priors_regression(random_stable_system: Callable) -> None:
    rng = np.random.default_rng(2)
    system = random_stable_system(rng, T, dX, dU)
    prior = _prior_from(system, rng)
    batch = _batch(system, rng, N=3, noise_std=0.05)
    config = DynamicsFitConfig(prior_strength=1e10, regularization=0.0)
    dyn = fit_dynamics_with_gmm_prior(batch, prior, config)
    niw = prior.eval(transition_tuples(batch))
    # The prior's own regression: condition its (mu0, Phi) joint; the offset is anchored at the data mean.
    Fm_prior, _, _ = condition_joint_gaussian(niw.mu0, niw.Phi, dX + dU, 0.0)
    np.testing.assert_allclose(dyn.Fm[: T - 1], Fm_prior, rtol=1e-6, atol=1e-7)
    mean = transition_tuples(batch).mean(axis=1)
    fv = mean[:, dX + dU :] - np.einsum("tij,tj->ti", Fm_prior, mean[:, : dX + dU])
    np.testing.assert_allclose(dyn.fv[: T - 1], fv, rtol=1e-6, atol=1e-7)


def test_zero_prior_strength_is_the_plain_regression(random_stable_system: Callable) -> None:
    rng = np.random.default_rng(3)
    system = random_stable_system(rng, T, dX, dU)
    prior = _prior_from(system, rng)
    batch = _batch(system, rng, N=10, noise_std=0.05)
    dyn = fit_dynamics_with_gmm_prior(batch, prior, DynamicsFitConfig(prior_strength=0.0))
    plain = fit_linear_dynamics(batch, DynamicsFitConfig().regularization)
    np.testing.assert_allclose(dyn.Fm, plain.Fm, atol=1e-10)
    np.testing.assert_allclose(dyn.fv, plain.fv, atol=1e-10)
    np.testing.assert_allclose(dyn.dyn_covar, plain.dyn_covar, atol=1e-12)


def test_one_sample_gives_finite_psd_dynamics(random_stable_system: Callable) -> None:
    rng = np.random.default_rng(4)
    system = random_stable_system(rng, T, dX, dU)
    fitter = DynamicsFitter(DynamicsFitConfig(min_samples_per_cluster=5))
    dyn = fitter.update(_batch(system, rng, N=1))
    for arr in (dyn.Fm, dyn.fv, dyn.dyn_covar, dyn.x0sigma):
        assert np.all(np.isfinite(arr))
    assert np.linalg.eigvalsh(dyn.dyn_covar).min() > -1e-9
    assert np.linalg.eigvalsh(dyn.x0sigma).min() > 0


def test_prior_from_many_samples_beats_plain_fit_on_few(random_stable_system: Callable) -> None:
    rng = np.random.default_rng(5)
    varying = random_stable_system(rng, T, dX, dU)
    # Time-invariant, so the tuples of all steps share one regression that the GMM prior can carry.
    system = type(varying)(*(np.repeat(a[:1], T, axis=0) for a in (varying.A, varying.B, varying.c)))
    prior = _prior_from(system, rng, samples=40)
    few = _batch(system, rng, N=3, noise_std=0.05)
    with_prior = fit_dynamics_with_gmm_prior(few, prior, DynamicsFitConfig())
    plain = fit_linear_dynamics(few, 1e-6)
    truth = np.concatenate([system.A, system.B], axis=2)[: T - 1]
    err_prior = np.linalg.norm(with_prior.Fm[: T - 1] - truth)
    err_plain = np.linalg.norm(plain.Fm[: T - 1] - truth)
    assert err_prior < 0.5 * err_plain


def test_fitter_keeps_max_samples_warm_starts_and_pickles(random_stable_system: Callable) -> None:
    rng = np.random.default_rng(6)
    system = random_stable_system(rng, T, dX, dU)
    fitter = DynamicsFitter(DynamicsFitConfig(max_samples=8, min_samples_per_cluster=30, max_clusters=3))
    batches = [_batch(system, rng, N=5, noise_std=0.05) for _ in range(3)]
    for batch in batches:
        fitter.update(batch)
    assert fitter.prior.num_samples == 8
    # The newest 8 of the 15 trajectories: the last two batches and the last three of the first.
    np.testing.assert_array_equal(fitter.prior.X, np.concatenate([b.X for b in batches])[-8:])
    x0 = fitter.prior.X[:, 0]
    mean, var = fitter.prior.initial_state()
    for j in range(dX):
        np.testing.assert_allclose(mean[j], sum(x0[:, j]) / 8, rtol=1e-12)
        np.testing.assert_allclose(var[j], sum((x0[:, j] - mean[j]) ** 2) / 8, rtol=1e-12)
    assert fitter.prior.gmm.K == 3 and fitter.prior.gmm.last_warm_started
    clone = pickle.loads(pickle.dumps(fitter))
    batch = _batch(system, rng, N=5, noise_std=0.05)
    a, b = fitter.update(batch), clone.update(batch)
    np.testing.assert_array_equal(a.Fm, b.Fm)
    np.testing.assert_array_equal(a.dyn_covar, b.dyn_covar)


def test_bad_input_raises_shape_error_naming_the_array(random_stable_system: Callable) -> None:
    rng = np.random.default_rng(7)
    system = random_stable_system(rng, T, dX, dU)
    good = _batch(system, rng, N=3)
    X = good.X.copy()
    X[1, 4, 2] = np.nan
    with pytest.raises(ShapeError, match="X contains NaN"):
        DynamicsFitter().update(SampleBatch(X, good.U))
    with pytest.raises(ShapeError, match="U has shape"):
        SampleBatch(good.X, good.U[:, :-1])
    with pytest.raises(ShapeError, match="T >= 2"):
        fit_linear_dynamics(SampleBatch(good.X[:, :1], good.U[:, :1]))
    fitter = DynamicsFitter()
    fitter.update(good)
    with pytest.raises(ShapeError, match="dX, dU"):
        fitter.update(SampleBatch(good.X[:, :, :3], good.U))
    with pytest.raises(TypeError, match="SampleBatch"):
        fitter.update((good.X, good.U))  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="singular"):
        fit_linear_dynamics(good, regularization=0.0)


def test_config_validation_and_yaml_keys() -> None:
    keys = {
        "regularization": 1e-6,
        "prior_strength": 1.0,
        "max_clusters": 20,
        "min_samples_per_cluster": 40,
        "max_samples": 20,
        "em_iterations": 100,
    }
    assert from_dict(DynamicsFitConfig, keys) == DynamicsFitConfig()
    with pytest.raises(ConfigError, match="max_clusters"):
        DynamicsFitConfig(max_clusters=0)
    with pytest.raises(ConfigError, match="prior_strength"):
        DynamicsFitConfig(prior_strength=-1.0)
    # The smallest valid values are accepted.
    DynamicsFitConfig(max_clusters=1, min_samples_per_cluster=1, max_samples=1, em_iterations=1,
                      regularization=0.0, prior_strength=0.0)


@pytest.mark.parametrize(("N", "max_clusters", "per_cluster", "K"),
                         [(5, 20, 40, 1), (5, 3, 10, 3), (4, 20, 12, 4)])
def test_prior_cluster_count_follows_the_data(random_stable_system: Callable, N: int, max_clusters: int,
                                              per_cluster: int, K: int) -> None:
    """K = max(1, min(max_clusters, floor(N·T / min_samples_per_cluster)))."""
    rng = np.random.default_rng(13)
    config = DynamicsFitConfig(max_clusters=max_clusters, min_samples_per_cluster=per_cluster)
    prior = DynamicsPriorGMM(config)
    prior.update(_batch(random_stable_system(rng, T, dX, dU), rng, N=N, noise_std=0.05))
    assert K == max(1, min(max_clusters, N * T // per_cluster)) and prior.gmm.K == K


class _FixedPrior:
    """A NIW prior chosen by the test (no GMM): eval returns (mu0, Phi, m = 1, n0) for every step."""

    def __init__(self, mu0: np.ndarray, Phi: np.ndarray, n0: float, x0mu: np.ndarray, x0var: np.ndarray,
                 config: DynamicsFitConfig) -> None:
        self.mu0, self.Phi, self.n0, self.x0mu, self.x0var, self.config = mu0, Phi, n0, x0mu, x0var, config

    def eval(self, points: np.ndarray) -> NormalInverseWishart:
        return NormalInverseWishart(self.mu0, self.Phi, 1.0, self.n0)

    def initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x0mu, self.x0var


def _niw_oracle(batch: SampleBatch, prior: _FixedPrior, s: float, lam: float,
                discrepancy: bool = True) -> tuple[np.ndarray, ...]:
    """Fm, fv, dyn_covar (T−1 steps) and the x0 variance of the NIW fit, by explicit per-step loops."""
    N, T_, dX_, dU_ = batch.N, batch.T, batch.dX, batch.dU
    n = dX_ + dU_
    Fm, fv, covar = [], [], []
    for t in range(T_ - 1):
        Y = np.array([np.concatenate([batch.X[i, t], batch.U[i, t], batch.X[i, t + 1]]) for i in range(N)])
        Psi = niw_posterior_scatter(Y, prior.mu0[t], s * prior.Phi[t], s, discrepancy)
        sigma = Psi / (N + s * prior.n0)  # the estimate the module documents; the mean is the data mean
        ybar = Y.mean(axis=0)
        sxx = sigma[:n, :n] + lam * np.eye(n)
        F = np.linalg.solve(sxx, sigma[:n, n:]).T
        Fm.append(F)
        fv.append(ybar[n:] - F @ ybar[:n])
        covar.append(sigma[n:, n:] - F @ sxx @ F.T)
    x0 = batch.X[:, 0]
    x0var = np.empty(dX_)
    for j in range(dX_):
        # Per coordinate: NIW (normal-inverse-gamma) with prior mean pmu, scale s·pvar, κ0 = n0 = s.
        Psi = niw_posterior_scatter(x0[:, j:j + 1], prior.x0mu[j:j + 1], np.array([[s * prior.x0var[j]]]), s,
                                     discrepancy)
        x0var[j] = Psi[0, 0] / (N + s)
    return np.array(Fm), np.array(fv), np.array(covar), x0var


def test_blr_with_a_finite_niw_prior_matches_the_conjugate_posterior(random_stable_system: Callable) -> None:
    """Closed-form oracle at a finite prior strength, with the data far from the prior mean so that the
    mean-discrepancy term N·m/(N+m)(ȳ−μ0)(ȳ−μ0)ᵀ moves every output well beyond the tolerance."""
    rng = np.random.default_rng(11)
    system = random_stable_system(rng, T, dX, dU)
    N, s, lam = 7, 3.0, 1e-6
    batch = _batch(system, rng, N=N, noise_std=0.1)
    D = 2 * dX + dU
    Y = transition_tuples(batch)
    mu0 = Y.mean(axis=1) + rng.normal(0.0, 1.5, size=(T - 1, D))  # far from the data mean
    A = rng.normal(size=(T - 1, D, D))
    Phi = A @ np.swapaxes(A, 1, 2) / D + 0.2 * np.eye(D)  # full, non-diagonal prior scatter
    x0mu, x0var = batch.X[:, 0].mean(axis=0) + 2.0, np.linspace(0.1, 0.5, dX)
    config = DynamicsFitConfig(prior_strength=s, regularization=lam, initial_state_var=1e-9)
    prior = _FixedPrior(mu0, Phi, 0.8, x0mu, x0var, config)
    dyn = fit_dynamics_with_gmm_prior(batch, prior, config)  # type: ignore[arg-type]
    Fm, fv, dyn_covar, x0 = _niw_oracle(batch, prior, s, lam)
    np.testing.assert_allclose(dyn.Fm[: T - 1], Fm, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dyn.fv[: T - 1], fv, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dyn.dyn_covar[: T - 1], dyn_covar, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dyn.x0sigma, np.diag(x0), rtol=1e-12)
    np.testing.assert_allclose(dyn.x0mu, batch.X[:, 0].mean(axis=0), rtol=1e-12)
    # The test can see the discrepancy term: without it every output moves by far more than the tolerance.
    Fm_, _, covar_, x0_ = _niw_oracle(batch, prior, s, lam, discrepancy=False)
    for fit, without in ((Fm, Fm_), (dyn_covar, covar_), (x0, x0_)):
        assert np.max(np.abs(fit - without)) > 1e-2 * np.max(np.abs(fit))


def test_blr_with_the_gmm_prior_matches_the_conjugate_posterior_of_its_niw(
        random_stable_system: Callable) -> None:
    """The same oracle with the GMM's own prior (its collapse is tested in test_gmm): data from a shifted
    system, so the prior mean sits far from the batch's mean."""
    rng = np.random.default_rng(12)
    system = random_stable_system(rng, T, dX, dU)
    prior = _prior_from(system, rng)
    shifted = type(system)(system.A, system.B, system.c + 1.0)
    batch = _batch(shifted, rng, N=4, noise_std=0.05)
    s = 2.0
    config = DynamicsFitConfig(prior_strength=s, regularization=1e-6, initial_state_var=1e-9)
    dyn = fit_dynamics_with_gmm_prior(batch, prior, config)
    niw = prior.eval(transition_tuples(batch))
    fixed = _FixedPrior(niw.mu0, niw.Phi, niw.n0, *prior.initial_state(), config)
    Fm, fv, dyn_covar, x0 = _niw_oracle(batch, fixed, s, 1e-6)
    np.testing.assert_allclose(dyn.Fm[: T - 1], Fm, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(dyn.fv[: T - 1], fv, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(dyn.dyn_covar[: T - 1], dyn_covar, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.diag(dyn.x0sigma), x0, rtol=1e-10)
