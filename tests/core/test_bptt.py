"""BPTT / SVG(H) core: the analytic policy gradient against finite differences through the model (float64),
the differentiable per-piece cost against the numpy cost and its exact derivatives, the reparameterised
model step against the ensemble's own, the numpy deployment pass against torch, and BPTT improving on a
point mass whose dynamics the test knows (the environment of the PETS tests).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_pets import PointMassEnv, point_cost

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import StateLayout
from mbpl_core.costs import CostConfig, build_cost
from mbpl_core.learners.bptt import (
    BPTT,
    BPTTConfig,
    SquashedMLPPolicy,
    TorchPolicyAdapter,
    ValueConfig,
    ValueNetwork,
    bptt_objective,
    fit_obs_normalisation,
    model_rollout,
    model_step,
    piece_costs,
    policy_to_params,
    terminal_value,
)
from mbpl_core.models import EnsembleConfig, ProbabilisticEnsemble
from mbpl_core.planning.pets import trajectory_costs
from mbpl_core.policy import NumpyPolicy

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _experiment_cost(name: str, dQ: int):
    """The cost: section of a shipped experiment on its layout (one ee point), built as the runners do."""
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["cost"]
    layout = StateLayout(dQ=dQ, n_points=1)
    return build_cost(from_dict(CostConfig, raw, "cost"), layout, dQ), layout


def _small_float64_setup(seed: int = 0):
    """A 3-member ensemble and a policy with random weights, normalisers fitted to random data, float64."""
    rng = np.random.default_rng(seed)
    env = PointMassEnv([[0.5, 0.0, 0.0]], T=12)
    dX, dU = env.dX, env.dU
    model = ProbabilisticEnsemble(dX, dU, EnsembleConfig(members=3, elites=2, hidden=(16, 16), device="cpu"),
                                  rng)
    X, U = rng.normal(size=(200, dX)), rng.uniform(-2, 2, size=(200, dU))
    model.fit_normalisers(X, U, X + 0.1 * rng.normal(size=X.shape))
    with torch.no_grad():  # a visible log-variance, so the reparameterised noise path matters
        model.max_logvar.fill_(0.0)
        model.min_logvar.fill_(-3.0)
    gen = torch.Generator().manual_seed(seed)
    policy = SquashedMLPPolicy(dX, dU, (8, 8), "tanh", env.effort_limits, gen)
    with torch.no_grad():
        policy.layers[-1].weight.mul_(10.0)  # leave the near-linear regime of the initial 0.1 scaling
    value = ValueNetwork(dX, env.T, (8,), gen)
    return env, model.double().requires_grad_(False), policy.double(), value.double(), rng


def _flat_grad(J: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(J, params)])


@pytest.mark.parametrize("with_value", [False, True])
def test_policy_gradient_equals_finite_differences_through_the_model(with_value: bool) -> None:
    env, model, policy, value, rng = _small_float64_setup()
    E, M, H = 2, 3, 6
    x0 = torch.as_tensor(rng.normal(size=(E, M, env.dX)))
    t0 = torch.as_tensor([[0, 3, 9], [5, 7, 11]])  # some rollouts cross the episode end (T = 12)
    noise = torch.as_tensor(rng.normal(size=(H, E, M, env.dX)))
    members = [0, 2]
    cost = point_cost()
    v = value if with_value else None

    def J() -> torch.Tensor:
        return bptt_objective(model, policy, cost, x0, t0, env.T, H, noise, members, v)

    params = list(policy.parameters())
    grad = _flat_grad(J(), params)
    theta = torch.nn.utils.parameters_to_vector(params).detach().clone()
    eps = 1e-6
    for _ in range(4):
        d = torch.as_tensor(rng.normal(size=theta.shape))
        d /= d.norm()
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(theta + eps * d, params)
            plus = float(J())
            torch.nn.utils.vector_to_parameters(theta - eps * d, params)
            minus = float(J())
            torch.nn.utils.vector_to_parameters(theta, params)
        fd, analytic = (plus - minus) / (2 * eps), float(grad @ d)
        assert abs(fd - analytic) <= 1e-6 * max(1.0, abs(fd)), (fd, analytic)
    assert float(grad.norm()) > 1e-3, "the check needs a gradient that is not ~0"


def test_gradient_through_the_states_is_most_of_it() -> None:
    """Guard for the finite-difference test: cutting the state path (one step back only) changes it a lot,
    so a rollout that detaches x between steps cannot pass that test by accident."""
    env, model, policy, _, rng = _small_float64_setup(1)
    x0 = torch.as_tensor(rng.normal(size=(2, 2, env.dX)))
    t0 = torch.zeros((2, 2), dtype=torch.int64)
    params = list(policy.parameters())
    full = _flat_grad(bptt_objective(model, policy, point_cost(), x0, t0, env.T, 8, None, [0, 1]), params)
    short = _flat_grad(bptt_objective(model, policy, point_cost(), x0, t0, env.T, 1, None, [0, 1]), params)
    assert float((full - short).norm()) > 0.1 * float(full.norm())


@pytest.mark.parametrize("name,dQ", [("reacher2_sim", 2), ("arm7_reach", 7)])
def test_piece_costs_equal_the_numpy_cost_and_its_derivatives(name: str, dQ: int) -> None:
    cost, layout = _experiment_cost(name, dQ)
    rng = np.random.default_rng(3)
    T, H, N = 20, 6, 5
    X, U = 0.3 * rng.normal(size=(N, T, layout.dX)), rng.normal(size=(N, T, dQ))
    t0 = np.array([0, 4, 14, 17, 19])  # the last three run past the episode end
    expected = np.zeros((N, H))
    lx, lu = np.zeros((N, H, layout.dX)), np.zeros((N, H, dQ))
    for n in range(N):
        exp = cost.evaluate(X[n], U[n])
        inside = min(H, T - t0[n])
        expected[n, :inside] = exp.l[t0[n]:t0[n] + inside]
        lx[n, :inside], lu[n, :inside] = exp.lx[t0[n]:t0[n] + inside], exp.lu[t0[n]:t0[n] + inside]
    idx = np.minimum(t0[:, None] + np.arange(H), T - 1)
    Xp = torch.as_tensor(np.take_along_axis(X, idx[..., None], 1), dtype=torch.float64).requires_grad_(True)
    Up = torch.as_tensor(np.take_along_axis(U, idx[..., None], 1), dtype=torch.float64).requires_grad_(True)
    l = piece_costs(cost, Xp, Up, torch.as_tensor(t0), T)
    np.testing.assert_allclose(l.detach().numpy(), expected, rtol=1e-12, atol=1e-14)
    gx, gu = torch.autograd.grad(l.sum(), (Xp, Up))
    np.testing.assert_allclose(gx.numpy(), lx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gu.numpy(), lu, rtol=1e-10, atol=1e-12)


def test_model_step_is_the_ensembles_reparameterised_step() -> None:
    rng = np.random.default_rng(4)
    model = ProbabilisticEnsemble(4, 2, EnsembleConfig(members=3, elites=3, hidden=(8,), device="cpu"), rng)
    X, U = rng.normal(size=(50, 4)), rng.normal(size=(50, 2))
    model.fit_normalisers(X, U, X + rng.normal(size=X.shape))
    x = torch.as_tensor(rng.normal(size=(3, 5, 4)), dtype=torch.float32)
    u = torch.as_tensor(rng.normal(size=(3, 5, 2)), dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model_step(model, x, u, None, None), model.step(x, u, sample=False))
        noise = torch.randn((3, 5, 4), generator=torch.Generator().manual_seed(9))
        sampled = model.step(x, u, torch.Generator().manual_seed(9), sample=True)
        torch.testing.assert_close(model_step(model, x, u, noise, None), sampled)
        sub = model.step(x[:2], u[:2], sample=False, members=[2, 0])
        torch.testing.assert_close(model_step(model, x[:2], u[:2], None, [2, 0]), sub)


def test_numpy_deployment_pass_equals_the_torch_policy() -> None:
    env = PointMassEnv([[0.5, 0.0, 0.0]])
    policy = SquashedMLPPolicy(env.dX, env.dU, (16, 16), "tanh", np.array([2.0, 1.0, 0.5]),
                               torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, env.dX))
    fit_obs_normalisation(policy, 0.5 * X + 0.2)
    with torch.no_grad():
        policy.layers[-1].weight.mul_(30.0)  # drive tanh into saturation on some rows
        policy.layers[-1].bias.copy_(torch.tensor([2.0, -1.0, 0.0]))
        torch_u = policy.double()(torch.as_tensor(X)).numpy()
    numpy_policy = NumpyPolicy(policy_to_params(policy, np.full(3, 0.1)))
    np.testing.assert_allclose(numpy_policy.mean_batch(X), torch_u, rtol=0, atol=1e-6)
    np.testing.assert_allclose(numpy_policy.act(0, X[3]), torch_u[3], rtol=0, atol=1e-6)
    assert np.all(np.abs(torch_u) <= np.array([2.0, 1.0, 0.5]))
    assert np.any(np.abs(torch_u[:, 0]) > 1.9), "the check must reach the saturated range"


def test_config_rejects_bad_values_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="bptt.horizon"):
        from_dict(BPTTConfig, {"horizon": 0}, "bptt")
    with pytest.raises(ConfigError, match="bptt.value.model_ratio"):
        from_dict(BPTTConfig, {"value": {"model_ratio": 1.5}}, "bptt")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(BPTTConfig, {"horizn": 3}, "bptt")
    assert from_dict(BPTTConfig, {"value": {"enabled": True}}, "bptt").value.enabled


def _point_mass_config(**overrides) -> BPTTConfig:
    base = dict(iterations=3, random_trials=2, horizon=10, gradient_steps=100, seed=0,
                model=EnsembleConfig(members=5, elites=5, hidden=(32, 32), max_epochs=60, patience=10,
                                     device="cpu"))
    return BPTTConfig(**(base | overrides))


def _noiseless_cost(env: PointMassEnv, policy: torch.nn.Module) -> float:
    trials = [env.sample(TorchPolicyAdapter(policy), m, None) for m in range(env.num_conditions)]
    return float(np.mean(trajectory_costs(point_cost(), trials)))


def test_bptt_brings_the_point_mass_towards_its_targets() -> None:
    env = PointMassEnv([[0.5, 0.0, 0.0], [0.0, -0.4, 0.2]])
    learner = BPTT(env, point_cost(), _point_mass_config())
    before = _noiseless_cost(env, learner.policy)
    untrained = copy.deepcopy(learner.policy)
    learner.run()
    after = _noiseless_cost(env, learner.policy)
    assert after < 0.5 * before, (before, after)
    assert _noiseless_cost(env, untrained) == pytest.approx(before)
    assert [r.env_steps for r in learner.reports] == [(4 + 2 * (i + 1)) * env.T for i in range(3)]
    assert all(r.objective_end < r.objective_start for r in learner.reports)


def test_same_seed_same_run_with_a_terminal_value() -> None:
    env = PointMassEnv([[0.5, 0.0, 0.0]], T=10)
    config = _point_mass_config(iterations=1, gradient_steps=20, horizon=3,
                                value=ValueConfig(enabled=True, warmup_steps=10))
    runs = []
    for _ in range(2):
        learner = BPTT(env, point_cost(), config)
        learner.run()
        runs.append(torch.nn.utils.parameters_to_vector(learner.policy.parameters()).detach().numpy())
        assert np.isfinite(learner.reports[-1].value_loss)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_terminal_value_is_zero_once_the_episode_is_over() -> None:
    value = ValueNetwork(4, 10, (8,), torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        value.layers[-1].bias.fill_(5.0)  # V clearly non-zero everywhere
    x = torch.ones((4, 4), dtype=torch.float64)
    t = torch.tensor([9, 10, 11, 0])
    with torch.no_grad():
        v = terminal_value(value, x, t, 10)
    assert float(v[1]) == 0.0 and float(v[2]) == 0.0
    torch.testing.assert_close(v[[0, 3]], value(x[[0, 3]], t[[0, 3]]))
    assert float(v[0]) != 0.0


def test_entries_constant_in_the_data_stay_constant_in_model_rollouts() -> None:
    """The point mass's data never moves joint 3 (its targets' z = 0 and actions 0 there): BPTT's model
    must not let that entry drift by the members' noise (which the policy would see amplified)."""
    env = PointMassEnv([[0.5, 0.3, 0.0]], T=10)

    class Planar:
        def __init__(self, rng: np.random.Generator) -> None:
            self.rng = rng

        def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
            return np.array([*self.rng.uniform(-2, 2, 2), 0.0])

    model = EnsembleConfig(members=5, elites=5, hidden=(16,), max_epochs=5, device="cpu")
    learner = BPTT(env, point_cost(), _point_mass_config(iterations=0, model=model))
    for _ in range(4):
        learner._collect(Planar(learner.rng), 0)
    learner.fit_model()
    fixed = [2, 5, 8, 11]  # q_z, qd_z, (q − target)_z, ee velocity z
    assert learner.moving is not None and not learner.moving[fixed].any() and learner.moving.sum() == 8
    x0, _ = learner.start_batch(10)
    noise = torch.randn((5, *x0.shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        X, _ = model_rollout(learner.model, learner.policy, x0, 5, noise, list(learner.elites),
                             learner.moving)
    torch.testing.assert_close(X[..., fixed], x0[:, :, None, fixed].expand(-1, -1, 6, -1))
