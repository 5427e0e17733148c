"""Evaluation of a policy in simulation: distances against an independent kinematic oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mbpl_sim.env import MujocoEnv
from mbpl_sim.evaluate import evaluate_in_sim
from mbpl_sim.experiment import load_experiment

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[2]


class ZeroTorque:
    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        return np.zeros(2)


def test_zero_torque_arm_stays_and_distance_matches_initial_state() -> None:
    experiment = load_experiment(REPO / "configs" / "reacher2_sim.yaml")
    env = MujocoEnv(experiment, condition_set="train")
    result = evaluate_in_sim(experiment, ZeroTorque(), condition_set="train", threshold=0.02)
    assert result.conditions == tuple(range(env.num_conditions))
    for i, c in enumerate(result.conditions):
        # Planar arm at rest with zero torque does not move: final tip distance = initial one.
        expected = np.linalg.norm(env.x0(c)[env.layout.ee_points][:3])
        assert result.tip_distance[i] == pytest.approx(expected, abs=1e-6)
    assert np.array_equal(result.success, result.tip_distance < 0.02)
    assert "success:" in result.summary()


def test_out_of_range_condition_is_a_clear_error() -> None:
    experiment = load_experiment(REPO / "configs" / "reacher2_sim.yaml")
    with pytest.raises(ValueError, match="out of range"):
        evaluate_in_sim(experiment, ZeroTorque(), condition_set="train", conditions=[99])
