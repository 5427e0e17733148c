"""bench/methods.py as a smoke test: tiny budgets, every figure consistent with the run's own curve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sim

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import methods  # noqa: E402


def test_steps_to_success_is_the_first_iteration_with_every_condition_within_the_threshold() -> None:
    history = [{"env_steps": 100 * (i + 1), "success_threshold_m": 0.02, "eval_final_distance": d}
               for i, d in enumerate([[0.5, 0.1], [0.01, 0.03], [0.019, 0.001], [0.3, 0.0]])]
    assert methods.steps_to_success(history) == 300
    assert methods.steps_to_success(history[:2]) is None


@pytest.mark.slow
def test_quick_comparison_runs_every_method_and_writes_json_plot_and_table(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "bench" / "methods.py"), "--quick", "--tasks", "reacher2",
           "--methods", "lqr_flm", "pets", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads((tmp_path / "methods.json").read_text())
    assert result["quick"] and [(r["task"], r["method"]) for r in result["rows"]] == [
        ("reacher2", "lqr_flm"), ("reacher2", "pets")]
    for row in result["rows"]:
        assert len(row["curve"]) == methods.QUICK_ITERATIONS
        steps, worst = row["curve"][-1]
        assert steps == row["env_steps"] and worst == row["final_distance_max_m"]
        reached = [s for s, d in row["curve"] if d < row["success_threshold_m"]]
        assert row["steps_to_success"] == (reached[0] if reached else None)
        assert f"| reacher2 | {row['method']} |" in result["table"]
    pets = result["rows"][1]
    assert 0.0 <= pets["held_out_mpc"] <= 1.0 and 0.0 <= pets["held_out_policy"] <= 1.0
    assert pets["planning_ms_p50"] <= pets["planning_ms_p99"]
    assert (tmp_path / "methods.png").stat().st_size > 1000
