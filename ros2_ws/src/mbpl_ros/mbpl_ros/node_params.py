"""Parameter schemas of the fitting, iLQR and trainer nodes, and what they derive from the experiment.

Each schema is a frozen dataclass declared on its node with :func:`mbpl_ros.params.declare_parameters`
(defaults and descriptions from the fields, validation in ``__post_init__``). No rclpy here, so the
schemas and the experiment-derived settings are tested without ROS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.costs import CostConfig
from mbpl_core.local.lqr_flm import AlgorithmConfig
from mbpl_ros.params import param
from mbpl_sim.experiment import ExperimentConfig, load_experiment

_CONFIG_DOC = "experiment YAML file (robot, task, cost, algorithm)"
_RUN_DIR_DOC = "run folder shared by the graph's nodes; empty: runs/<experiment name>"


def _require_config(node: str, config: str) -> None:
    if not config:
        raise ConfigError(f"{node} node: parameter 'config' (experiment YAML path) is required")


@dataclass(frozen=True)
class FittingNodeParams:
    """Parameters of the fitting node."""

    config: str = param(_CONFIG_DOC, "")
    run_dir: str = param(_RUN_DIR_DOC, "")
    keep_results: int = param("fitted results kept per condition for repeated (idempotent) requests", 3)

    def __post_init__(self) -> None:
        _require_config("fitting", self.config)
        if self.keep_results < 1:
            raise ConfigError(f"fitting node: keep_results must be >= 1, got {self.keep_results}")


@dataclass(frozen=True)
class IlqrNodeParams:
    """Parameters of the iLQR node."""

    config: str = param(_CONFIG_DOC, "")
    run_dir: str = param(_RUN_DIR_DOC, "")
    keep_results: int = param("LQR results kept per condition for repeated (idempotent) requests", 3)
    run_token: str = param("the run's token, carried in the controllers/policies/RunTrial requests it sends "
                           "(mbpl launch sets one per run)", "")

    def __post_init__(self) -> None:
        _require_config("ilqr", self.config)
        if self.keep_results < 1:
            raise ConfigError(f"ilqr node: keep_results must be >= 1, got {self.keep_results}")


@dataclass(frozen=True)
class TrainerNodeParams:
    """Parameters of the trainer node."""

    config: str = param(_CONFIG_DOC, "")
    run_dir: str = param(_RUN_DIR_DOC, "")
    iterations: int = param("iterations to run; -1: algorithm.iterations of the experiment", -1)
    trial_timeout: float = param("seconds to wait for a trial's sample once the sampler accepted it", 60.0)
    service_timeout: float = param("seconds to wait for a fitting or LQR answer before asking again", 15.0)
    refused_wait: float = param(
        "seconds a refused RunTrial is retried (backoff) before the trial counts as failed", 120.0)
    max_attempts: int = param("attempts per trial (aborted or missing samples are re-run)", 5)
    evaluate: bool = param(
        "run one noiseless trial per condition after each iteration (final distance)", True)
    requery_after: float = param(
        "seconds without the sample of an accepted trial after which RunTrial is sent again (a restarted "
        "sampler lost it; one that has it answers 'already queued')", 5.0)
    republish_after: float = param(
        "seconds of RunTrial refusals 'controller … not received yet' after which the trainer republishes "
        "that controller (as the iLQR node sent it) instead of waiting", 5.0)
    run_token: str = param("the run's token, carried in the controllers/policies/RunTrial requests it sends "
                           "(mbpl launch sets one per run)", "")
    robots: str = param("namespaces of the robots (sampler + sim or driver), space-separated; each trial "
                        "goes to a free one; empty: one robot without a namespace", "")
    torch_threads: int = param("torch CPU threads of the trainer's networks (S-step, ensemble, SAC, BPTT); "
                               "0: torch's default", 1)
    robot_conditions: str = param("conditions pinned to robots, 'robot0:0,1 robot1:2,3'; a condition named "
                                  "nowhere runs on any robot; empty: every robot runs every condition", "")

    def __post_init__(self) -> None:
        _require_config("trainer", self.config)
        self.robot_pool()
        if self.torch_threads < 0:
            raise ConfigError(f"trainer node: torch_threads must be >= 0, got {self.torch_threads}")
        if self.iterations < -1:
            raise ConfigError(f"trainer node: iterations must be >= -1, got {self.iterations}")
        for name in ("trial_timeout", "service_timeout", "refused_wait", "republish_after",
                     "requery_after"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"trainer node: {name} must be a positive number of seconds, got {value}")
        if not 1 <= self.max_attempts < 100:
            raise ConfigError(f"trainer node: max_attempts must be in [1, 99], got {self.max_attempts}")


    def robot_pool(self) -> tuple[tuple[str, ...], dict[str, frozenset[int]]]:
        """(namespaces, {namespace: pinned conditions}) of ``robots`` / ``robot_conditions``; ConfigError."""
        robots = tuple(self.robots.split())
        if len(set(robots)) != len(robots) or not all(r.isidentifier() for r in robots):
            raise ConfigError(f"trainer node: robots must be distinct plain namespaces, got {self.robots!r}")
        pinned: dict[str, frozenset[int]] = {}
        for item in self.robot_conditions.split():
            robot, _, conditions = item.partition(":")
            try:
                values = frozenset(int(c) for c in conditions.split(","))
            except ValueError:
                values = frozenset({-1})
            if robot not in robots or robot in pinned or min(values) < 0:
                raise ConfigError(f"trainer node: robot_conditions {item!r}: expected <robot>:<c>,<c>… with "
                                  f"a robot of {list(robots)} named once")
            pinned[robot] = values
        return robots, pinned


@dataclass(frozen=True)
class ModelNodeParams:
    """Parameters of the model node (PETS: the ensemble trained from the recorded trajectories)."""

    config: str = param(_CONFIG_DOC, "")
    run_dir: str = param(_RUN_DIR_DOC, "")
    keep_results: int = param("fit results kept for repeated (idempotent) requests", 3)
    run_token: str = param("the run's token; FitModel requests with another are refused", "")

    def __post_init__(self) -> None:
        _require_config("model", self.config)
        if self.keep_results < 1:
            raise ConfigError(f"model node: keep_results must be >= 1, got {self.keep_results}")


@dataclass(frozen=True)
class PlannerNodeParams:
    """Parameters of the planner node (PETS: MPC over the model node's ensemble)."""

    config: str = param(_CONFIG_DOC, "")
    run_dir: str = param(_RUN_DIR_DOC, "")
    run_token: str = param("the run's token; plan requests with another are ignored (and counted)", "")

    def __post_init__(self) -> None:
        _require_config("planner", self.config)


@dataclass(frozen=True)
class ExperimentSettings:
    """What the nodes take from the experiment file: the experiment, its algorithm and cost configs."""

    experiment: ExperimentConfig
    algorithm: AlgorithmConfig
    cost: CostConfig
    run_dir: Path

    @property
    def num_conditions(self) -> int:
        return len(self.experiment.conditions("train"))


def resolve_run_dir(run_dir: str, experiment: ExperimentConfig) -> Path:
    """``run_dir`` if given, else ``runs/<experiment name>`` (relative to the working directory)."""
    if run_dir:
        return Path(run_dir)
    name = experiment.name or (Path(experiment.source).stem if experiment.source else "experiment")
    return Path("runs") / name


def load_settings(config: str, run_dir: str) -> ExperimentSettings:
    """Experiment, typed ``algorithm:`` and ``cost:`` sections and run folder; ConfigError on a bad file."""
    if not Path(config).is_file():
        raise ConfigError(f"experiment file {config!r} not found")
    experiment = load_experiment(config)
    algorithm = from_dict(AlgorithmConfig, experiment.algorithm or {}, "algorithm")
    cost = from_dict(CostConfig, experiment.cost or {}, "cost")
    return ExperimentSettings(experiment, algorithm, cost, resolve_run_dir(run_dir, experiment))
