"""The peg fits the hole: a joint-space PD tracking IK waypoints lowers it to the bottom without blow-ups."""

from __future__ import annotations

from dataclasses import replace

import mujoco
import numpy as np
import pytest

from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import ExperimentConfig
from mbpl_sim.ik import solve_ik
from mbpl_sim.scenes import BLOCK_BODY

pytestmark = pytest.mark.sim


def _lower_peg(experiment: ExperimentConfig, condition: int,
               frictions: list[float] | None = None) -> tuple[MujocoEnv, np.ndarray]:
    """Drive the peg tip from 3 cm above the block to 2 mm below the hole bottom; returns (env, final x).

    frictions: if given, the sliding friction of every contact of the peg with the block is appended.
    """
    # a faster control period than the learning task's so a stiff PD stays stable under zero-order hold
    experiment = replace(experiment, task=replace(experiment.task, dt=0.01, substeps=5))
    env = MujocoEnv(experiment)
    hole = env.conditions[condition].position
    depth = experiment.task.hole.depth
    env.reset(condition)
    block = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_BODY, BLOCK_BODY)
    q_ref = env.joint_positions()
    kp, kd = 150.0, 15.0
    steps = 300
    for k in range(steps + 100):
        # straight down the hole's axis from 3 cm above the block to 2 mm below the hole bottom
        height = max(-0.002, depth + 0.03 - (depth + 0.032) * min(1.0, k / steps))
        tip = hole + np.array([0.0, 0.0, height])
        q_ref = solve_ik(env.kinematics, np.stack([tip, tip + [0.0, 0.0, 0.1]]), q_ref, max_iterations=20).q
        u = kp * (q_ref - env.joint_positions()) - kd * env.joint_velocities()
        x = env.step(u)
        penetration = -min([env.data.contact[i].dist for i in range(env.data.ncon)], default=0.0)
        assert penetration < 0.003, f"step {k}: contact penetration {penetration:.4f} m"
        if frictions is not None:
            frictions += [float(c.friction[0]) for c in env.data.contact[:env.data.ncon]
                          if block in (env.model.geom_bodyid[c.geom1], env.model.geom_bodyid[c.geom2])]
    return env, x


@pytest.mark.parametrize("condition", [0, 3])
def test_peg_goes_into_the_hole(shipped_experiments: dict[str, ExperimentConfig], condition: int) -> None:
    env, x = _lower_peg(shipped_experiments["arm7_peg"], condition)
    hole = env.conditions[condition].position
    assert env.warning_counts() == {}
    tip_final = x[14:17] + hole
    assert np.linalg.norm(tip_final - hole) < 0.01
    assert abs(tip_final[2] - hole[2]) < 0.01
    assert np.max(np.abs(env.joint_velocities())) < 0.5


def test_peg_is_stopped_by_a_hole_narrower_than_the_peg(
        shipped_experiments: dict[str, ExperimentConfig]) -> None:
    """Negative control: the same motion cannot push the 1 cm-radius peg into an 8 mm half-width hole."""
    experiment = shipped_experiments["arm7_peg"]
    narrow = replace(experiment.task.hole, half_width=0.008)
    env, x = _lower_peg(replace(experiment, task=replace(experiment.task, hole=narrow)), 0)
    assert x[16] > narrow.depth - 0.005  # the tip rests on the block's top face
    assert env.warning_counts() == {}


def test_peg_block_contacts_use_the_configured_friction(
        shipped_experiments: dict[str, ExperimentConfig]) -> None:
    """The hole's `friction` is what every peg-block contact gets (not the larger robot default of 1)."""
    experiment = shipped_experiments["arm7_peg"]
    for friction in (0.3, 0.6):
        hole = replace(experiment.task.hole, friction=friction, half_width=0.008)  # rests on the block
        frictions: list[float] = []
        _lower_peg(replace(experiment, task=replace(experiment.task, hole=hole)), 0, frictions)
        assert frictions and np.allclose(frictions, friction), sorted(set(frictions))
