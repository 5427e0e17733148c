"""End-effector kinematics: Jacobians against finite differences, state layout, hardware == sim path."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from mbpl_core.containers import ShapeError
from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import ExperimentConfig
from mbpl_sim.kinematics import EndEffectorKinematics
from mbpl_sim.robot import load_robot_spec

pytestmark = pytest.mark.sim


def _random_q(kin: EndEffectorKinematics, rng: np.random.Generator) -> np.ndarray:
    model = kin.model
    jids = [model.joint(n).id for n in kin.joint_names]
    lo, hi = model.jnt_range[jids].T
    return rng.uniform(0.8 * lo, 0.8 * hi)


@pytest.mark.parametrize("name", ["reacher2_sim", "arm7_reach", "arm7_peg"])
def test_jacobian_matches_finite_differences(
        shipped_experiments: dict[str, ExperimentConfig], name: str) -> None:
    kin = EndEffectorKinematics.from_robot_config(shipped_experiments[name].robot)
    rng = np.random.default_rng(0)
    zeros = np.zeros(kin.dQ)
    eps = 1e-6
    for _ in range(3):
        q = _random_q(kin, rng)
        jac = kin.compute(q, zeros).jacobian
        fd = np.empty_like(jac)
        for j in range(kin.dQ):
            dq = np.zeros(kin.dQ)
            dq[j] = eps
            diff = kin.compute(q + dq, zeros).points - kin.compute(q - dq, zeros).points
            fd[:, j] = diff.ravel() / (2 * eps)
        np.testing.assert_allclose(jac, fd, atol=1e-7)


def test_site_frame_and_offset_points_match_world_pose(
        shipped_experiments: dict[str, ExperimentConfig]) -> None:
    """Points in a site frame equal site_xpos + site_xmat @ r, computed independently with mj_forward."""
    spec = load_robot_spec(shipped_experiments["arm7_reach"].robot)
    spec.body("link7").add_site(name="probe", pos=[0.01, 0.02, 0.05], quat=[0.9238795, 0.3826834, 0.0, 0.0])
    model = spec.compile()
    points = np.array([[0.0, 0.0, 0.0], [0.03, -0.02, 0.1]])
    joints = shipped_experiments["arm7_reach"].robot.joints
    kin = EndEffectorKinematics(model, joints, "probe", points)
    q = _random_q(kin, np.random.default_rng(1))
    data = mujoco.MjData(model)
    data.qpos[:] = q
    mujoco.mj_forward(model, data)
    expected = data.site("probe").xpos + points @ data.site("probe").xmat.reshape(3, 3).T
    np.testing.assert_allclose(kin.compute(q, np.zeros(7)).points, expected, atol=1e-12)


def test_point_velocities_match_finite_difference_of_positions(
        shipped_experiments: dict[str, ExperimentConfig]) -> None:
    kin = EndEffectorKinematics.from_robot_config(shipped_experiments["arm7_peg"].robot)
    rng = np.random.default_rng(2)
    q, qd = _random_q(kin, rng), rng.normal(size=7)
    h = 1e-6
    fd = (kin.compute(q + h * qd, qd).points - kin.compute(q - h * qd, qd).points) / (2 * h)
    np.testing.assert_allclose(kin.compute(q, qd).velocities, fd, atol=1e-7)


def test_state_vector_follows_layout(shipped_experiments: dict[str, ExperimentConfig]) -> None:
    experiment = shipped_experiments["arm7_peg"]
    kin = EndEffectorKinematics.from_robot_config(experiment.robot)
    layout = experiment.layout
    rng = np.random.default_rng(3)
    q, qd, target = _random_q(kin, rng), rng.normal(size=7), rng.normal(size=(2, 3))
    x = kin.state_vector(q, qd, target)
    ee = kin.compute(q, qd)
    assert x.shape == (layout.dX,) == (26,)
    np.testing.assert_array_equal(x[layout.q], q)
    np.testing.assert_array_equal(x[layout.qd], qd)
    np.testing.assert_allclose(x[layout.ee_points], (ee.points - target).ravel())
    np.testing.assert_allclose(x[layout.ee_velocities], ee.velocities.ravel())
    with pytest.raises(ShapeError, match="target_points"):
        kin.state_vector(q, qd, target[:1])
    with pytest.raises(ShapeError, match="NaN"):
        kin.compute(np.full(7, np.nan), qd)


@pytest.mark.parametrize("name", ["reacher2_sim", "arm7_peg"])
def test_robot_only_kinematics_reproduce_the_scene_state(
        shipped_experiments: dict[str, ExperimentConfig], name: str) -> None:
    """The sampler's hardware path (robot model alone) gives the same x as the simulated scene."""
    experiment = shipped_experiments[name]
    env = MujocoEnv(experiment)
    kin = EndEffectorKinematics.from_robot_config(experiment.robot)
    env.reset(0)
    rng = np.random.default_rng(4)
    for _ in range(5):
        x = env.step(rng.uniform(-0.3, 0.3, env.dU) * env.effort_limits)
        expected = kin.state_vector(env.joint_positions(), env.joint_velocities(), env.target_points(0))
        np.testing.assert_allclose(x, expected, atol=1e-12)
