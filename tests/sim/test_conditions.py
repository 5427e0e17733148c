"""Condition generators: counts, bounds, determinism from the seed, explicit lists and initial poses."""

from __future__ import annotations

import numpy as np
import pytest

from mbpl_core.config import ConfigError, from_dict
from mbpl_sim.task import ConditionSetConfig, GridConfig, RandomConfig, TaskConfig, build_conditions

pytestmark = pytest.mark.sim


def test_grid_has_requested_count_inside_bounds_and_hits_the_corners() -> None:
    grid = GridConfig(center=(0.5, 0.0, 0.05), half_extent=(0.08, 0.08, 0.0), n=(3, 2, 1))
    pos = grid.positions()
    assert pos.shape == (6, 3)
    assert np.all(np.abs(pos - grid.center) <= np.asarray(grid.half_extent) + 1e-12)
    assert len({tuple(p) for p in pos.round(12)}) == 6
    for corner in ((0.42, -0.08, 0.05), (0.58, 0.08, 0.05)):
        assert np.min(np.linalg.norm(pos - corner, axis=1)) < 1e-12


def test_random_is_deterministic_per_seed_and_inside_bounds() -> None:
    cfg = RandomConfig(center=(0.2, 0.2, 0.1), half_extent=(0.15, 0.1, 0.0), count=50, seed=5)
    a, b = cfg.positions(), RandomConfig(**{**cfg.__dict__}).positions()
    np.testing.assert_array_equal(a, b)
    assert a.shape == (50, 3)
    assert np.all(np.abs(a - cfg.center) <= np.asarray(cfg.half_extent))
    assert np.all(a[:, 2] == 0.1)
    other = RandomConfig(center=cfg.center, half_extent=cfg.half_extent, count=50, seed=6).positions()
    assert not np.array_equal(a, other)


def test_condition_sets_from_yaml_dicts() -> None:
    task = from_dict(TaskConfig, {
        "initial_q": [0.1, 0.2],
        "conditions": {"positions": [[0.3, 0.0, 0.1], [0.0, 0.3, 0.1]],
                       "initial_qs": [[0.0, 1.0], [1.0, 0.0]]},
        "held_out": {"random": {"center": [0.2, 0.2, 0.1], "half_extent": [0.1, 0.1, 0.0],
                                "count": 4, "seed": 1}},
    }, "task")
    train = build_conditions(task, "train", 2)
    np.testing.assert_array_equal(train[1].initial_q, [1.0, 0.0])
    np.testing.assert_array_equal(train[0].position, [0.3, 0.0, 0.1])
    held = build_conditions(task, "held_out", 2)
    assert len(held) == 4 and all(np.array_equal(c.initial_q, [0.1, 0.2]) for c in held)


@pytest.mark.parametrize("data, pattern", [
    ({"conditions": {}}, "exactly one of positions, grid, random"),
    ({"conditions": {"positions": [[0, 0, 0]], "grid": {}}}, "exactly one"),
    ({"conditions": {"grid": {"n": [0, 1, 1]}}}, r"grid\.n"),
    ({"conditions": {"random": {"count": 0}}}, r"random\.count"),
    ({"conditions": {"random": {"count": 2, "sed": 1}}}, r"sed"),
    ({"conditions": {"positions": [[0, 0]]}}, r"task\.conditions\.positions\[0\]: expected 3 items"),
    ({}, r"task\.conditions"),
])
def test_bad_condition_specs_name_the_key(data: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        from_dict(TaskConfig, data, "task")


def test_initial_qs_count_must_match() -> None:
    cset = ConditionSetConfig(positions=((0.0, 0.0, 0.0),), initial_qs=((0.0,), (1.0,)))
    with pytest.raises(ConfigError, match=r"initial_qs: 2 entries for 1 conditions"):
        build_conditions(TaskConfig(conditions=cset), "train", 1)


def test_peg_validation_positions_are_apart_from_training_and_held_out(shipped_experiments: dict) -> None:
    """gps.select_on: validation chooses the deployed snapshot on positions neither trained on nor tested."""
    from dataclasses import replace

    from mbpl_sim.env import MujocoEnv

    experiment = shipped_experiments["arm7_peg"]
    sets = {name: np.array([c.position for c in experiment.conditions(name)])
            for name in ("train", "held_out", "validation")}
    assert len(sets["validation"]) == 16
    for other in ("train", "held_out"):
        gaps = np.linalg.norm(sets["validation"][:, None] - sets[other][None], axis=2)
        assert gaps.min() > 1e-3, f"a validation position coincides with a {other} one"
    assert MujocoEnv(experiment, "validation").num_conditions == 16
    with pytest.raises(ConfigError, match="condition_set"):
        MujocoEnv(experiment, "test")  # type: ignore[arg-type]
    no_validation = replace(experiment, method="mdgps", task=replace(experiment.task, validation=None))
    with pytest.raises(ConfigError, match="task.validation"):
        no_validation.check_sections()
