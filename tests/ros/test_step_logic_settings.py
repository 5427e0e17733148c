"""The iLQR node's step names the experiment settings it does not carry out (mbpl_ros.step_logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbpl_core.config import from_dict
from mbpl_core.local.lqr_flm import AlgorithmConfig

step_logic = pytest.importorskip("mbpl_ros.step_logic")

ROOT = Path(__file__).resolve().parents[2]


def test_an_enabled_step_check_is_named_as_not_honoured_through_the_graph() -> None:
    notes = step_logic.settings_not_honoured(from_dict(AlgorithmConfig, {"step_check": {"enabled": True}}))
    assert len(notes) == 1 and "algorithm.step_check" in notes[0] and "unchecked" in notes[0]
    assert step_logic.settings_not_honoured(AlgorithmConfig()) == []  # off by default: nothing to say


def test_the_shipped_peg_experiment_is_warned_about() -> None:
    """configs/arm7_peg.yaml enables the check; `mbpl launch` of it must not pass in silence."""
    from mbpl_sim.experiment import load_experiment

    experiment = load_experiment(ROOT / "configs/arm7_peg.yaml")
    algorithm = from_dict(AlgorithmConfig, experiment.algorithm or {}, "algorithm")
    assert step_logic.settings_not_honoured(algorithm)
