"""Planners over a learned model: CEM / random shooting against the LQR optimum, TS-∞ by construction,
the particles' expected cost against per-trajectory costs, warm starts, clipping and seeding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import LinearDynamics, SampleBatch
from mbpl_core.costs import ActionCost, Cost, StateCost, SumCost, quadratic_cost_model
from mbpl_core.local.lqr_flm import Policy
from mbpl_core.local.traj_opt import lqr_backward_pass
from mbpl_core.planning import (
    CEMOptimizer,
    DynamicsModel,
    MPCController,
    OptimizerResult,
    PlannerConfig,
    RandomShootingOptimizer,
    expected_costs,
    member_of_particle,
    particles_by_candidate,
    rollout_particles,
)

# ---------------------------------------------------------------- test models


class LinearEnsemble:
    """B members x' = A_b x + B_b u + c_b (+ noise_std · ε with ε from the generator when sampling).

    A: (B, dX, dX), Bu: (B, dX, dU), c: (B, dX); float64 torch.
    """

    def __init__(self, A: np.ndarray, Bu: np.ndarray, c: np.ndarray, noise_std: float = 0.0) -> None:
        self.A, self.Bu, self.c = (torch.as_tensor(a, dtype=torch.float64) for a in (A, Bu, c))
        self.num_members = int(self.A.shape[0])
        self.noise_std = noise_std

    def step(self, x: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None,
             sample: bool = True) -> torch.Tensor:
        assert x.shape[0] == self.num_members and u.shape[:2] == x.shape[:2]
        A, Bu, c = (a.to(x.dtype) for a in (self.A, self.Bu, self.c))
        x_next = x @ A.transpose(1, 2) + u @ Bu.transpose(1, 2) + c[:, None, :]
        if sample and self.noise_std > 0:
            x_next = x_next + self.noise_std * torch.randn(x_next.shape, generator=generator,
                                                           dtype=x.dtype)
        return x_next

    def rollout_member(self, b: int, x0: np.ndarray, U: np.ndarray) -> np.ndarray:
        """Noiseless states (S+1, dX) of member b from x0: (dX,) under U: (S, dU), in numpy."""
        A, Bu, c = self.A[b].numpy(), self.Bu[b].numpy(), self.c[b].numpy()
        X = [x0]
        for u in U:
            X.append(A @ X[-1] + Bu @ u + c)
        return np.array(X)


def distinct_members(rng: np.random.Generator, B: int, dX: int, dU: int) -> LinearEnsemble:
    A = np.eye(dX) + 0.3 * rng.normal(size=(B, dX, dX)) / np.sqrt(dX)
    return LinearEnsemble(A, rng.normal(size=(B, dX, dU)), 0.1 * rng.normal(size=(B, dX)))


def identical_members(A: np.ndarray, Bu: np.ndarray, B: int) -> LinearEnsemble:
    dX = A.shape[0]
    return LinearEnsemble(np.stack([A] * B), np.stack([Bu] * B), np.zeros((B, dX)))


# ---------------------------------------------------------------- the LQR oracle

DT = 0.1
A_PM = np.block([[np.eye(2), DT * np.eye(2)], [np.zeros((2, 2)), 0.95 * np.eye(2)]])  # point mass, dX = 4
B_PM = np.vstack([np.zeros((2, 2)), DT * np.eye(2)])  # dU = 2


def quadratic_cost(final_multiplier: float = 5.0) -> SumCost:
    state = StateCost(np.array([1.0, 1.0, 0.1, 0.1]), np.zeros(4), "constant", final_multiplier)
    return SumCost(((1.0, state), (1.0, ActionCost(np.array([0.05, 0.05])))))


def lqr_optimum(cost: Cost, A: np.ndarray, Bu: np.ndarray, x0: np.ndarray, T: int) -> tuple[
    np.ndarray, float
]:
    """First action and optimal cost of the T-step problem, via the project's lqr_backward_pass."""
    dX, dU = Bu.shape
    rng = np.random.default_rng(0)
    # The cost is quadratic, so its expansion around any sample is exact.
    batch = SampleBatch(rng.normal(size=(1, T, dX)), rng.normal(size=(1, T, dU)))
    _, quad = quadratic_cost_model(cost, batch)
    dyn = LinearDynamics(np.broadcast_to(np.concatenate([A, Bu], axis=1), (T, dX, dX + dU)),
                         np.zeros((T, dX)), np.broadcast_to(1e-6 * np.eye(dX), (T, dX, dX)), x0, np.eye(dX))
    ctrl = lqr_backward_pass(quad, dyn).controller
    X, U = np.zeros((T, dX)), np.zeros((T, dU))
    x = x0
    for t in range(T):
        X[t], U[t] = x, ctrl.K[t] @ x + ctrl.k[t]
        x = A @ x + Bu @ U[t]
    return U[0], float(cost.evaluate(X, U).l.sum())


def episode_cost(cost: Cost, A: np.ndarray, Bu: np.ndarray, x0: np.ndarray, U: np.ndarray) -> float:
    X = identical_members(A, Bu, 1).rollout_member(0, x0, U)[:-1]
    return float(cost.evaluate(X, U).l.sum())


def plan_from_x0(method: str, system: tuple[np.ndarray, np.ndarray], cost: Cost, T: int, x0: np.ndarray,
                 limits: np.ndarray, **overrides: object) -> tuple[np.ndarray, float]:
    """A plan over the whole episode (horizon = T) with two identical deterministic members."""
    params: dict[str, object] = {"method": method, "horizon": T, "particles": 2, "seed": 1}
    params.update(overrides)
    mpc = MPCController(identical_members(*system, 2), cost, limits, T,
                        PlannerConfig(**params), dtype=torch.float64)  # type: ignore[arg-type]
    plan = mpc.plan(x0, 0)
    return plan.actions, plan.predicted_cost


X0_LQR = np.array([1.0, -0.6, 0.0, 0.3])


def test_cem_first_action_matches_the_lqr_solution() -> None:
    T = 8
    u0_star, cost_star = lqr_optimum(quadratic_cost(), A_PM, B_PM, X0_LQR, T)
    limits = np.array([8.0, 8.0])
    assert np.all(np.abs(u0_star) < 0.5 * limits)  # the optimum is interior: clipping plays no part
    actions, predicted = plan_from_x0("cem", (A_PM, B_PM), quadratic_cost(), T, X0_LQR, limits,
                                      iterations=25, population=400, elites=40)
    np.testing.assert_allclose(actions[0], u0_star, atol=5e-3)  # |u0*| ≈ 3.9; seeds 0-9 give ≤ 1e-3
    achieved = episode_cost(quadratic_cost(), A_PM, B_PM, X0_LQR, actions)
    assert predicted == pytest.approx(achieved, rel=1e-10)  # deterministic model: prediction is exact
    assert cost_star * (1 - 1e-12) <= achieved <= cost_star * (1 + 1e-6)
    zero_actions = episode_cost(quadratic_cost(), A_PM, B_PM, X0_LQR, np.zeros((T, 2)))
    assert achieved - cost_star <= 1e-4 * (zero_actions - cost_star)


def test_random_shooting_gets_close_to_the_lqr_cost() -> None:
    """Scalar x' = 0.9 x + u over T = 3 steps (3 action dimensions); seeds 0-9 give ≤ 1.2 % excess."""
    T, A, Bu = 3, np.array([[0.9]]), np.array([[1.0]])
    state = StateCost(np.ones(1), np.zeros(1), "constant", 3.0)
    cost = SumCost(((1.0, state), (1.0, ActionCost(np.ones(1)))))
    x0 = np.array([2.0])
    u0_star, cost_star = lqr_optimum(cost, A, Bu, x0, T)
    limits = np.array([2.0])
    assert np.all(np.abs(u0_star) < 0.75 * limits)
    actions, predicted = plan_from_x0("random", (A, Bu), cost, T, x0, limits, population=10000)
    achieved = episode_cost(cost, A, Bu, x0, actions)
    assert predicted == pytest.approx(achieved, rel=1e-10)
    assert cost_star * (1 - 1e-12) <= achieved <= cost_star * 1.03
    zero_actions = episode_cost(cost, A, Bu, x0, np.zeros((T, 1)))
    assert achieved - cost_star <= 0.03 * (zero_actions - cost_star)
    np.testing.assert_allclose(actions[0], u0_star, atol=0.15 * limits[0])


# ---------------------------------------------------------------- trajectory sampling (TS-∞)


def test_each_particle_keeps_its_member_for_the_whole_horizon() -> None:
    """Members are distinct deterministic linear systems: particle p of every candidate must follow
    exactly the rollout of member p mod B, at every step."""
    rng = np.random.default_rng(7)
    B, P, N, H, dX, dU = 3, 6, 4, 5, 3, 2
    model = distinct_members(rng, B, dX, dU)
    assert isinstance(model, DynamicsModel)
    x0, U = rng.normal(size=dX), rng.normal(size=(N, H, dU))
    states = rollout_particles(model, torch.from_numpy(x0), torch.from_numpy(U), P, sample=False)
    assert states.shape == (B, N, P // B, H + 1, dX)
    by_candidate = particles_by_candidate(states).numpy()
    assert by_candidate.shape == (N, P, H + 1, dX)
    for n in range(N):
        for p in range(P):
            expected = model.rollout_member(member_of_particle(p, B), x0, U[n])
            np.testing.assert_allclose(by_candidate[n, p], expected, rtol=1e-12, atol=1e-12)
    members = [member_of_particle(p, B) for p in range(P)]
    assert sorted(members) == sorted(list(range(B)) * (P // B))  # every member equally often


def _per_trajectory_expected_cost(model: LinearEnsemble, cost: Cost, x0: np.ndarray, U: np.ndarray, t0: int,
                                  T: int, P: int) -> np.ndarray:
    """Oracle: each particle rolled out in numpy, placed at steps t0.. of a T-step episode, costed with
    cost.evaluate(...).l (the per-trajectory path), window steps summed (plus the step after the window,
    at u = 0, when it is inside the episode), averaged over the P particles. Returns (N,)."""
    N, H, dU = U.shape
    out = np.zeros(N)
    for n in range(N):
        for p in range(P):
            Xw = model.rollout_member(member_of_particle(p, model.num_members), x0, U[n])  # (H+1, dX)
            X_ep, U_ep = np.zeros((T, x0.shape[0])), np.zeros((T, dU))
            steps = min(H + 1, T - t0)
            X_ep[t0:t0 + steps] = Xw[:steps]
            U_ep[t0:t0 + min(H, steps)] = U[n, :min(H, steps)]
            out[n] += cost.evaluate(X_ep, U_ep).l[t0:t0 + steps].sum() / P
    return out


@pytest.mark.parametrize("t0", [0, 4, 9, 11])
def test_expected_cost_is_the_particle_mean_of_per_trajectory_costs(t0: int) -> None:
    rng = np.random.default_rng(8)
    B, P, N, H, dX, dU, T = 2, 4, 5, 3, 3, 2, 12
    model = distinct_members(rng, B, dX, dU)
    cost = SumCost(((1.0, StateCost(np.array([1.0, 0.5, 2.0]), rng.normal(size=dX), "linear", 10.0)),
                    (0.3, ActionCost(np.array([1.0, 0.2])))))
    x0, U = rng.normal(size=dX), rng.normal(size=(N, H, dU))
    got = expected_costs(model, cost, torch.from_numpy(x0), torch.from_numpy(U), t0, T, P, sample=False)
    np.testing.assert_allclose(got.numpy(), _per_trajectory_expected_cost(model, cost, x0, U, t0, T, P),
                               rtol=1e-12)


def test_expected_cost_averages_every_particle_of_a_stochastic_model() -> None:
    """With noisy members the P/B particles of one member differ: the cost is the mean over all P of
    them (oracle: the same draws through rollout_particles, each particle costed by evaluate())."""
    rng = np.random.default_rng(9)
    B, P, N, H, dX, dU, T = 2, 6, 3, 4, 3, 2, 10
    base = distinct_members(rng, B, dX, dU)
    model = LinearEnsemble(base.A.numpy(), base.Bu.numpy(), base.c.numpy(), noise_std=0.3)
    cost = SumCost(((1.0, StateCost(np.ones(dX), np.zeros(dX), "quadratic", 4.0)),
                    (0.5, ActionCost(np.ones(dU)))))
    x0, U = torch.from_numpy(rng.normal(size=dX)), torch.from_numpy(rng.normal(size=(N, H, dU)))
    t0 = 2
    got = expected_costs(model, cost, x0, U, t0, T, P, torch.Generator().manual_seed(5))
    states = particles_by_candidate(rollout_particles(model, x0, U, P, torch.Generator().manual_seed(5)))
    U_ep = torch.cat([U, torch.zeros(N, 1, dU, dtype=U.dtype)], dim=1).numpy()
    expected = np.zeros(N)
    for n in range(N):
        for p in range(P):
            X_ep, Uf = np.zeros((T, dX)), np.zeros((T, dU))
            X_ep[t0:t0 + H + 1], Uf[t0:t0 + H + 1] = states[n, p].numpy(), U_ep[n]
            expected[n] += cost.evaluate(X_ep, Uf).l[t0:t0 + H + 1].sum() / P
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert not torch.allclose(states[:, 0], states[:, B])  # same member, different particles


def test_non_finite_predictions_cost_infinity() -> None:
    model = LinearEnsemble(np.full((1, 1, 1), np.inf), np.ones((1, 1, 1)), np.zeros((1, 1)))
    cost = StateCost(np.ones(1), np.zeros(1))
    x0, U = torch.ones(1, dtype=torch.float64), torch.zeros(2, 3, 1, dtype=torch.float64)
    got = expected_costs(model, cost, x0, U, 0, 5, 1, sample=False)
    assert torch.all(torch.isinf(got) & (got > 0))


# ---------------------------------------------------------------- optimizers


def test_optimizers_evaluate_the_initial_sequence_and_pick_the_cheapest() -> None:
    """Candidate 0 is the (clipped) warm start; the result is the cheapest candidate evaluated, so a
    warm start at the optimum is kept; elites are the lowest-cost candidates."""
    lower, upper = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    target = torch.tensor([[0.3, -0.2], [0.5, 0.1], [-0.4, 0.0]], dtype=torch.float64)  # (H, dU)
    seen: list[torch.Tensor] = []

    def bowl(U: torch.Tensor) -> torch.Tensor:
        return ((U - target) ** 2).sum(dim=(1, 2))

    def objective(U: torch.Tensor) -> torch.Tensor:
        seen.append(U.clone())
        return bowl(U)

    for opt in (CEMOptimizer(PlannerConfig(population=50, elites=5, iterations=3), lower, upper),
                RandomShootingOptimizer(PlannerConfig(method="random", population=50), lower, upper)):
        seen.clear()
        result = opt.optimize(objective, target.clone(), torch.Generator().manual_seed(0))
        assert torch.equal(seen[0][0], target)
        assert isinstance(result, OptimizerResult) and torch.equal(result.actions, target)
        assert result.cost == 0.0
        assert all(bool(torch.all((U >= lower) & (U <= upper))) for U in seen)
    seen.clear()
    cem = CEMOptimizer(PlannerConfig(population=200, elites=10, iterations=6, alpha=0.1), lower, upper)
    result = cem.optimize(objective, torch.zeros(3, 2, dtype=torch.float64), torch.Generator().manual_seed(1))
    assert float(bowl(seen[-1]).min()) < 0.2 * float(bowl(seen[0]).min())  # it moves downhill
    assert result.cost < 1e-2


# ---------------------------------------------------------------- the MPC controller


def _noisy_point_mass_mpc(seed: int, **overrides: object) -> MPCController:
    params: dict[str, object] = {"horizon": 6, "population": 60, "elites": 6, "iterations": 3,
                                 "particles": 4, "seed": seed}
    params.update(overrides)
    model = LinearEnsemble(np.stack([A_PM, 0.98 * A_PM]), np.stack([B_PM, 1.1 * B_PM]), np.zeros((2, 4)),
                           noise_std=0.05)
    return MPCController(model, quadratic_cost(), np.array([2.0, 2.0]), 20,
                         PlannerConfig(**params), dtype=torch.float64)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["cem", "random"])
def test_same_seed_gives_the_same_plan_bit_for_bit(method: str) -> None:
    """Stochastic members (noise drawn from the planner's generator): equal seeds, equal plans."""
    a, b, c = (_noisy_point_mass_mpc(seed, method=method) for seed in (3, 3, 4))
    for t, x in enumerate([X0_LQR, X0_LQR + 0.1, X0_LQR - 0.2]):
        pa, pb, pc = a.plan(x, t), b.plan(x, t), c.plan(x, t)
        assert np.array_equal(pa.actions, pb.actions) and pa.predicted_cost == pb.predicted_cost
        assert not np.array_equal(pa.actions, pc.actions)


def test_warm_start_is_the_previous_plan_shifted_by_one_step() -> None:
    mpc = _noisy_point_mass_mpc(0)
    H = mpc.config.horizon
    assert np.array_equal(mpc.warm_start(0), np.zeros((H, 2)))
    first = mpc.plan(X0_LQR, 0)
    shifted = np.concatenate([first.actions[1:], np.zeros((1, 2))])
    assert np.array_equal(mpc.warm_start(1), shifted)
    assert np.array_equal(mpc.warm_start(3), np.concatenate([first.actions[3:], np.zeros((3, 2))]))
    assert np.array_equal(mpc.warm_start(H), np.zeros((H, 2)))  # too old to help

    seen: list[torch.Tensor] = []

    class Recorder:
        def optimize(self, objective: object, initial: torch.Tensor,
                     generator: torch.Generator) -> OptimizerResult:
            seen.append(initial.clone())
            return OptimizerResult(initial, 0.0)

    mpc._optimizer = Recorder()
    mpc.act(1, X0_LQR)
    assert np.array_equal(seen[-1].numpy(), shifted)  # the optimizer starts from the shifted plan
    mpc.act(0, X0_LQR)
    assert np.array_equal(seen[-1].numpy(), np.zeros((H, 2)))  # t = 0 starts a new episode
    assert len(mpc.planning_times) == 1


def test_actions_are_clipped_to_the_effort_limits() -> None:
    """A far target makes the unconstrained optimum saturate; float32 planning with a limit that float32
    cannot represent (0.1) must still never exceed it."""
    far = StateCost(np.array([1.0, 1.0, 0.0, 0.0]), np.array([50.0, -50.0, 0.0, 0.0]))
    limits = np.array([0.1, 0.7])
    for method in ("cem", "random"):
        mpc = MPCController(identical_members(A_PM, B_PM, 1), far, limits, 10,
                            PlannerConfig(method=method, horizon=5, population=200, elites=10, iterations=10,
                                          particles=1))
        plan = mpc.plan(np.zeros(4), 0)
        assert np.all(np.abs(plan.actions) <= limits)
        u = mpc.act(1, np.zeros(4))
        assert np.all(np.abs(u) <= limits)
        if method == "cem":  # random shooting's 200 uniform samples need not reach the corner
            assert u[0] == pytest.approx(0.1, rel=1e-3) and u[1] == pytest.approx(-0.7, rel=1e-3)


def test_mpc_is_a_policy_that_runs_an_episode(point_mass_env) -> None:  # noqa: ANN001
    """Through the environment's sample(): the exact model's MPC beats doing nothing, one time per step."""
    env = point_mass_env
    cost = SumCost(((1.0, StateCost(np.array([1.0, 1.0, 0.1, 0.1]), np.zeros(4), "constant", 10.0)),
                    (1.0, ActionCost(np.full(2, 1e-3)))))
    mpc = MPCController(identical_members(env.A, env.B, 2), cost, np.array([5.0, 5.0]), env.T,
                        PlannerConfig(horizon=10, population=100, elites=10, particles=2),
                        dtype=torch.float64)
    assert isinstance(mpc, Policy)
    batch = env.sample(mpc, 0, None)
    assert len(mpc.planning_times) == env.T and all(s > 0 for s in mpc.planning_times)
    idle = env.sample(type("Idle", (), {"act": lambda self, t, x, noise: np.zeros(2)})(), 0, None)
    assert cost.evaluate(batch.X[0], batch.U[0]).l.sum() < 0.3 * cost.evaluate(idle.X[0], idle.U[0]).l.sum()
    assert np.all(np.abs(batch.U) <= 5.0)


def test_planner_config_from_yaml_and_validation() -> None:
    cfg = from_dict(PlannerConfig, {"method": "random", "horizon": 10, "alpha": 0.2}, "pets.planner")
    assert (cfg.method, cfg.horizon, cfg.alpha, cfg.population, cfg.elites) == ("random", 10, 0.2, 400, 40)
    defaults = PlannerConfig()
    assert (defaults.horizon, defaults.population, defaults.elites, defaults.iterations,
            defaults.particles) == (25, 400, 40, 5, 20)
    for bad in ({"method": "mppi"}, {"elites": 500}, {"elites": 0}, {"alpha": 1.0}, {"horizon": 0},
                {"init_std": 0.0}, {"bogus": 1}):
        with pytest.raises(ConfigError):
            from_dict(PlannerConfig, bad, "pets.planner")
    with pytest.raises(ValueError, match="multiple"):
        MPCController(identical_members(A_PM, B_PM, 3), quadratic_cost(), np.ones(2), 10,
                      dataclasses.replace(defaults, particles=4))


def test_planning_pins_torch_threads_and_restores_them() -> None:
    threads = torch.get_num_threads()
    seen: list[int] = []

    class CountingModel(LinearEnsemble):
        def step(self, x: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None,
                 sample: bool = True) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return super().step(x, u, generator, sample)

    model = CountingModel(np.stack([A_PM]), np.stack([B_PM]), np.zeros((1, 4)))
    mpc = MPCController(model, quadratic_cost(), np.ones(2), 10,
                        PlannerConfig(horizon=3, population=8, elites=2, iterations=1, particles=1))
    mpc.plan(X0_LQR, 0)
    assert set(seen) == {1} and torch.get_num_threads() == threads


def test_the_probabilistic_ensemble_is_a_model_the_planner_runs_on() -> None:
    """Contract with mbpl_core.models (planning itself never imports it): a small untrained ensemble."""
    from mbpl_core.models import EnsembleConfig, ProbabilisticEnsemble

    ensemble = ProbabilisticEnsemble(4, 2, EnsembleConfig(members=2, elites=2, hidden=(8,), device="cpu"))
    assert isinstance(ensemble, DynamicsModel)
    config = PlannerConfig(horizon=4, population=16, elites=4, iterations=2, particles=4, seed=2)
    plans = []
    for _ in range(2):
        mpc = MPCController(ensemble, quadratic_cost(), np.ones(2), 10, config)
        plans.append(mpc.plan(X0_LQR, 0))
        assert np.isfinite(plans[-1].predicted_cost) and plans[-1].actions.shape == (4, 2)
    assert np.array_equal(plans[0].actions, plans[1].actions)


# ---------------------------------------------------------------- tests added for mutation survivors


def test_random_shooting_covers_the_whole_box_uniformly() -> None:
    """An asymmetric box: every candidate lies inside it, and per coordinate the population reaches both
    ends and has the uniform distribution's mean (lower + upper)/2 and std (upper − lower)/√12."""
    lower = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    upper = torch.tensor([2.0, 3.0], dtype=torch.float64)
    seen: list[torch.Tensor] = []

    def objective(U: torch.Tensor) -> torch.Tensor:
        seen.append(U.clone())
        return (U**2).sum(dim=(1, 2))

    N = 4000
    RandomShootingOptimizer(PlannerConfig(method="random", population=N), lower, upper).optimize(
        objective, torch.zeros(3, 2, dtype=torch.float64), torch.Generator().manual_seed(0))
    U = seen[0][1:].reshape(-1, 2)  # candidate 0 is the warm start
    assert bool(torch.all((U >= lower) & (U <= upper)))
    width = upper - lower
    assert bool(torch.all(U.min(dim=0).values < lower + 0.01 * width))
    assert bool(torch.all(U.max(dim=0).values > upper - 0.01 * width))
    sigma = width / np.sqrt(12.0)
    assert bool(torch.all((U.mean(dim=0) - (lower + upper) / 2).abs() < 5 * sigma / np.sqrt(U.shape[0])))
    np.testing.assert_allclose(U.std(dim=0).numpy(), sigma.numpy(), rtol=0.05)


def test_optimizers_never_pick_a_candidate_whose_cost_is_nan() -> None:
    """An objective that is NaN on every other candidate (an invalid model prediction): the result is the
    cheapest finite candidate evaluated, with a finite cost."""
    lower, upper = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    target = torch.tensor([[0.3, -0.2], [0.5, 0.1]], dtype=torch.float64)
    finite: list[float] = []

    def objective(U: torch.Tensor) -> torch.Tensor:
        costs = ((U - target) ** 2).sum(dim=(1, 2))
        costs[1::2] = float("nan")
        finite.extend(costs[0::2].tolist())
        return costs

    for opt in (CEMOptimizer(PlannerConfig(population=40, elites=4, iterations=3), lower, upper),
                RandomShootingOptimizer(PlannerConfig(method="random", population=40), lower, upper)):
        finite.clear()
        start = torch.zeros(2, 2, dtype=torch.float64)
        result = opt.optimize(objective, start, torch.Generator().manual_seed(2))
        assert np.isfinite(result.cost) and result.cost == min(finite)
        assert float(((result.actions - target) ** 2).sum()) == result.cost


def test_without_model_sampling_noisy_members_give_their_mean_rollouts() -> None:
    """sample=False on members with noise: every particle follows its member's noiseless rollout, and the
    expected cost is the noiseless oracle's -- with or without a generator."""
    rng = np.random.default_rng(10)
    B, P, N, H, dX, dU, T = 2, 4, 3, 3, 3, 2, 8
    base = distinct_members(rng, B, dX, dU)
    noisy = LinearEnsemble(base.A.numpy(), base.Bu.numpy(), base.c.numpy(), noise_std=0.5)
    x0, U = rng.normal(size=dX), rng.normal(size=(N, H, dU))
    for generator in (None, torch.Generator().manual_seed(0)):
        states = particles_by_candidate(rollout_particles(noisy, torch.from_numpy(x0), torch.from_numpy(U), P,
                                                          generator, sample=False)).numpy()
        for n in range(N):
            for p in range(P):
                expected = base.rollout_member(member_of_particle(p, B), x0, U[n])
                np.testing.assert_allclose(states[n, p], expected, rtol=1e-12, atol=1e-12)
    cost = SumCost(((1.0, StateCost(np.ones(dX), np.zeros(dX), "linear", 3.0)),
                    (0.2, ActionCost(np.ones(dU)))))
    got = expected_costs(noisy, cost, torch.from_numpy(x0), torch.from_numpy(U), 1, T, P, sample=False)
    oracle = _per_trajectory_expected_cost(base, cost, x0, U, 1, T, P)
    np.testing.assert_allclose(got.numpy(), oracle, rtol=1e-12)
