"""`mbpl train` (in-process LQR-FLM / MDGPS) and `mbpl eval` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mbpl_ros.cli import main

pytestmark = pytest.mark.sim

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "reacher2_sim.yaml")


def test_train_lqr_flm_writes_history_plot_and_state(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", CONFIG, "--iterations", "3", "--run-dir", str(run)]) == 0
    history = json.loads((run / "history.json").read_text())
    assert [r["iteration"] for r in history] == [0, 1, 2]
    costs = np.asarray([r["mean_cost"] for r in history])
    assert np.all(costs[-1] < costs[0]), "three LQR-FLM iterations must lower every condition's cost"
    assert [r["env_steps"] for r in history] == [4 * 5 * 50 * (i + 1) for i in range(3)]
    assert (run / "history.png").stat().st_size > 1000
    assert (run / "algorithm_state.pkl").is_file()
    assert "iteration 2" in capsys.readouterr().out


def test_mdgps_checkpoint_evaluates_the_same_without_the_trainer(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", CONFIG, "--iterations", "2", "--run-dir", str(run), "--set", "method=mdgps",
                 "--set", "gps.iterations=300"]) == 0
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and all(len(r["policy_held_out_tip_distance"]) == 8 for r in history)
    ev = tmp_path / "eval"
    assert main(["eval", CONFIG, "--policy", str(run / "policy"), "--run-dir", str(ev)]) == 0
    result = json.loads((ev / "evaluation.json").read_text())
    # Training-time numpy policy and the checkpoint loaded alone must roll out identically.
    np.testing.assert_allclose(result["tip_distance"], history[-1]["policy_held_out_tip_distance"], rtol=1e-9)
    assert result["condition_set"] == "held_out" and len(result["conditions"]) == 8


@pytest.mark.parametrize(
    "bad", ["algorithm.iterationz=3", "cost.ee.l1=oops", "method=mdgps gps.activation=sigmoid"])
def test_launch_rejects_a_bad_experiment_before_starting_nodes(tmp_path: Path, bad: str,
                                                              capsys: pytest.CaptureFixture) -> None:
    sets = [arg for s in bad.split() for arg in ("--set", s)]
    assert main(["launch", CONFIG, "--run-dir", str(tmp_path), *sets]) == 2
    err = capsys.readouterr().err
    assert "configuration error" in err and bad.split()[-1].split("=")[0].split(".")[-1] in err
    assert not (tmp_path / "logs").exists(), "no node may have been started"


def test_every_method_has_a_runner_and_its_section_checks_its_keys() -> None:
    """The method registries agree: each method of the experiment file has an in-process runner that
    imports, and a typo in its own section is a ConfigError naming the section before anything runs."""
    from mbpl_core.config import ConfigError
    from mbpl_sim.experiment import METHOD_SECTIONS, METHODS, load_experiment
    from mbpl_sim.training import METHOD_RUNNERS, runner_class

    assert set(METHOD_RUNNERS) == set(METHODS)
    base = load_experiment(CONFIG)
    for method in METHODS:
        assert callable(getattr(runner_class(method), "iteration", None)), method
        entry = METHOD_SECTIONS[method]
        if entry is None:
            continue
        section = entry[0]
        bad = dict(base.section(section), no_such_key=1)
        raw = {"gps": bad} if section == "gps" else {"sections": {**base.sections, section: bad}}
        broken = __import__("dataclasses").replace(base, method=method, **raw)
        with pytest.raises(ConfigError, match=section):
            broken.check_sections()


def test_eval_with_a_missing_checkpoint_is_one_error_and_leaves_no_run_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["eval", CONFIG, "--policy", str(tmp_path / "no_such_policy"), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no such checkpoint" in err and "Traceback" not in err
    assert not run.exists()


def test_launch_of_a_method_the_graph_does_not_run_is_one_error_before_the_run_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from mbpl_ros import bringup

    # every shipped method runs through the graph now; a method without graph nodes is still refused early
    graph_methods = {k: v for k, v in bringup.METHOD_NODES.items() if k != "sac"}
    monkeypatch.setattr(bringup, "METHOD_NODES", graph_methods)
    run = tmp_path / "run"
    assert main(["launch", CONFIG, "--set", "method=sac", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "method: 'sac' does not run through the graph" in err and "Traceback" not in err
    assert not run.exists()


@pytest.mark.parametrize("method", ["sac", "mbpo", "bptt"])
def test_the_policy_learners_pass_the_graph_check(tmp_path: Path, method: str) -> None:
    from mbpl_ros.cli import effective_config

    path, raw = effective_config(CONFIG, [f"method={method}"], tmp_path / "run", graph=True)
    assert path.is_file() and raw["method"] == method


def test_env_steps_count_the_step_checks_noiseless_trials(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", CONFIG, "--iterations", "2", "--run-dir", str(run),
                 "--set", "algorithm.step_check.enabled=true",
                 "--set", "algorithm.samples_per_condition=2"]) == 0
    history = json.loads((run / "history.json").read_text())
    state = __import__("pickle").loads((run / "algorithm_state.pkl").read_bytes())
    checks = state["check_trials"]
    assert checks >= 4, "the step check runs at least one noiseless trial per condition and C-step"
    assert history[-1]["env_steps"] == (2 * 2 * 4 + checks) * 50
