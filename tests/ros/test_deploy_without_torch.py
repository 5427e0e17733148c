"""The robot side needs no torch: a sampler whose interpreter cannot import torch deploys a saved policy
checkpoint (``policy_checkpoint``, id 0) and runs a policy trial equal to the in-process rollout.

The sampler runs in a child process whose ``sys.meta_path`` refuses ``torch`` (and any ``torch.*``), so a
torch import anywhere on the sampler's path fails the node at start or at its first trial.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")
pytest.importorskip("torch")  # only to write the checkpoint in this (trainer-side) process

# pytest's default (prepend) import mode puts this folder on sys.path
from test_policy_deploy import (  # noqa: E402
    Client,
    _check_equals_rollout,
    checkpoint,  # noqa: F401  (module fixture)
    experiment_path,  # noqa: F401  (module fixture)
)

from mbpl_core.policy import load_policy_checkpoint  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

REFUSE_TORCH = '''"""Imported first: from here on this interpreter cannot import torch."""
import sys


class _RefuseTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} is blocked in this process (the sampler must run without torch)")
        return None


sys.meta_path.insert(0, _RefuseTorch())
'''
NO_TORCH_SAMPLER = '''"""mbpl_ros.sampler_node in an interpreter that cannot import torch."""
import runpy

import refuse_torch  # noqa: F401

runpy.run_module("mbpl_ros.sampler_node", run_name="__main__", alter_sys=True)
'''


def test_sampler_without_torch_deploys_a_checkpoint_and_runs_its_policy(
    ros_processes, rclpy_node, wait_for, experiment_path: Path, checkpoint: Path,  # noqa: F811
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "refuse_torch.py").write_text(REFUSE_TORCH)
    (shim / "no_torch_sampler.py").write_text(NO_TORCH_SAMPLER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])))
    # The control: with the shim, torch really is out of reach.
    control = subprocess.run([sys.executable, "-c", "import refuse_torch, torch"], env=dict(os.environ),
                             capture_output=True, text=True, timeout=60)
    assert control.returncode != 0 and "torch is blocked" in control.stderr, control.stderr
    common = {"config": str(experiment_path), "mode": "lockstep", "condition_set": "train"}
    ros_processes.start("mbpl_ros.sim_node", "sim", common)
    sampler = ros_processes.start("no_torch_sampler", "sampler", common | {
        "diagnostics_period": 0.2, "state_timeout": 5.0, "policy_checkpoint": str(checkpoint)})
    client = Client(rclpy_node, wait_for)
    msg = client.policy_trial(condition=0, trial_id=1, seed=11)
    assert msg.policy_kind == "policy" and msg.controller_id == 0 and not msg.aborted
    policy, _ = load_policy_checkpoint(checkpoint)
    _check_equals_rollout(msg, policy, load_experiment(experiment_path), "train", 0, 11)
    assert sampler.poll() is None, ros_processes.output(sampler)
    assert "blocked" not in ros_processes.output(sampler)
