"""MDGPS through the node graph, end to end: ``mbpl launch --set method=mdgps`` on reacher2 in lockstep.

The real graph (sim, sampler, fitting, iLQR, trainer) as separate processes over DDS in an isolated
domain runs 3 MDGPS iterations. Checks: exit code 0; the run folder holds the policy checkpoint and
one saved S-step per iteration; every sample is in the bags; the policy trials through the graph
(RunTrial policy_kind "policy") and the in-process held-out evaluation are in the history; the
checkpoint, rolled out in-process on the held-out conditions, gives the distances the trainer
recorded; and it ends closer to the held-out targets than the untrained policy.

A trainer killed with SIGKILL right after an S-step and started again resumes: the run ends with
every sample taken once and exactly the policy of the uninterrupted run (the S-step is not repeated).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")
pytest.importorskip("torch")

# pytest's default (prepend) import mode puts this folder on sys.path
from test_sim_in_the_loop import graph_env as sim_in_the_loop_env  # noqa: E402

from mbpl_core.config import from_dict  # noqa: E402
from mbpl_core.guided.mdgps import GaussianMLPPolicy, policy_to_params  # noqa: E402
from mbpl_core.policy import GPSConfig, NumpyPolicy, load_policy_checkpoint  # noqa: E402
from mbpl_ros.bringup import graph_from_experiment  # noqa: E402
from mbpl_ros.cli import effective_config  # noqa: E402
from mbpl_ros.params import write_params_file  # noqa: E402
from mbpl_ros.recording import SampleStore  # noqa: E402
from mbpl_sim.evaluate import evaluate_in_sim  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "reacher2_sim.yaml"
ITERATIONS, CONDITIONS, SAMPLES = 3, 4, 5
RUN_TIMEOUT = 420.0


def graph_env(tmp: Path) -> dict[str, str]:
    # a domain range of its own (test_sim_in_the_loop: 110-189, tests/ros: 1-100)
    return sim_in_the_loop_env(tmp, domain_base=190, domains=40)


def _config(run_dir: Path) -> Path:
    """The demo experiment in MDGPS mode, 3 iterations, a short S-step, every node writing to run_dir."""
    sets = ["method=mdgps", f"algorithm.iterations={ITERATIONS}",
            f"algorithm.samples_per_condition={SAMPLES}", "gps.iterations=300", "gps.device=cpu"]
    sets += [f"ros.nodes.{n}.run_dir={run_dir}" for n in ("sampler", "fitting", "ilqr", "trainer")]
    return effective_config(CONFIG, sets, run_dir)[0]


def _policy_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "policy" / "policy.npz") as data:
        return {k: data[k] for k in data.files if k != "gps_config_json"}


@pytest.fixture(scope="module")
def uninterrupted() -> Iterator[tuple[Path, str]]:
    """One ``mbpl launch`` of the whole MDGPS graph: (run folder, output)."""
    with tempfile.TemporaryDirectory(prefix="mbpl-gps-e2e-") as folder:
        tmp = Path(folder)
        run_dir = tmp / "run"
        config = _config(run_dir)
        cmd = [sys.executable, "-m", "mbpl_ros.cli", "launch", str(config), "--run-dir", str(run_dir)]
        done = subprocess.run(cmd, env=graph_env(tmp), cwd=REPO, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT)
        assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
        yield run_dir, done.stdout


def test_mdgps_graph_trains_publishes_and_improves_the_policy(uninterrupted: tuple[Path, str]) -> None:
    run_dir, output = uninterrupted
    # the console: a progress line per iteration and the summary; per-iteration detail in the node's log
    assert "policy on held-out conditions" in output and "[sampler] [INFO]" not in output, output
    assert f"[trainer] iteration {ITERATIONS}/{ITERATIONS}: cost " in output, output
    assert "GPS: S-step of iteration 0" in (run_dir / "logs" / "trainer.log").read_text()
    assert (run_dir / "policy" / "policy.npz").is_file() and (run_dir / "policy" / "policy.pt").is_file()
    assert sorted(p.name for p in (run_dir / "gps").glob("s_step_*.pt")) == [
        f"s_step_{i:04d}.pt" for i in range(ITERATIONS)]
    assert SampleStore(run_dir).count() == ITERATIONS * CONDITIONS * SAMPLES
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["policy_id"] for r in history] == [i + 1 for i in range(ITERATIONS)]
    assert all(len(r["policy_tip_distance"]) == CONDITIONS for r in history)
    experiment = load_experiment(run_dir / "config.yaml")
    config = from_dict(GPSConfig, experiment.gps, "gps")
    # a policy reference from the first iteration on, unless the S-step follows the C-step
    first = config.s_step_order == "before_c_step"
    assert [any(r["reference_used"]) for r in history] == [first] + [True] * (ITERATIONS - 1)

    policy, _ = load_policy_checkpoint(run_dir / "policy")
    trained = evaluate_in_sim(experiment, policy, "held_out")
    np.testing.assert_allclose(trained.tip_distance, history[-1]["policy_held_out_tip_distance"], atol=1e-9)
    untrained_torch = GaussianMLPPolicy.from_config(config, experiment.layout.dX, experiment.robot.dQ)
    untrained = evaluate_in_sim(experiment, NumpyPolicy(policy_to_params(untrained_torch)), "held_out")
    assert np.mean(trained.tip_distance) < 0.7 * np.mean(untrained.tip_distance), (
        f"held-out tip distance: untrained {untrained.tip_distance}, trained {trained.tip_distance}")


def test_a_trainer_killed_after_an_s_step_resumes_to_the_same_policy(uninterrupted: tuple[Path, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="mbpl-gps-kill-") as folder:
        tmp = Path(folder)
        run_dir = tmp / "run"
        specs = {s.name: s for s in graph_from_experiment(_config(run_dir))}
        procs: dict[str, subprocess.Popen] = {}

        def start(name: str) -> None:
            params = write_params_file(tmp / "params" / f"{name}.yaml", "/**", specs[name].parameters)
            with open(tmp / f"{name}-{len(procs)}.log", "wb") as log:
                procs[name] = subprocess.Popen(specs[name].command(params), env=graph_env(tmp), cwd=REPO,
                                               stdout=log, stderr=subprocess.STDOUT)

        def logs() -> str:
            return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                             for p in sorted(tmp.glob("*.log")))

        try:
            for name in specs:
                start(name)
            deadline = time.monotonic() + RUN_TIMEOUT
            while not (run_dir / "gps" / "s_step_0001.pt").exists():  # S-step 1 saved, iteration 1 not done
                assert time.monotonic() < deadline and procs["trainer"].poll() is None, logs()
                time.sleep(0.02)
            procs["trainer"].send_signal(signal.SIGKILL)
            procs["trainer"].wait()
            start("trainer")
            assert procs["trainer"].wait(timeout=RUN_TIMEOUT) == 0, logs()
            assert "S-step of iteration 1 already done" in logs(), logs()
            assert SampleStore(run_dir).count() == ITERATIONS * CONDITIONS * SAMPLES
            want, got = _policy_arrays(uninterrupted[0]), _policy_arrays(run_dir)
            assert want.keys() == got.keys()
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            for proc in procs.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
