"""Scenes: the robot spec plus floor, light and the task objects, as one ``mujoco.MjSpec``.

Task objects are mocap bodies so that a condition moves them with ``data.mocap_pos`` without
recompiling: "reach" has one target site per end-effector point, "peg" a block with a square hole
(five boxes) whose body origin is the hole-bottom centre. Robot geoms collide with the world
(floor, block) but not with each other (contype 2 / conaffinity 1 against 1 / 2): the learned
controllers are not asked to avoid self-collision, and fused parent/child links of URDF arms would
otherwise touch at the joints.
"""

from __future__ import annotations

import mujoco
import numpy as np

from mbpl_sim.experiment import ExperimentConfig
from mbpl_sim.robot import load_robot_spec
from mbpl_sim.task import HoleConfig

ROBOT_CONTYPE, ROBOT_CONAFFINITY = 2, 1
WORLD_CONTYPE, WORLD_CONAFFINITY = 1, 2
TARGET_BODY = "task_target"
BLOCK_BODY = "task_block"
INTEGRATORS = {
    "implicitfast": mujoco.mjtIntegrator.mjINT_IMPLICITFAST,
    "implicit": mujoco.mjtIntegrator.mjINT_IMPLICIT,
    "RK4": mujoco.mjtIntegrator.mjINT_RK4,
    "Euler": mujoco.mjtIntegrator.mjINT_EULER,
}


def _add_environment(spec: mujoco.MjSpec) -> None:
    """Checkered floor, a light, a sky gradient and an offscreen buffer large enough for 640×480 videos."""
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
    spec.worldbody.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3.0, 3.0, 0.05],
                            material="floor_checker", contype=WORLD_CONTYPE, conaffinity=WORLD_CONAFFINITY)
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


def _add_block(spec: mujoco.MjSpec, hole: HoleConfig) -> None:
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
                      contype=WORLD_CONTYPE, conaffinity=WORLD_CONAFFINITY)
    body.add_site(name="hole_bottom", pos=[0.0, 0.0, 0.0], size=[0.006, 0.0, 0.0], rgba=[0.1, 0.85, 0.2, 0.8])


def build_scene_spec(experiment: ExperimentConfig) -> mujoco.MjSpec:
    """Robot (with motors) + environment + task objects, physics timestep dt / substeps."""
    spec = load_robot_spec(experiment.robot)
    # URDF visuals were already dropped at parse time; left on, discardvisual would also drop the
    # scene's floor material and sky at compile time
    spec.compiler.discardvisual = False
    for body in spec.bodies:
        if body.name == "world":  # an MJCF's own world geoms (a floor) stay world geometry
            continue
        for geom in body.geoms:
            geom.contype, geom.conaffinity = ROBOT_CONTYPE, ROBOT_CONAFFINITY
    for geom in spec.worldbody.geoms:
        geom.contype, geom.conaffinity = WORLD_CONTYPE, WORLD_CONAFFINITY
    _add_environment(spec)
    task = experiment.task
    if task.scene == "reach":
        n_points = experiment.robot.n_points
        offsets = np.zeros((n_points, 3)) if task.target_offsets is None else np.asarray(task.target_offsets)
        _add_reach_targets(spec, n_points, offsets)
    else:
        _add_block(spec, task.hole)
    spec.option.timestep = task.timestep
    spec.option.integrator = INTEGRATORS[task.integrator]
    return spec


def task_body_name(experiment: ExperimentConfig) -> str:
    """Name of the mocap body that a condition places (target or block)."""
    return TARGET_BODY if experiment.task.scene == "reach" else BLOCK_BODY
