"""Trainer node: runs the LQR-FLM or MDGPS iterations of :class:`mbpl_ros.trainer_logic.TrainerLoop` over DDS.

Calls ``mbpl/run_trial`` and waits for each sample on ``mbpl/samples``, records every sample to
rosbag2 (``<run_dir>/bags``), calls ``mbpl/fit_dynamics`` then ``mbpl/update_controller`` per condition
(:mod:`mbpl_ros.trainer_transport`), checkpoints ``<run_dir>/trainer_state.json`` after every
iteration. When done it writes ``history.json`` and ``history.png`` and exits 0, which ends the graph.
A restarted trainer resumes at its last finished iteration and keeps the samples already recorded.

With ``method: mdgps`` in the experiment, :class:`mbpl_ros.gps_hooks.GPSHooks` adds the policy: it
linearises it as the KL reference of each LQR step, trains it (S-step) on the new controllers, writes
``<run_dir>/policy`` and publishes it on ``mbpl/policy``, and evaluates it after every iteration.

The loop runs in the main thread; a MultiThreadedExecutor in a background thread serves the clients'
responses and the sample subscription (a reentrant callback group, so waiting never blocks them).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from mbpl_core.config import ConfigError
from mbpl_core.costs import build_cost
from mbpl_ros.gps_hooks import build_gps_hooks
from mbpl_ros.node_params import TrainerNodeParams, load_settings
from mbpl_ros.params import declare_parameters
from mbpl_ros.trainer_logic import Hooks, LoopSettings, TrainerLoop, run_summary, write_history
from mbpl_ros.trainer_transport import GraphTransport


class TrainerNode(Node):
    """ROS shell over TrainerLoop; ``hooks`` replaces the experiment's (GPSHooks for mdgps, else none)."""

    def __init__(self, hooks: Hooks | None = None, **node_kwargs: Any) -> None:
        super().__init__("trainer", **node_kwargs)
        self.params = declare_parameters(self, TrainerNodeParams)
        self.settings = load_settings(self.params.config, self.params.run_dir)
        self.transport = GraphTransport(self, self.params)
        self.hooks = hooks

    def train(self) -> None:
        """Run (or resume) the loop to the end, then write the history and its plot."""
        algo, experiment = self.settings.algorithm, self.settings.experiment
        iterations = algo.iterations if self.params.iterations < 0 else self.params.iterations
        loop_settings = LoopSettings(self.settings.num_conditions, iterations, algo.samples_per_condition,
                                     algo.seed, self.params.max_attempts, self.params.evaluate)
        cost = build_cost(self.settings.cost, experiment.layout, experiment.robot.dQ)
        log = self.get_logger().info
        hooks = self.hooks or build_gps_hooks(experiment, self.settings.run_dir, self.transport, cost,
                                              algo.kl, self.params.max_attempts, log)
        loop = TrainerLoop(self.settings.run_dir, loop_settings, self.transport, cost, experiment.layout,
                           hooks, log=log)
        state = loop.run()
        json_path, png = write_history(self.settings.run_dir, state.history)
        self.get_logger().info(f"done: {run_summary(state.history)}")
        self.get_logger().info(f"{loop.store.count()} samples in {loop.store.root}; history {json_path}, "
                               f"plot {png}")


def _spin(executor: MultiThreadedExecutor) -> None:
    with contextlib.suppress(ExternalShutdownException):
        executor.spin()


def main(args: list[str] | None = None) -> int:
    """Train to the end (exit 0), or stop on SIGINT/SIGTERM (130) or a failure (1); 2 on a config error."""
    rclpy.init(args=args)
    node: TrainerNode | None = None
    executor = MultiThreadedExecutor()
    spinner = threading.Thread(target=_spin, args=(executor,), name="trainer_executor")
    try:
        node = TrainerNode()
        executor.add_node(node)
        spinner.start()
        node.train()
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 130
    except ConfigError as err:
        print(f"trainer node: configuration error: {err}", flush=True)
        return 2
    except RuntimeError as err:  # a failed service call or a trial that never produced a sample
        print(f"trainer node: {err}", flush=True)
        return 1
    finally:
        # the spinning thread must be out of rcl before teardown, or the process aborts at exit
        executor.shutdown(timeout_sec=10.0)
        if spinner.is_alive():
            spinner.join(timeout=10.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
