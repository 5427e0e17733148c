"""Task configuration (YAML section ``task:``) and the conditions it generates.

A condition is one initial joint configuration plus one task position: the reach target (scene
"reach") or the hole-bottom centre (scene "peg"). Condition sets are an explicit list, a grid
(center ± half_extent, n per axis) or uniform random positions from a seed — the last two give
held-out conditions that the policy never trains on.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mbpl_core.config import ConfigError

Point3 = tuple[float, float, float]


def _finite(path: str, values: tuple[float, ...]) -> None:
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{path}: values must be finite, got {list(values)}")


@dataclass(frozen=True)
class GridConfig:
    """Positions on a grid: center ± half_extent, n[i] points along axis i (n[i] = 1 → the centre)."""

    center: Point3 = (0.0, 0.0, 0.0)
    half_extent: Point3 = (0.0, 0.0, 0.0)
    n: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self) -> None:
        _finite("grid.center", self.center)
        _finite("grid.half_extent", self.half_extent)
        if min(self.half_extent) < 0:
            raise ConfigError(f"grid.half_extent: must be >= 0, got {list(self.half_extent)}")
        if min(self.n) < 1:
            raise ConfigError(f"grid.n: need at least one point per axis, got {list(self.n)}")

    def positions(self) -> np.ndarray:
        """(n0·n1·n2, 3) grid points, x varying slowest."""
        axes = [np.linspace(c - h, c + h, k) if k > 1 else np.array([c])
                for c, h, k in zip(self.center, self.half_extent, self.n, strict=True)]
        return np.array(list(itertools.product(*axes)), dtype=np.float64)


@dataclass(frozen=True)
class RandomConfig:
    """`count` positions uniform in the box center ± half_extent, drawn from numpy Generator(seed)."""

    center: Point3 = (0.0, 0.0, 0.0)
    half_extent: Point3 = (0.0, 0.0, 0.0)
    count: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _finite("random.center", self.center)
        _finite("random.half_extent", self.half_extent)
        if min(self.half_extent) < 0:
            raise ConfigError(f"random.half_extent: must be >= 0, got {list(self.half_extent)}")
        if self.count < 1:
            raise ConfigError(f"random.count: must be >= 1, got {self.count}")

    def positions(self) -> np.ndarray:
        """(count, 3) positions; the same seed always gives the same positions."""
        rng = np.random.default_rng(self.seed)
        offsets = rng.uniform(-1.0, 1.0, size=(self.count, 3)) * np.asarray(self.half_extent)
        return np.asarray(self.center, dtype=np.float64) + offsets


@dataclass(frozen=True)
class ConditionSetConfig:
    """One set of conditions: exactly one of positions / grid / random, plus initial joint positions.

    initial_q: (dQ,) start for every condition of the set (default: task.initial_q);
    initial_qs: one (dQ,) start per condition, overriding initial_q.
    """

    positions: tuple[Point3, ...] | None = None
    grid: GridConfig | None = None
    random: RandomConfig | None = None
    initial_q: tuple[float, ...] | None = None
    initial_qs: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("positions", "grid", "random") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"conditions: give exactly one of positions, grid, random (got {given or 'none'})")
        if self.positions is not None:
            if len(self.positions) == 0:
                raise ConfigError("conditions.positions: the list is empty")
            for p in self.positions:
                _finite("conditions.positions", p)

    def positions_array(self) -> np.ndarray:
        """(M, 3) task positions of this set."""
        if self.positions is not None:
            return np.asarray(self.positions, dtype=np.float64)
        generator = self.grid if self.grid is not None else self.random
        return generator.positions()  # type: ignore[union-attr]


@dataclass(frozen=True)
class HoleConfig:
    """Peg-scene block: a square hole of half-width `half_width` (peg radius + clearance) and `depth`.

    The block is built from boxes: a base plate of `base_thickness` below the hole bottom and four
    walls `wall_thickness` thick; `friction` is the sliding friction of the block's surfaces.
    """

    depth: float = 0.06
    half_width: float = 0.013
    wall_thickness: float = 0.04
    base_thickness: float = 0.03
    friction: float = 0.3

    def __post_init__(self) -> None:
        for key in ("depth", "half_width", "wall_thickness", "base_thickness", "friction"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"task.hole.{key}: must be a positive number, got {value!r}")


@dataclass(frozen=True)
class TaskConfig:
    """YAML section ``task:``: scene, horizon, timing and conditions.

    T: steps per trial; dt: control period (s); substeps: physics steps per control period
    (physics timestep = dt / substeps); initial_q: default (dQ,) start (None → zeros);
    target_offsets: reach only, one 3-vector per ee point added to the condition's target
    (None → every point aims at the target). Positions are in the world frame, which is the robot's
    base frame: the robot's root stands at the origin in every scene, so the sampler's robot-only
    kinematics on hardware and the scene agree.
    floor: the plane the scene adds: "auto" — none when the description has its own ground plane,
    else at z = 0, or 1 cm below the lowest moving geom at the start configurations when that is
    lower; "none" — no floor; a number — a floor at that height (m).
    """

    scene: Literal["reach", "peg"] = "reach"
    T: int = 50
    dt: float = 0.02
    substeps: int = 4
    integrator: Literal["implicitfast", "implicit", "RK4", "Euler"] = "implicitfast"
    initial_q: tuple[float, ...] | None = None
    conditions: ConditionSetConfig | None = None
    held_out: ConditionSetConfig | None = None
    validation: ConditionSetConfig | None = None
    target_offsets: tuple[Point3, ...] | None = None
    hole: HoleConfig = HoleConfig()
    floor: Literal["auto", "none"] | float = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.floor, str) and self.floor not in ("auto", "none"):
            raise ConfigError(f"task.floor: 'auto', 'none' or a height in m, got {self.floor!r}")
        if not isinstance(self.floor, str) and not math.isfinite(self.floor):
            raise ConfigError(f"task.floor: the height must be finite, got {self.floor!r}")
        if self.T < 1:
            raise ConfigError(f"task.T: must be >= 1, got {self.T}")
        if not (math.isfinite(self.dt) and self.dt > 0):
            raise ConfigError(f"task.dt: must be a positive number of seconds, got {self.dt!r}")
        if self.substeps < 1:
            raise ConfigError(f"task.substeps: must be >= 1, got {self.substeps}")
        if self.conditions is None:
            raise ConfigError("task.conditions: at least one training condition set is required")
        if self.initial_q is not None:
            _finite("task.initial_q", self.initial_q)

    @property
    def timestep(self) -> float:
        """Physics timestep dt / substeps (s)."""
        return self.dt / self.substeps


@dataclass(frozen=True)
class Condition:
    """One condition: initial_q (dQ,) joint positions at t = 0 and position (3,) target / hole bottom."""

    initial_q: np.ndarray
    position: np.ndarray


ConditionSetName = Literal["train", "held_out", "validation"]
CONDITION_SETS: tuple[str, ...] = ("train", "held_out", "validation")


def build_conditions(task: TaskConfig, which: ConditionSetName, dQ: int) -> list[Condition]:
    """Conditions of the training, held-out (test) or validation set (empty if that set is not configured).

    The validation set only ever chooses among policy snapshots (gps.select_on: validation); the held-out
    set is for reporting. Raises ConfigError naming the key when an initial configuration does not have
    dQ entries.
    """
    if which not in CONDITION_SETS:
        raise ConfigError(f"condition set must be one of {CONDITION_SETS}, got {which!r}")
    cset = {"train": task.conditions, "held_out": task.held_out, "validation": task.validation}[which]
    key = "task.conditions" if which == "train" else f"task.{which}"
    if cset is None:
        return []
    positions = cset.positions_array()
    default_q = cset.initial_q if cset.initial_q is not None else task.initial_q
    if cset.initial_qs is not None:
        if len(cset.initial_qs) != len(positions):
            raise ConfigError(
                f"{key}.initial_qs: {len(cset.initial_qs)} entries for {len(positions)} conditions")
        starts = [np.asarray(q, dtype=np.float64) for q in cset.initial_qs]
    else:
        q0 = np.zeros(dQ) if default_q is None else np.asarray(default_q, dtype=np.float64)
        starts = [q0] * len(positions)
    for i, q in enumerate(starts):
        if q.shape != (dQ,) or not np.all(np.isfinite(q)):
            raise ConfigError(f"{key}: initial joint positions of condition {i} must be {dQ} finite numbers, "
                              f"got {q.tolist()}")
    return [Condition(initial_q=q.copy(), position=p.copy()) for q, p in zip(starts, positions, strict=True)]
