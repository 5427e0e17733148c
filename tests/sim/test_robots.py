"""Robot descriptions and configs: declared joints, limits, actuators, and helpful errors."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import mujoco
import numpy as np
import pytest
import yaml

from mbpl_core.config import ConfigError
from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import experiment_from_dict, load_experiment
from mbpl_sim.robot import EndEffectorConfig, RobotConfig, load_robot_spec

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[2]


def _urdf_joints(path: Path) -> dict[str, dict[str, float]]:
    """Independent read of the URDF's revolute joints: limits, effort, damping (plain XML parse)."""
    import xml.etree.ElementTree as ET

    joints = {}
    for joint in ET.parse(path).getroot().iter("joint"):
        if joint.get("type") != "revolute":
            continue
        limit, dyn = joint.find("limit"), joint.find("dynamics")
        joints[joint.get("name")] = {
            "lower": float(limit.get("lower")), "upper": float(limit.get("upper")),
            "effort": float(limit.get("effort")), "damping": float(dyn.get("damping")),
        }
    return joints


@pytest.mark.parametrize("name, n_joints, efforts", [
    ("reacher2", 2, None),
    ("arm7", 7, [87, 87, 87, 87, 12, 12, 12]),
])
def test_urdf_robot_has_declared_joints_limits_and_motors(
        name: str, n_joints: int, efforts: list | None) -> None:
    path = REPO / "urdf" / name / f"{name}.urdf"
    declared = _urdf_joints(path)
    assert len(declared) == n_joints
    joints = tuple(declared)
    last_link = joints[-1].replace("joint", "link")
    model = load_robot_spec(RobotConfig(description=str(path), joints=joints,
                                        ee=EndEffectorConfig(frame=last_link))).compile()
    assert model.nu == n_joints
    for i, jname in enumerate(joints):
        jid = model.joint(jname).id
        np.testing.assert_allclose(model.jnt_range[jid], [declared[jname]["lower"], declared[jname]["upper"]])
        assert model.jnt_limited[jid]
        assert model.dof_damping[model.jnt_dofadr[jid]] == pytest.approx(declared[jname]["damping"])
        assert model.actuator_trnid[i, 0] == jid
        assert model.actuator_ctrllimited[i]
        effort = declared[jname]["effort"]
        np.testing.assert_allclose(model.actuator_ctrlrange[i], [-effort, effort])
        np.testing.assert_allclose(model.actuator_gainprm[i, 0], 1.0)
    if efforts is not None:
        np.testing.assert_allclose(model.actuator_ctrlrange[:, 1], efforts)


def test_arm7_peg_frames_and_reach() -> None:
    path = REPO / "urdf" / "arm7" / "arm7.urdf"
    joints = tuple(f"joint{i}" for i in range(1, 8))
    model = load_robot_spec(RobotConfig(description=str(path), joints=joints,
                                        ee=EndEffectorConfig(frame="peg_tip"))).compile()
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    tip, top, flange = (data.body(n).xpos.copy() for n in ("peg_tip", "peg_top", "flange"))
    assert np.linalg.norm(tip - top) == pytest.approx(0.10)
    shoulder = data.body("link2").xpos
    assert 0.8 < np.linalg.norm(flange - shoulder) < 1.0  # research-arm size class
    peg_geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] == model.body("peg_link").id]
    assert model.geom_size[peg_geoms[0], 0] == pytest.approx(0.01)


def test_overrides_change_the_model() -> None:
    base = RobotConfig(description="urdf/reacher2/reacher2.urdf", joints=("joint1", "joint2"),
                       ee=EndEffectorConfig(frame="ee_link"))
    over = replace(base, effort_limits=(1.5, 0.5), joint_damping=(0.3, 0.2), joint_armature=(0.01, 0.02),
                   gravity_compensation=True)
    model = load_robot_spec(over).compile()
    np.testing.assert_allclose(model.actuator_ctrlrange, [[-1.5, 1.5], [-0.5, 0.5]])
    np.testing.assert_allclose(model.dof_damping, [0.3, 0.2])
    np.testing.assert_allclose(model.dof_armature, [0.01, 0.02])
    assert np.all(model.body_gravcomp[1:] == 1.0)


def test_custom_robot_given_only_by_a_config_file_runs(custom_robot_dir: Path) -> None:
    experiment = load_experiment(custom_robot_dir / "experiment.yaml")
    env = MujocoEnv(experiment)
    assert (env.dU, env.dX, env.num_conditions) == (3, 2 * 3 + 6 * 2, 2)
    x = env.reset(1)
    for _ in range(10):
        x = env.step(np.array([0.5, -0.5, 0.2]))
    assert np.all(np.isfinite(x)) and env.warning_counts() == {}
    assert MujocoEnv(experiment, "held_out").num_conditions == 9


def _raw(custom_robot_dir: Path) -> dict:
    return yaml.safe_load((custom_robot_dir / "experiment.yaml").read_text())


def test_unknown_joint_is_named_and_existing_joints_listed(custom_robot_dir: Path) -> None:
    raw = _raw(custom_robot_dir)
    raw["robot"]["joints"] = ["j0", "j1", "elbow"]
    experiment = experiment_from_dict(raw, custom_robot_dir)
    with pytest.raises(ConfigError, match=r"elbow.*j0.*j1.*j2"):
        MujocoEnv(experiment)


def test_unknown_ee_frame_lists_bodies_and_sites(custom_robot_dir: Path) -> None:
    raw = _raw(custom_robot_dir)
    raw["robot"]["ee"]["frame"] = "gripper"
    with pytest.raises(ConfigError, match=r"gripper.*bodies.*tip"):
        MujocoEnv(experiment_from_dict(raw, custom_robot_dir))


def test_missing_description_file_names_the_paths_tried(custom_robot_dir: Path) -> None:
    raw = _raw(custom_robot_dir)
    raw["robot"]["description"] = "nowhere/robot.urdf"
    with pytest.raises(ConfigError, match=re.escape(str(custom_robot_dir / "nowhere" / "robot.urdf"))):
        experiment_from_dict(raw, custom_robot_dir)


@pytest.mark.parametrize("mutate, pattern", [
    (lambda raw: raw.update(robto=raw["robot"]), r"unknown section.*robto.*allowed"),
    (lambda raw: raw["task"].update(substep=3), r"task.*substep.*allowed"),
    (lambda raw: raw["robot"].update(effort_limits=[1.0, 2.0]),
     r"robot\.effort_limits: 2 values for 3 joints"),
    (lambda raw: raw["task"].update(dt=-0.1), r"task\.dt"),
    (lambda raw: raw["task"].update(initial_q=[0.0, 0.1]), r"task\.initial_q: 2 values for 3 joints"),
    (lambda raw: raw["task"]["conditions"].update(grid={"n": [2, 2, 1]}),
     r"exactly one of positions, grid, random"),
    (lambda raw: raw["task"].update(scene="peg"), r"peg scene needs exactly 2 points"),
    (lambda raw: raw.pop("task"), r"section 'task' is missing"),
])
def test_bad_config_names_the_key(custom_robot_dir: Path, mutate, pattern: str) -> None:
    raw = _raw(custom_robot_dir)
    mutate(raw)
    if "scene" in raw.get("task", {}) and raw["task"]["scene"] == "peg":
        raw["robot"]["ee"]["points"] = [[0.0, 0.0, 0.0]]
    with pytest.raises(ConfigError, match=pattern):
        experiment_from_dict(raw, custom_robot_dir)


def test_missing_effort_limit_asks_for_an_override(tmp_path: Path, three_link_text: str) -> None:
    (tmp_path / "r.urdf").write_text(three_link_text.replace('effort="2"', 'effort="0"'))
    config = RobotConfig(description=str(tmp_path / "r.urdf"), joints=("j0", "j1", "j2"),
                         ee=EndEffectorConfig(frame="tip"))
    with pytest.raises(ConfigError, match=r"j0.*no effort limit.*robot\.effort_limits"):
        load_robot_spec(config)
    model = load_robot_spec(replace(config, effort_limits=(1.0, 1.0, 1.0))).compile()
    np.testing.assert_allclose(model.actuator_ctrlrange[:, 1], 1.0)


MJCF_ROBOT = """
<mujoco model="two_link_mjcf">
  <compiler angle="radian"/>
  <worldbody>
    <body name="upper" pos="0 0 0.1">
      <joint name="shoulder" type="hinge" axis="0 0 1" range="-2 2" damping="0.1" actuatorfrcrange="-3 3"/>
      <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02" mass="1"/>
      <body name="lower" pos="0.3 0 0.05">
        <joint name="elbow" type="hinge" axis="0 0 1" range="-2 2" damping="0.1" actuatorfrcrange="-2 2"/>
        <geom type="capsule" fromto="0 0 0 0.25 0 0" size="0.02" mass="0.5"/>
        <site name="hand" pos="0.25 0 0"/>
      </body>
    </body>
  </worldbody>
  <actuator><position joint="shoulder" kp="50"/></actuator>
</mujoco>
"""


def test_mjcf_robot_with_a_site_frame_gets_motors_instead_of_its_actuators(custom_robot_dir: Path) -> None:
    (custom_robot_dir / "arm.xml").write_text(MJCF_ROBOT)
    raw = _raw(custom_robot_dir)
    raw["robot"] = {"description": "arm.xml", "joints": ["elbow", "shoulder"],
                    "ee": {"frame": "hand", "points": [[0.0, 0.0, 0.0]]}}
    raw["task"]["initial_q"] = [0.5, 0.2]
    env = MujocoEnv(experiment_from_dict(raw, custom_robot_dir))
    assert env.model.nu == 2
    np.testing.assert_allclose(env.effort_limits, [2.0, 3.0])  # ordered like robot.joints
    np.testing.assert_allclose(env.model.actuator_biasprm, 0.0)  # plain motors, no position servo
    env.reset(0)
    x = env.step(np.array([0.0, 0.0]))
    np.testing.assert_allclose(x[:2], [0.5, 0.2], atol=1e-9)  # no torque: stays put (no gravity load)
    np.testing.assert_allclose(env.data.site("hand").xpos, x[4:7] + env.target_points(0)[0], atol=1e-12)


@pytest.mark.parametrize("name", ["reacher2_sim", "arm7_reach", "arm7_peg"])
def test_shipped_experiment_round_trips_and_its_sections_fit_the_core_schemas(name: str) -> None:
    from mbpl_core.config import from_dict
    from mbpl_core.costs import CostConfig, build_cost
    from mbpl_core.local.lqr_flm import AlgorithmConfig

    experiment = load_experiment(REPO / "configs" / f"{name}.yaml")
    raw = experiment.to_raw()
    assert "sections" not in raw and set(experiment.sections) <= set(raw)
    again = experiment_from_dict(yaml.safe_load(yaml.safe_dump(raw)))
    assert replace(again, source=experiment.source) == experiment
    cost = build_cost(from_dict(CostConfig, experiment.cost, "cost"), experiment.layout, experiment.robot.dQ)
    X = np.zeros((experiment.task.T, experiment.layout.dX))
    U = np.zeros((experiment.task.T, experiment.robot.dQ))
    assert np.isfinite(cost.evaluate(X, U, None).l).all()
    algorithm = from_dict(AlgorithmConfig, experiment.algorithm, "algorithm")
    assert algorithm.init.init_var > 0
    assert experiment.ros == {"lockstep": True, "controller": "effort_controller"}
