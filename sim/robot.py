"""Robots from descriptions: a URDF or MJCF file → ``mujoco.MjSpec`` with one actuator per actuated joint.

:func:`load_robot` parses the description and makes it usable as it is copied from a robot package:

* ``package://`` (and ``file://``) mesh URIs resolve the way ROS resolves them (:func:`find_package`);
  a mesh that is nowhere is a ConfigError naming the URI and the folders searched.
* The end-effector frame may be a link on a fixed joint (``tool0``, ``hand_tcp``): MuJoCo fuses such
  bodies into their parent, so a site of the same name is added at the body's origin and MuJoCo
  composes its offset onto the surviving body.
* ``robot.actuators``: ``model`` keeps an MJCF's own force actuators (effort limits = ctrlrange × gear),
  ``motors`` replaces them by unit-gear torque motors (effort limits = the joints' force ranges, URDF
  ``effort``), ``auto`` (default) keeps them when every listed joint has one. Either way u is the joint
  torque (N·m) in the order of ``robot.joints``, and :attr:`LoadedRobot.notes` says which was used.
* The robot is the chain of the listed joints (:attr:`LoadedRobot.robot_bodies`): their bodies, the
  bodies they hang from and everything below them. Other bodies (objects of an MJCF scene) are scenery;
  gravity compensation applies to robot bodies only.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import mujoco
import numpy as np

from mbpl_core.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

Point3 = tuple[float, float, float]
ActuatorChoice = Literal["auto", "model", "motors"]
ACTUATOR_CHOICES = ("auto", "model", "motors")


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
    gravity_compensation: cancel gravity on every robot body (MuJoCo body gravcomp = 1); scenery keeps
        its weight.
    actuators: "model" keeps an MJCF's own force actuators on the listed joints, "motors" replaces them
        by torque motors, "auto" keeps them when every listed joint has one (module docstring).
    package_paths: folders searched for ``package://NAME/...`` before the ament index and
        ROS_PACKAGE_PATH: a package folder (holding package.xml) or a folder of package folders;
        relative entries resolve against the experiment file's folder.
    """

    description: str = ""
    joints: tuple[str, ...] = ()
    ee: EndEffectorConfig = EndEffectorConfig(frame="ee_link")
    effort_limits: tuple[float, ...] | None = None
    joint_damping: tuple[float, ...] | None = None
    joint_armature: tuple[float, ...] | None = None
    gravity_compensation: bool = False
    actuators: ActuatorChoice = "auto"
    package_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.description:
            raise ConfigError("robot.description: path to a URDF or MJCF file is required")
        if len(self.joints) == 0:
            raise ConfigError("robot.joints: list the actuated joint names")
        if len(set(self.joints)) != len(self.joints):
            raise ConfigError(f"robot.joints: duplicate names in {list(self.joints)}")
        if self.actuators not in ACTUATOR_CHOICES:
            raise ConfigError(f"robot.actuators: {self.actuators!r} is not one of {list(ACTUATOR_CHOICES)}")
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


def _search_list(path: Path, base_dir: Path | str | None) -> list[Path]:
    """Where a relative path is looked for: base_dir (the experiment's folder), the cwd, the repo root."""
    if path.is_absolute():
        return [path]
    candidates = [Path(base_dir) / path] if base_dir else []
    return list(dict.fromkeys(candidates + [Path.cwd() / path, REPO_ROOT / path]))


def resolve_description(description: str, base_dir: Path | str | None = None) -> Path:
    """Absolute path of a robot description: as given if absolute, else under base_dir, the cwd, the repo
    root.

    Raises ConfigError listing every place looked in when the file is in none of them.
    """
    candidates = _search_list(Path(description).expanduser(), base_dir)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"robot.description: file {description!r} not found (looked in: {tried})")


def resolve_robot_paths(robot: dict, base_dir: Path | str) -> dict:
    """The ``robot:`` mapping with description and package_paths made absolute against base_dir.

    For the copy of an experiment file written elsewhere (a run folder): its paths keep meaning what
    they meant next to the original. Raises ConfigError (listing the places looked in) for a missing
    description or package folder.
    """
    out = dict(robot)
    if isinstance(out.get("description"), str):
        out["description"] = str(resolve_description(out["description"], base_dir))
    if isinstance(out.get("package_paths"), (list, tuple)):
        out["package_paths"] = [str(_resolve_folder(str(p), base_dir)) for p in out["package_paths"]]
    return out


def _resolve_folder(folder: str, base_dir: Path | str | None) -> Path:
    candidates = _search_list(Path(folder).expanduser(), base_dir)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"robot.package_paths: folder {folder!r} not found (looked in: {tried})")


# --- package:// resolution -------------------------------------------------------------------------

def _package_name(folder: Path) -> str | None:
    """The <name> of folder/package.xml (None when there is none or it is unreadable)."""
    manifest = folder / "package.xml"
    if not manifest.is_file():
        return None
    try:
        name = ET.parse(manifest).getroot().findtext("name")
    except ET.ParseError:
        return None
    return name.strip() if name else folder.name


def _crawl_packages(root: Path, package: str, depth: int = 4) -> Path | None:
    """A package folder named ``package`` at or below root (rospack's crawl: packages are not descended)."""
    if not root.is_dir():
        return None
    name = _package_name(root)
    if name is not None:
        return root if name == package else None
    if depth == 0:
        return None
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return None
    for child in children:
        found = _crawl_packages(child, package, depth - 1)
        if found is not None:
            return found
    return None


def package_search_folders(description: Path, package_paths: tuple[str, ...] = (),
                           base_dir: Path | str | None = None) -> list[tuple[str, Path]]:
    """Where ``package://`` is looked up, in order: (kind, folder) pairs.

    1. robot.package_paths; 2. the description's own package (the nearest folder above the description
    that holds a package.xml); 3. the ament index of every prefix in AMENT_PREFIX_PATH; 4. every folder
    of ROS_PACKAGE_PATH.
    """
    folders = [("robot.package_paths", _resolve_folder(p, base_dir)) for p in package_paths]
    for parent in description.resolve().parents:
        if (parent / "package.xml").is_file():
            folders.append(("the description's package", parent))
            break
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        folders.append(("AMENT_PREFIX_PATH", Path(prefix)))
    for root in filter(None, os.environ.get("ROS_PACKAGE_PATH", "").split(os.pathsep)):
        folders.append(("ROS_PACKAGE_PATH", Path(root)))
    return folders


def find_package(package: str, folders: list[tuple[str, Path]]) -> Path | None:
    """The share folder of ``package``: ament prefixes through their index, other folders by crawling."""
    for kind, folder in folders:
        if kind == "AMENT_PREFIX_PATH":
            marker = folder / "share" / "ament_index" / "resource_index" / "packages" / package
            if marker.is_file() and (folder / "share" / package).is_dir():
                return folder / "share" / package
            continue
        found = _crawl_packages(folder, package)
        if found is not None:
            return found
    return None


def _resolve_uri(uri: str, folders: list[tuple[str, Path]]) -> tuple[Path | None, str]:
    """(absolute path or None, what was searched) of a package:// or file:// URI."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):]), "file://"
    package, _, relative = uri[len("package://"):].partition("/")
    share = find_package(package, folders)
    searched = "; ".join(f"{kind} {folder}" for kind, folder in folders) or "no folders"
    return (share / relative if share is not None else None), searched


def _resolve_mesh_files(spec: mujoco.MjSpec, source: Path, config: RobotConfig,
                        base_dir: Path | str | None) -> None:
    """Make every mesh file of the spec absolute (package:// and file:// resolved) and check it exists.

    Relative files keep MuJoCo's meaning (model folder / meshdir, basename only under strippath);
    strippath is turned off afterwards since every path is then absolute.
    """
    meshdir = Path(spec.meshdir) if spec.meshdir else Path()
    meshdir = meshdir if meshdir.is_absolute() else source.parent / meshdir
    folders: list[tuple[str, Path]] | None = None
    for mesh in spec.meshes:
        uri = mesh.file
        if not uri:
            continue
        if uri.startswith(("package://", "file://")):
            if folders is None:
                folders = package_search_folders(source, config.package_paths, base_dir)
            path, searched = _resolve_uri(uri, folders)
        else:
            name = Path(uri).name if spec.strippath else uri
            path, searched = (Path(name) if Path(name).is_absolute() else meshdir / name), str(meshdir)
        if path is None or not path.is_file():
            where = f"not found at {path}" if path is not None else "its package was not found"
            raise ConfigError(
                f"robot.description: mesh {uri!r} of {source.name} {where} (searched: {searched}); "
                "add the folder holding the package to robot.package_paths")
        mesh.file = str(path.resolve())
    spec.strippath = False


# --- names, chain, actuators -----------------------------------------------------------------------

def _named(items: object) -> list[str]:
    return [item.name for item in items if item.name]  # type: ignore[attr-defined]


def _check_names(spec: mujoco.MjSpec, config: RobotConfig, source: Path) -> None:
    """ConfigError naming unknown joints / ee frame and listing what the model has.

    Every body listed is a valid frame (a fused fixed-joint body becomes a site, see load_robot).
    """
    movable = (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE)
    joints = [j.name for j in spec.joints if j.type in movable]
    missing = [name for name in config.joints if name not in joints]
    if missing:
        raise ConfigError(
            f"robot.joints: {missing} not in {source.name}; its hinge/slide joints are {joints}"
        )
    bodies, sites = _named(spec.bodies)[1:], _named(spec.sites)
    if config.ee.frame not in bodies and config.ee.frame not in sites:
        raise ConfigError(
            f"robot.ee.frame: {config.ee.frame!r} not in {source.name}; bodies: {bodies}; sites: {sites}"
        )


def _robot_chain(spec: mujoco.MjSpec, joints: tuple[str, ...]) -> list[mujoco.MjsBody]:
    """Bodies of the listed joints, every body they hang from (below the world) and all bodies below them."""
    chain: list[mujoco.MjsBody] = []

    def add(body: mujoco.MjsBody) -> None:
        if body != spec.worldbody and body not in chain:
            chain.append(body)

    for name in joints:
        body = spec.joint(name).parent
        for below in [body, *body.find_all(mujoco.mjtObj.mjOBJ_BODY)]:
            add(below)
        up = body.parent
        while up is not None and up != spec.worldbody:
            add(up)
            up = up.parent
    return chain


def _is_force_actuator(actuator: mujoco.MjsActuator) -> bool:
    """A motor: force = gain · ctrl (fixed gain, no bias, no activation dynamics)."""
    return (actuator.gaintype == mujoco.mjtGain.mjGAIN_FIXED
            and actuator.biastype == mujoco.mjtBias.mjBIAS_NONE
            and actuator.dyntype == mujoco.mjtDyn.mjDYN_NONE and actuator.gainprm[0] != 0)


def _model_actuators(spec: mujoco.MjSpec, joints: tuple[str, ...]) -> dict[str, mujoco.MjsActuator]:
    """{joint: the description's actuator driving it} for joint-transmission actuators of listed joints."""
    found: dict[str, mujoco.MjsActuator] = {}
    for actuator in spec.actuators:
        if actuator.trntype == mujoco.mjtTrn.mjTRN_JOINT and actuator.target in joints:
            found.setdefault(actuator.target, actuator)
    return found


def _actuator_limit(actuator: mujoco.MjsActuator) -> float | None:
    """Joint-torque limit of a force actuator: min |ctrlrange| · |gain · gear|, else |forcerange| · |gear|."""
    gear = abs(float(actuator.gear[0]))
    ctrl_limited = actuator.ctrllimited == mujoco.mjtLimited.mjLIMITED_TRUE or (
        actuator.ctrllimited == mujoco.mjtLimited.mjLIMITED_AUTO
        and actuator.ctrlrange[0] < actuator.ctrlrange[1])
    if ctrl_limited:
        return min(abs(actuator.ctrlrange[0]), abs(actuator.ctrlrange[1])) * abs(actuator.gainprm[0]) * gear
    force_limited = actuator.forcelimited == mujoco.mjtLimited.mjLIMITED_TRUE or (
        actuator.forcelimited == mujoco.mjtLimited.mjLIMITED_AUTO
        and actuator.forcerange[0] < actuator.forcerange[1])
    if force_limited:
        return min(abs(actuator.forcerange[0]), abs(actuator.forcerange[1])) * gear
    return None


def _joint_limit(spec: mujoco.MjSpec, name: str) -> float | None:
    lo, hi = spec.joint(name).actfrcrange
    limit = min(abs(lo), abs(hi))
    return limit if limit > 0 else None


def _effort_limits(spec: mujoco.MjSpec, config: RobotConfig, source: Path,
                   kept: dict[str, mujoco.MjsActuator] | None) -> np.ndarray:
    """(dU,) effort limits: the override; else the kept actuators' (ctrlrange × gear), else each joint's
    force range (URDF ``effort``), else a force actuator of the description on it."""
    if config.effort_limits is not None:
        return np.asarray(config.effort_limits, dtype=np.float64)
    present = _model_actuators(spec, config.joints)
    limits = []
    for name in config.joints:
        limit = None
        if kept is not None:
            limit = _actuator_limit(kept[name])
        if limit is None or not limit > 0:
            limit = _joint_limit(spec, name)
        if (limit is None or not limit > 0) and name in present and _is_force_actuator(present[name]):
            limit = _actuator_limit(present[name])
        if limit is None or not limit > 0:
            raise ConfigError(
                f"robot.effort_limits: joint {name!r} has no effort limit in {source.name}; "
                "give robot.effort_limits in the config"
            )
        limits.append(limit)
    return np.asarray(limits, dtype=np.float64)


# Attributes of an actuator carried over when it is re-added in the order of robot.joints.
_ACTUATOR_FIELDS = ("group", "forcelimited", "forcerange", "actlimited", "actrange", "lengthrange",
                    "armature", "damping", "dynprm", "biasprm", "actearly", "cranklength", "delay")


def _choose_actuators(spec: mujoco.MjSpec, config: RobotConfig,
                      source: Path) -> tuple[dict[str, mujoco.MjsActuator] | None, str]:
    """(the description's actuators to keep, by joint, or None for motors; the reason)."""
    if config.actuators == "motors":
        return None, "robot.actuators: motors"
    present = _model_actuators(spec, config.joints)
    unusable = {j: a for j, a in present.items() if not _is_force_actuator(a)}
    lacking = [j for j in config.joints if j not in present]
    if config.actuators == "model" and (lacking or unusable):
        kinds = {j: f"{a.name or 'unnamed'} (gain {a.gaintype.name}, bias {a.biastype.name}, dyn "
                    f"{a.dyntype.name})" for j, a in unusable.items()}
        raise ConfigError(
            f"robot.actuators: model needs a force actuator (motor) on every listed joint of {source.name}; "
            f"none on {lacking}, not a motor on {kinds}; use robot.actuators: motors")
    if not present:
        return None, f"robot.actuators: auto → motors ({source.name} has no actuators on robot.joints)"
    if lacking or unusable:
        why = f"no actuator on {lacking}" if lacking else f"non-motor actuators on {sorted(unusable)}"
        return None, f"robot.actuators: auto → motors ({why} in {source.name})"
    return present, "robot.actuators: " + ("model" if config.actuators == "model" else "auto → model")


def _install_actuators(spec: mujoco.MjSpec, config: RobotConfig, efforts: np.ndarray,
                       kept: dict[str, mujoco.MjsActuator] | None) -> list[str]:
    """Replace the actuators by one per listed joint, in order; returns what was done, for the log.

    A kept actuator keeps its gear, force range and parameters; its gain becomes 1/gear and its
    ctrlrange ±e_i, so that ctrl is the joint torque: τ = gear · (ctrl / gear) with |ctrl| ≤ e_i.
    """
    saved = {}
    if kept is not None:
        saved = {j: {f: getattr(a, f) for f in _ACTUATOR_FIELDS if hasattr(a, f)} | {
            "name": a.name, "gear": list(a.gear), "gain": float(a.gainprm[0]),
            "ctrlrange": list(a.ctrlrange)} for j, a in kept.items()}
    removed = [a.name or f"#{i}" for i, a in enumerate(spec.actuators)]
    for actuator in list(spec.actuators):
        spec.delete(actuator)
    lines = []
    for i, name in enumerate(config.joints):
        joint = spec.joint(name)
        joint.actfrcrange = [-efforts[i], efforts[i]]
        joint.actfrclimited = mujoco.mjtLimited.mjLIMITED_TRUE
        if name in saved:
            old = saved[name]
            actuator = spec.add_actuator(name=old["name"] or f"{name}_actuator", target=name,
                                         trntype=mujoco.mjtTrn.mjTRN_JOINT)
            actuator.set_to_motor()
            for key in _ACTUATOR_FIELDS:
                if key in old:
                    setattr(actuator, key, old[key])
            actuator.gear = old["gear"]
            actuator.gainprm = [1.0 / old["gear"][0]] + [0.0] * (len(actuator.gainprm) - 1)
            lines.append(f"{actuator.name} on {name}: gear {old['gear'][0]:g}, gain {old['gain']:g}, "
                         f"ctrlrange {old['ctrlrange'][0]:g}..{old['ctrlrange'][1]:g} → ±{efforts[i]:g} N·m")
        else:
            actuator = spec.add_actuator(name=f"{name}_motor", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT)
            actuator.set_to_motor()
            lines.append(f"{actuator.name}: ±{efforts[i]:g} N·m")
        actuator.ctrlrange = [-efforts[i], efforts[i]]
        actuator.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
    dropped = [n for n in removed if kept is None or n not in {s["name"] for s in saved.values()}]
    if dropped:
        lines.append(f"removed the description's actuators {dropped}")
    return lines


@dataclass
class LoadedRobot:
    """A parsed robot: the spec (actuators installed), which bodies are the robot, and what was done.

    spec: ``mujoco.MjSpec`` of the robot alone; source: the description file; is_urdf: its format;
    effort_limits: (dU,) N·m, the actuators' ctrlrange; actuators: "model" or "motors";
    robot_bodies: the chain of the listed joints (module docstring); notes: log lines.
    """

    spec: mujoco.MjSpec
    source: Path
    is_urdf: bool
    effort_limits: np.ndarray
    actuators: str
    robot_bodies: list[mujoco.MjsBody]
    notes: list[str] = field(default_factory=list)

    def is_robot(self, body: mujoco.MjsBody) -> bool:
        """Whether a body of :attr:`spec` belongs to the robot (else it is world or scenery)."""
        return body in self.robot_bodies


def _is_urdf(source: Path) -> bool:
    try:
        for _, element in ET.iterparse(source, events=("start",)):
            return element.tag == "robot"
    except ET.ParseError:
        return source.suffix.lower() == ".urdf"
    return False


def load_robot(config: RobotConfig, base_dir: Path | str | None = None) -> LoadedRobot:
    """Parse the description and install one actuator per configured joint (module docstring).

    Actuator i drives joints[i], ctrl = joint torque, ctrlrange = [-e_i, e_i] (ctrllimited). Raises
    ConfigError for a missing or unparsable file, a missing mesh (naming the URI and folders searched),
    unknown joint or ee names (listing what the model has), unusable model actuators, or a joint
    without an effort limit.
    """
    source = resolve_description(config.description, base_dir)
    try:
        spec = mujoco.MjSpec.from_file(str(source))
    except Exception as err:  # mujoco raises ValueError with the parser's message
        raise ConfigError(f"robot.description: cannot load {source}: {err}") from err
    _resolve_mesh_files(spec, source, config, base_dir)
    _check_names(spec, config, source)
    kept, reason = _choose_actuators(spec, config, source)
    efforts = _effort_limits(spec, config, source, kept)
    lines = _install_actuators(spec, config, efforts, kept)
    for i, name in enumerate(config.joints):
        joint = spec.joint(name)
        if config.joint_damping is not None:
            joint.damping = [config.joint_damping[i]] + [0.0] * (len(joint.damping) - 1)
        if config.joint_armature is not None:
            joint.armature = config.joint_armature[i]
    notes = [f"{reason}: " + "; ".join(lines)]
    frame = config.ee.frame
    if frame not in _named(spec.sites):
        # MuJoCo fuses a body on a fixed joint into its parent (fusestatic): a site there survives it
        spec.body(frame).add_site(name=frame, pos=[0.0, 0.0, 0.0], size=[0.005, 0.0, 0.0], group=5)
        if not spec.body(frame).joints and spec.compiler.fusestatic:
            notes.append(f"robot.ee.frame: {frame!r} is on a fixed joint (MuJoCo fuses it into its "
                         "parent): tracked as a site at its origin")
    chain = _robot_chain(spec, config.joints)
    if config.gravity_compensation:
        for body in chain:
            body.gravcomp = 1.0
    return LoadedRobot(spec=spec, source=source, is_urdf=_is_urdf(source), effort_limits=efforts,
                       actuators="motors" if kept is None else "model", robot_bodies=chain, notes=notes)


def compile_spec(spec: mujoco.MjSpec, source: Path | str) -> mujoco.MjModel:
    """spec.compile(), MuJoCo's compiler errors as ConfigError naming the description."""
    try:
        return spec.compile()
    except ValueError as err:
        raise ConfigError(f"robot.description: MuJoCo cannot compile {source}: {err}") from err


def load_robot_spec(config: RobotConfig, base_dir: Path | str | None = None) -> mujoco.MjSpec:
    """The spec of :func:`load_robot` (robot alone, actuators installed)."""
    return load_robot(config, base_dir).spec


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
