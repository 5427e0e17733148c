"""``sac|mbpo|bptt.action_limits``: the box a policy learner acts in, within the robot's effort limits.

arm7's URDF allows 87 N m at the shoulders; a learner that explores with uniformly random efforts over that
range flings the arm (PETS explores within ``pets.action_limits`` for the same reason). Oracles: the
bound is min(effort_limits, action_limits) per joint; the deployed squashed policy's range (action_scale,
action_bias) is that box; every random step and every policy output stays inside it; the sampler's random
source reads the running method's own section (not another method's).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.costs import CostConfig, build_cost
from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import ExperimentConfig, load_experiment

pytest.importorskip("stable_baselines3")

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[2]
OWN = [10.0, 10.0, 10.0, 10.0, 3.0, 3.0, 300.0]   # the wrist's 300 is above the URDF's 12 N m


def _arm7(method: str, section: dict[str, Any]) -> ExperimentConfig:
    experiment = load_experiment(REPO / "configs" / "arm7_reach.yaml")
    experiment = replace(experiment, task=replace(experiment.task, T=10), method=method,
                         sections={**experiment.sections, method: section})
    return experiment


def _runner(experiment: ExperimentConfig) -> Any:
    import torch

    from mbpl_sim.training import runner_class

    torch.set_num_threads(1)
    env = MujocoEnv(experiment)
    cost = build_cost(from_dict(CostConfig, experiment.cost), env.layout, env.dU)
    return runner_class(experiment.method)(experiment, env, cost, 0.02)


TINY_AGENT = {"hidden_sizes": [8], "batch_size": 8, "buffer_size": 500}


@pytest.mark.parametrize("method", ["sac", "mbpo"])
def test_sac_and_mbpo_act_and_deploy_within_their_action_limits(method: str) -> None:
    section = {"action_limits": OWN, "agent": TINY_AGENT, "iterations": 1, "steps_per_iteration": 20}
    section |= ({"learning_starts": 20} if method == "sac" else
                {"initial_random_steps": 20, "model_train_every": 20, "rollout_batch_size": 4,
                 "model": {"members": 2, "elites": 2, "hidden": [8], "max_epochs": 1, "device": "cpu"}})
    runner = _runner(_arm7(method, section))
    effort = np.asarray(runner.env.effort_limits)
    box = np.minimum(effort, OWN)
    assert box[-1] == effort[-1] and np.all(box[:4] == 10.0)
    runner.iteration()   # 20 uniformly random steps (SB3's warm-up) and the evaluation
    buffer = runner.learner.replay_buffer
    actions = runner.learner.policy.unscale_action(buffer.actions[: buffer.pos, 0])
    assert len(actions) == 20 and np.all(np.abs(actions) <= box + 1e-9)
    assert np.abs(actions).max(axis=0)[0] > 0.5 * box[0]   # they explore the box, not a sliver of it
    params = runner.deployed_params()
    np.testing.assert_allclose(params.action_scale, box)
    np.testing.assert_allclose(params.action_bias, 0.0, atol=1e-12)


def test_bptt_policy_and_random_trials_stay_within_its_action_limits() -> None:
    from mbpl_core.learners.bptt import BPTT, BPTTConfig, deployable_params

    experiment = _arm7("bptt", {"action_limits": [2.0]})
    env = MujocoEnv(experiment)
    cost = build_cost(from_dict(CostConfig, experiment.cost), env.layout, env.dU)
    model = {"members": 2, "elites": 2, "hidden": [8], "device": "cpu"}
    config = from_dict(BPTTConfig, {"action_limits": [2.0], "hidden_sizes": [8], "model": model}, "bptt")
    learner = BPTT(env, cost, config)
    learner.collect_random()
    U = np.concatenate([b.U[0] for b in learner.data])
    assert np.all(np.abs(U) <= 2.0) and np.abs(U).max() > 1.5
    params = deployable_params(learner)
    np.testing.assert_allclose(params.action_scale, np.full(7, 2.0))
    np.testing.assert_allclose(np.sqrt(np.diag(params.action_covar)), 0.1 * 2.0)   # exploration_std x limit
    with pytest.raises(ConfigError, match="bptt.action_limits"):
        from_dict(BPTTConfig, {"action_limits": [0.0]}, "bptt")


@pytest.mark.parametrize("method", ["sac", "mbpo"])
def test_bad_action_limits_are_a_config_error_naming_the_key(method: str) -> None:
    from mbpl_core.learners.mbpo import MBPOConfig
    from mbpl_core.learners.sac import SACConfig

    cls = {"sac": SACConfig, "mbpo": MBPOConfig}[method]
    for bad in ([-1.0], ["x"], [[1.0]]):
        with pytest.raises(ConfigError, match=f"{method}.action_limits"):
            from_dict(cls, {"action_limits": bad}, method)


def test_the_samplers_random_source_reads_the_running_methods_action_limits() -> None:
    """method sac with sac.action_limits: those; method sac without them: the effort limits, even though the
    pets section of arm7_reach has its own action_limits (they are PETS's, not SAC's)."""
    pytest.importorskip("mbpl_msgs.msg")
    from mbpl_ros.sampler_logic import RobotSetup

    with_own = RobotSetup.from_experiment(_arm7("sac", {"action_limits": OWN}))
    np.testing.assert_array_equal(with_own.random_limits, np.minimum(with_own.effort_limits, OWN))
    without = RobotSetup.from_experiment(_arm7("sac", {}))
    np.testing.assert_array_equal(without.random_limits, without.effort_limits)
    shipped_pets = load_experiment(REPO / "configs" / "arm7_reach.yaml").pets
    pets = RobotSetup.from_experiment(_arm7("pets", shipped_pets))
    np.testing.assert_array_equal(pets.random_limits, [10.0] * 4 + [3.0] * 3)
