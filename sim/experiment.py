"""Experiment files: one YAML → :class:`ExperimentConfig` (robot, task, and raw cost/algorithm/ros/gps).

The ``cost:``, ``algorithm:``, ``ros:`` and ``gps:`` sections stay plain dicts here: the core and the
nodes build their own typed configs from them with ``mbpl_core.config.from_dict``, so this module
does not depend on the algorithm modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import StateLayout
from mbpl_sim.robot import RobotConfig, resolve_description
from mbpl_sim.task import Condition, ConditionSetName, TaskConfig, build_conditions

# Each method's own section and the core config class it is checked against ("module:Class"; None: the
# method needs only cost: and algorithm:). Adding a method is one entry here, one runner in
# mbpl_sim.training.METHOD_RUNNERS and, for the graph, one trainer in mbpl_ros.trainer_node.TRAINERS.
# lqr_flm: local LG controllers only; mdgps: also distil them into a neural policy (gps: section);
# pets: a probabilistic ensemble + MPC, the planner distilled into a neural policy (pets: section)
METHOD_SECTIONS: dict[str, tuple[str, str] | None] = {
    "lqr_flm": None,
    "mdgps": ("gps", "mbpl_core.policy:GPSConfig"),
    "pets": ("pets", "mbpl_core.planning.pets:PETSConfig"),
    "sac": ("sac", "mbpl_core.learners.sac:SACConfig"),
    "mbpo": ("mbpo", "mbpl_core.learners.mbpo:MBPOConfig"),
    "bptt": ("bptt", "mbpl_core.learners.bptt:BPTTConfig"),
}
METHODS = tuple(METHOD_SECTIONS)
METHOD_ONLY_SECTIONS = tuple(sorted({v[0] for v in METHOD_SECTIONS.values() if v is not None} - {"gps"}))
SECTIONS = ("name", "method", "robot", "task", "cost", "algorithm", "ros", "gps", *METHOD_ONLY_SECTIONS)


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment. robot.description is absolute once loaded through :func:`load_experiment`.

    cost / algorithm / ros / gps: raw mappings for mbpl_core.costs.CostConfig,
    mbpl_core.local.lqr_flm.AlgorithmConfig, the ROS nodes and the GPS trainer; ``sections`` holds the
    other methods' own sections (pets: ...) by name (see :data:`METHOD_SECTIONS`).
    """

    robot: RobotConfig
    task: TaskConfig
    cost: dict[str, Any] = field(default_factory=dict)
    algorithm: dict[str, Any] = field(default_factory=dict)
    ros: dict[str, Any] = field(default_factory=dict)
    gps: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    source: str | None = None
    method: str = "lqr_flm"
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method: {self.method!r} is not one of {list(METHODS)}")
        n_points = self.robot.n_points
        if self.task.scene == "peg" and n_points != 2:
            raise ConfigError(
                f"robot.ee.points: the peg scene needs exactly 2 points (tip, top), got {n_points}")
        offsets = self.task.target_offsets
        if offsets is not None and len(offsets) != n_points:
            raise ConfigError(f"task.target_offsets: {len(offsets)} offsets for {n_points} ee points")
        if self.task.initial_q is not None and len(self.task.initial_q) != self.robot.dQ:
            raise ConfigError(f"task.initial_q: {len(self.task.initial_q)} values for {self.robot.dQ} joints")
        # Building both sets here reports a bad initial configuration at load time, not mid-run.
        build_conditions(self.task, "train", self.robot.dQ)
        build_conditions(self.task, "held_out", self.robot.dQ)
        build_conditions(self.task, "validation", self.robot.dQ)

    def to_raw(self) -> dict[str, Any]:
        """The experiment as the YAML mapping it reads from (every method's section at the top level)."""
        from mbpl_core.config import to_dict

        raw = {k: v for k, v in to_dict(self).items() if k not in ("source", "sections")}
        return raw | {k: dict(v) for k, v in self.sections.items()}

    @property
    def pets(self) -> dict[str, Any]:
        """The raw ``pets:`` section (empty if absent)."""
        return self.section("pets")

    def section(self, name: str) -> dict[str, Any]:
        """A method's raw section by name (``gps`` included); empty if absent."""
        if name == "gps":
            return self.gps
        return self.sections.get(name, {})

    def method_config(self, method: str | None = None) -> Any:
        """The method's own section built into its core config (None for methods without one)."""
        entry = METHOD_SECTIONS[method or self.method]
        if entry is None:
            return None
        section, target = entry
        module, cls = target.split(":")
        return from_dict_lazy(module, cls, self.section(section), section)

    def check_sections(self) -> None:
        """Build the core configs of ``cost:``, ``algorithm:`` (``gps:`` for mdgps, ``pets:`` for pets) once,
        so a typo is a ConfigError naming the key before any node starts, not a node dying mid-launch."""
        from mbpl_core.config import from_dict
        from mbpl_core.costs import CostConfig, build_cost
        from mbpl_core.local.lqr_flm import AlgorithmConfig
        from mbpl_core.policy import GPSConfig

        dU = self.robot.dQ
        build_cost(from_dict(CostConfig, self.cost, "cost"), self.layout, dU)
        from_dict(AlgorithmConfig, self.algorithm, "algorithm")
        if self.method != "mdgps":
            self.method_config()
        else:
            gps = from_dict(GPSConfig, self.gps, "gps")
            gps.observation_indices(self.layout.dX)
            if gps.select_best and gps.select_on == "validation" and not self.conditions("validation"):
                raise ConfigError("gps.select_on: validation needs task.validation conditions (positions "
                                  "never trained on, apart from task.held_out)")

    @property
    def layout(self) -> StateLayout:
        """x = [q, qd, ee points − target, ee velocities]: dX = 2 dQ + 6 P."""
        return StateLayout(dQ=self.robot.dQ, n_points=self.robot.n_points)

    def conditions(self, which: ConditionSetName = "train") -> list[Condition]:
        """The training, held-out or validation conditions (the last two: empty if none are configured)."""
        return build_conditions(self.task, which, self.robot.dQ)

    def target_points(self, condition: Condition) -> np.ndarray:
        """(P, 3) world targets of the ee points for a condition.

        reach: position + target_offsets[i] (offsets default to zero);
        peg: tip (point 0) → hole bottom, top (point 1) → hole bottom + peg length along +z,
        the peg length being the distance between the two configured points (as in GPS's peg task).
        """
        points = np.asarray(self.robot.ee.points, dtype=np.float64)
        if self.task.scene == "peg":
            length = float(np.linalg.norm(points[1] - points[0]))
            return np.stack([condition.position, condition.position + np.array([0.0, 0.0, length])])
        offsets = np.zeros_like(points)
        if self.task.target_offsets is not None:
            offsets = np.asarray(self.task.target_offsets, dtype=np.float64)
        return condition.position[None, :] + offsets


def from_dict_lazy(module: str, cls: str, raw: dict[str, Any], section: str) -> Any:
    """``from_dict(module.cls, raw, section)`` importing the module only when the method is used."""
    import importlib

    from mbpl_core.config import from_dict

    return from_dict(getattr(importlib.import_module(module), cls), raw, section)


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def experiment_from_dict(raw: dict[str, Any], base_dir: Path | str | None = None,
                         source: str | None = None) -> ExperimentConfig:
    """Build an ExperimentConfig from a parsed YAML mapping; relative robot paths resolve against base_dir.

    Raises ConfigError naming the key for unknown sections/keys, wrong types or bad values.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"experiment: expected a mapping at the top level, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"experiment: unknown section(s) {unknown}; allowed: {list(SECTIONS)}")
    for key in ("robot", "task"):
        if key not in raw:
            raise ConfigError(f"experiment: section {key!r} is missing")
    robot_raw = dict(_section(raw, "robot"))
    if "description" in robot_raw:
        if not isinstance(robot_raw["description"], str):
            raise ConfigError("robot.description: expected a path string")
        robot_raw["description"] = str(resolve_description(robot_raw["description"], base_dir))
    robot = from_dict(RobotConfig, robot_raw, "robot")
    task = from_dict(TaskConfig, _section(raw, "task"), "task")
    name = raw.get("name") or ""
    if not isinstance(name, str):
        raise ConfigError(f"name: expected a string, got {name!r}")
    method = raw.get("method", "lqr_flm")
    return ExperimentConfig(robot=robot, task=task, cost=_section(raw, "cost"),
                            algorithm=_section(raw, "algorithm"), ros=_section(raw, "ros"),
                            gps=_section(raw, "gps"), name=name, source=source, method=method,
                            sections={k: _section(raw, k) for k in METHOD_ONLY_SECTIONS if k in raw})


def load_experiment(path: Path | str) -> ExperimentConfig:
    """Read an experiment YAML file. Relative paths inside resolve against its folder, then the repo root."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    return experiment_from_dict(raw or {}, base_dir=path.resolve().parent, source=str(path.resolve()))
