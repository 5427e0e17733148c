"""Recovery of the graph from faults on the robot side (issue 8), real processes over DDS.

* A trial that aborts before its first step (``ros.sim: false``, no driver yet: stale state at the start)
  publishes a sample with t_steps = 0; the trainer re-runs it and, once a driver streams joint states,
  finishes the iteration (it used to die decoding that sample).
* A sampler killed with an accepted trial and started again gets the trial again: the trainer re-sends
  the request every ``requery_after`` s while the sample is missing, instead of waiting out
  ``trial_timeout``.
* A sampler that lost the controller the trainer asks for (evicted by others before it was asked for)
  gets it back: the trainer republishes it after ``republish_after`` s of "not received yet" instead of
  retrying for ``refused_wait`` s and giving up.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from mbpl_msgs.msg import LinearGaussianController as ControllerMsg  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402

from mbpl_core.containers import LinearGaussianController  # noqa: E402
from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.node_params import TrainerNodeParams  # noqa: E402
from mbpl_ros.recording import SampleStore  # noqa: E402
from mbpl_ros.sampler_node import CONTROLLERS_QOS  # noqa: E402
from mbpl_ros.trainer_logic import TrialRequest  # noqa: E402
from mbpl_ros.trainer_transport import GraphTransport  # noqa: E402
from mbpl_sim.env import MujocoEnv  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

TOKEN = "recovery-test-token"
TIMEOUT = 60.0
EXTRA = """cost: {action_weight: 0.005, ee: {l2: 10.0}}
algorithm:
  iterations: 1
  samples_per_condition: 3
  init: {init_var: 0.03}
  dynamics: {max_clusters: 4, min_samples_per_cluster: 20}
"""


def _constant(env: MujocoEnv, value: float) -> LinearGaussianController:
    T, dU, dX = env.T, env.dU, env.dX
    return LinearGaussianController.from_covariance(
        np.zeros((T, dU, dX)), np.full((T, dU), value), np.tile(0.01 * np.eye(dU), (T, 1, 1)))


def test_trainer_republishes_a_controller_the_sampler_lost(
    ros_processes, rclpy_node, experiment_file: Path
) -> None:
    env = MujocoEnv(load_experiment(experiment_file))
    ros_processes.start("mbpl_ros.sim_node", "sim", {"config": str(experiment_file), "mode": "lockstep"})
    ros_processes.start("mbpl_ros.sampler_node", "sampler",
                        {"config": str(experiment_file), "mode": "lockstep", "controller_history": 1,
                         "diagnostics_period": 0.1, "run_token": TOKEN})
    params = TrainerNodeParams(config=str(experiment_file), run_token=TOKEN, republish_after=0.5,
                               refused_wait=10.0, trial_timeout=TIMEOUT)
    transport = GraphTransport(rclpy_node, params)
    received = {"n": 0}
    counted = threading.Condition()

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("mbpl_sampler"):
                with counted:
                    received["n"] = int({kv.key: kv.value for kv in status.values}["controllers_received"])
                    counted.notify_all()

    rclpy_node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    ilqr = rclpy_node.create_publisher(ControllerMsg, "mbpl/controllers", CONTROLLERS_QOS)
    executor = MultiThreadedExecutor(context=rclpy_node.context)
    executor.add_node(rclpy_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        ilqr.publish(conversions.controller_to_msg(_constant(env, 0.2), 0, 1001, run_token=TOKEN))
        assert transport.controller(1001, TIMEOUT) is not None, "the trainer never saw controller 1001"
        with counted:
            assert counted.wait_for(lambda: received["n"] >= 1, TIMEOUT), "the sampler never got 1001"
        # another controller of condition 0 pushes 1001 out of a one-deep store before anyone asked for it
        ilqr.publish(conversions.controller_to_msg(_constant(env, -0.2), 0, 2001, run_token=TOKEN))
        with counted:
            assert counted.wait_for(lambda: received["n"] >= 2, TIMEOUT), "the sampler never got 2001"
        result = transport.run_trial(TrialRequest(condition=0, trial_id=1, controller_id=1001, seed=3,
                                                         add_noise=False))
        ros_processes.check_alive()
    finally:
        executor.shutdown()
        spinner.join(timeout=10.0)
    assert result is not None, "the trial was refused until refused_wait: the controller never came back"
    assert not result.meta.aborted and result.meta.controller_id == 1001
    assert transport.republished == [1001]
    assert np.all(result.batch.U[0, :, :] == np.clip(0.2, -env.effort_limits, env.effort_limits))


@pytest.mark.slow
def test_a_trial_aborted_before_its_first_step_is_rerun_once_the_driver_streams(
    ros_processes, rclpy_node, wait_for, experiment_file: Path, tmp_path: Path
) -> None:
    config = tmp_path / "no_driver.yaml"
    config.write_text(experiment_file.read_text() + EXTRA)
    run_dir = tmp_path / "run"
    common = {"config": str(config), "run_dir": str(run_dir)}
    ros_processes.start("mbpl_ros.sampler_node", "sampler",
                        common | {"mode": "realtime", "reset_service": "", "state_timeout": 0.5,
                                  "run_token": TOKEN})
    ros_processes.start("mbpl_ros.fitting_node", "fitting", common)
    ros_processes.start("mbpl_ros.ilqr_node", "ilqr", common | {"run_token": TOKEN})
    trainer = ros_processes.start("mbpl_ros.trainer_node", "trainer",
                                  common | {"run_token": TOKEN, "max_attempts": 99, "evaluate": False})

    def aborted_and_rerun() -> bool:
        return "aborted: stale state" in ros_processes.output(trainer)

    wait_for(rclpy_node, aborted_and_rerun, TIMEOUT, "a trial aborted on stale state, to be re-run")
    ros_processes.check_alive()  # the trainer survived the sample with no step
    ros_processes.start("mbpl_ros.sim_node", "driver",
                        {"config": str(config), "mode": "realtime", "realtime_rate": 100.0})
    assert trainer.wait(timeout=4 * TIMEOUT) == 0, ros_processes.output(trainer)
    assert SampleStore(run_dir).count() == 2 * 3, "every sample recorded once, none of the aborted ones"


def test_a_trial_lost_with_a_killed_sampler_is_queued_again_on_its_successor(
    ros_processes, rclpy_node, experiment_file: Path
) -> None:
    env = MujocoEnv(load_experiment(experiment_file))
    sampler_params = {"config": str(experiment_file), "mode": "lockstep", "reset_timeout": 60.0,
                      "diagnostics_period": 0.1, "run_token": TOKEN}
    first = ros_processes.start("mbpl_ros.sampler_node", "sampler", sampler_params)  # no sim yet: it hangs
    transport = GraphTransport(rclpy_node, TrainerNodeParams(
        config=str(experiment_file), run_token=TOKEN, requery_after=1.0, trial_timeout=25.0))
    running = threading.Event()

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if {kv.key: kv.value for kv in status.values}.get("running_trial") == "7":
                running.set()

    rclpy_node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    ilqr = rclpy_node.create_publisher(ControllerMsg, "mbpl/controllers", CONTROLLERS_QOS)
    ilqr.publish(conversions.controller_to_msg(_constant(env, 0.3), 1, 1002, run_token=TOKEN))
    executor = MultiThreadedExecutor(context=rclpy_node.context)
    executor.add_node(rclpy_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    outcome: dict[str, object] = {}
    request = TrialRequest(condition=1, trial_id=7, controller_id=1002, seed=0, add_noise=False)
    asking = threading.Thread(target=lambda: outcome.update(result=transport.run_trial(request)))
    try:
        asking.start()
        assert running.wait(TIMEOUT), "the first sampler never took trial 7"  # it waits for reset_sim
        first.kill()  # SIGKILL with the accepted trial
        first.wait()
        ros_processes.start("mbpl_ros.sim_node", "sim", {"config": str(experiment_file), "mode": "lockstep"})
        ros_processes.start("mbpl_ros.sampler_node", "sampler", sampler_params)
        asking.join(timeout=4 * TIMEOUT)
    finally:
        executor.shutdown()
        spinner.join(timeout=10.0)
    result = outcome.get("result")
    assert result is not None, "the trial waited out trial_timeout: nobody asked the new sampler for it"
    assert not result.meta.aborted and result.meta.trial_id == 7 and result.meta.controller_id == 1002
