"""Simulation in the loop, end to end: the real node graph (sim, sampler, fitting, iLQR, trainer) as separate
processes over real DDS in an isolated domain, MuJoCo in lockstep, LQR-FLM on reacher2.

* ``mbpl launch`` runs a short training (3 iterations) to the end: exit code 0, the cost decreases, and
  the bags hold exactly iterations × conditions × samples samples.
* A node killed with SIGKILL mid-run and started again (trainer, fitting or iLQR) lets the run finish
  with the same exact sample count: nothing lost, nothing taken twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")
pytest.importorskip("mbpl_ros.sampler_node")

from mbpl_ros.bringup import graph_from_experiment  # noqa: E402
from mbpl_ros.cli import effective_config  # noqa: E402
from mbpl_ros.params import write_params_file  # noqa: E402
from mbpl_ros.recording import SampleStore  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "reacher2_sim.yaml"
ITERATIONS, CONDITIONS, SAMPLES = 3, 4, 5
RUN_TIMEOUT = 420.0


def graph_env(tmp: Path, domain_base: int = 110, domains: int = 80) -> dict[str, str]:
    """A test's private ROS graph: its own domain id (pid-derived in [domain_base, domain_base + domains)),
    localhost discovery, logs under ``tmp``."""
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(os.getpid() % domains + domain_base),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_HOME=str(tmp), ROS_LOG_DIR=str(tmp / "log"),
               PYTHONUNBUFFERED="1",
               MUJOCO_GL=env.get("MUJOCO_GL", "osmesa"))
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (sys.prefix, env.get("AMENT_PREFIX_PATH", "")) if p)
    return env


def short_config(run_dir: Path) -> Path:
    """The demo experiment, 3 iterations, every node writing into ``run_dir``."""
    sets = [f"algorithm.iterations={ITERATIONS}", f"algorithm.samples_per_condition={SAMPLES}"]
    sets += [f"ros.nodes.{n}.run_dir={run_dir}" for n in ("sampler", "fitting", "ilqr", "trainer")]
    path, _ = effective_config(CONFIG, sets, run_dir)
    return path


def check_run(run_dir: Path) -> list[dict]:
    """The run finished: exact sample count, one history record per iteration, cost went down."""
    assert SampleStore(run_dir).count() == ITERATIONS * CONDITIONS * SAMPLES
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["iteration"] for r in history] == list(range(ITERATIONS))
    first, last = (sum(r["mean_cost"]) / CONDITIONS for r in (history[0], history[-1]))
    assert last < first, f"mean cost did not decrease: {first:.4g} → {last:.4g}"
    assert (run_dir / "history.png").is_file()
    return history


@pytest.fixture
def tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mbpl-e2e-") as folder:
        yield Path(folder)


def test_launch_trains_to_the_end(tmp: Path) -> None:
    run_dir = tmp / "run"
    config = short_config(run_dir)
    cmd = [sys.executable, "-m", "mbpl_ros.cli", "launch", str(config), "--run-dir", str(run_dir)]
    done = subprocess.run(cmd, env=graph_env(tmp), cwd=REPO, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    history = check_run(run_dir)
    assert all(len(r["eval_final_distance"]) == CONDITIONS for r in history)


class Graph:
    """The graph of the experiment (bringup's description), each node its own process, restartable."""

    def __init__(self, config: Path, tmp: Path) -> None:
        self.specs = {s.name: s for s in graph_from_experiment(config)}
        self.tmp, self.env = tmp, graph_env(tmp)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list[Path] = []

    def start(self, name: str) -> subprocess.Popen:
        spec = self.specs[name]
        params = write_params_file(self.tmp / "params" / f"{name}.yaml", "/**", spec.parameters)
        log = self.tmp / f"{name}-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.procs[name] = subprocess.Popen(spec.command(params), env=self.env, cwd=REPO, stdout=out,
                                                stderr=subprocess.STDOUT)
        return self.procs[name]

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in self.logs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(predicate: object, timeout: float, what: str, graph: Graph) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{graph.output()}")
        time.sleep(0.05)


def _in_iteration_one(run_dir: Path) -> bool:
    """True once a sample of iteration 1 sits in its own pending bag (its batch is not closed yet)."""
    pending = run_dir / "bags" / "pending"
    return pending.is_dir() and any(p.name.startswith("iteration_001") for p in pending.iterdir())


@pytest.mark.parametrize("victim", ["trainer", "fitting", "ilqr"])
def test_a_node_killed_mid_run_restarts_and_no_sample_is_lost(tmp: Path, victim: str) -> None:
    run_dir = tmp / "run"
    graph = Graph(short_config(run_dir), tmp)
    try:
        for name in graph.specs:
            graph.start(name)
        _wait(lambda: _in_iteration_one(run_dir), RUN_TIMEOUT, "iteration 1 sampling", graph)
        graph.procs[victim].send_signal(signal.SIGKILL)
        graph.procs[victim].wait()
        for name, proc in graph.procs.items():
            assert name == victim or proc.poll() is None, f"{name} died with {victim}\n{graph.output()}"
        graph.start(victim)
        trainer = graph.procs["trainer"]
        _wait(lambda: trainer.poll() is not None, RUN_TIMEOUT, "the trainer to finish", graph)
        assert trainer.returncode == 0, graph.output()
        check_run(run_dir)
    finally:
        graph.stop()
