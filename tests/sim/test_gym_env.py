"""The gymnasium view of a task: gymnasium's own checker, and rewards against the project's trajectory cost.

Oracle: the rewards of an episode sum to −Σ_t l_t of ``cost.evaluate`` on the trajectory MujocoEnv.sample
records for the same actions (the cost the LQR methods optimise, final-step multiplier included), step by
step; the observations are that trajectory's states.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.costs import CostConfig, build_cost
from mbpl_sim.experiment import ExperimentConfig

gym = pytest.importorskip("gymnasium")

from gymnasium.utils.env_checker import check_env  # noqa: E402

from mbpl_sim.gym_env import MbplGymEnv  # noqa: E402

pytestmark = pytest.mark.sim


class _Replay:
    """The Policy protocol replaying fixed actions (T, dU)."""

    def __init__(self, actions: np.ndarray) -> None:
        self.actions = actions

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        return self.actions[t].copy()


def _reacher(shipped: dict[str, ExperimentConfig], T: int = 20) -> ExperimentConfig:
    experiment = shipped["reacher2_sim"]
    return replace(experiment, task=replace(experiment.task, T=T))


def test_gymnasiums_checker_passes(shipped_experiments: dict[str, ExperimentConfig]) -> None:
    env = MbplGymEnv(_reacher(shipped_experiments))
    check_env(env, skip_render_check=True)
    check_env(MbplGymEnv(_reacher(shipped_experiments), "held_out", condition_order="random"),
              skip_render_check=True)


@pytest.mark.parametrize("name", ["reacher2_sim", "arm7_reach"])
def test_rewards_sum_to_minus_the_trajectory_cost_of_the_same_actions(
        shipped_experiments: dict[str, ExperimentConfig], name: str) -> None:
    experiment = replace(shipped_experiments[name], task=replace(shipped_experiments[name].task, T=25))
    env = MbplGymEnv(experiment)
    cost = build_cost(from_dict(CostConfig, experiment.cost), env.sim.layout, env.sim.dU)
    rng = np.random.default_rng(0)
    limits = env.sim.effort_limits
    for condition in (0, env.num_conditions - 1):
        actions = rng.uniform(-1.3, 1.3, size=(env.T, env.sim.dU)) * limits  # some beyond the limits
        obs, info = env.reset(seed=1, options={"condition": condition})
        assert info["condition"] == condition
        rewards, states = [], [obs]
        for t in range(env.T):
            obs, reward, terminated, truncated, info = env.step(actions[t])
            assert info["t"] == t and not terminated and truncated == (t == env.T - 1)
            rewards.append(reward)
            states.append(obs)
        batch = env.sim.sample(_Replay(actions), condition)
        np.testing.assert_allclose(np.array(states[:-1]), batch.X[0], atol=1e-12)
        per_step = cost.evaluate(batch.X[0], batch.U[0]).l
        np.testing.assert_allclose(-np.array(rewards), per_step, rtol=1e-9, atol=1e-12)
        assert sum(rewards) == pytest.approx(-per_step.sum(), rel=1e-9)
        # the final-step multiplier is part of it, on the last step only
        flat = {**experiment.cost, "ee": {**experiment.cost["ee"], "final_multiplier": 1.0}}
        plain = build_cost(from_dict(CostConfig, flat), env.sim.layout, env.sim.dU).evaluate(
            batch.X[0], batch.U[0]).l
        np.testing.assert_allclose(per_step[:-1], plain[:-1], rtol=1e-12)
        assert per_step[-1] > plain[-1] * 1.5
        # the last action is simulated too: x_T follows x_{T-1} under u_{T-1}
        assert not np.allclose(states[-1], states[-2])


def test_conditions_at_reset(shipped_experiments: dict[str, ExperimentConfig]) -> None:
    env = MbplGymEnv(_reacher(shipped_experiments, T=3))
    seen = [env.reset()[1]["condition"] for _ in range(2 * env.num_conditions)]
    assert seen == list(range(env.num_conditions)) * 2
    x0, _ = env.reset(options={"condition": 2})
    np.testing.assert_allclose(x0, env.sim.x0(2), atol=1e-12)
    draws = MbplGymEnv(_reacher(shipped_experiments, T=3), condition_order="random")
    first = [draws.reset(seed=5)[1]["condition"]] + [draws.reset()[1]["condition"] for _ in range(15)]
    again = [draws.reset(seed=5)[1]["condition"]] + [draws.reset()[1]["condition"] for _ in range(15)]
    assert first == again and len(set(first)) > 1
    with pytest.raises(ConfigError):
        MbplGymEnv(_reacher(shipped_experiments), condition_order="shuffled")


def test_step_after_the_episode_needs_a_reset(shipped_experiments: dict[str, ExperimentConfig]) -> None:
    env = MbplGymEnv(_reacher(shipped_experiments, T=2))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.reset()
    env.step(np.zeros(2))
    env.step(np.zeros(2))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))


def test_action_limits_bound_the_action_space_and_every_applied_action(
        shipped_experiments: dict[str, ExperimentConfig]) -> None:
    """``action_limits`` (one value or dU) make the Box ±min(effort_limits, action_limits), and a step with an
    action beyond it equals the step with the action clipped to it (oracle: the MujocoEnv stepped by hand
    with the clipped efforts); the checker passes on the smaller box; bad limits are a ConfigError."""
    arm7 = shipped_experiments["arm7_reach"]
    experiment = replace(arm7, task=replace(arm7.task, T=5))
    own = [10.0, 10.0, 10.0, 10.0, 3.0, 3.0, 300.0]   # the last one above the URDF's 12 N m
    env = MbplGymEnv(experiment, action_limits=own)
    effort = np.asarray(env.sim.effort_limits)
    expected = np.minimum(effort, own)
    assert np.array_equal(env.action_space.high, expected) and np.array_equal(env.action_space.low, -expected)
    assert expected[-1] == effort[-1] < 300.0
    check_env(env, skip_render_check=True)
    assert np.array_equal(MbplGymEnv(experiment, action_limits=[2.0]).action_space.high, np.full(7, 2.0))
    rng = np.random.default_rng(3)
    actions = rng.uniform(-1.5, 1.5, size=(5, 7)) * effort
    reference = MbplGymEnv(experiment)
    env.reset(options={"condition": 1})
    x = reference.sim.reset(1)
    for t in range(5):
        obs, *_ = env.step(actions[t])
        x = reference.sim.step(np.clip(actions[t], -expected, expected))
        np.testing.assert_array_equal(obs, x)
    for bad in ([1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 2.0], [float("nan")]):
        with pytest.raises(ConfigError, match="action_limits"):
            MbplGymEnv(experiment, action_limits=bad)
