"""bench/mbpo_oracle.py's perfect model: the simulator stepped from any state of a trajectory is exact."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import load_experiment

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import mbpo_oracle  # noqa: E402


class _Like:
    elite_indices, dU, dtype, device = [0, 1], 2, torch.float32, torch.device("cpu")


def test_the_simulator_model_reproduces_real_trajectories_of_every_condition() -> None:
    experiment = load_experiment(REPO / "configs" / "reacher2_sim.yaml")
    env = MujocoEnv(experiment)
    truth = mbpo_oracle.SimulatorModel(MujocoEnv(experiment), _Like())
    rng = np.random.default_rng(0)
    for condition in range(env.num_conditions):
        x = env.reset(condition)
        for _ in range(15):  # mid-trajectory states, non-zero velocities
            u = rng.uniform(-1.0, 1.0, env.dU) * np.asarray(env.effort_limits)
            assert truth.condition_of(x) == condition
            want = env.step(u)
            np.testing.assert_allclose(truth.next_state(x, u), want, rtol=0, atol=1e-9)
            x = want
    batch = torch.as_tensor(np.stack([env.x0(0), env.x0(1)]))[None].expand(2, -1, -1)
    u = torch.zeros(2, 2, env.dU, dtype=batch.dtype)
    out = truth.step(batch, u)
    assert out.shape == batch.shape and torch.equal(out[0], out[1])
    far = env.x0(0).copy()
    far[env.layout.ee_points] += 0.05  # a target no training condition has
    with pytest.raises(ValueError, match="no training condition"):
        truth.condition_of(far)
