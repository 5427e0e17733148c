"""Robots as they come from robot packages (issue 12): a ROS-style URDF package and a benchmark-style MJCF.

Test models (written for these tests, tests/sim/models/): ``ros_pkgs/demo_arm_description`` — a 3-DoF
URDF with ``package://`` meshes, a flange and a TCP on fixed joints, the tool mesh in a second package
``demo_tool_description``; ``mjcf_planar/planar_arm.xml`` — a planar MJCF arm with its own geared
motors, a contype=0 ground and base at the links' height, and a free puck on a table.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mujoco
import numpy as np
import pytest
import yaml

from mbpl_core.config import ConfigError
from mbpl_sim.checks import check_robot
from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import experiment_from_dict, load_experiment
from mbpl_sim.kinematics import EndEffectorKinematics
from mbpl_sim.robot import EndEffectorConfig, RobotConfig, load_robot, resolve_robot_paths
from mbpl_sim.scenes import build_scene

pytestmark = pytest.mark.sim

MODELS = Path(__file__).resolve().parent / "models"
PKGS = MODELS / "ros_pkgs"
DEMO_YAML = MODELS / "demo_arm.yaml"
PLANAR_YAML = MODELS / "mjcf_planar" / "experiment.yaml"


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _experiment(path: Path, **robot: object) -> object:
    raw = _raw(path)
    raw["robot"].update(robot)
    return experiment_from_dict(raw, base_dir=path.parent, source=str(path))


# --- through `mbpl train` -------------------------------------------------------------------------

@pytest.mark.parametrize("config, sets", [
    # the ROS way: the description's own package is found from the URDF's folder, the tool's package on
    # ROS_PACKAGE_PATH (set below: the package folder itself); no package_paths at all
    (DEMO_YAML, ["robot.package_paths=[]"]),
    (PLANAR_YAML, []),
])
def test_unchanged_description_reaches_every_target_through_mbpl_train(
        config: Path, sets: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from mbpl_ros.cli import main

    monkeypatch.setenv("ROS_PACKAGE_PATH", str(PKGS / "demo_tool_description"))
    run = tmp_path / "run"
    args = ["train", str(config), "--run-dir", str(run)] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0, capsys.readouterr().err
    final = json.loads((run / "history.json").read_text())[-1]["eval_final_distance"]
    assert max(final) < 0.02, f"final tip distances {final}"


# --- item 2: a TCP on a fixed joint ---------------------------------------------------------------

def _rot(axis: str, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
            "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def _transform(xyz: tuple[float, float, float], rot: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rot, xyz
    return out


def demo_arm_tcp_by_hand(q: np.ndarray) -> np.ndarray:
    """4x4 world pose of tool_tcp, written out from demo_arm.urdf's joint origins and axes."""
    chain = [
        _transform((0, 0, 0.1), _rot("z", q[0])),              # shoulder_yaw, axis z
        _transform((0, 0, 0.12), _rot("y", q[1])),             # shoulder_pitch, axis y
        _transform((0.3, 0, 0), _rot("y", q[2])),              # elbow, axis y
        _transform((0.25, 0, 0), _rot("y", np.pi / 2)),        # flange_fixed, rpy (0, pi/2, 0)
        _transform((0, 0, 0.1), _rot("z", 0.7)),               # tcp_fixed, rpy (0, 0, 0.7)
    ]
    pose = np.eye(4)
    for link in chain:
        pose = pose @ link
    return pose


def test_fixed_joint_tcp_is_the_parent_pose_times_the_fixed_offsets() -> None:
    env = MujocoEnv(load_experiment(DEMO_YAML))
    model = env.model
    assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "tool_tcp") < 0, "MuJoCo fused the TCP link"
    rng = np.random.default_rng(0)
    data = mujoco.MjData(model)
    for _ in range(5):
        q = rng.uniform([-2.5, -1.4, -2.4], [2.5, 1.4, 2.4])
        pose = demo_arm_tcp_by_hand(q)
        np.testing.assert_allclose(env.kinematics.compute(q, np.zeros(3)).points[0], pose[:3, 3], atol=1e-9)
        data.qpos[:3] = q
        mujoco.mj_kinematics(model, data)
        np.testing.assert_allclose(data.site("tool_tcp").xmat.reshape(3, 3), pose[:3, :3], atol=1e-9)


def test_every_frame_the_typo_error_offers_is_usable() -> None:
    experiment = load_experiment(DEMO_YAML)
    with pytest.raises(ConfigError, match="bodies") as err:
        build_scene(_experiment(DEMO_YAML, ee={"frame": "tool_tpc"}))
    offered = re.search(r"bodies: \[([^\]]*)\]", str(err.value)).group(1)
    frames = [name.strip(" '") for name in offered.split(",")]
    assert {"flange", "tool_tcp", "base_link", "forearm_link"} <= set(frames)
    for frame in frames:
        robot = load_robot(RobotConfig(description=experiment.robot.description,
                                       joints=experiment.robot.joints, ee=EndEffectorConfig(frame=frame),
                                       package_paths=(str(PKGS),)))
        EndEffectorKinematics(robot.spec.compile(), experiment.robot.joints, frame, ((0.0, 0.0, 0.0),))


def test_kinematics_error_lists_the_model_frames() -> None:
    spec = mujoco.MjSpec.from_file(str(MODELS / "mjcf_planar" / "planar_arm.xml"))
    with pytest.raises(ConfigError, match=r"'hand'.*bodies: \['upper', 'lower', 'fingertip', 'puck'\]"):
        EndEffectorKinematics(spec.compile(), ("shoulder", "elbow"), "hand", ((0.0, 0.0, 0.0),))


# --- item 3: package:// -----------------------------------------------------------------------------

def test_package_uris_resolve_through_the_ament_index(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = tmp_path / "install"
    share = prefix / "share" / "demo_tool_description"
    shutil.copytree(PKGS / "demo_tool_description", share)
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / "demo_tool_description"
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    monkeypatch.delenv("ROS_PACKAGE_PATH", raising=False)
    robot = load_robot(load_experiment(DEMO_YAML).robot.__class__(
        description=str(PKGS / "demo_arm_description" / "urdf" / "demo_arm.urdf"),
        joints=("shoulder_yaw", "shoulder_pitch", "elbow"), ee=EndEffectorConfig(frame="tool_tcp")))
    files = sorted(mesh.file for mesh in robot.spec.meshes)
    assert str(share / "meshes" / "tool.obj") in files
    assert str(PKGS / "demo_arm_description" / "meshes" / "base.obj") in files
    robot.spec.compile()


def test_missing_mesh_names_the_uri_and_the_folders_searched(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROS_PACKAGE_PATH", raising=False)
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path / "prefix"))
    with pytest.raises(ConfigError, match=r"package://demo_tool_description/meshes/tool\.obj.*searched.*"
                                          + re.escape(str(tmp_path / "prefix"))):
        check_robot(_experiment(DEMO_YAML, package_paths=[]))
    shutil.copytree(PKGS, tmp_path / "pkgs")
    (tmp_path / "pkgs" / "demo_arm_description" / "meshes" / "forearm.obj").unlink()
    raw = _raw(DEMO_YAML)
    raw["robot"]["description"] = str(tmp_path / "pkgs" / "demo_arm_description" / "urdf" / "demo_arm.urdf")
    raw["robot"]["package_paths"] = [str(tmp_path / "pkgs")]
    with pytest.raises(ConfigError, match=r"forearm\.obj.*not found at .*forearm\.obj"):
        check_robot(experiment_from_dict(raw))


def test_relative_paths_mean_the_experiment_folder_from_any_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROS_PACKAGE_PATH", raising=False)
    env = MujocoEnv(load_experiment(DEMO_YAML))
    assert env.model.nmesh == 5
    fixed = resolve_robot_paths(_raw(DEMO_YAML)["robot"], DEMO_YAML.parent)
    assert fixed["package_paths"] == [str(PKGS)]
    assert fixed["description"] == str(PKGS / "demo_arm_description" / "urdf" / "demo_arm.urdf")
    with pytest.raises(ConfigError, match=re.escape(str(MODELS / "nowhere.urdf"))):
        resolve_robot_paths({"description": "nowhere.urdf"}, MODELS)


# --- items 1 and 7: contacts, floor, scenery ------------------------------------------------------

def test_mjcf_contact_design_is_kept_and_no_floor_is_added_under_its_own_ground() -> None:
    experiment = _experiment(PLANAR_YAML)
    scene = build_scene(experiment)
    assert scene.floor_z is None and any("own ground 'ground'" in n for n in scene.notes)
    model = scene.spec.compile()
    for name, bits in {"ground": (0, 0), "base": (0, 0), "table": (1, 1), "upper_geom": (1, 1),
                       "puck_geom": (1, 1)}.items():
        assert (model.geom(name).contype[0], model.geom(name).conaffinity[0]) == bits, name
    assert check_robot(experiment).warnings == []
    env = MujocoEnv(experiment)
    x0 = env.reset(0)
    for _ in range(10):
        x = env.step(np.array([0.5, 0.3]))
    assert np.linalg.norm(x[:2] - x0[:2]) > 0.05, "the arm must move freely"


def test_start_in_penetration_is_warned_with_the_geoms_and_depth() -> None:
    raw = _raw(PLANAR_YAML)
    raw["task"]["floor"] = 0.0  # a floor through the links (the arm lies at z = 0)
    experiment = experiment_from_dict(raw, base_dir=PLANAR_YAML.parent, source=str(PLANAR_YAML))
    warnings = check_robot(experiment).warnings
    assert len(warnings) == 1
    # capsule radii 15 mm and 12 mm, sphere 12 mm, centred on the plane: penetration = radius
    assert re.search(r"'floor' \(body 'world'\) – 'upper_geom' \(body 'upper'\): penetration 15\.0 mm",
                     warnings[0]), warnings[0]
    assert "'lower_geom' (body 'lower'): penetration 12.0 mm" in warnings[0]
    with pytest.raises(ConfigError, match="--strict: the robot starts in contact"):
        check_robot(experiment, strict=True)


def test_urdf_floor_goes_below_a_robot_that_starts_under_z0(tmp_path: Path) -> None:
    raw = _raw(DEMO_YAML)
    raw["task"]["initial_q"] = [0.0, 1.4, 0.0]  # upper arm pitched down through z = 0
    experiment = experiment_from_dict(raw, base_dir=DEMO_YAML.parent, source=str(DEMO_YAML))
    scene = build_scene(experiment)
    # by hand: pitch joint at z = 0.22, arm straight and pitched by 1.4 rad; the lowest moving point is a
    # corner of the forearm box (x 0.3..0.55, ±0.025) or of the tool box fused onto it (x 0.55..0.63, ±0.02)
    c, s = np.cos(1.4), np.sin(1.4)
    corners = [(x, z) for x in (0.3, 0.55) for z in (-0.025, 0.025)]
    corners += [(x, z) for x in (0.55, 0.63) for z in (-0.02, 0.02)]
    lowest = min(0.22 - s * x - c * z for x, z in corners)
    assert scene.floor_z == pytest.approx(lowest - 0.01, abs=1e-6)
    assert not [w for w in check_robot(experiment).warnings if "contact" in w]


def test_scenery_keeps_its_physics_and_can_be_pushed() -> None:
    experiment = _experiment(PLANAR_YAML, gravity_compensation=True)
    env = MujocoEnv(experiment)
    model = env.model
    assert model.body_gravcomp[model.body("puck").id] == 0.0
    assert all(model.body_gravcomp[model.body(b).id] == 1.0 for b in ("upper", "lower", "fingertip"))
    env.reset(0)
    env.data.qpos[:2] = [0.0, 0.0]
    mujoco.mj_forward(model, env.data)
    rest = env.data.body("puck").xpos.copy()
    for _ in range(10):
        env.step(np.zeros(2))
    np.testing.assert_allclose(env.data.body("puck").xpos, rest, atol=2e-3)  # rests on the table
    for _ in range(50):
        env.step(np.array([-2.0, 0.0]))  # sweep clockwise into the puck at -45 degrees
    assert np.linalg.norm(env.data.body("puck").xpos[:2] - rest[:2]) > 0.02


# --- item 5: the model's actuators ---------------------------------------------------------------

def test_model_actuators_are_kept_with_their_gear_and_limits() -> None:
    env = MujocoEnv(_experiment(PLANAR_YAML, actuators="model"))
    model = env.model
    assert [model.actuator(i).name for i in range(model.nu)] == ["shoulder_drive", "elbow_drive"]
    np.testing.assert_allclose(model.actuator_gear[:, 0], [4.0, 2.0])
    np.testing.assert_allclose(env.effort_limits, [4.0 * 1.0, 2.0 * 0.5])  # gear x ctrlrange
    env.reset(0)
    env.data.ctrl[:] = [3.0, -0.7]
    mujoco.mj_forward(model, env.data)
    np.testing.assert_allclose(env.data.qfrc_actuator[:2], [3.0, -0.7])  # u is the joint torque
    notes = build_scene(_experiment(PLANAR_YAML, actuators="model")).notes
    assert any("robot.actuators: model" in n and "gear 4" in n for n in notes)


def test_motors_replace_the_model_actuators_and_say_so() -> None:
    scene = build_scene(_experiment(PLANAR_YAML, actuators="motors", effort_limits=[2.0, 0.5]))
    model = scene.spec.compile()
    assert [model.actuator(i).name for i in range(model.nu)] == ["shoulder_motor", "elbow_motor"]
    np.testing.assert_allclose(model.actuator_gear[:, 0], 1.0)
    np.testing.assert_allclose(model.actuator_ctrlrange[:, 1], [2.0, 0.5])
    assert any(n.startswith("robot.actuators: motors") and "removed" in n for n in scene.notes)


def test_model_actuators_that_are_not_motors_are_refused(tmp_path: Path) -> None:
    text = (MODELS / "mjcf_planar" / "planar_arm.xml").read_text().replace(
        '<motor name="elbow_drive" joint="elbow" gear="2" ctrlrange="-0.5 0.5" ctrllimited="true"/>',
        '<position name="elbow_servo" joint="elbow" kp="10"/>')
    (tmp_path / "arm.xml").write_text(text)
    config = RobotConfig(description=str(tmp_path / "arm.xml"), joints=("shoulder", "elbow"),
                         ee=EndEffectorConfig(frame="fingertip"), actuators="model")
    with pytest.raises(ConfigError, match=r"actuators: model.*elbow_servo.*use robot\.actuators: motors"):
        load_robot(config)


# --- item 6: starts and targets ------------------------------------------------------------------

def test_targets_out_of_reach_below_the_floor_and_starts_outside_limits_are_warned() -> None:
    raw = _raw(PLANAR_YAML)
    raw["task"]["initial_q"] = [3.5, 0.0]
    raw["task"]["conditions"] = {"positions": [[1.5, 0.0, 0.0], [0.2, 0.1, 0.0]]}
    warnings = check_robot(experiment_from_dict(raw, base_dir=PLANAR_YAML.parent)).warnings
    assert any("joint 'shoulder' = 3.5 is outside its limits [-3, 3]" in w for w in warnings), warnings
    # by hand: shoulder anchor at the origin, elbow 0.2 m out, fingertip 0.16 m beyond the elbow
    assert any("target [1.5, 0.0, 0.0]" in w and "1.500 m from joint 'shoulder'" in w
               and "at most 0.360 m" in w for w in warnings), warnings
    assert not any("[0.2, 0.1, 0.0]" in w for w in warnings)
    raw = _raw(DEMO_YAML)
    raw["task"]["conditions"] = {"positions": [[0.3, 0.0, -0.05]]}
    warnings = check_robot(experiment_from_dict(raw, DEMO_YAML.parent, str(DEMO_YAML))).warnings
    assert warnings == ["train condition 0: target [0.3, 0.0, -0.05] of ee point 0 is below the floor at "
                        "z = 0.000 m (task.floor)"]
    with pytest.raises(ConfigError, match="--strict: .*below the floor"):
        check_robot(experiment_from_dict(raw, DEMO_YAML.parent, str(DEMO_YAML)), strict=True)


@pytest.mark.parametrize("robot, pattern", [
    ({"joints": ["shoulder_yaw", "shoulder_pich", "elbow"]}, r"shoulder_pich.*shoulder_pitch"),
    ({"ee": {"frame": "tcp"}}, r"'tcp' not in demo_arm\.urdf; bodies"),
    ({"package_paths": ["no_such_folder"]}, r"package_paths: folder 'no_such_folder' not found"),
    ({"actuators": "servo"}, r"robot\.actuators"),
])
def test_each_mistake_is_one_clear_error_from_check_robot(robot: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        check_robot(_experiment(DEMO_YAML, **robot))


@pytest.mark.parametrize("name", ["reacher2_sim", "arm7_reach", "arm7_peg"])
def test_shipped_experiments_pass_the_checks_without_warnings(name: str) -> None:
    check = check_robot(load_experiment(MODELS.parents[2] / "configs" / f"{name}.yaml"))
    assert check.warnings == []
    assert check.notes[0].startswith("robot.actuators: auto → motors")


# --- defaults scaled to the robot ----------------------------------------------------------------

def test_scaled_defaults_follow_the_joint_inertia_and_fill_only_absent_keys() -> None:
    from mbpl_sim.checks import fill_scaled_defaults, joint_inertia, scaled_defaults

    experiment = _experiment(PLANAR_YAML)
    # by hand, at initial_q = (-0.6, 0.8), links as thin rods (capsules 0.2 m / 0.4 kg and 0.15 m /
    # 0.25 kg), the 0.02 kg tip as a point 0.16 m beyond the elbow, armature 0.05 on each joint
    elbow_angle = 0.8
    lower_com = np.array([0.2, 0.0]) + 0.075 * np.array([np.cos(elbow_angle), np.sin(elbow_angle)])
    tip = np.array([0.2, 0.0]) + 0.16 * np.array([np.cos(elbow_angle), np.sin(elbow_angle)])
    elbow = 0.05 + 0.25 * 0.15**2 / 3 + 0.02 * 0.16**2
    shoulder = (0.05 + 0.4 * 0.2**2 / 3 + 0.25 * 0.15**2 / 12 + 0.25 * lower_com @ lower_com
                + 0.02 * tip @ tip)
    inertia = joint_inertia(experiment)
    np.testing.assert_allclose(inertia, [shoulder, elbow], rtol=0.02)
    values = scaled_defaults(experiment)
    efforts = np.array([4.0, 1.0])  # ctrlrange x gear of the model's motors
    np.testing.assert_allclose(values["algorithm.init.init_var"],
                               np.minimum(1.5 * inertia, (0.2 * efforts) ** 2), rtol=5e-3)  # 3 digits
    assert values["algorithm.init.init_var"][1] == pytest.approx(0.04)  # the elbow's 1 N·m caps it
    np.testing.assert_allclose(values["cost.action_weight"], 1e-4 / inertia**2, rtol=5e-3)
    raw = _raw(PLANAR_YAML)
    raw["algorithm"]["init"] = {"init_var": 0.5}
    filled, notes = fill_scaled_defaults(raw, experiment)
    assert filled["algorithm"]["init"]["init_var"] == 0.5  # the file's value wins
    assert filled["cost"]["action_weight"] == raw["cost"]["action_weight"]
    assert notes == [] and raw["algorithm"]["init"] == {"init_var": 0.5}
    del raw["cost"]["action_weight"], raw["algorithm"]["init"]
    filled, notes = fill_scaled_defaults(raw, experiment)
    assert filled["cost"]["action_weight"] == values["cost.action_weight"] and len(notes) == 2


def test_a_heavy_geared_arm_reaches_with_the_scaled_defaults(tmp_path: Path) -> None:
    """A reacher-type arm with armature 1 on each joint (and the gear to move it): with the scaled defaults
    and no tuning it reaches both targets; with the fixed defaults it stalls at 3-4 cm."""
    from mbpl_sim.checks import fill_scaled_defaults
    from mbpl_sim.training import train_in_process

    text = (MODELS / "mjcf_planar" / "planar_arm.xml").read_text()
    text = text.replace('armature="0.05"', 'armature="1.0"').replace('gear="2"', 'gear="20"')
    (tmp_path / "heavy.xml").write_text(text.replace('gear="4"', 'gear="40"'))
    raw = _raw(PLANAR_YAML)
    raw["robot"]["description"] = str(tmp_path / "heavy.xml")
    del raw["cost"]["action_weight"]
    raw["algorithm"]["iterations"] = 10
    experiment = experiment_from_dict(raw, PLANAR_YAML.parent, str(PLANAR_YAML))
    raw, _ = fill_scaled_defaults(raw, experiment)
    history = train_in_process(experiment_from_dict(raw, PLANAR_YAML.parent, str(PLANAR_YAML)),
                               tmp_path / "run", log=lambda line: None)
    assert max(history[-1]["eval_final_distance"]) < 0.02, history[-1]["eval_final_distance"]


@pytest.mark.parametrize("kind", ["lqr", "pd"])
def test_per_joint_init_var_scales_each_joint_and_keeps_the_gains(kind: str) -> None:
    from mbpl_core.containers import StateLayout
    from mbpl_core.local.init import InitConfig, initial_controller

    layout = StateLayout(dQ=2, n_points=1)
    x0 = np.zeros(layout.dX)
    x0[:2] = [0.3, -0.2]
    unit = initial_controller(InitConfig(type=kind, init_var=1.0), layout, 2, 10, 0.05, x0)
    per_joint = initial_controller(InitConfig(type=kind, init_var=[0.5, 2.0]), layout, 2, 10, 0.05, x0)
    np.testing.assert_array_equal(per_joint.K, unit.K)
    np.testing.assert_array_equal(per_joint.k, unit.k)
    scale = np.sqrt([0.5, 2.0])
    np.testing.assert_allclose(per_joint.pol_covar, unit.pol_covar * np.outer(scale, scale), rtol=1e-12)
    with pytest.raises(ConfigError, match="init_var has 3 entries"):
        initial_controller(InitConfig(type=kind, init_var=[1.0, 1.0, 1.0]), layout, 2, 10, 0.05, x0)
    with pytest.raises(ConfigError, match="init_var must be finite and > 0"):
        InitConfig(init_var=[1.0, 0.0])


def test_prepare_run_is_the_one_call_before_a_run_folder_or_node_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mbpl_sim.checks import prepare_run

    monkeypatch.chdir(tmp_path)  # relative paths mean the experiment file's folder, not the cwd
    raw = _raw(DEMO_YAML)
    del raw["cost"]["action_weight"]
    prepared = prepare_run(raw, DEMO_YAML.parent, str(DEMO_YAML))
    assert prepared.raw["robot"]["package_paths"] == [str(PKGS)]
    assert len(prepared.raw["cost"]["action_weight"]) == 3 and "action_weight" not in raw["cost"]
    again = experiment_from_dict(yaml.safe_load(yaml.safe_dump(prepared.raw)), tmp_path / "run")
    assert again.robot == prepared.experiment.robot  # the run folder's copy means the same robot
    lines = prepared.log_lines()
    assert lines[0].startswith("robot.actuators: auto → motors")
    assert any(line.startswith("cost.action_weight") for line in lines)
    bad = _raw(DEMO_YAML)
    bad["task"]["conditions"] = {"positions": [[0.3, 0.0, -0.05]]}
    assert prepare_run(bad, DEMO_YAML.parent).check.warnings
    with pytest.raises(ConfigError, match="below the floor"):
        prepare_run(bad, DEMO_YAML.parent, strict=True)
    bad["robot"]["description"] = "missing.urdf"
    with pytest.raises(ConfigError, match=re.escape(str(DEMO_YAML.parent / "missing.urdf"))):
        prepare_run(bad, DEMO_YAML.parent)
    bad = _raw(DEMO_YAML)
    bad["cost"]["ee"]["l3"] = 1.0
    with pytest.raises(ConfigError, match="l3"):
        prepare_run(bad, DEMO_YAML.parent)


def test_urdf_links_off_the_chain_are_scenery_the_arm_collides_with(tmp_path: Path,
                                                                    three_link_text: str) -> None:
    """A URDF fixture fixed to the base beside the arm (not on the chain of j0..j2): it collides with the
    links (scenery 3/3 against robot 2/1), the links still do not collide with each other."""
    fixture = ('<link name="fixture"><collision><origin xyz="0.3 0 0.07"/>'
               '<geometry><box size="0.05 0.05 0.05"/></geometry></collision></link>'
               '<joint name="fixture_fixed" type="fixed"><parent link="base"/>'
               '<child link="fixture"/></joint>')
    (tmp_path / "r.urdf").write_text(three_link_text.replace("</robot>", fixture + "</robot>"))
    raw = {"robot": {"description": str(tmp_path / "r.urdf"), "joints": ["j0", "j1", "j2"],
                     "ee": {"frame": "tip"}},
           "task": {"initial_q": [0.0, 0.0, 0.0], "conditions": {"positions": [[0.3, 0.2, 0.1]]}}}
    experiment = experiment_from_dict(raw, tmp_path, str(tmp_path / "experiment.yaml"))
    model = build_scene(experiment).spec.compile()
    bits = {model.body(int(model.geom_bodyid[g])).name:
            (int(model.geom_contype[g]), int(model.geom_conaffinity[g]))
            for g in range(model.ngeom) if model.geom(g).name != "floor"}
    assert bits == {"l0": (2, 1), "l1": (2, 1), "l2": (2, 1), "fixture": (3, 3)}
    warnings = check_robot(experiment).warnings
    # at q = 0 link l1 (x 0.2..0.4 at z 0.07) passes through the fixture; l0-l1 touch at the joint unseen
    assert len(warnings) == 1 and warnings[0].count("–") == 1, warnings
    assert "body 'fixture'" in warnings[0] and "body 'l1'" in warnings[0], warnings
