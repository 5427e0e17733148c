"""Robots from descriptions: a URDF or MJCF file → ``mujoco.MjSpec`` with one motor per actuated joint.

MuJoCo loads URDF directly but adds no actuators; :func:`load_robot_spec` adds a torque motor on every
joint named in :class:`RobotConfig` (ctrlrange = ±effort limit, the same clamp the sampler applies),
optionally overrides damping, and optionally turns on gravity compensation for every robot body, as a
torque-controlled arm's own controller would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from mbpl_core.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

Point3 = tuple[float, float, float]


@dataclass(frozen=True)
class EndEffectorConfig:
    """End-effector frame (a body or site name) and the points tracked in it.

    points: P points, each a 3-vector in the frame's coordinates; the state holds their world
    positions minus their targets and their world velocities (dP = 3P entries each).
    """

    frame: str = ""
    points: tuple[Point3, ...] = ((0.0, 0.0, 0.0),)

    def __post_init__(self) -> None:
        if not self.frame:
            raise ConfigError("robot.ee.frame: name a body or site of the robot")
        if len(self.points) == 0:
            raise ConfigError("robot.ee.points: at least one point is needed")
        pts = np.asarray(self.points, dtype=np.float64)
        if pts.shape != (len(self.points), 3) or not np.all(np.isfinite(pts)):
            raise ConfigError(f"robot.ee.points: expected finite 3-vectors, got {self.points!r}")


@dataclass(frozen=True)
class RobotConfig:
    """Which robot, which joints it actuates and where its end-effector points are.

    description: URDF or MJCF path (relative paths: resolved against ``base_dir``, then the repo root).
    joints: actuated joint names, in the order of q, qd and u (dQ = dU = len(joints)).
    effort_limits: (dU,) N·m overriding the description's effort limits; None keeps them.
    joint_damping: (dU,) N·m·s/rad overriding the description's damping; None keeps it.
    joint_armature: (dU,) kg·m² rotor inertia reflected through the gearbox (URDF cannot state it);
        None keeps the description's (zero for URDF). Real geared arms have ~0.1 on every joint; without
        it the light wrist joints of a URDF arm accelerate unrealistically.
    gravity_compensation: cancel gravity on every robot body (MuJoCo body gravcomp = 1).
    """

    description: str = ""
    joints: tuple[str, ...] = ()
    ee: EndEffectorConfig = EndEffectorConfig(frame="ee_link")
    effort_limits: tuple[float, ...] | None = None
    joint_damping: tuple[float, ...] | None = None
    joint_armature: tuple[float, ...] | None = None
    gravity_compensation: bool = False

    def __post_init__(self) -> None:
        if not self.description:
            raise ConfigError("robot.description: path to a URDF or MJCF file is required")
        if len(self.joints) == 0:
            raise ConfigError("robot.joints: list the actuated joint names")
        if len(set(self.joints)) != len(self.joints):
            raise ConfigError(f"robot.joints: duplicate names in {list(self.joints)}")
        for key in ("effort_limits", "joint_damping", "joint_armature"):
            values = getattr(self, key)
            if values is None:
                continue
            if len(values) != len(self.joints):
                raise ConfigError(f"robot.{key}: {len(values)} values for {len(self.joints)} joints")
            if not all(math.isfinite(v) for v in values):
                raise ConfigError(f"robot.{key}: values must be finite, got {list(values)}")
        if self.effort_limits is not None and min(self.effort_limits) <= 0:
            raise ConfigError(f"robot.effort_limits: must be > 0, got {list(self.effort_limits)}")
        for key in ("joint_damping", "joint_armature"):
            values = getattr(self, key)
            if values is not None and min(values) < 0:
                raise ConfigError(f"robot.{key}: must be >= 0, got {list(values)}")

    @property
    def dQ(self) -> int:
        return len(self.joints)

    @property
    def n_points(self) -> int:
        return len(self.ee.points)


def resolve_description(description: str, base_dir: Path | str | None = None) -> Path:
    """Absolute path of a robot description: as given if absolute, else under base_dir, then the repo root.

    Raises ConfigError listing every place looked in when the file is in none of them.
    """
    path = Path(description).expanduser()
    candidates = [path] if path.is_absolute() else [Path(base_dir) / path] if base_dir else []
    if not path.is_absolute():
        candidates += [Path.cwd() / path, REPO_ROOT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"robot.description: file {description!r} not found (looked in: {tried})")


def _named(items: object) -> list[str]:
    return [item.name for item in items if item.name]  # type: ignore[attr-defined]


def _check_names(spec: mujoco.MjSpec, config: RobotConfig, source: Path) -> None:
    """ConfigError naming unknown joints / ee frame and listing what the model has."""
    movable = (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE)
    joints = [j.name for j in spec.joints if j.type in movable]
    missing = [name for name in config.joints if name not in joints]
    if missing:
        raise ConfigError(
            f"robot.joints: {missing} not in {source.name}; its hinge/slide joints are {joints}"
        )
    bodies, sites = _named(spec.bodies), _named(spec.sites)
    if config.ee.frame not in bodies and config.ee.frame not in sites:
        raise ConfigError(
            f"robot.ee.frame: {config.ee.frame!r} not in {source.name}; bodies: {bodies}; sites: {sites}"
        )


def _effort_limits(spec: mujoco.MjSpec, config: RobotConfig, source: Path) -> np.ndarray:
    """(dU,) effort limits: the override, else each joint's actuator force range (URDF ``effort``)."""
    if config.effort_limits is not None:
        return np.asarray(config.effort_limits, dtype=np.float64)
    limits = []
    for name in config.joints:
        lo, hi = spec.joint(name).actfrcrange
        limit = min(abs(lo), abs(hi))
        if not limit > 0:
            raise ConfigError(
                f"robot.effort_limits: joint {name!r} has no effort limit in {source.name}; "
                "give robot.effort_limits in the config"
            )
        limits.append(limit)
    return np.asarray(limits, dtype=np.float64)


def load_robot_spec(config: RobotConfig, base_dir: Path | str | None = None) -> mujoco.MjSpec:
    """Parse the description and add one motor actuator per configured joint.

    Motor i drives joints[i] with unit gear, ctrlrange = [-e_i, e_i] (ctrllimited), e = effort limits.
    Actuators already in an MJCF description are removed so that u always means joint torques in the
    configured order. Raises ConfigError for a missing file, an unparsable file, unknown joint or ee
    names (listing what the model has), or a joint without an effort limit.
    """
    source = resolve_description(config.description, base_dir)
    try:
        spec = mujoco.MjSpec.from_file(str(source))
    except Exception as err:  # mujoco raises ValueError with the parser's message
        raise ConfigError(f"robot.description: cannot load {source}: {err}") from err
    _check_names(spec, config, source)
    efforts = _effort_limits(spec, config, source)
    for actuator in list(spec.actuators):
        spec.delete(actuator)
    for i, name in enumerate(config.joints):
        joint = spec.joint(name)
        joint.actfrcrange = [-efforts[i], efforts[i]]
        if config.joint_damping is not None:
            joint.damping = [config.joint_damping[i]] + [0.0] * (len(joint.damping) - 1)
        if config.joint_armature is not None:
            joint.armature = config.joint_armature[i]
        motor = spec.add_actuator(name=f"{name}_motor", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
        motor.set_to_motor()
        motor.ctrlrange = [-efforts[i], efforts[i]]
        motor.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
    if config.gravity_compensation:
        for body in spec.bodies:
            if body.name != "world":
                body.gravcomp = 1.0
    return spec


def actuated_joint_ids(model: mujoco.MjModel, joint_names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Ids of the named joints in ``model``; ConfigError listing the model's joints if one is missing."""
    ids = []
    for name in joint_names:
        jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if jid < 0:
            have = [model.joint(i).name for i in range(model.njnt)]
            raise ConfigError(f"joint {name!r} not in the model; its joints are {have}")
        ids.append(jid)
    return np.asarray(ids, dtype=np.int64)
