"""Squashed outputs of the deployable numpy policy (u = action_bias + action_scale ⊙ tanh(h)).

Oracles: stable-baselines3's own SAC actor (its deterministic action, float32 and a float64 twin of it),
finite differences for the Jacobian, checkpoints that round-trip (and old ones that load unsquashed),
and a loader that runs with torch unimportable.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mbpl_core.containers import ShapeError
from mbpl_core.policy import (
    GPSConfig,
    NumpyPolicy,
    PolicyParams,
    load_policy_checkpoint,
    params_to_arrays,
    save_numpy_policy,
)

gym = pytest.importorskip("gymnasium")
pytest.importorskip("stable_baselines3")

from stable_baselines3.sac.policies import SACPolicy  # noqa: E402

from mbpl_core.learners.sac import actor_to_params, torch_actor_action  # noqa: E402

DX, DU = 6, 3
LOW, HIGH = np.array([-4.0, -1.0, 0.5]), np.array([4.0, 3.0, 2.5])  # asymmetric: the bias matters


def _sb3_policy(activation: str = "relu", seed: int = 0) -> SACPolicy:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (DX,), np.float64)
    act_space = gym.spaces.Box(LOW, HIGH, dtype=np.float64)
    policy = SACPolicy(obs_space, act_space, lambda _: 3e-4, net_arch=[32, 16],
                       activation_fn={"relu": nn.ReLU, "tanh": nn.Tanh}[activation])
    with torch.no_grad():  # weights large enough that tanh saturates on some entries
        for p in policy.actor.parameters():
            p.mul_(3.0)
    return policy


def _states(n: int = 64, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 2.0, size=(n, DX))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_numpy_policy_equals_the_sb3_actors_deterministic_action(activation: str) -> None:
    policy = _sb3_policy(activation)
    params = actor_to_params(policy.actor, policy.action_space)
    numpy_policy = NumpyPolicy(params)
    X = _states()
    ours = np.stack([numpy_policy.act(0, x) for x in X])
    np.testing.assert_allclose(numpy_policy.mean_batch(X), ours, atol=1e-12, rtol=0)
    # float64 torch through SB3's own modules and unscale_action: equal to round-off
    np.testing.assert_allclose(ours, torch_actor_action(policy.actor, policy, X), atol=1e-10, rtol=0)
    # SB3's predict (float32 weights and inputs): equal to float32 round-off of the effort range
    sb3, _ = policy.predict(X.astype(np.float32), deterministic=True)
    np.testing.assert_allclose(ours, sb3, atol=1e-6 * np.max(HIGH - LOW), rtol=0)
    assert np.all(ours >= LOW) and np.all(ours <= HIGH)
    saturated = np.abs(ours - 0.5 * (LOW + HIGH)) > 0.99 * 0.5 * (HIGH - LOW)
    assert saturated.any() and not saturated.all()  # the comparison covers the tanh's flat ends too


def test_squash_maps_the_mlp_output_and_noise_comes_after() -> None:
    policy = _sb3_policy()
    params = actor_to_params(policy.actor, policy.action_space, action_covar=np.diag([0.1, 0.2, 0.3]))
    unsquashed = PolicyParams(params.weights, params.activation, params.obs_mean, params.obs_std,
                              params.obs_indices, params.action_covar, params.state_dim)
    X = _states(8)
    h = NumpyPolicy(unsquashed).mean_batch(X)
    np.testing.assert_allclose(NumpyPolicy(params).mean_batch(X),
                               0.5 * (HIGH + LOW) + 0.5 * (HIGH - LOW) * np.tanh(h), atol=1e-12)
    noise = np.array([1.0, -2.0, 0.5])
    squashed = NumpyPolicy(params)
    np.testing.assert_allclose(squashed.act(0, X[0], noise) - squashed.act(0, X[0]),
                               np.sqrt([0.1, 0.2, 0.3]) * noise, atol=1e-12)


def test_squashed_jacobian_matches_finite_differences() -> None:
    policy = NumpyPolicy(actor_to_params(_sb3_policy("tanh").actor, _sb3_policy("tanh").action_space))
    X = _states(5, seed=3) * 0.3
    mu, J = policy.jacobian_batch(X)
    np.testing.assert_allclose(mu, policy.mean_batch(X), atol=1e-12)
    eps = 1e-6
    for i, x in enumerate(X):
        fd = np.stack([(policy.act(0, x + eps * e) - policy.act(0, x - eps * e)) / (2 * eps)
                       for e in np.eye(DX)], axis=1)
        np.testing.assert_allclose(J[i], fd, atol=1e-6)


def test_squashed_checkpoint_round_trips_and_loads_without_torch(tmp_path: Path) -> None:
    policy = _sb3_policy()
    params = actor_to_params(policy.actor, policy.action_space)
    save_numpy_policy(tmp_path, params, GPSConfig(hidden_sizes=(32, 16), device="cpu"))
    loaded, _ = load_policy_checkpoint(tmp_path)
    assert loaded.params.squash == "tanh"
    np.testing.assert_array_equal(loaded.params.action_scale, params.action_scale)
    np.testing.assert_array_equal(loaded.params.action_bias, params.action_bias)
    X = _states(10)
    np.testing.assert_array_equal(loaded.mean_batch(X), NumpyPolicy(params).mean_batch(X))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any torch import now fails
        import numpy as np
        from mbpl_core.policy import load_policy_checkpoint
        policy, _ = load_policy_checkpoint({str(tmp_path)!r})
        print(repr(policy.act(0, np.ones({DX})).tolist()))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    np.testing.assert_array_equal(np.array(eval(out.stdout)), NumpyPolicy(params).act(0, np.ones(DX)))


def test_a_checkpoint_written_before_squashing_existed_loads_unsquashed(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    params = PolicyParams.from_layers([rng.normal(size=(4, DX)), rng.normal(size=(DU, 4))],
                                      [rng.normal(size=4), rng.normal(size=DU)], np.zeros(DX), np.ones(DX),
                                      np.eye(DU), state_dim=DX)
    arrays = params_to_arrays(params, GPSConfig(hidden_sizes=(4,), device="cpu"))
    assert str(arrays.pop("squash")) == "none" and "action_scale" not in arrays
    np.savez(tmp_path / "policy.npz", **arrays)  # the old layout: no squash entries at all
    loaded, _ = load_policy_checkpoint(tmp_path)
    assert loaded.params.squash == "none" and loaded.params.action_scale is None
    X = _states(6) * 10.0  # large outputs: a squash would show
    np.testing.assert_array_equal(loaded.mean_batch(X), NumpyPolicy(params).mean_batch(X))
    assert np.abs(loaded.mean_batch(X)).max() > 1.0


def test_squash_validation() -> None:
    W, b = np.ones((2, 3)), np.zeros(2)
    good = dict(weights=((W, b),), activation="relu", obs_mean=np.zeros(3), obs_std=np.ones(3),
                obs_indices=np.arange(3), action_covar=np.eye(2))
    defaults = PolicyParams(**good, squash="tanh")
    np.testing.assert_array_equal(defaults.action_scale, [1.0, 1.0])
    np.testing.assert_array_equal(defaults.action_bias, [0.0, 0.0])
    for bad, match in (({"squash": "sigmoid"}, "squash"),
                       ({"squash": "tanh", "action_scale": np.array([1.0, 0.0])}, "positive"),
                       ({"squash": "tanh", "action_scale": np.ones(3)}, "action_scale"),
                       ({"squash": "tanh", "action_bias": np.array([0.0, np.nan])}, "NaN"),
                       ({"action_scale": np.ones(2)}, "squash='tanh'")):
        with pytest.raises(ShapeError, match=match):
            PolicyParams(**good, **bad)


def test_a_squashed_policy_has_no_unsquashed_torch_twin() -> None:
    from mbpl_core.guided.mdgps import params_to_policy

    policy = _sb3_policy()
    with pytest.raises(ShapeError, match="squash"):
        params_to_policy(actor_to_params(policy.actor, policy.action_space))
