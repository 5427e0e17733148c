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
           "--methods", "lqr_flm", "pets", "sac", "mbpo", "bptt", "bptt_svg", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads((tmp_path / "methods.json").read_text())
    names = ["lqr_flm", "pets", "sac", "mbpo", "bptt", "bptt_svg"]
    assert result["quick"] and [(r["task"], r["method"]) for r in result["rows"]] == [
        ("reacher2", m) for m in names]
    for row in result["rows"]:
        assert len(row["curve"]) == methods.QUICK_ITERATIONS
        steps, worst = row["curve"][-1]
        assert steps == row["env_steps"] and worst == row["final_distance_max_m"]
        reached = [s for s, d in row["curve"] if d < row["success_threshold_m"]]
        assert row["steps_to_success"] == (reached[0] if reached else None)
        assert f"| reacher2 | {row['method']} |" in result["table"]
    pets = result["rows"][1]
    assert 0.0 <= pets["held_out_mpc"] <= 1.0 and 0.0 <= pets["held_out_policy"] <= 1.0
    for learner in result["rows"][2:]:   # a deployable policy each, evaluated on the held-out targets
        assert 0.0 <= learner["held_out_policy"] <= 1.0 and learner["held_out_mpc"] is None
    assert pets["planning_ms_p50"] <= pets["planning_ms_p99"]
    assert (tmp_path / "methods.png").stat().st_size > 1000


def test_merge_builds_one_table_from_earlier_results(tmp_path: Path) -> None:
    rows = [{"task": task, "method": "pets", "seed": 0, "steps_to_success": steps, "final_distance_max_m": d,
             "held_out_policy": 0.5, "held_out_mpc": None, "wall_ms_per_env_step": 1.0,
             "success_threshold_m": 0.02, "control_period_ms": 20.0, "curve": [[100, d]]}
            for task, steps, d in (("arm7_reach", 2400, 0.007), ("reacher2", None, 0.5))]
    for i, row in enumerate(rows):
        (tmp_path / f"{i}.json").write_text(json.dumps({"machine": {}, "quick": True, "command": f"c{i}",
                                                        "rows": [row]}))
    assert methods.merge([tmp_path / "0.json", tmp_path / "1.json"], tmp_path / "out") == 0
    merged = json.loads((tmp_path / "out" / "methods.json").read_text())
    assert merged["command"] == "c0; c1" and len(merged["rows"]) == 2
    # the table lists tasks in the script's order, whatever the order of the files
    lines = merged["table"].splitlines()
    assert lines[2].startswith("| reacher2 | pets | 1 | — | 100 | 50.00 | 0.50 | — |")
    assert lines[3].startswith("| arm7_reach | pets | 1 | 2400 | 100 | 0.70 | 0.50 | — |")
