"""The PETS loop and the planner distillation on a point mass whose dynamics the test knows exactly.

The environment: three point-mass joints q̈ = u (semi-implicit Euler at dt), one end-effector point at
p = q, so x = [q, q̇, q − target, q̇] (StateLayout(dQ=3, n_points=1), dX = 12). Checks: the loop's data
accounting (random trials first, one MPC trial per condition and iteration aggregated, environment
steps), the same seed giving the same run, PETS bringing the point to its targets, and DAgger's labels
being the expert's actions at the states the *policy* visits (by construction), with the distilled
policy matching a known linear expert.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mbpl_core.containers import SampleBatch, StateLayout
from mbpl_core.costs import ActionCost, EndEffectorCost, SumCost
from mbpl_core.guided.mdgps import policy_to_params
from mbpl_core.models import EnsembleConfig
from mbpl_core.planning import PlannerConfig
from mbpl_core.planning.distill import DistillConfig, LabellingPolicy, distill, distill_planner
from mbpl_core.planning.pets import PETS, PETSConfig, UniformRandomPolicy, trajectory_costs
from mbpl_core.policy import GPSConfig, NumpyPolicy

LAYOUT = StateLayout(dQ=3, n_points=1)


class PointMassEnv:
    """q̈ = u, q̇' = q̇ + dt u, q' = q + dt q̇'; targets per condition; starts at rest at the origin."""

    def __init__(self, targets: list[list[float]], T: int = 20, dt: float = 0.1) -> None:
        self.targets = np.asarray(targets, dtype=np.float64)
        self.T, self.dt, self.dU, self.layout = T, dt, 3, LAYOUT
        self.dX = LAYOUT.dX
        self.num_conditions = len(targets)
        self.effort_limits = np.full(3, 2.0)
        self.steps = 0

    def x0(self, condition: int) -> np.ndarray:
        return self._state(np.zeros(3), np.zeros(3), condition)

    def _state(self, q: np.ndarray, qd: np.ndarray, m: int) -> np.ndarray:
        return np.concatenate([q, qd, q - self.targets[m], qd])

    def sample(self, policy, condition: int, noise: np.ndarray | None = None) -> SampleBatch:
        q, qd = np.zeros(3), np.zeros(3)
        X, U = np.empty((self.T, self.dX)), np.empty((self.T, self.dU))
        for t in range(self.T):
            X[t] = self._state(q, qd, condition)
            U[t] = np.clip(policy.act(t, X[t], None), -self.effort_limits, self.effort_limits)
            qd = qd + self.dt * U[t]
            q = q + self.dt * qd
            self.steps += 1
        return SampleBatch(X[None], U[None])


def point_cost() -> SumCost:
    ee = EndEffectorCost(LAYOUT, np.ones(3), l1=0.1, l2=10.0, alpha=1e-5, final_multiplier=10.0)
    return SumCost(((1.0, ActionCost(np.full(3, 1e-3))), (1.0, ee)))


def small_config(iterations: int = 3, seed: int = 0) -> PETSConfig:
    return PETSConfig(
        iterations=iterations, random_trials=2, seed=seed,
        model=EnsembleConfig(members=5, elites=5, hidden=(32, 32), max_epochs=60, patience=10, device="cpu"),
        planner=PlannerConfig(horizon=10, population=100, elites=10, iterations=3, particles=5),
        distill=DistillConfig(enabled=False))


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_loop_collects_random_trials_first_then_one_mpc_trial_per_condition() -> None:
    env = PointMassEnv([[0.5, 0.0, 0.0], [0.0, -0.4, 0.2]])
    pets = PETS(env, point_cost(), small_config(iterations=2))
    reports = pets.run()
    # 2 random trials per condition, then one MPC trial per condition per iteration, all kept
    assert len(pets.data) == 2 * 2 + 2 * 2
    assert [r.env_steps for r in reports] == [(4 + 2) * 20, (4 + 4) * 20] and env.steps == 8 * 20
    # the model of iteration i saw every transition collected before it: 19 per trial
    assert [r.model.n_train + len(r.model.holdout_indices) for r in reports] == [4 * 19, 6 * 19]
    # the random trials stay inside the effort box and are not all alike
    U = np.concatenate([b.U[0] for b in pets.data[:4]])
    assert np.all(np.abs(U) <= 2.0) and U.std() > 0.5


def test_pets_brings_the_point_mass_to_its_targets() -> None:
    env = PointMassEnv([[0.5, 0.0, 0.0], [0.0, -0.4, 0.2], [-0.3, 0.3, -0.3]])
    pets = PETS(env, point_cost(), small_config(iterations=3))
    first_cost = trajectory_costs(pets.cost, [env.sample(UniformRandomPolicy(env.effort_limits,
                                                                             np.random.default_rng(1)), 0)])
    reports = pets.run()
    start = np.linalg.norm(env.targets, axis=1)
    final = np.asarray(reports[-1].final_distance)
    assert np.all(final < 0.1 * start), f"final distances {final} from start distances {start}"
    assert reports[-1].mean_cost[0] < 0.5 * first_cost[0]
    # model accuracy on known dynamics: held-out NLL falls as data accumulates
    assert reports[-1].holdout_nll < reports[0].holdout_nll


def test_same_seed_same_run() -> None:
    runs = []
    for _ in range(2):
        env = PointMassEnv([[0.5, 0.0, 0.0]])
        pets = PETS(env, point_cost(), small_config(iterations=1, seed=3))
        pets.run()
        runs.append(np.concatenate([b.X[0] for b in pets.data]))
    np.testing.assert_array_equal(runs[0], runs[1])
    env = PointMassEnv([[0.5, 0.0, 0.0]])
    other = PETS(env, point_cost(), small_config(iterations=1, seed=4))
    other.run()
    assert not np.array_equal(np.concatenate([b.X[0] for b in other.data]), runs[0])


class LinearExpert:
    """u = clip(K x, ±2): a known controller that moves the point mass to its target."""

    def __init__(self) -> None:
        K = np.zeros((3, LAYOUT.dX))
        K[:, LAYOUT.ee_points] = -4.0 * np.eye(3)
        K[:, LAYOUT.qd] = -3.0 * np.eye(3)
        self.K = K
        self.calls: list[tuple[int, np.ndarray]] = []

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        self.calls.append((t, x.copy()))
        return np.clip(self.K @ x, -2.0, 2.0)


def test_labelling_policy_labels_the_states_the_policy_visits() -> None:
    env = PointMassEnv([[0.5, 0.0, 0.0]])
    expert = LinearExpert()

    class Zero:
        def act(self, t, x, noise):
            return np.full(3, 0.3)

    labeller = LabellingPolicy(Zero(), expert)
    batch = env.sample(labeller, 0)
    assert np.all(batch.U[0] == 0.3), "the policy, not the expert, acts"
    np.testing.assert_array_equal(np.asarray(labeller.labels), np.clip(batch.X[0] @ expert.K.T, -2, 2))
    assert [t for t, _ in expert.calls] == list(range(env.T))


def test_distilled_policy_imitates_a_known_expert_on_its_own_states() -> None:
    env = PointMassEnv([[0.5, 0.0, 0.0], [0.0, -0.4, 0.2], [-0.3, 0.3, -0.3], [0.2, 0.2, 0.4]])
    expert = LinearExpert()
    expert_trials = [env.sample(expert, m) for m in range(env.num_conditions)]
    config = DistillConfig(rounds=2, policy=GPSConfig(hidden_sizes=(32, 32), iterations=1500,
                                                      learning_rate=3e-3, device="cpu"))
    policy, rounds = distill_planner(env, expert, expert_trials, env.effort_limits, config)
    assert [r.round for r in rounds] == [0, 1, 2]
    # DAgger aggregates: every round adds one policy rollout per condition
    assert [r.pairs for r in rounds] == [80, 160, 240]
    gaps = [max(r.label_gap) for r in rounds]
    assert gaps[-1] < 0.05, f"policy vs expert action gap per round {gaps}"
    expert_final = np.array([np.linalg.norm(b.X[0, -1, LAYOUT.ee_points]) for b in expert_trials])
    assert np.all(np.asarray(rounds[-1].final_distance) < expert_final + 0.02)


def test_action_limits_bound_the_random_trials_and_the_plans_within_the_effort_limits() -> None:
    from dataclasses import replace

    from mbpl_core.config import ConfigError
    from mbpl_core.planning.pets import action_box

    limits = np.array([2.0, 2.0, 2.0])
    assert np.array_equal(action_box(PETSConfig(), limits), limits)
    assert np.array_equal(action_box(PETSConfig(action_limits=(0.5, 3.0, 1.0)), limits), [0.5, 2.0, 1.0])
    assert np.array_equal(action_box(PETSConfig(action_limits=(0.3,)), limits), [0.3, 0.3, 0.3])
    with pytest.raises(ConfigError, match="2 values for 3 joints"):
        action_box(PETSConfig(action_limits=(0.3, 0.3)), limits)
    with pytest.raises(ConfigError, match="action_limits"):
        PETSConfig(action_limits=(0.3, -1.0, 0.3))
    env = PointMassEnv([[0.5, 0.0, 0.0]])
    box = np.array([0.2, 0.5, 1.0])
    pets = PETS(env, point_cost(), replace(small_config(iterations=1), action_limits=tuple(box)))
    pets.run()
    random_U = np.concatenate([b.U[0] for b in pets.data[:2]])
    mpc_U = pets.data[-1].U[0]
    assert np.all(np.abs(random_U) <= box) and np.all(random_U.max(axis=0) > 0.8 * box)
    assert np.all(np.abs(mpc_U) <= box + 1e-12)


# ---------------------------------------------------------------- tests added for mutation survivors


def _tiny_config(**model: object) -> PETSConfig:
    params: dict[str, object] = {"members": 4, "elites": 2, "hidden": (16,), "max_epochs": 3, "device": "cpu"}
    params.update(model)
    return PETSConfig(iterations=1, random_trials=2, seed=1, model=EnsembleConfig(**params),  # type: ignore[arg-type]
                      planner=PlannerConfig(horizon=3, population=10, elites=2, iterations=1, particles=2),
                      distill=DistillConfig(enabled=False))


def test_the_planner_runs_on_the_elites_of_the_latest_fit() -> None:
    """Oracle: row block b of the planner's model steps exactly as elite member elites[b] alone does."""
    env = PointMassEnv([[0.5, 0.0, 0.0]])
    pets = PETS(env, point_cost(), _tiny_config())
    pets.collect_random()
    pets.fit_model()
    elites = pets.model.elite_indices
    assert elites != (0, 1), "this seed's fit must change the elites from the initial first members"
    g = torch.Generator().manual_seed(0)
    x, u = torch.randn(2, 5, env.dX, generator=g), torch.randn(2, 5, env.dU, generator=g)
    with torch.no_grad():
        got = pets.mpc.model.step(x, u, sample=False)
        for b, member in enumerate(elites):
            alone = pets.model.step(x[b:b + 1], u[b:b + 1], sample=False, members=[member])
            torch.testing.assert_close(got[b:b + 1], alone)


def test_particles_must_split_evenly_over_the_elites_not_all_members() -> None:
    from mbpl_core.config import ConfigError

    model = EnsembleConfig(members=5, elites=2)
    PETSConfig(model=model, planner=PlannerConfig(particles=4))
    with pytest.raises(ConfigError, match="multiple of pets.model.elites"):
        PETSConfig(model=model, planner=PlannerConfig(particles=5))


def test_continue_retrains_from_the_last_weights_and_scratch_from_fresh_ones() -> None:
    """Two fits on the same data: 'continue' starts the second where the first ended (its first epoch's
    held-out NLL is already near the first fit's best), 'scratch' starts over (near the first fit's
    first epoch)."""
    first_epoch = {}
    for retrain in ("continue", "scratch"):
        env = PointMassEnv([[0.5, 0.0, 0.0], [0.0, -0.4, 0.2]])
        config = _tiny_config(members=2, hidden=(32, 32), max_epochs=15, patience=100, batch_size=8)
        pets = PETS(env, point_cost(), dataclasses.replace(config, retrain=retrain))
        pets.collect_random()
        first, second = pets.fit_model(), pets.fit_model()
        start, best = float(np.mean(first.holdout_nll[0])), first.elite_holdout_nll
        assert best < start - 1.0, "the first fit must learn something for the comparison to mean anything"
        first_epoch[retrain] = (float(np.mean(second.holdout_nll[0])) - best) / (start - best)
    assert first_epoch["continue"] < 0.3 and first_epoch["scratch"] > 0.7, first_epoch


def test_distilled_policy_covariance_is_the_action_scale_times_the_limits_squared() -> None:
    """Λ = diag(1 / (scale · limits)²) weights the loss, so the policy's covariance is (scale · limits)²
    per joint -- with joints of different limits."""
    env = PointMassEnv([[0.5, 0.0, 0.0]])
    env.effort_limits = np.array([2.0, 1.0, 0.5])
    expert = LinearExpert()
    config = DistillConfig(rounds=0, action_scale=0.1,
                           policy=GPSConfig(hidden_sizes=(8,), iterations=10, device="cpu"))
    policy, _ = distill_planner(env, expert, [env.sample(expert, 0)], env.effort_limits, config)
    np.testing.assert_allclose(policy.action_covar, np.diag((0.1 * env.effort_limits) ** 2), rtol=1e-5,
                               atol=1e-12)


def test_dagger_learns_the_expert_labels_at_the_states_the_policy_visited() -> None:
    """Rollouts that report fixed visited states X_r (away from the expert's), the policy's own actions
    there and expert labels U* = a constant: after one DAgger round the policy's action at X_r is U*,
    which it can learn only from the labels (round 0 saw the expert's trajectory alone)."""
    env = PointMassEnv([[0.5, 0.0, 0.0]])
    expert = LinearExpert()
    trials = [env.sample(expert, 0)]
    X_r = trials[0].X[0] + 3.0
    label = np.array([1.0, -1.0, 0.5])

    def rollouts(policy: NumpyPolicy) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return [(X_r, policy.mean_batch(X_r), np.tile(label, (len(X_r), 1)))]

    # the last round's policy (select_best would keep round 0: the fixed rollouts end equally far in both)
    config = DistillConfig(rounds=1, select_best=False,
                           policy=GPSConfig(hidden_sizes=(16,), iterations=300, learning_rate=3e-3,
                                            refit_normalization=True, device="cpu"))
    policy, rounds = distill(trials, rollouts, env.dX, env.dU, LAYOUT, env.effort_limits, config)
    assert max(rounds[0].label_gap) > 1.0, "round 0 must not know the labels already"
    final = NumpyPolicy(policy_to_params(policy)).mean_batch(X_r)
    np.testing.assert_allclose(final, np.tile(label, (len(X_r), 1)), atol=0.25)


@pytest.mark.parametrize("select_best", [True, False])
def test_distillation_deploys_the_round_that_ends_closest_to_the_training_targets(select_best: bool) -> None:
    """Rollouts whose final distances are set per round (round 1 best): with select_best the returned
    policy is round 1's network exactly (its actions on the rollout states), marked deployed; without it
    the last round's."""
    from mbpl_core.guided.mdgps import policy_to_params
    from mbpl_core.planning.distill import deployed_round, distill
    from mbpl_core.policy import NumpyPolicy

    env = PointMassEnv([[0.5, 0.0, 0.0], [0.0, -0.4, 0.2]])
    expert = LinearExpert()
    expert_trials = [env.sample(expert, m) for m in range(env.num_conditions)]
    worst = [0.3, 0.05, 0.2, 0.4]  # the distance each round's rollouts end at
    probe = np.random.default_rng(0).normal(size=(16, LAYOUT.dX))
    seen: list[np.ndarray] = []

    def rollouts(policy: NumpyPolicy) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        r = len(seen)
        seen.append(policy.mean_batch(probe))
        out = []
        for m in range(env.num_conditions):
            X = np.asarray(expert_trials[m].X[0]).copy()
            X[-1, LAYOUT.ee_points] = 0.0
            X[-1, LAYOUT.ee_points.start] = worst[r] if m == 0 else 0.01
            out.append((X, expert_trials[m].U[0], expert_trials[m].U[0]))
        return out

    config = DistillConfig(rounds=3, select_best=select_best,
                           policy=GPSConfig(hidden_sizes=(16,), iterations=200, device="cpu"))
    policy, rounds = distill(expert_trials, rollouts, env.dX, env.dU, LAYOUT, env.effort_limits, config)
    want = 1 if select_best else 3
    assert [r.deployed for r in rounds] == [r == want for r in range(4)]
    assert deployed_round(rounds).final_distance[0] == pytest.approx(worst[want])
    deployed = NumpyPolicy(policy_to_params(policy))
    np.testing.assert_allclose(deployed.mean_batch(probe), seen[want], atol=1e-12)
    assert not np.allclose(seen[1], seen[3])  # training went on after round 1: the rounds differ
