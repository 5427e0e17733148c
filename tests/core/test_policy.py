"""Deployment side of the global policy: numpy forward pass, linearisation, config, checkpoints."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers_niw import niw_posterior_scatter

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import ShapeError
from mbpl_core.guided.mdgps import (
    GaussianMLPPolicy,
    load_torch_policy,
    params_to_policy,
    policy_to_params,
    save_policy_checkpoint,
)
from mbpl_core.policy import (
    GPSConfig,
    NumpyPolicy,
    PolicyParams,
    linearize_policy,
    linearize_policy_jacobian,
    load_policy_checkpoint,
)


def _random_policy(activation: str, obs: tuple[int, ...] | str = "state", dX: int = 8, dU: int = 3,
                   seed: int = 0) -> GaussianMLPPolicy:
    config = GPSConfig(hidden_sizes=(16, 12), activation=activation, observation=obs, device="cpu", seed=seed)
    policy = GaussianMLPPolicy.from_config(config, dX, dU)
    rng = np.random.default_rng(seed)
    # Non-trivial normalisation so the folding into the first layer is exercised.
    policy.fit_normalization(rng.normal(2.0, 3.0, size=(50, len(policy.obs_indices))))
    with torch.no_grad():
        A = rng.normal(size=(dU, dU))
        policy.action_covar_t.copy_(torch.as_tensor(A @ A.T + 0.1 * np.eye(dU)))
    return policy


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("obs", ["state", (0, 2, 3, 7)])
def test_numpy_forward_equals_torch(activation: str, obs: tuple[int, ...] | str) -> None:
    policy = _random_policy(activation, obs)
    numpy_policy = NumpyPolicy(policy_to_params(policy))
    X = np.random.default_rng(1).normal(0.0, 4.0, size=(40, 8))
    with torch.no_grad():
        expected = policy(torch.as_tensor(X[:, policy.obs_indices.numpy()])).numpy()
    single = np.stack([numpy_policy.act(0, x) for x in X])
    np.testing.assert_allclose(single, expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(numpy_policy.mean_batch(X), expected, atol=1e-6, rtol=0)


def test_act_adds_cholesky_scaled_noise() -> None:
    policy = _random_policy("tanh")
    numpy_policy = NumpyPolicy(policy_to_params(policy))
    x, noise = np.ones(8), np.array([0.3, -1.0, 2.0])
    chol = np.linalg.cholesky(policy.action_covar)
    expected = numpy_policy.act(5, x) + chol @ noise
    np.testing.assert_allclose(numpy_policy.act(5, x, noise), expected, atol=1e-12)


def test_act_rejects_bad_states() -> None:
    numpy_policy = NumpyPolicy(policy_to_params(_random_policy("relu")))
    with pytest.raises(ShapeError, match="x has shape"):
        numpy_policy.act(0, np.zeros(7))
    x = np.zeros(8)
    x[3] = np.nan
    with pytest.raises(ShapeError, match="not finite"):
        numpy_policy.act(0, x)


def test_act_returns_fresh_arrays() -> None:
    numpy_policy = NumpyPolicy(policy_to_params(_random_policy("relu")))
    u1 = numpy_policy.act(0, np.zeros(8))
    u1_copy = u1.copy()
    numpy_policy.act(0, np.ones(8))
    np.testing.assert_array_equal(u1, u1_copy)


def test_params_round_trip_through_torch() -> None:
    params = policy_to_params(_random_policy("relu", (1, 4, 5)))
    again = policy_to_params(params_to_policy(params))
    for (W1, b1), (W2, b2) in zip(params.weights, again.weights, strict=True):
        np.testing.assert_array_equal(W1, W2)
        np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(params.obs_indices, again.obs_indices)
    assert again.state_dim == params.state_dim == 8


def _linear_params(K: np.ndarray, k: np.ndarray, covar: np.ndarray) -> PolicyParams:
    dU, dX = K.shape
    # Non-unit normalisation: a linear policy stays linear in x but K is folded through it.
    mean, std = np.linspace(-1, 1, dX), np.linspace(0.5, 2.0, dX)
    W = K * std
    b = k + K @ mean
    return PolicyParams(((W, b),), "relu", mean, std, np.arange(dX), covar)


def test_linearisation_recovers_linear_policy() -> None:
    rng = np.random.default_rng(2)
    T, N, dX, dU = 6, 4, 5, 2
    K, k = rng.normal(size=(dU, dX)), rng.normal(size=dU)
    covar = np.diag([0.2, 0.5])
    policy = NumpyPolicy(_linear_params(K, k, covar))
    X = rng.normal(size=(N, T, dX)) + np.arange(T)[None, :, None]
    lin = linearize_policy(policy, X, prior_strength=1.0)
    np.testing.assert_allclose(lin.K, np.broadcast_to(K, (T, dU, dX)), atol=1e-6)
    np.testing.assert_allclose(lin.k, np.broadcast_to(k, (T, dU)), atol=1e-6)
    np.testing.assert_allclose(lin.pol_covar, np.broadcast_to(covar, (T, dU, dU)), atol=1e-6)


def test_regression_linearisation_is_the_niw_posterior_fit_of_the_policy() -> None:
    """Oracle for linearize_policy on a nonlinear policy: per step the conjugate NIW posterior of the joint
    (x, μπ(x)) with the single-cluster prior over all N·T points (μ0, s·Σ̂, m = s, n0 = s(NT − 2 − D)/NT),
    Σ = Ψ_N / (N + n0), then conditioned on x; the states drift over time, so the per-step means sit far
    from the prior mean and the mean-discrepancy term matters."""
    policy = NumpyPolicy(policy_to_params(_random_policy("tanh", dX=4, dU=2, seed=5)))
    rng = np.random.default_rng(6)
    N, T_, dX_, dU_, s, lam = 6, 5, 4, 2, 2.0, 1e-8
    X = rng.normal(size=(N, T_, dX_)) + 1.5 * np.arange(T_)[None, :, None]
    lin = linearize_policy(policy, X, prior_strength=s, regularization=lam)
    U = policy.mean_batch(X.reshape(-1, dX_)).reshape(N, T_, dU_)
    Z = np.concatenate([X, U], axis=2)
    points = Z.reshape(-1, dX_ + dU_)
    P, D = points.shape
    mu0 = points.mean(axis=0)
    Phi = sum(np.outer(p - mu0, p - mu0) for p in points) / P
    n0 = s * max((P - 2 - D) / P, 0.0)
    for t in range(T_):
        for discrepancy in (True, False):
            sigma = niw_posterior_scatter(Z[:, t], mu0, s * Phi, s, discrepancy) / (N + n0)
            sigma[:dX_, :dX_] += lam * np.eye(dX_)
            K = np.linalg.solve(sigma[:dX_, :dX_], sigma[:dX_, dX_:]).T
            k = Z[:, t, dX_:].mean(axis=0) - K @ Z[:, t, :dX_].mean(axis=0)
            covar = sigma[dX_:, dX_:] - K @ sigma[:dX_, dX_:] + policy.action_covar
            if discrepancy:
                np.testing.assert_allclose(lin.K[t], K, rtol=1e-7, atol=1e-9)
                np.testing.assert_allclose(lin.k[t], k, rtol=1e-7, atol=1e-9)
                np.testing.assert_allclose(lin.pol_covar[t], covar, rtol=1e-7, atol=1e-9)
            else:  # the oracle can tell the term is there
                assert np.max(np.abs(lin.K[t] - K)) > 1e-3 * np.max(np.abs(K))


def test_linearisation_of_torch_linear_policy() -> None:
    config = GPSConfig(hidden_sizes=(), device="cpu")
    policy = GaussianMLPPolicy.from_config(config, 4, 2)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3, 5, 4))
    W, b = policy.layers[0].weight.detach().numpy(), policy.layers[0].bias.detach().numpy()
    lin = linearize_policy(policy, X)
    # Only the 1e-8 ridge on Σ_xx separates the fit from the exact gains.
    np.testing.assert_allclose(lin.K[2], W, atol=1e-6)
    np.testing.assert_allclose(lin.k[4], b, atol=1e-6)
    exact = linearize_policy(policy, X, regularization=0.0)
    np.testing.assert_allclose(exact.K[2], W, atol=1e-10)


def test_linearisation_matches_jacobian_for_tight_samples() -> None:
    # Oracle: with samples tightly around x̄_t and a weak prior the local fit is the Jacobian at x̄_t.
    policy = _random_policy("tanh")
    numpy_policy = NumpyPolicy(policy_to_params(policy))
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(3, 8))
    X = centres[None] + 1e-2 * rng.normal(size=(200, 3, 8))
    lin = linearize_policy(numpy_policy, X, prior_strength=1e-9)
    eps = 1e-6
    for t in range(3):
        x = centres[t]
        columns = [(numpy_policy.act(0, x + eps * e) - numpy_policy.act(0, x - eps * e)) / (2 * eps)
                   for e in np.eye(8)]
        jac = np.stack(columns, axis=1)
        np.testing.assert_allclose(lin.K[t], jac, atol=1e-2 * np.abs(jac).max())
        assert np.all(np.linalg.eigvalsh(lin.pol_covar[t]) > 0)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_jacobian_batch_matches_finite_differences(activation: str) -> None:
    policy = NumpyPolicy(policy_to_params(_random_policy(activation, obs=(0, 2, 3, 7))))
    X = np.random.default_rng(5).normal(size=(6, 8))
    mu, J = policy.jacobian_batch(X)
    np.testing.assert_allclose(mu, policy.mean_batch(X), atol=1e-12)
    eps = 1e-6
    for i, x in enumerate(X):
        columns = [(policy.act(0, x + eps * e) - policy.act(0, x - eps * e)) / (2 * eps) for e in np.eye(8)]
        fd = np.stack(columns, axis=1)
        np.testing.assert_allclose(J[i], fd, atol=1e-6)
    # Entries the policy does not observe have zero slope.
    np.testing.assert_array_equal(J[:, :, [1, 4, 5, 6]], 0.0)


def test_jacobian_linearisation_recovers_linear_policy_exactly() -> None:
    rng = np.random.default_rng(6)
    T, dX, dU = 5, 4, 2
    K, k, covar = rng.normal(size=(dU, dX)), rng.normal(size=dU), np.diag([0.3, 0.7])
    policy = NumpyPolicy(_linear_params(K, k, covar))
    for N in (1, 4):  # one sample is enough: the slope comes from the derivative, not a regression
        lin = linearize_policy_jacobian(policy, rng.normal(size=(N, T, dX)))
        np.testing.assert_allclose(lin.K, np.broadcast_to(K, (T, dU, dX)), atol=1e-12)
        np.testing.assert_allclose(lin.k, np.broadcast_to(k, (T, dU)), atol=1e-12)
        np.testing.assert_allclose(lin.pol_covar, np.broadcast_to(covar, (T, dU, dU)), atol=1e-12)


def test_jacobian_linearisation_adds_the_spread_of_a_nonlinear_policy() -> None:
    # Oracle: K_t is the mean Jacobian, k_t centres the fit, Σ_t − action_covar is the residuals' 2nd moment.
    numpy_policy = NumpyPolicy(policy_to_params(_random_policy("tanh")))
    rng = np.random.default_rng(7)
    X = rng.normal(size=(6, 3, 8))
    lin = linearize_policy_jacobian(numpy_policy, X)
    for t in range(3):
        mu, J = numpy_policy.jacobian_batch(X[:, t])
        np.testing.assert_allclose(lin.K[t], J.mean(axis=0), atol=1e-12)
        resid = mu - X[:, t] @ lin.K[t].T - lin.k[t]
        np.testing.assert_allclose(resid.mean(axis=0), 0.0, atol=1e-12)
        spread = lin.pol_covar[t] - numpy_policy.action_covar
        np.testing.assert_allclose(spread, resid.T @ resid / 6, atol=1e-12)
    with pytest.raises(ShapeError, match="NaN"):
        linearize_policy_jacobian(numpy_policy, np.full((2, 3, 8), np.nan))


def test_normalisation_refit_keeps_the_function() -> None:
    policy = _random_policy("relu")
    obs = np.random.default_rng(8).normal(-1.0, 0.2, size=(40, 8))
    before = policy.mean_batch(obs)
    old_std = policy.obs_std.clone()
    policy.fit_normalization(obs)  # already fitted, no refit asked: unchanged
    assert torch.equal(policy.obs_std, old_std)
    policy.fit_normalization(obs, refit=True)
    np.testing.assert_allclose(policy.obs_mean.numpy(), obs.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(policy.obs_std.numpy(), obs.std(axis=0), atol=1e-12)
    np.testing.assert_allclose(policy.mean_batch(obs), before, atol=1e-10)


def test_linearisation_rejects_bad_input() -> None:
    policy = NumpyPolicy(_linear_params(np.ones((1, 2)), np.zeros(1), np.eye(1)))
    with pytest.raises(ShapeError, match="at least 2 samples"):
        linearize_policy(policy, np.zeros((1, 3, 2)))
    X = np.zeros((2, 3, 2))
    X[0, 1, 0] = np.nan
    with pytest.raises(ShapeError, match="NaN"):
        linearize_policy(policy, X)
    with pytest.raises(ShapeError, match=r"X must be \(N, T, dX\)"):
        linearize_policy(policy, np.zeros((3, 2)))


def test_policy_params_validation() -> None:
    W, b = np.ones((2, 3)), np.zeros(2)
    good = dict(weights=((W, b),), activation="relu", obs_mean=np.zeros(3), obs_std=np.ones(3),
                obs_indices=np.arange(3), action_covar=np.eye(2))
    PolicyParams(**good)
    with pytest.raises(ShapeError, match=r"weights\[0\].W"):
        PolicyParams(**{**good, "weights": ((np.ones((2, 4)), b),)})
    with pytest.raises(ShapeError, match="NaN"):
        PolicyParams(**{**good, "weights": ((W * np.nan, b),)})
    with pytest.raises(ShapeError, match="obs_std"):
        PolicyParams(**{**good, "obs_std": np.zeros(3)})
    with pytest.raises(ShapeError, match="action_covar"):
        PolicyParams(**{**good, "action_covar": np.eye(3)})
    with pytest.raises(ShapeError, match="activation"):
        PolicyParams(**{**good, "activation": "sigmoid"})
    non_pd = NumpyPolicy(PolicyParams(**{**good, "action_covar": -np.eye(2)}))
    with pytest.raises(ShapeError, match="positive definite"):
        non_pd.act(0, np.zeros(3), np.zeros(2))


def test_from_layers_matches_pairs() -> None:
    params = policy_to_params(_random_policy("tanh"))
    again = PolicyParams.from_layers([W for W, _ in params.weights], list(params.biases), params.obs_mean,
                                     params.obs_std, params.action_covar, "tanh", state_dim=8)
    x = np.linspace(-1, 1, 8)
    np.testing.assert_array_equal(NumpyPolicy(again).act(0, x), NumpyPolicy(params).act(0, x))
    assert again.layer_sizes == (8, 16, 12, 3)
    with pytest.raises(ShapeError, match="bias"):
        PolicyParams.from_layers([np.ones((2, 8))], [], np.zeros(8), np.ones(8), np.eye(2))


def test_gps_config_from_dict_and_validation() -> None:
    config = from_dict(GPSConfig, {"hidden_sizes": [32], "observation": [0, 1, 5], "step_rule": "classic"})
    assert config.hidden_sizes == (32,) and config.observation == (0, 1, 5)
    np.testing.assert_array_equal(config.observation_indices(6), [0, 1, 5])
    with pytest.raises(ConfigError, match="out of range"):
        config.observation_indices(5)
    for bad in ({"activation": "sigmoid"}, {"learning_rate": 0.0}, {"batch_size": 0},
                {"observation": "pixels"}, {"observation": [1, 1]}, {"step_rule": "local"},
                {"linearization": "finite"}, {"step_estimate": "model"}, {"s_step_order": "never"},
                {"augment_copies": -1}, {"augment_scale": 0.0},
                {"device": "tpu"}, {"hidden_sizes": [0]},
                {"weight_decay": -1.0}, {"policy_prior_strength": float("nan")}, {"unknown_key": 1}):
        with pytest.raises(ConfigError):
            from_dict(GPSConfig, bad)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    policy = _random_policy("tanh", (0, 3, 4, 6))
    config = GPSConfig(hidden_sizes=(16, 12), activation="tanh", observation=(0, 3, 4, 6), device="cpu")
    save_policy_checkpoint(tmp_path / "ckpt", policy, config)
    loaded, loaded_config = load_policy_checkpoint(tmp_path / "ckpt")
    assert loaded_config == config
    direct = NumpyPolicy(policy_to_params(policy))
    rng = np.random.default_rng(5)
    for _ in range(5):
        x, noise = rng.normal(size=8), rng.normal(size=3)
        np.testing.assert_array_equal(loaded.act(0, x, noise), direct.act(0, x, noise))
    resumed, _ = load_torch_policy(tmp_path / "ckpt")
    for key, value in policy.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


def test_checkpoint_loads_without_torch(tmp_path: Path) -> None:
    policy = _random_policy("relu")
    save_policy_checkpoint(tmp_path, policy, GPSConfig(hidden_sizes=(16, 12), device="cpu"))
    expected = NumpyPolicy(policy_to_params(policy)).act(0, np.ones(8))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any torch import now fails
        import numpy as np
        from mbpl_core.policy import load_policy_checkpoint
        policy, _ = load_policy_checkpoint({str(tmp_path / "policy.npz")!r})
        print(repr(policy.act(0, np.ones(8)).tolist()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    np.testing.assert_array_equal(np.array(eval(out.stdout)), expected)


def test_project_configs_gps_sections_parse() -> None:
    yaml = pytest.importorskip("yaml")
    files = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    with_gps = 0
    for path in files:
        section = yaml.safe_load(path.read_text()).get("gps") or {}
        config = from_dict(GPSConfig, section)
        with_gps += bool(section)
        for key, value in section.items():  # every key the file sets arrives in the config as written
            got = getattr(config, key)
            assert (list(got) if isinstance(got, tuple) else got) == value, f"{path.name}: gps.{key}"
    assert files and with_gps >= 1
