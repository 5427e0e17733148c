"""Scenes: the robot spec plus floor, light and the task objects, as one ``mujoco.MjSpec``.

Task objects are mocap bodies so that a condition moves them with ``data.mocap_pos`` without
recompiling: "reach" has one target site per end-effector point, "peg" a block with a square hole
(five boxes) whose body origin is the hole-bottom centre.

Contacts. An MJCF description states its own contact design: every one of its geoms keeps its
contype/conaffinity (a ``contype=0`` ground or table stays out of contact), and the scene's floor and
block collide with what the model's geoms collide with. A URDF states none (MuJoCo gives every
collision geom 1/1): robot geoms collide with the world (floor, block) and with scenery but not with
each other (contype 2 / conaffinity 1 against world 1 / 2 and scenery 3 / 3) — the learned controllers
are not asked to avoid self-collision, and fused parent/child links would otherwise touch at the joints.
Geoms with contype = conaffinity = 0 never collide in either case. The robot is the chain of the listed
joints (:func:`mbpl_sim.robot.load_robot`); other bodies are scenery and keep their own physics.

The floor (``task.floor``) is optional and placed below everything that moves at the start
configurations, or left out when the description has its own ground plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

from mbpl_sim.experiment import ExperimentConfig
from mbpl_sim.robot import LoadedRobot, compile_spec, load_robot
from mbpl_sim.task import CONDITION_SETS, HoleConfig

ROBOT_CONTYPE, ROBOT_CONAFFINITY = 2, 1
WORLD_CONTYPE, WORLD_CONAFFINITY = 1, 2
SCENERY_CONTYPE, SCENERY_CONAFFINITY = 3, 3
FLOOR_GAP = 0.01  # m between an automatic floor and the lowest moving geom below z = 0
TARGET_BODY = "task_target"
BLOCK_BODY = "task_block"
INTEGRATORS = {
    "implicitfast": mujoco.mjtIntegrator.mjINT_IMPLICITFAST,
    "implicit": mujoco.mjtIntegrator.mjINT_IMPLICIT,
    "RK4": mujoco.mjtIntegrator.mjINT_RK4,
    "Euler": mujoco.mjtIntegrator.mjINT_EULER,
}


def _add_environment(spec: mujoco.MjSpec, floor_z: float | None, mask: tuple[int, int]) -> None:
    """Checkered floor at floor_z (None: none), a light, a sky gradient and an offscreen buffer large
    enough for 640×480 videos. mask: the floor's (contype, conaffinity)."""
    spec.add_texture(name="sky", type=mujoco.mjtTexture.mjTEXTURE_SKYBOX,
                     builtin=mujoco.mjtBuiltin.mjBUILTIN_GRADIENT, width=64, height=384,
                     rgb1=[0.55, 0.65, 0.8], rgb2=[0.1, 0.12, 0.18])
    spec.add_texture(name="floor_checker", type=mujoco.mjtTexture.mjTEXTURE_2D,
                     builtin=mujoco.mjtBuiltin.mjBUILTIN_CHECKER, width=256, height=256,
                     rgb1=[0.25, 0.28, 0.32], rgb2=[0.32, 0.35, 0.4])
    material = spec.add_material(name="floor_checker")
    textures = list(material.textures)  # the property returns a copy: assign the whole list back
    textures[mujoco.mjtTextureRole.mjTEXROLE_RGB] = "floor_checker"
    material.textures = textures
    material.texrepeat = [10, 10]
    if floor_z is not None:
        spec.worldbody.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3.0, 3.0, 0.05],
                                pos=[0.0, 0.0, floor_z], material="floor_checker",
                                contype=mask[0], conaffinity=mask[1])
    spec.worldbody.add_light(name="top_light", pos=[0.0, 0.0, 3.0], dir=[0.0, 0.0, -1.0],
                             diffuse=[0.8, 0.8, 0.8])
    spec.visual.global_.offwidth = 1280
    spec.visual.global_.offheight = 960


def _add_reach_targets(spec: mujoco.MjSpec, n_points: int, offsets: np.ndarray) -> None:
    """Mocap body at the condition's target, one translucent sphere site per ee point (offset applied)."""
    body = spec.worldbody.add_body(name=TARGET_BODY, mocap=True)
    for i in range(n_points):
        body.add_site(name=f"target_{i}", pos=offsets[i].tolist(), size=[0.02, 0.0, 0.0],
                      rgba=[0.1, 0.85, 0.2, 0.6])


def _add_block(spec: mujoco.MjSpec, hole: HoleConfig, mask: tuple[int, int]) -> None:
    """Block with a square hole: base plate below the hole bottom and four walls around it.

    Body frame: origin at the hole-bottom centre, walls from z = 0 to z = depth.
    """
    body = spec.worldbody.add_body(name=BLOCK_BODY, mocap=True)
    w, t, d, b = hole.half_width, hole.wall_thickness, hole.depth, hole.base_thickness
    boxes = {
        "block_base": ([0.0, 0.0, -b / 2], [w + t, w + t, b / 2]),
        "block_wall_px": ([w + t / 2, 0.0, d / 2], [t / 2, w + t, d / 2]),
        "block_wall_nx": ([-(w + t / 2), 0.0, d / 2], [t / 2, w + t, d / 2]),
        "block_wall_py": ([0.0, w + t / 2, d / 2], [w, t / 2, d / 2]),
        "block_wall_ny": ([0.0, -(w + t / 2), d / 2], [w, t / 2, d / 2]),
    }
    for name, (pos, size) in boxes.items():
        # MuJoCo combines two geoms' friction by the maximum unless one has a higher priority: without it,
        # the robot's default friction of 1 would override the block's in every peg-block contact.
        body.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_BOX, pos=pos, size=size,
                      rgba=[0.55, 0.4, 0.25, 1.0], friction=[hole.friction, 0.005, 0.0001], priority=1,
                      contype=mask[0], conaffinity=mask[1])
    body.add_site(name="hole_bottom", pos=[0.0, 0.0, 0.0], size=[0.006, 0.0, 0.0], rgba=[0.1, 0.85, 0.2, 0.8])


def _collidable(geom: mujoco.MjsGeom) -> bool:
    return bool(geom.contype or geom.conaffinity)


def _apply_contact_rules(robot: LoadedRobot) -> tuple[int, int]:
    """Contact bits of the description's geoms (module docstring); returns the (contype, conaffinity)
    of the scene's own world geoms (floor, block)."""
    spec = robot.spec
    if not robot.is_urdf:
        geoms = [g for g in spec.geoms if _collidable(g)]
        contype = conaffinity = 0
        for geom in geoms:
            contype, conaffinity = contype | geom.conaffinity, conaffinity | geom.contype
        return contype, conaffinity
    for body in spec.bodies:
        world = body == spec.worldbody
        rules = ((WORLD_CONTYPE, WORLD_CONAFFINITY) if world else (ROBOT_CONTYPE, ROBOT_CONAFFINITY)
                 if robot.is_robot(body) else (SCENERY_CONTYPE, SCENERY_CONAFFINITY))
        for geom in body.geoms:
            if _collidable(geom):
                geom.contype, geom.conaffinity = rules
    return WORLD_CONTYPE, WORLD_CONAFFINITY


def own_ground(spec: mujoco.MjSpec) -> mujoco.MjsGeom | None:
    """The description's ground: a plane geom of the world body (None when it has none)."""
    for geom in spec.worldbody.geoms:
        if geom.type == mujoco.mjtGeom.mjGEOM_PLANE:
            return geom
    return None


def lowest_moving_point(model: mujoco.MjModel, joints: tuple[str, ...], starts: list[np.ndarray]) -> float:
    """Lowest world z of any collidable geom on a moving body, over the start configurations (inf if none).

    Each geom's bound is its axis-aligned box (``geom_aabb``, geom frame) turned into the world:
    z_low = z_center − Σ_j |R_zj| h_j.
    """
    data = mujoco.MjData(model)
    adr = [model.jnt_qposadr[model.joint(name).id] for name in joints]
    moving = [g for g in range(model.ngeom) if model.body_weldid[model.geom_bodyid[g]] != 0
              and (model.geom_contype[g] or model.geom_conaffinity[g])
              and model.geom_type[g] != mujoco.mjtGeom.mjGEOM_PLANE]
    lowest = np.inf
    for q in starts:
        data.qpos[:] = model.qpos0
        data.qpos[adr] = q
        mujoco.mj_kinematics(model, data)
        for g in moving:
            rot = data.geom_xmat[g].reshape(3, 3)
            center, half = model.geom_aabb[g, :3], model.geom_aabb[g, 3:]
            z = data.geom_xpos[g, 2] + rot[2] @ center - np.abs(rot[2]) @ half
            lowest = min(lowest, float(z))
    return lowest


def _start_configurations(experiment: ExperimentConfig) -> list[np.ndarray]:
    return [c.initial_q for which in CONDITION_SETS for c in experiment.conditions(which)]  # type: ignore[arg-type]


def _floor_height(experiment: ExperimentConfig, robot: LoadedRobot, notes: list[str]) -> float | None:
    """Height of the floor to add (None: none), following ``task.floor``."""
    floor = experiment.task.floor
    if floor == "none":
        return None
    if not isinstance(floor, str):
        return float(floor)
    ground = own_ground(robot.spec)
    if ground is not None:
        name = ground.name or "plane"
        notes.append(f"task.floor: auto → none (the description has its own ground {name!r})")
        return None
    lowest = lowest_moving_point(compile_spec(robot.spec.copy(), robot.source), experiment.robot.joints,
                                 _start_configurations(experiment))
    if lowest >= 0.0:
        return 0.0
    z = lowest - FLOOR_GAP
    notes.append(f"task.floor: auto → z = {z:.3f} m, {FLOOR_GAP * 100:g} cm below the lowest moving geom "
                 "at the start configurations")
    return z


@dataclass
class Scene:
    """A scene's spec, the robot it holds, the floor height (None: no floor added) and log notes."""

    spec: mujoco.MjSpec
    robot: LoadedRobot
    floor_z: float | None
    notes: list[str] = field(default_factory=list)


def build_scene(experiment: ExperimentConfig) -> Scene:
    """Robot (actuators installed) + environment + task objects, physics timestep dt / substeps."""
    base_dir = None if experiment.source is None else str(Path(experiment.source).parent)
    robot = load_robot(experiment.robot, base_dir)
    spec = robot.spec
    notes = list(robot.notes)
    # URDF visuals were already dropped at parse time; left on, discardvisual would also drop the
    # scene's floor material and sky at compile time
    spec.compiler.discardvisual = False
    mask = _apply_contact_rules(robot)
    floor_z = _floor_height(experiment, robot, notes)
    _add_environment(spec, floor_z, mask)
    task = experiment.task
    if task.scene == "reach":
        n_points = experiment.robot.n_points
        offsets = np.zeros((n_points, 3)) if task.target_offsets is None else np.asarray(task.target_offsets)
        _add_reach_targets(spec, n_points, offsets)
    else:
        _add_block(spec, task.hole, mask)
    spec.option.timestep = task.timestep
    spec.option.integrator = INTEGRATORS[task.integrator]
    return Scene(spec=spec, robot=robot, floor_z=floor_z, notes=notes)


def build_scene_spec(experiment: ExperimentConfig) -> mujoco.MjSpec:
    """The spec of :func:`build_scene`."""
    return build_scene(experiment).spec


def task_body_name(experiment: ExperimentConfig) -> str:
    """Name of the mocap body that a condition places (target or block)."""
    return TARGET_BODY if experiment.task.scene == "reach" else BLOCK_BODY
