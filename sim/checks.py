"""Checks of a robot and its task before anything runs: one call for ``mbpl train`` and ``mbpl launch``.

:func:`check_robot` loads the robot and builds the scene exactly as the environment and the nodes do
(names, frames, meshes, actuators: ConfigError naming what is wrong and listing what the model has),
then looks at every start configuration and target and returns warnings with the numbers:

* the robot starts in contact or penetration (the geom pairs named, the depth in mm);
* an initial joint position outside the joint's limits;
* a target farther from the first joint than the arm can reach (an upper bound: the sum of the
  distances between successive joint anchors on the way to the end-effector point, which hinge
  joints keep constant, plus the travel of slide joints);
* a target below the floor (the scene's own or the description's collidable ground plane).

With ``strict`` the warnings are one ConfigError instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

from mbpl_core.config import ConfigError
from mbpl_sim.experiment import ExperimentConfig, experiment_from_dict
from mbpl_sim.kinematics import EndEffectorKinematics
from mbpl_sim.robot import compile_spec, resolve_robot_paths
from mbpl_sim.scenes import Scene, build_scene, own_ground, task_body_name
from mbpl_sim.task import CONDITION_SETS, Condition

MAX_PAIRS_LISTED = 6


@dataclass
class RobotCheck:
    """What loading did (notes, for the log) and what looks wrong (warnings)."""

    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Start:
    label: str  # e.g. "train condition 2"
    condition: Condition
    targets: np.ndarray  # (P, 3)


def _starts(experiment: ExperimentConfig) -> list[_Start]:
    out = []
    for which in CONDITION_SETS:
        for i, condition in enumerate(experiment.conditions(which)):  # type: ignore[arg-type]
            out.append(_Start(f"{which} condition {i}", condition, experiment.target_points(condition)))
    return out


def robot_body_ids(model: mujoco.MjModel, joints: tuple[str, ...]) -> set[int]:
    """Compiled ids of the robot's bodies: those of the listed joints, the ones above them, all below."""
    ids: set[int] = set()
    jbodies = {int(model.jnt_bodyid[model.joint(name).id]) for name in joints}
    for b in range(1, model.nbody):
        up = b
        while up != 0:
            if up in jbodies:
                ids.add(b)
                break
            up = int(model.body_parentid[up])
    for b in jbodies:
        up = int(model.body_parentid[b])
        while up != 0:
            ids.add(up)
            up = int(model.body_parentid[up])
    return ids | jbodies


def _geom_label(model: mujoco.MjModel, g: int) -> str:
    body = model.body(int(model.geom_bodyid[g])).name or f"#{int(model.geom_bodyid[g])}"
    name = model.geom(g).name
    return f"{name!r} (body {body!r})" if name else f"geom #{g} of body {body!r}"


def _pose(model: mujoco.MjModel, data: mujoco.MjData, experiment: ExperimentConfig, start: _Start) -> None:
    mujoco.mj_resetData(model, data)
    adr = [model.jnt_qposadr[model.joint(name).id] for name in experiment.robot.joints]
    data.qpos[adr] = start.condition.initial_q
    body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, task_body_name(experiment))
    data.mocap_pos[model.body_mocapid[body]] = start.condition.position
    mujoco.mj_forward(model, data)


def contact_warnings(model: mujoco.MjModel, experiment: ExperimentConfig) -> list[str]:
    """One warning listing every geom pair the robot touches or penetrates at a start configuration."""
    robot = robot_body_ids(model, experiment.robot.joints)
    data = mujoco.MjData(model)
    pairs: dict[tuple[int, int], tuple[float, list[str]]] = {}
    for start in _starts(experiment):
        _pose(model, data, experiment, start)
        for c in data.contact[:data.ncon]:
            g1, g2 = sorted((int(c.geom1), int(c.geom2)))
            if not ({int(model.geom_bodyid[g1]), int(model.geom_bodyid[g2])} & robot):
                continue
            depth, where = pairs.get((g1, g2), (-np.inf, []))
            pairs[(g1, g2)] = (max(depth, -float(c.dist)), where + [start.label])
    if not pairs:
        return []
    items = sorted(pairs.items(), key=lambda kv: -kv[1][0])
    lines = []
    for (g1, g2), (depth, where) in items[:MAX_PAIRS_LISTED]:
        amount = f"penetration {depth * 1e3:.1f} mm" if depth > 0 else f"gap {-depth * 1e3:.1f} mm"
        lines.append(f"{_geom_label(model, g1)} – {_geom_label(model, g2)}: {amount} "
                     f"({len(where)} start(s), first {where[0]})")
    more = f" and {len(items) - MAX_PAIRS_LISTED} more pair(s)" if len(items) > MAX_PAIRS_LISTED else ""
    return [f"the robot starts in contact: {'; '.join(lines)}{more}. Move task.initial_q, set task.floor, "
            "or disable the geoms' contacts in the description (contype/conaffinity 0)"]


def limit_warnings(model: mujoco.MjModel, experiment: ExperimentConfig) -> list[str]:
    """Initial joint positions outside the limits of limited joints, with the numbers."""
    found: dict[tuple[str, float], list[str]] = {}
    for start in _starts(experiment):
        for name, q in zip(experiment.robot.joints, start.condition.initial_q, strict=True):
            jid = model.joint(name).id
            lo, hi = model.jnt_range[jid]
            if model.jnt_limited[jid] and not lo - 1e-9 <= q <= hi + 1e-9:
                found.setdefault((name, float(q)), []).append(start.label)
    out = []
    for (name, q), where in found.items():
        lo, hi = model.jnt_range[model.joint(name).id]
        out.append(f"initial_q: joint {name!r} = {q:.4g} is outside its limits [{lo:.4g}, {hi:.4g}] "
                   f"({len(where)} start(s), first {where[0]})")
    return out


def _path_joints(model: mujoco.MjModel, body: int) -> list[int]:
    """Joint ids from the root down to ``body`` (the joints that move it), root-most first."""
    chain = []
    while body != 0:
        adr, num = int(model.body_jntadr[body]), int(model.body_jntnum[body])
        chain = list(range(adr, adr + num)) + chain if num > 0 else chain
        body = int(model.body_parentid[body])
    return chain


def reach_bound(model: mujoco.MjModel, kinematics: EndEffectorKinematics,
                q: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """(anchor (3,) of the root-most joint moving the frame, radius (P,) bound on each point's distance
    from it, that joint's name), from the anchors at q (constant distances for hinge joints)."""
    data = kinematics.data
    points = kinematics.compute(q, np.zeros(kinematics.dQ)).points
    joints = _path_joints(model, kinematics.body_id)
    if not joints:
        return points[0], np.zeros(len(points)), "world"
    anchors = data.xanchor[joints]
    radius = np.linalg.norm(np.diff(anchors, axis=0), axis=1).sum() if len(joints) > 1 else 0.0
    for j in joints:
        if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_SLIDE:
            lo, hi = model.jnt_range[j]
            radius += float(hi - lo) if model.jnt_limited[j] else np.inf
    radii = radius + np.linalg.norm(points - anchors[-1], axis=1)
    return anchors[0].copy(), radii, model.joint(joints[0]).name


def reach_warnings(model: mujoco.MjModel, experiment: ExperimentConfig, scene: Scene) -> list[str]:
    """Targets out of reach of their ee point and targets below the floor, with the numbers."""
    robot = experiment.robot
    kinematics = EndEffectorKinematics(model, robot.joints, robot.ee.frame, robot.ee.points)
    floor = scene.floor_z
    ground = own_ground(scene.robot.spec) if floor is None else None
    if ground is not None and (ground.contype or ground.conaffinity):
        floor = float(ground.pos[2])
    warnings = []
    for start in _starts(experiment):
        anchor, radii, joint = reach_bound(model, kinematics, start.condition.initial_q)
        for i, target in enumerate(start.targets):
            dist = float(np.linalg.norm(target - anchor))
            if dist > radii[i] + 1e-6:
                warnings.append(f"{start.label}: target {np.round(target, 4).tolist()} of ee point {i} is "
                                f"{dist:.3f} m from joint {joint!r} at {np.round(anchor, 4).tolist()}; the "
                                f"arm reaches at most {radii[i]:.3f} m from there")
            if floor is not None and target[2] < floor:
                warnings.append(f"{start.label}: target {np.round(target, 4).tolist()} of ee point {i} is "
                                f"below the floor at z = {floor:.3f} m (task.floor)")
    return warnings


def check_robot(experiment: ExperimentConfig, strict: bool = False) -> RobotCheck:
    """Load the robot and scene as the run will, and check starts and targets (module docstring).

    Raises ConfigError for what cannot run (and, with strict, for any warning).
    """
    scene = build_scene(experiment)
    model = compile_spec(scene.spec, scene.robot.source)
    robot = experiment.robot
    EndEffectorKinematics(model, robot.joints, robot.ee.frame, robot.ee.points)
    warnings = (contact_warnings(model, experiment) + limit_warnings(model, experiment)
                + reach_warnings(model, experiment, scene))
    if strict and warnings:
        raise ConfigError("--strict: " + " | ".join(warnings))
    return RobotCheck(notes=scene.notes, warnings=warnings)


# --- defaults scaled to the robot --------------------------------------------------------------------

EXPLORATION_ENERGY = 1.5  # init_var_i = k · M_ii, k in (N·m)² per kg·m²
EXPLORATION_EFFORT_FRACTION = 0.2  # ... with the std at most this fraction of the joint's effort limit
ACTION_ENERGY_WEIGHT = 1.0e-4  # action_weight_i = c / M_ii²


def joint_inertia(experiment: ExperimentConfig) -> np.ndarray:
    """(dQ,) diagonal of the joint-space inertia matrix (armature included) at the first training start."""
    scene = build_scene(experiment)
    model = compile_spec(scene.spec, scene.robot.source)
    data = mujoco.MjData(model)
    _pose(model, data, experiment, _starts(experiment)[0])
    full = np.zeros((model.nv, model.nv))
    mujoco.mj_fullM(model, data, full)
    dofs = [model.jnt_dofadr[model.joint(name).id] for name in experiment.robot.joints]
    return np.diag(full)[dofs].copy()


def scaled_defaults(experiment: ExperimentConfig) -> dict[str, object]:
    """Robot-scaled ``algorithm.init.init_var`` and ``cost.action_weight``, one value per joint (dotted keys).

    With M_ii the joint inertias (:func:`joint_inertia`, armature included) and e_i the effort limits:
    init_var_i = min(k · M_ii, (f · e_i)²) with k = 1.5 and f = 0.2, and action_weight_i = c / M_ii² with
    c = 1e-4. A torque impulse u_i·Δt gives joint i the kinetic energy (u_i Δt)² / (2 M_ii), so the
    exploration noise gives every joint the same energy, and the action cost prices the acceleration
    u_i / M_ii a torque causes: a heavy joint (large armature) is explored and driven harder, a light
    wrist less. (Calibrated on the shipped reacher2 and arm7 experiments, whose hand-tuned values these
    reproduce within a factor of 3.)
    """
    inertia = joint_inertia(experiment)
    efforts = build_scene(experiment).robot.effort_limits
    variances = np.minimum(EXPLORATION_ENERGY * inertia, (EXPLORATION_EFFORT_FRACTION * efforts) ** 2)
    weights = ACTION_ENERGY_WEIGHT / inertia**2
    return {"algorithm.init.init_var": [float(f"{v:.3g}") for v in variances],
            "cost.action_weight": [float(f"{w:.3g}") for w in weights]}


def fill_scaled_defaults(raw: dict, experiment: ExperimentConfig) -> tuple[dict, list[str]]:
    """The experiment mapping with the :func:`scaled_defaults` keys it leaves out filled in; log notes.

    Only absent keys are filled (a value in the file, or given with --set, always wins), so the run
    folder's config.yaml records what ran.
    """
    out = {key: (dict(value) if isinstance(value, dict) else value) for key, value in raw.items()}
    notes = []
    for dotted, value in scaled_defaults(experiment).items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            child = node.get(key)
            child = dict(child) if isinstance(child, dict) else {}
            node[key] = child
            node = child
        if leaf not in node:
            node[leaf] = value
            notes.append(f"{dotted}: {value} (scaled to the robot's inertia; set it to override)")
    return out, notes


@dataclass
class PreparedRun:
    """What a command runs: the experiment mapping to write to the run folder (paths absolute, scaled
    defaults filled in), the experiment built from it, and the robot check (notes and warnings)."""

    raw: dict
    experiment: ExperimentConfig
    check: RobotCheck

    def log_lines(self) -> list[str]:
        """The notes, then the warnings prefixed ``warning:``, for the command's log."""
        return list(self.check.notes) + [f"warning: {w}" for w in self.check.warnings]


def prepare_run(raw: dict, config_dir: Path | str, source: str | None = None,
                strict: bool = False) -> PreparedRun:
    """Everything ``mbpl train`` and ``mbpl launch`` check before a run folder or a node exists.

    raw: the experiment mapping (overrides applied); config_dir: the experiment file's folder, against
    which relative paths resolve. Makes robot.description and robot.package_paths absolute, builds and
    checks every section (:meth:`ExperimentConfig.check_sections`), fills the robot-scaled defaults
    (:func:`fill_scaled_defaults`) and runs :func:`check_robot`. Raises ConfigError on the first problem.
    """
    raw = dict(raw)
    if isinstance(raw.get("robot"), dict):
        raw["robot"] = resolve_robot_paths(raw["robot"], config_dir)
    experiment = experiment_from_dict(raw, base_dir=config_dir, source=source)
    experiment.check_sections()
    raw, notes = fill_scaled_defaults(raw, experiment)
    experiment = experiment_from_dict(raw, base_dir=config_dir, source=source)
    check = check_robot(experiment, strict)
    check.notes.extend(notes)
    return PreparedRun(raw=raw, experiment=experiment, check=check)
