"""MujocoEnv: scenes step without warnings, determinism, clipping, sample shapes and state bookkeeping."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mbpl_core.config import ConfigError
from mbpl_core.containers import ShapeError
from mbpl_sim.env import MujocoEnv, SimulationError
from mbpl_sim.experiment import ExperimentConfig

pytestmark = pytest.mark.sim


class _NoisyFeedback:
    """u = -K qd + scale * noise: a stand-in for an LG controller (Policy protocol)."""

    def __init__(self, dU: int, scale: np.ndarray) -> None:
        self.dU, self.scale = dU, scale

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        u = -0.5 * x[self.dU:2 * self.dU]
        return u if noise is None else u + self.scale * noise


def _short(experiment: ExperimentConfig, T: int = 20) -> ExperimentConfig:
    return replace(experiment, task=replace(experiment.task, T=T))


@pytest.mark.parametrize("name", ["reacher2_sim", "arm7_reach", "arm7_peg"])
def test_every_scene_compiles_and_steps_without_warnings(
        shipped_experiments: dict[str, ExperimentConfig], name: str) -> None:
    experiment = shipped_experiments[name]
    for which in ("train", "held_out"):
        env = MujocoEnv(experiment, which)
        assert env.model.opt.timestep == pytest.approx(experiment.task.dt / experiment.task.substeps)
        rng = np.random.default_rng(0)
        for c in range(min(env.num_conditions, 4)):
            x = env.reset(c)
            np.testing.assert_allclose(x, env.x0(c), atol=1e-12)
            for _ in range(10):
                x = env.step(rng.uniform(-0.2, 0.2, env.dU) * env.effort_limits)
            assert np.all(np.isfinite(x))
            assert env.warning_counts() == {}
            assert env.time == pytest.approx(10 * env.dt)


def test_sample_shapes_and_consistency(shipped_experiments: dict[str, ExperimentConfig]) -> None:
    env = MujocoEnv(_short(shipped_experiments["arm7_peg"]))
    noise = np.random.default_rng(1).normal(size=(env.T, env.dU))
    batch = env.sample(_NoisyFeedback(env.dU, 0.3 * np.ones(env.dU)), 2, noise)
    assert batch.X.shape == (1, env.T, env.dX) and batch.U.shape == (1, env.T, env.dU)
    assert batch.ee_jacobians.shape == (1, env.T, 6, 7)
    np.testing.assert_allclose(batch.X[0, 0], env.x0(2))
    for t in (0, 7, env.T - 1):
        q, qd = batch.X[0, t, :7], batch.X[0, t, 7:14]
        np.testing.assert_allclose(batch.ee_jacobians[0, t], env.kinematics.compute(q, qd).jacobian)
    # the recorded actions, replayed through step(), reproduce the recorded states
    env.reset(2)
    for t in range(env.T - 1):
        np.testing.assert_allclose(env.step(batch.U[0, t]), batch.X[0, t + 1], atol=1e-12)
    assert env.ee_distance(batch.X[0, 0]) == pytest.approx(
        np.mean(np.linalg.norm(batch.X[0, 0, 14:20].reshape(2, 3), axis=1)))


def test_same_seed_and_commands_give_identical_trajectories(
        shipped_experiments: dict[str, ExperimentConfig]) -> None:
    experiment = _short(shipped_experiments["reacher2_sim"])
    runs = []
    for _ in range(2):
        env = MujocoEnv(experiment)
        noise = np.random.default_rng(42).normal(size=(env.T, env.dU))
        runs.append(env.sample(_NoisyFeedback(env.dU, np.ones(env.dU)), 1, noise))
    np.testing.assert_array_equal(runs[0].X, runs[1].X)
    np.testing.assert_array_equal(runs[0].U, runs[1].U)
    other_noise = np.random.default_rng(43).normal(size=(env.T, 2))
    other = env.sample(_NoisyFeedback(env.dU, np.ones(env.dU)), 1, other_noise)
    assert not np.array_equal(other.X, runs[0].X)


def test_commands_are_clipped_to_effort_limits(shipped_experiments: dict[str, ExperimentConfig]) -> None:
    env = MujocoEnv(shipped_experiments["arm7_reach"])
    u = np.array([200.0, -200.0, 90.0, -1.0, 50.0, -50.0, 5.0])
    expected = np.array([87.0, -87.0, 87.0, -1.0, 12.0, -12.0, 5.0])
    np.testing.assert_array_equal(env.clip_action(u), expected)
    env.reset(0)
    x_big = env.step(u)
    np.testing.assert_array_equal(env.data.ctrl, expected)
    env.reset(0)
    np.testing.assert_array_equal(env.step(expected), x_big)
    with pytest.raises(ShapeError, match="u has shape"):
        env.step(np.zeros(6))
    with pytest.raises(ShapeError, match="NaN"):
        env.step(np.full(7, np.nan))


def test_targets_and_conditions(shipped_experiments: dict[str, ExperimentConfig]) -> None:
    peg = MujocoEnv(shipped_experiments["arm7_peg"])
    for c, cond in enumerate(peg.conditions):
        tip, top = peg.target_points(c)
        np.testing.assert_allclose(tip, cond.position)
        np.testing.assert_allclose(top - tip, [0.0, 0.0, 0.1], atol=1e-12)
        peg.reset(c)
        np.testing.assert_allclose(peg.data.site("hole_bottom").xpos, cond.position, atol=1e-12)
    reach = MujocoEnv(shipped_experiments["reacher2_sim"])
    reach.reset(3)
    np.testing.assert_allclose(reach.data.site("target_0").xpos, reach.target_points(3)[0], atol=1e-12)
    with pytest.raises(IndexError):
        reach.reset(4)
    assert MujocoEnv(shipped_experiments["arm7_peg"], "held_out").num_conditions == 16


def test_missing_held_out_set_is_reported(shipped_experiments: dict[str, ExperimentConfig]) -> None:
    experiment = shipped_experiments["reacher2_sim"]
    experiment = replace(experiment, task=replace(experiment.task, held_out=None))
    with pytest.raises(ConfigError, match="held_out"):
        MujocoEnv(experiment, "held_out")


def test_unstable_physics_raises_instead_of_resetting_silently(
        shipped_experiments: dict[str, ExperimentConfig], tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo appends the warning to ./MUJOCO_LOG.TXT
    env = MujocoEnv(shipped_experiments["reacher2_sim"])
    env.reset(0)
    env.data.qvel[0] = 1e12  # beyond MuJoCo's bound on velocities: it would reset the state and warn
    with pytest.raises(SimulationError, match="BADQVEL"):
        env.step(np.zeros(2))


def test_policy_returning_a_wrong_action_is_reported(
        shipped_experiments: dict[str, ExperimentConfig]) -> None:
    class _Broken:
        def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
            return np.array([0.0, np.inf])

    env = MujocoEnv(_short(shipped_experiments["reacher2_sim"]))
    with pytest.raises(ShapeError, match="u contains NaN or Inf"):
        env.sample(_Broken(), 0, None)
    with pytest.raises(ShapeError, match="noise has shape"):
        env.sample(_NoisyFeedback(2, np.ones(2)), 0, np.zeros((3, 2)))


def test_gravity_compensated_arm_holds_still_without_torque(
        shipped_experiments: dict[str, ExperimentConfig]) -> None:
    env = MujocoEnv(shipped_experiments["arm7_reach"])
    x0 = env.reset(0)
    for _ in range(20):
        x = env.step(np.zeros(7))
    np.testing.assert_allclose(x[:7], x0[:7], atol=1e-6)
    experiment = shipped_experiments["arm7_reach"]
    uncompensated = replace(experiment, robot=replace(experiment.robot, gravity_compensation=False))
    env = MujocoEnv(uncompensated)
    env.reset(0)
    for _ in range(20):
        x = env.step(np.zeros(7))
    assert np.max(np.abs(x[:7] - x0[:7])) > 0.01  # the oracle can fail: gravity does move this arm
