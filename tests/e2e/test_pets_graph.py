"""PETS through the node graph, end to end: ``mbpl launch --set method=pets`` on reacher2 in lockstep.

The real graph (sim, sampler, model, planner, trainer) as separate processes over DDS in an isolated
domain. The whole default run (8 iterations, then the planner distilled by DAgger with the policy's
trials through the sampler): exit code 0; every MPC trial of the last iteration ends within the success
distance of its target; every trajectory is in the bags once; the model node saved one version per
iteration; the distilled checkpoint, rolled out in-process on the held-out targets, gives exactly the
distances the trainer recorded and ends closer than the untrained policy.

A model node killed with SIGKILL and started again resumes from its persisted data and weights: the
run ends with every trajectory recorded once and the same history as the uninterrupted run (the model
versions are refitted from the same state, so the plans and trials are the same). A planner node
killed mid-trial and started again costs one aborted trial, which the trainer runs again.
"""

from __future__ import annotations

import json
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")
pytest.importorskip("torch")

import subprocess  # noqa: E402
import sys  # noqa: E402

# pytest's default (prepend) import mode puts this folder on sys.path
from test_sim_in_the_loop import Graph, _wait  # noqa: E402
from test_sim_in_the_loop import graph_env as sim_in_the_loop_env  # noqa: E402

from mbpl_core.config import from_dict  # noqa: E402
from mbpl_core.guided.mdgps import GaussianMLPPolicy, policy_to_params  # noqa: E402
from mbpl_core.planning.pets import PETSConfig  # noqa: E402
from mbpl_core.policy import NumpyPolicy, load_policy_checkpoint  # noqa: E402
from mbpl_ros.cli import effective_config  # noqa: E402
from mbpl_ros.recording import SampleStore  # noqa: E402
from mbpl_sim.evaluate import evaluate_in_sim  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "reacher2_sim.yaml"
CONDITIONS = 4
SHORT = 3  # iterations of the kill runs
RUN_TIMEOUT = 1500.0  # ~2.5 min on an idle 2-core machine; generous for shared ones
NODES = ("sampler", "model", "planner", "trainer")


def graph_env(tmp: Path) -> dict[str, str]:
    # DDS domain ids end at 232; the tests of one pytest run start their graphs one after another, so
    # this file shares test_sim_in_the_loop's pid-derived range (110-189)
    return sim_in_the_loop_env(tmp)


def _config(run_dir: Path, *sets: str) -> Path:
    every = ["method=pets", *sets] + [f"ros.nodes.{n}.run_dir={run_dir}" for n in NODES]
    return effective_config(CONFIG, every, run_dir)[0]


def _trajectories(experiment_pets: dict, iterations: int) -> int:
    config = from_dict(PETSConfig, experiment_pets, "pets")
    return CONDITIONS * (config.random_trials + iterations * config.trials_per_condition)


@pytest.fixture(scope="module")
def uninterrupted() -> Iterator[tuple[Path, str]]:
    """One ``mbpl launch`` of the whole PETS graph with the experiment's own settings."""
    with tempfile.TemporaryDirectory(prefix="mbpl-pets-e2e-") as folder:
        tmp = Path(folder)
        run_dir = tmp / "run"
        cmd = [sys.executable, "-m", "mbpl_ros.cli", "launch", str(_config(run_dir)),
               "--run-dir", str(run_dir)]
        done = subprocess.run(cmd, env=graph_env(tmp), cwd=REPO, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT)
        assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
        yield run_dir, done.stdout


def test_pets_graph_reaches_every_target_and_deploys_a_distilled_policy(
        uninterrupted: tuple[Path, str]) -> None:
    run_dir, _ = uninterrupted
    experiment = load_experiment(run_dir / "config.yaml")
    config = from_dict(PETSConfig, experiment.pets, "pets")
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["iteration"] for r in history] == list(range(config.iterations))
    assert [r["model_version"] for r in history] == [i + 1 for i in range(config.iterations)]
    last = history[-1]
    threshold = last["success_threshold_m"]
    # PETS's success as bench/methods.py counts it: an iteration whose MPC trials all end within the
    # threshold (the MPC can drift after reaching: docs/methods.md); and the last iteration still close
    worst = [max(r["eval_final_distance"]) for r in history]
    assert min(worst) < threshold, f"the MPC never reached every target: worst distance per iteration {worst}"
    assert np.mean(last["eval_final_distance"]) < threshold, (
        f"MPC final distances {last['eval_final_distance']}")
    assert SampleStore(run_dir).count() == _trajectories(experiment.pets, config.iterations)
    assert sorted(p.name for p in (run_dir / "model").glob("ensemble_v*.pt")) == sorted(
        f"ensemble_v{v}.pt" for v in range(1, config.iterations + 1))

    # the distilled policy: its checkpoint alone gives the held-out distances the trainer recorded
    policy, _ = load_policy_checkpoint(run_dir / "policy")
    trained = evaluate_in_sim(experiment, policy, "held_out")
    np.testing.assert_allclose(trained.tip_distance, last["policy_held_out_tip_distance"], atol=1e-9)
    untrained_torch = GaussianMLPPolicy.from_config(config.distill.policy, experiment.layout.dX,
                                                    experiment.robot.dQ)
    untrained = evaluate_in_sim(experiment, NumpyPolicy(policy_to_params(untrained_torch)), "held_out")
    assert np.mean(trained.tip_distance) < 0.5 * np.mean(untrained.tip_distance), (
        f"held-out tip distance: untrained {untrained.tip_distance}, distilled {trained.tip_distance}")
    rounds = json.loads((run_dir / "distill.json").read_text())
    assert len(rounds) == config.distill.rounds + 1


def _killed_run(tmp: Path, victim: str, when: object) -> tuple[Path, Graph]:
    """A short run (SHORT iterations, no distillation) whose ``victim`` is SIGKILLed once ``when(run_dir)``
    holds, then started again; returns when the trainer has finished."""
    run_dir = tmp / "run"
    graph = Graph(_config(run_dir, f"pets.iterations={SHORT}", "pets.distill.enabled=false"), tmp)
    graph.env = graph_env(tmp)
    try:
        for name in graph.specs:
            graph.start(name)
        _wait(lambda: when(run_dir), RUN_TIMEOUT, f"the moment to kill the {victim}", graph)  # type: ignore[operator]
        graph.procs[victim].send_signal(signal.SIGKILL)
        graph.procs[victim].wait()
        for name, proc in graph.procs.items():
            assert name == victim or proc.poll() is None, f"{name} died with {victim}\n{graph.output()}"
        graph.start(victim)
        trainer = graph.procs["trainer"]
        _wait(lambda: trainer.poll() is not None, RUN_TIMEOUT, "the trainer to finish", graph)
        assert trainer.returncode == 0, graph.output()
    finally:
        graph.stop()
    return run_dir, graph


def _model_version_saved(version: int) -> object:
    return lambda run_dir: (run_dir / "model" / f"ensemble_v{version}.pt").is_file()


def test_a_killed_model_node_resumes_to_the_same_run(uninterrupted: tuple[Path, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="mbpl-pets-kill-model-") as folder:
        run_dir, graph = _killed_run(Path(folder), "model", _model_version_saved(1))
        experiment = load_experiment(run_dir / "config.yaml")
        assert SampleStore(run_dir).count() == _trajectories(experiment.pets, SHORT)
        history = json.loads((run_dir / "history.json").read_text())
        want = json.loads((uninterrupted[0] / "history.json").read_text())[:SHORT]
        for key in ("mean_cost", "eval_final_distance", "model_holdout_nll", "model_transitions"):
            assert [r[key] for r in history] == [r[key] for r in want], key


def test_a_planner_killed_mid_trial_costs_one_trial_that_is_run_again() -> None:
    with tempfile.TemporaryDirectory(prefix="mbpl-pets-kill-planner-") as folder:
        tmp = Path(folder)

        def mid_mpc_trial(run_dir: Path) -> bool:
            # version 2 fitted: the MPC trials of iteration 1 are running
            return _model_version_saved(2)(run_dir)  # type: ignore[operator]

        run_dir, graph = _killed_run(tmp, "planner", mid_mpc_trial)
        experiment = load_experiment(run_dir / "config.yaml")
        assert SampleStore(run_dir).count() == _trajectories(experiment.pets, SHORT)
        history = json.loads((run_dir / "history.json").read_text())
        assert [r["iteration"] for r in history] == list(range(SHORT))
        trainer_logs = "".join(log.read_text(errors="replace") for log in graph.logs if "trainer" in log.name)
        assert "aborted" in trainer_logs and "re-running" in trainer_logs, graph.output()
