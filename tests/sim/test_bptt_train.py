"""Method ``bptt`` on reacher2 in MuJoCo: ``mbpl train`` end to end with the checkpoint evaluated alone by
``mbpl eval``, and BPTT bringing the arm's tip closer than the untrained policy does (slow)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mbpl_core.config import from_dict
from mbpl_core.costs import CostConfig, build_cost
from mbpl_core.learners.bptt import TorchPolicyAdapter
from mbpl_ros.cli import main
from mbpl_sim.bptt_runner import BPTTRunner
from mbpl_sim.env import MujocoEnv
from mbpl_sim.evaluate import final_distances
from mbpl_sim.experiment import load_experiment

pytestmark = pytest.mark.sim

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "reacher2_sim.yaml")


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_train_bptt_then_eval_the_checkpoint_alone(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sets = ["method=bptt", "bptt.gradient_steps=20", "bptt.model.max_epochs=5", "bptt.value.enabled=true",
            "bptt.value.warmup_steps=10"]
    assert main(["train", CONFIG, "--iterations", "2", "--run-dir", str(run),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    history = json.loads((run / "history.json").read_text())
    assert [r["iteration"] for r in history] == [0, 1]
    assert [r["env_steps"] for r in history] == [(4 + 4 * (i + 1)) * 50 for i in range(2)]
    assert all(len(r["eval_final_distance"]) == 4 and len(r["policy_held_out_tip_distance"]) == 8
               for r in history)
    assert (run / "model" / "ensemble.pt").is_file() and (run / "algorithm_state.pkl").is_file()
    ev = tmp_path / "eval"
    assert main(["eval", CONFIG, "--policy", str(run / "policy"), "--run-dir", str(ev)]) == 0
    result = json.loads((ev / "evaluation.json").read_text())
    # the numpy policy the trainer evaluated and the checkpoint loaded alone roll out identically
    np.testing.assert_allclose(result["tip_distance"], history[-1]["policy_held_out_tip_distance"], rtol=1e-9)


@pytest.mark.slow
def test_bptt_brings_the_reacher_closer_than_the_untrained_policy() -> None:
    experiment = load_experiment(CONFIG)
    section = {"iterations": 5, "gradient_steps": 150, "horizon": 10, "learning_rate": 3e-3,
               "model": {"hidden": [64, 64], "max_epochs": 50, "device": "cpu"}}
    experiment = dataclasses.replace(experiment, method="bptt",
                                     sections={**experiment.sections, "bptt": section})
    env = MujocoEnv(experiment)
    cost = build_cost(from_dict(CostConfig, experiment.cost, "cost"), env.layout, env.dU)
    runner = BPTTRunner(experiment, env, cost, 0.02)
    untrained = TorchPolicyAdapter(runner.algorithm.policy)
    before = [final_distances(env, env.sample(untrained, c, None))[0] for c in range(env.num_conditions)]
    records = [runner.iteration() for _ in range(runner.num_iterations)]
    after = records[-1]["eval_final_distance"]
    assert np.median(after) < 0.5 * np.median(before), (before, after)
