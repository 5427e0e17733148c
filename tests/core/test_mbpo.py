"""MBPO's parts on a small real task: the rollout schedule, branched rollouts, the real/model mixture.

The task is a gymnasium double integrator (x = [position − target, velocity], u = force, T = 10) with the
project's own costs (a state cost with a final-step multiplier plus an action cost); the learner is
stable-baselines3's SAC and the model mbpl's probabilistic ensemble, both real and tiny. Oracles: MBPO's
truncated-linear schedule written out; rollouts compared against the real buffer they start from; rewards
against ``cost.evaluate`` of a full trajectory with the row's (x, u) at its own step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.costs import ActionCost, StateCost, SumCost

gym = pytest.importorskip("gymnasium")
pytest.importorskip("stable_baselines3")

from mbpl_core.learners.mbpo import MBPO, MBPOConfig, rollout_length, step_rewards  # noqa: E402

T, DT = 10, 0.1


class DoubleIntegrator(gym.Env):
    """p'' = u, x = [p − 1, ṗ], start p ~ U(−0.5, 0.5), u in [−2, 1.5]; reward −l_t; T steps, info t."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = gym.spaces.Box(-2.0, 1.5, (1,), np.float64)  # asymmetric: unscaling shows
        self.cost = SumCost(((1.0, StateCost(np.array([1.0, 0.1]), np.zeros(2), "constant", 10.0)),
                             (1.0, ActionCost(np.array([0.01])))))
        self.x, self.t = np.zeros(2), 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.x, self.t = np.array([self.np_random.uniform(-0.5, 0.5) - 1.0, 0.0]), 0
        return self.x.copy(), {"t": 0}

    def step(self, action: np.ndarray) -> Any:
        u = np.clip(np.asarray(action, dtype=np.float64), -2.0, 1.5)
        cost = float(self.cost.value_batched(self.x[None, None], u[None, None], t0=self.t, T=T)[0, 0])
        self.x = np.array([self.x[0] + DT * self.x[1], self.x[1] + DT * u[0]])
        self.t += 1
        return self.x.copy(), -cost, False, self.t >= T, {"t": self.t - 1}


def _config(**changes: Any) -> MBPOConfig:
    raw = {"iterations": 2, "steps_per_iteration": 40, "initial_random_steps": 40, "model_train_every": 40,
           "rollout_every": 20, "rollout_batch_size": 50, "rollout_schedule": [1, 3, 1, 4],
           "updates_per_step": 1, "real_ratio": 0.25,
           "model": {"members": 3, "elites": 2, "hidden": [16, 16], "max_epochs": 5, "device": "cpu"},
           "agent": {"hidden_sizes": [16, 16], "batch_size": 32, "buffer_size": 2000}}
    return from_dict(MBPOConfig, raw | changes, "mbpo")


@pytest.fixture(scope="module")
def mbpo() -> MBPO:
    import torch

    torch.set_num_threads(1)
    env = DoubleIntegrator()
    env.reset(seed=0)
    algorithm = MBPO(env, env.cost, T, _config())
    algorithm.iteration()  # 40 random steps, the first model, rollout rounds at steps 40 (not yet: 0 rows)
    algorithm.iteration()  # SAC updates on the mixture
    return algorithm


def test_rollout_length_follows_mbpos_truncated_linear_schedule() -> None:
    for schedule in ((1, 10, 1, 5), (20, 100, 1, 15), (0, 0, 3, 3), (5, 8, 4, 1)):
        e_min, e_max, k_min, k_max = schedule
        for epoch in range(0, 120):
            if epoch <= e_min:
                want = k_min
            elif epoch >= e_max:
                want = k_max
            else:
                want = int(k_min + (epoch - e_min) * (k_max - k_min) / (e_max - e_min))
            assert rollout_length(schedule, epoch) == want, (schedule, epoch)
    assert [rollout_length((1, 10, 1, 5), e) for e in (1, 4, 7, 10)] == [1, 2, 3, 5]


def test_config_validation() -> None:
    for bad in ({"rollout_schedule": [5, 1, 1, 3]}, {"rollout_schedule": [1, 5, 0, 3]},
                {"real_ratio": 1.5}, {"updates_per_step": 0}, {"initial_random_steps": 0},
                {"rollout_schedule": [1, 2, 3]}, {"agent": {"ent_coef": "often"}}, {"typo": 1}):
        with pytest.raises(ConfigError):
            _config(**bad)


def _rows_in(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Index in table (M, d) of each row (N, d), exactly; −1 where a row is in none."""
    hits = np.all(rows[:, None, :] == table[None, :, :], axis=2)
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1)


@pytest.mark.parametrize("epoch", [1, 2, 3])
def test_branched_rollouts_start_at_real_states_and_have_the_scheduled_length(mbpo: MBPO, epoch: int) -> None:
    k = rollout_length(mbpo.config.rollout_schedule, epoch)
    X_real, _, _, steps_real = mbpo.real_transitions()
    before = mbpo.buffer.model.size
    reports = list(mbpo.reports)
    mbpo.reports = reports[:1] * (epoch - 1)  # the schedule reads the epoch from the reports so far
    try:
        assert mbpo.rollout_k == k
        result = mbpo.rollout()
    finally:
        mbpo.reports = reports
    where = _rows_in(result.X[:, 0], X_real)
    assert np.all(where >= 0), "every rollout starts at a state of the real buffer"
    np.testing.assert_array_equal(result.steps[:, 0], steps_real[where])
    assert result.X.shape[1] == k + 1
    np.testing.assert_array_equal(result.lengths, np.minimum(k, T - steps_real[where]))
    assert (result.lengths == k).sum() > 0.5 * len(result.lengths)
    assert mbpo.buffer.model.size == min(mbpo.buffer.model.capacity, before + int(result.lengths.sum()))
    assert set(np.unique(result.members)) <= set(mbpo.model.elite_indices)
    if k > 1:  # a member per step, drawn afresh
        assert np.any(result.members[:, 0] != result.members[:, 1])
    assert np.all(np.abs(result.A) <= 1.0)
    np.testing.assert_allclose(result.U, mbpo.unscale(result.A), atol=1e-12)
    np.testing.assert_allclose(mbpo.unscale(result.A), mbpo.sac.policy.unscale_action(result.A), atol=1e-6)


def test_rollout_rewards_are_the_cost_of_each_rows_own_step(mbpo: MBPO) -> None:
    rng = np.random.default_rng(0)
    X, U = rng.normal(size=(12, 2)), rng.normal(size=(12, 1))
    steps = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 3])
    got = step_rewards(mbpo.cost, X, U, steps, T)
    for n in range(12):
        full_X, full_U = np.zeros((T, 2)), np.zeros((T, 1))
        full_X[steps[n]], full_U[steps[n]] = X[n], U[n]
        assert got[n] == pytest.approx(-mbpo.cost.evaluate(full_X, full_U).l[steps[n]], rel=1e-12)
    assert got[9] / got[8] > 3  # the final multiplier at step T − 1
    np.testing.assert_array_equal(step_rewards(mbpo.cost, X[:2], U[:2], np.array([T, T + 3]), T), 0.0)


def test_minibatches_mix_real_and_model_rows_at_the_real_ratio(mbpo: MBPO) -> None:
    buffer = mbpo.buffer
    assert buffer.model.size > 0
    batch = buffer.sample(40)
    n_real = int(round(mbpo.config.real_ratio * 40))
    obs = batch.observations.double().numpy()
    real_obs = buffer.observations[: buffer.real_size(), 0]
    assert np.all(_rows_in(obs[:n_real], real_obs) >= 0)
    assert np.all(_rows_in(obs[n_real:], buffer.model.obs[: buffer.model.size]) >= 0)
    assert np.all(batch.dones[n_real:].numpy() == 0)
    assert batch.actions.shape == (40, 1) and batch.rewards.shape == (40, 1)


def test_mbpo_counts_real_steps_and_fits_the_model_on_schedule(mbpo: MBPO) -> None:
    first, second = mbpo.reports
    assert (first.env_steps, second.env_steps) == (40, 80) and mbpo.sac.num_timesteps == 80
    assert (first.model_fits, second.model_fits) == (1, 1)  # at steps 40 and 80 (every 40 from 40 on)
    assert (first.rollout_length, second.rollout_length) == (1, 2)
    X, U, X_next, steps = mbpo.real_transitions()
    assert X.shape[0] == mbpo.sac.num_timesteps and set(np.unique(steps)) == set(range(T))
    np.testing.assert_allclose(X_next[:, 0], X[:, 0] + DT * X[:, 1], atol=1e-6)  # real dynamics
    np.testing.assert_allclose(X_next[:, 1], X[:, 1] + DT * U[:, 0], atol=1e-6)
