"""SAC through the node graph, end to end: ``mbpl launch configs/reacher2_sim.yaml --set method=sac``.

The real graph (sim, sampler, trainer) as separate processes over DDS in an isolated domain, with a tiny
budget (2 iterations x 200 steps): exit code 0; the history counts the environment steps as ``mbpl train``
does; every trial the sampler ran is in the bags once (env_steps / T trajectories); and the deployed
squashed policy, loaded from its checkpoint alone with numpy and rolled out in-process, gives exactly
the training and held-out distances the trainer recorded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")
pytest.importorskip("stable_baselines3")

# pytest's default (prepend) import mode puts this folder on sys.path
from test_sim_in_the_loop import CONFIG, REPO, graph_env  # noqa: E402

from mbpl_core.policy import load_policy_checkpoint  # noqa: E402
from mbpl_ros.recording import SampleStore  # noqa: E402
from mbpl_sim.evaluate import evaluate_in_sim  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

SETS = ["method=sac", "sac.iterations=2", "sac.steps_per_iteration=200", "sac.learning_starts=100",
        "sac.agent.batch_size=64"]


def test_sac_trains_through_the_graph_and_its_checkpoint_reproduces_the_trainer(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "mbpl_ros.cli", "launch", str(CONFIG), "--run-dir", str(run_dir)]
    for s in SETS:
        cmd += ["--set", s]
    done = subprocess.run(cmd, env=graph_env(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    experiment = load_experiment(run_dir / "config.yaml")
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["iteration"] for r in history] == [0, 1]
    assert [r["env_steps"] for r in history] == [200, 400]
    T = experiment.task.T
    assert SampleStore(run_dir).count() == history[-1]["env_steps"] // T
    policy, _ = load_policy_checkpoint(run_dir / "policy")
    assert policy.params.squashed
    last = history[-1]
    held_out = evaluate_in_sim(experiment, policy, "held_out")
    np.testing.assert_allclose(held_out.tip_distance, last["policy_held_out_tip_distance"], atol=1e-9)
    training = evaluate_in_sim(experiment, policy, "train")
    np.testing.assert_allclose(training.tip_distance, last["eval_final_distance"], atol=1e-9)
