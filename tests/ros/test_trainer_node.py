"""The trainer, fitting and iLQR nodes as processes over DDS, with a stand-in sampler in the test process.

The stand-in runs trials on MujocoEnv directly and honours the RunTrial protocol (refuses a controller it
has not received yet, answers at once, publishes the sample on mbpl/samples). Checked: the run
completes, its bags hold exactly iterations × conditions × samples samples, and a trainer killed with
SIGKILL mid-run and started again finishes the run with no sample lost or duplicated.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import deque
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")

from mbpl_msgs.msg import LinearGaussianController as ControllerMsg  # noqa: E402
from mbpl_msgs.msg import TrajectorySample  # noqa: E402
from mbpl_msgs.srv import RunTrial  # noqa: E402

from mbpl_core.noise import generate_noise  # noqa: E402
from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.fitting_node import latched_qos  # noqa: E402
from mbpl_ros.node_params import load_settings  # noqa: E402
from mbpl_ros.recording import SampleStore  # noqa: E402
from mbpl_sim.env import MujocoEnv  # noqa: E402

EXTRA = """cost: {action_weight: 0.005, ee: {l2: 10.0}}
algorithm:
  iterations: 3
  samples_per_condition: 3
  init: {init_var: 0.03}
  dynamics: {max_clusters: 4, min_samples_per_cluster: 20}
"""
RUN_TIMEOUT = 240.0


class StandInSampler:
    """RunTrial server + sample publisher over an in-process MujocoEnv (spun by the test's executor)."""

    def __init__(self, node: object, env: MujocoEnv, noise_config: object) -> None:
        self.env, self.noise_config = env, noise_config
        self.controllers: dict[int, object] = {}
        self.queue: deque[RunTrial.Request] = deque()
        self.trials_run = 0
        node.create_subscription(ControllerMsg, "mbpl/controllers", self._on_controller, latched_qos(10))
        node.create_service(RunTrial, "mbpl/run_trial", self._on_run_trial)
        self.pub = node.create_publisher(TrajectorySample, "mbpl/samples", latched_qos(10))
        node.create_timer(0.01, self._run_queued)

    def _on_controller(self, msg: ControllerMsg) -> None:
        self.controllers[int(msg.controller_id)] = conversions.msg_to_controller(msg)

    def _on_run_trial(self, request: RunTrial.Request, response: RunTrial.Response) -> RunTrial.Response:
        if request.controller_id not in self.controllers:
            response.accepted = False
            response.message = f"controller {request.controller_id} for condition {request.condition} " \
                               "not received yet"
            return response
        self.queue.append(request)
        response.accepted, response.message = True, "queued"
        return response

    def _run_queued(self) -> None:
        if not self.queue:
            return
        req = self.queue.popleft()
        noise = None
        if req.add_noise:
            rng = np.random.default_rng(req.seed)
            noise = generate_noise(self.env.T, self.env.dU, rng, self.noise_config)
        batch = self.env.sample(self.controllers[req.controller_id], req.condition, noise)
        meta = conversions.SampleMetadata(req.condition, req.trial_id, req.controller_id)
        self.pub.publish(conversions.sample_to_msg(batch, meta))
        self.trials_run += 1


@pytest.fixture
def graph(ros_processes, rclpy_node, experiment_file: Path, tmp_path: Path) -> tuple[dict, StandInSampler]:
    config = tmp_path / "trainer_test.yaml"
    config.write_text(experiment_file.read_text() + EXTRA)
    params = {"config": str(config), "run_dir": str(tmp_path / "run")}
    ros_processes.start("mbpl_ros.fitting_node", "fitting", params)
    ros_processes.start("mbpl_ros.ilqr_node", "ilqr", params)
    settings = load_settings(str(config), params["run_dir"])
    sampler = StandInSampler(rclpy_node, MujocoEnv(settings.experiment), settings.algorithm.noise)
    return params, sampler


class Trainers:
    """Trainer processes, not watched by ``wait_for`` (they are meant to exit); killed at teardown."""

    def __init__(self, ros_processes: object, params: dict) -> None:
        self.ros_processes, self.params = ros_processes, params
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self) -> subprocess.Popen:
        proc = self.ros_processes.start("mbpl_ros.trainer_node", "trainer", self.params)
        entry = next(e for e in self.ros_processes.procs if e[0] is proc)
        self.ros_processes.procs.remove(entry)
        self.started.append(entry)
        return proc

    def output(self, proc: subprocess.Popen) -> str:
        return next(log for p, log in self.started if p is proc).read_text(errors="replace")

    def kill_all(self) -> None:
        for proc, _ in self.started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def trainers(graph: tuple[dict, StandInSampler], ros_processes: object) -> Trainers:
    made = Trainers(ros_processes, graph[0])
    yield made
    made.kill_all()


def test_trainer_runs_to_the_end_and_records_every_sample(graph, trainers, rclpy_node, wait_for) -> None:
    params, sampler = graph
    trainer = trainers.start()
    wait_for(rclpy_node, lambda: trainer.poll() is not None, RUN_TIMEOUT, "the trainer to finish")
    assert trainer.returncode == 0, trainers.output(trainer)
    run_dir = Path(params["run_dir"])
    assert SampleStore(run_dir).count() == 3 * 2 * 3
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["iteration"] for r in history] == [0, 1, 2]
    assert (run_dir / "history.png").stat().st_size > 1000
    assert np.mean(history[-1]["mean_cost"]) < np.mean(history[0]["mean_cost"])
    assert sampler.trials_run == 3 * 2 * 3 + 3 * 2  # samples plus one noiseless evaluation per condition


def test_killed_trainer_resumes_without_losing_or_repeating_samples(graph, trainers, rclpy_node,
                                                                   wait_for) -> None:
    params, sampler = graph
    run_dir = Path(params["run_dir"])
    first = trainers.start()
    # kill mid-iteration 1: some of its samples are in per-trial bags, the batch is not closed
    wait_for(rclpy_node, lambda: sampler.trials_run >= 3 * 2 + 2 + 4, RUN_TIMEOUT, "iteration 1 sampling")
    first.send_signal(signal.SIGKILL)
    first.wait()
    recorded = SampleStore(run_dir).count()
    assert 3 * 2 < recorded < 3 * 2 * 3, trainers.output(first)
    second = trainers.start()
    wait_for(rclpy_node, lambda: second.poll() is not None, RUN_TIMEOUT, "the restarted trainer to finish")
    assert second.returncode == 0, trainers.output(second)
    assert "resuming at iteration 1" in trainers.output(second)
    assert SampleStore(run_dir).count() == 3 * 2 * 3
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["iteration"] for r in history] == [0, 1, 2]
