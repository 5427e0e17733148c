"""Experiment files: one YAML → :class:`ExperimentConfig` (robot, task, and raw cost/algorithm/ros/gps).

The ``cost:``, ``algorithm:``, ``ros:`` and ``gps:`` sections stay plain dicts here: the core and the
nodes build their own typed configs from them with ``mbpl_core.config.from_dict``, so this module
does not depend on the algorithm modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import StateLayout
from mbpl_sim.robot import RobotConfig, resolve_description
from mbpl_sim.task import Condition, ConditionSetName, TaskConfig, build_conditions

SECTIONS = ("name", "method", "robot", "task", "cost", "algorithm", "ros", "gps", "pets")
# lqr_flm: local LG controllers only; mdgps: also distil them into a neural policy (gps: section);
# pets: a probabilistic ensemble + MPC, the planner distilled into a neural policy (pets: section)
METHODS = ("lqr_flm", "mdgps", "pets")
# the methods the ROS graph (mbpl launch) runs today; the others run in one process (mbpl train)
GRAPH_METHODS = ("lqr_flm", "mdgps")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment. robot.description is absolute once loaded through :func:`load_experiment`.

    cost / algorithm / ros / gps / pets: raw mappings for mbpl_core.costs.CostConfig,
    mbpl_core.local.lqr_flm.AlgorithmConfig, the ROS nodes, the GPS trainer and
    mbpl_core.planning.pets.PETSConfig.
    """

    robot: RobotConfig
    task: TaskConfig
    cost: dict[str, Any] = field(default_factory=dict)
    algorithm: dict[str, Any] = field(default_factory=dict)
    ros: dict[str, Any] = field(default_factory=dict)
    gps: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    source: str | None = None
    method: Literal["lqr_flm", "mdgps", "pets"] = "lqr_flm"
    pets: dict[str, Any] = field(default_factory=dict)

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
        if self.method == "pets":
            from mbpl_core.planning.pets import PETSConfig

            from_dict(PETSConfig, self.pets, "pets")
        if self.method == "mdgps":
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
                            pets=_section(raw, "pets"))


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
