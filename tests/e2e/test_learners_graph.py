"""SAC, MBPO and BPTT through the node graph, end to end: ``mbpl launch configs/reacher2_sim.yaml
--set method=sac|mbpo|bptt``.

The real graph (sim, sampler, trainer) as separate processes over DDS in an isolated domain, with tiny
budgets (SAC 2 x 200 steps, MBPO 3 x 200, BPTT 2 iterations of one random and two exploring trials per
condition). Oracles:

* exit code 0; the history counts the environment steps as ``mbpl train`` does, from the method's own
  settings: SAC/MBPO ceil(steps_per_iteration / T) whole trials per iteration, BPTT random_trials per
  condition in iteration 0 plus trials_per_condition per condition per iteration, T steps each; every
  trial the sampler ran is in the bags once (env_steps / T trajectories); the deployed squashed policy,
  loaded from its checkpoint alone with numpy and rolled out in-process, gives exactly the training and
  held-out distances the trainer recorded.
* MBPO, its trainer SIGKILLed while iteration 1's trials are being recorded: the launcher, whose
  required node the trainer is, stops the whole graph with a non-zero exit code; ``mbpl launch`` again
  with the same run folder and ``--set`` arguments exits 0 with the uninterrupted run's history (same
  experiment; the learner re-derived from the bags), every iteration's env_steps counted as without the
  kill, every trial recorded before the kill kept byte for byte and none lost or duplicated (bag count =
  env_steps / T), the finished iterations' records unchanged, and only the trials missing from the bags
  run again.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")
pytest.importorskip("stable_baselines3")

# pytest's default (prepend) import mode puts this folder on sys.path
from test_sim_in_the_loop import CONFIG, REPO  # noqa: E402
from test_sim_in_the_loop import graph_env as sim_in_the_loop_env  # noqa: E402

from mbpl_core.policy import load_policy_checkpoint  # noqa: E402
from mbpl_ros.learner_trainer import EVAL_INDEX  # noqa: E402
from mbpl_ros.recording import SampleStore  # noqa: E402
from mbpl_ros.trainer_logic import MAX_ATTEMPTS, MAX_CONDITIONS, MAX_SAMPLES  # noqa: E402
from mbpl_sim.evaluate import evaluate_in_sim  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

SETS = {
    "sac": ["sac.iterations=2", "sac.steps_per_iteration=200", "sac.learning_starts=100",
            "sac.agent.batch_size=64"],
    "mbpo": ["mbpo.iterations=3", "mbpo.steps_per_iteration=200", "mbpo.initial_random_steps=100",
             "mbpo.model_train_every=100", "mbpo.rollout_every=50", "mbpo.rollout_batch_size=50",
             "mbpo.updates_per_step=1", "mbpo.rollout_schedule=[1, 2, 1, 2]", "mbpo.model.members=3",
             "mbpo.model.elites=2", "mbpo.model.hidden=[32]", "mbpo.model.max_epochs=5",
             "mbpo.model.device=cpu", "mbpo.agent.batch_size=64"],
    "bptt": ["bptt.iterations=2", "bptt.random_trials=1", "bptt.trials_per_condition=2",
             "bptt.gradient_steps=20", "bptt.batch_size=16", "bptt.horizon=5", "bptt.hidden_sizes=[32]",
             "bptt.model.members=2", "bptt.model.elites=2", "bptt.model.hidden=[32]",
             "bptt.model.max_epochs=5", "bptt.model.device=cpu"],
}
RUN_TIMEOUT = 300.0  # one launch: ~15 s on a 2-core machine with one core busy
# the digits of mbpl_ros.trainer_logic.trial_id: session, iteration, condition, index, attempt
_TRIAL = re.compile(r"\]: trial (\d+) \(condition \d+\) done")


def graph_env(tmp: Path) -> dict[str, str]:
    """test_sim_in_the_loop's private graph (its pid-derived domain range: the tests of one pytest run
    start their graphs one after another), torch on one thread: its intra-op threads spin-wait for a
    core, and on a 2-core machine shared with the sim, the sampler and anything else the trainer's SAC
    updates ran 5-20x slower with two (the results are the same)."""
    return sim_in_the_loop_env(tmp) | {"OMP_NUM_THREADS": "1"}


def _launch(run_dir: Path, method: str, config: Path = CONFIG) -> list[str]:
    cmd = [sys.executable, "-m", "mbpl_ros.cli", "launch", str(config), "--run-dir", str(run_dir)]
    for s in [f"method={method}", *SETS[method]]:
        cmd += ["--set", s]
    return cmd


def expected_env_steps(experiment, method: str) -> list[int]:
    """env_steps after each iteration as ``mbpl train`` counts them, from the method's settings."""
    c, T, M = experiment.method_config(method), experiment.task.T, len(experiment.conditions("train"))
    if method == "bptt":
        return [M * T * (c.random_trials + (i + 1) * c.trials_per_condition) for i in range(c.iterations)]
    per_iteration = math.ceil(c.steps_per_iteration / T) * T
    return [(i + 1) * per_iteration for i in range(c.iterations)]


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """``launched(method)``: the run folder of one uninterrupted ``mbpl launch`` of the method, exit code 0
    (run once per module: the kill test compares its resumed run with it)."""
    runs: dict[str, Path] = {}

    def launch(method: str) -> Path:
        if method not in runs:
            tmp = tmp_path_factory.mktemp(f"learners-{method}")
            run_dir = tmp / "run"
            done = subprocess.run(_launch(run_dir, method), env=graph_env(tmp), cwd=REPO, capture_output=True,
                                  text=True, timeout=RUN_TIMEOUT)
            assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
            runs[method] = run_dir
        return runs[method]

    yield launch


@pytest.mark.parametrize("method", ["sac", "mbpo", "bptt"])
def test_a_learner_trains_through_the_graph_and_its_checkpoint_reproduces_the_trainer(
        launched: Callable[[str], Path], method: str) -> None:
    run_dir = launched(method)
    experiment = load_experiment(run_dir / "config.yaml")
    history = json.loads((run_dir / "history.json").read_text())
    steps = expected_env_steps(experiment, method)
    assert [r["iteration"] for r in history] == list(range(len(steps)))
    assert [r["env_steps"] for r in history] == steps
    assert SampleStore(run_dir).count() == steps[-1] // experiment.task.T
    policy, _ = load_policy_checkpoint(run_dir / "policy")
    assert policy.params.squashed
    last = history[-1]
    held_out = evaluate_in_sim(experiment, policy, "held_out")
    np.testing.assert_allclose(held_out.tip_distance, last["policy_held_out_tip_distance"], atol=1e-9)
    training = evaluate_in_sim(experiment, policy, "train")
    np.testing.assert_allclose(training.tip_distance, last["eval_final_distance"], atol=1e-9)


# ------------------------------------------------------------------------------------ kill and resume
def _graph_pids(run_dir: Path) -> dict[str, int]:
    """{node name: pid} of the live node processes of this run: the launcher starts each node as
    ``python -m mbpl_ros.<name>_node ... --params-file <run_dir>/params/<name>.yaml`` (bringup.NodeSpec)."""
    params = str((run_dir / "params").resolve())
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile
            continue
        for arg in argv:
            text = arg.decode(errors="replace")
            if text.startswith(params + os.sep) and text.endswith(".yaml") and state != "Z":
                found[Path(text).stem] = int(proc.name)
    return found


def _poll(predicate: Callable[[], bool], timeout: float, what: str, launcher: subprocess.Popen,
          log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if launcher.poll() is not None:
            pytest.fail(f"the launcher exited ({launcher.returncode}) before {what}\n"
                        f"{log.read_text(errors='replace')[-6000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{log.read_text(errors='replace')[-6000:]}")
        time.sleep(0.02)


def _recorded(store: SampleStore, iterations: int, M: int) -> dict[tuple[int, int, int], bytes]:
    """{(iteration, condition, index): CDR bytes} of every trial in the bags."""
    return {(i, m, k): raw for i in range(iterations) for m in range(M)
            for k, raw in store.samples(i, m).items()}


def _trials_run(sampler_log: str, session: int) -> set[tuple[int, int, int]]:
    """(iteration, condition, index) of every trial the sampler finished for trainer session ``session``."""
    out = set()
    for match in _TRIAL.finditer(sampler_log):
        digits = int(match[1]) // MAX_ATTEMPTS
        index, digits = digits % MAX_SAMPLES, digits // MAX_SAMPLES
        condition, digits = digits % MAX_CONDITIONS, digits // MAX_CONDITIONS
        if digits // 10_000 == session:
            out.add((digits % 10_000, condition, index))
    return out


def test_an_mbpo_trainer_killed_mid_iteration_resumes_through_the_launcher(
        launched: Callable[[str], Path], tmp_path: Path) -> None:
    # the uninterrupted run's effective experiment (absolute paths): both runs have the same settings even
    # if configs/ is edited meanwhile
    uninterrupted = launched("mbpo")
    config = uninterrupted / "config.yaml"
    run_dir = (tmp_path / "run").resolve()
    env = graph_env(tmp_path)
    log = tmp_path / "launch-1.log"
    pending = run_dir / "bags" / "pending"

    def in_iteration_one() -> bool:  # a trial of iteration 1 is recorded, its batch is not closed yet
        return pending.is_dir() and any(p.name.startswith("iteration_001_") for p in pending.iterdir())

    with open(log, "wb") as out:
        launcher = subprocess.Popen(_launch(run_dir, "mbpo", config), env=env, cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT)
    try:
        _poll(in_iteration_one, RUN_TIMEOUT, "a trial of iteration 1 in the bags", launcher, log)
        nodes = _graph_pids(run_dir)
        assert set(nodes) == {"sim", "sampler", "trainer"}, nodes
        os.kill(nodes["trainer"], signal.SIGKILL)
        code = launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)  # the launcher stops its nodes
            launcher.wait(timeout=60)
    launch_log = log.read_text(errors="replace")
    # the trainer is the graph's required node: its death ends the graph, every node stopped
    assert code != 0, launch_log[-6000:]
    assert "the graph stopped because trainer exited" in launch_log, launch_log[-6000:]
    assert _graph_pids(run_dir) == {}, "a node of the killed graph outlived its launcher"

    experiment = load_experiment(run_dir / "config.yaml")
    T, M = experiment.task.T, len(experiment.conditions("train"))
    steps = expected_env_steps(experiment, "mbpo")
    killed_state = json.loads((run_dir / "trainer_state.json").read_text())
    assert killed_state["completed_iterations"] == 1, "not killed within iteration 1"
    store = SampleStore(run_dir)
    before = _recorded(store, len(steps), M)
    assert any(i == 1 for i, _, _ in before)

    resumed = subprocess.run(_launch(run_dir, "mbpo", config), env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=RUN_TIMEOUT)
    assert resumed.returncode == 0, resumed.stdout[-8000:] + resumed.stderr[-4000:]

    history = json.loads((run_dir / "history.json").read_text())
    assert [r["iteration"] for r in history] == list(range(len(steps)))
    assert [r["env_steps"] for r in history] == steps
    finished = killed_state["history"]
    assert history[: len(finished)] == finished, "a record finished before the kill changed"
    after = _recorded(SampleStore(run_dir), len(steps), M)
    assert len(after) == SampleStore(run_dir).count() == steps[-1] // T
    assert {key: after[key] for key in before} == before, "a trial recorded before the kill changed"
    # session 2 ran exactly the trials missing from the bags (and the noiseless evaluations)
    sampler_log = (run_dir / "logs" / "sampler.log").read_text(errors="replace")
    rerun = {key for key in _trials_run(sampler_log, session=2) if key[2] != EVAL_INDEX}
    assert rerun == set(after) - set(before)
    # the learner re-derived from the bags: the same run as without the kill
    want = json.loads((uninterrupted / "history.json").read_text())
    for key in ("mean_cost", "eval_final_distance", "policy_held_out_tip_distance", "model_holdout_nll",
                "rollout_length", "model_fits", "model_rows"):
        np.testing.assert_allclose([r[key] for r in history], [r[key] for r in want], rtol=1e-9,
                                   err_msg=key)
    trainer_log = (run_dir / "logs" / "trainer.log").read_text(errors="replace")
    assert "resuming at iteration 1 (session 2)" in trainer_log, trainer_log[-4000:]
