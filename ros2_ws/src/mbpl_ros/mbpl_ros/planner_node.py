"""Planner node (PETS): answers the sampler's plan requests with MPC over the model node's ensemble.

* subscribes ``mbpl/plan_requests`` (mbpl_msgs/PlanRequest: trial, step t, state x_t, model version);
* publishes ``mbpl/plans`` (mbpl_msgs/Plan: actions u_t..u_{t+H-1} planned from x_t, stamped with t).

The ensemble of a version is read from ``<run_dir>/model/ensemble_v<version>.pt`` (written by the model
node); :class:`mbpl_ros.model_logic.PlannerService` does the planning. A malformed or foreign request is
rejected, logged and counted; the sampler then holds safely and aborts the trial when no plan comes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mbpl_msgs.msg import Plan, PlanRequest
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from mbpl_core.config import from_dict
from mbpl_core.costs import build_cost
from mbpl_core.planning.pets import PETSConfig, action_box
from mbpl_ros import conversions
from mbpl_ros.model_logic import PlannerService
from mbpl_ros.node_main import spin_node
from mbpl_ros.node_params import PlannerNodeParams, load_settings
from mbpl_ros.params import declare_parameters
from mbpl_ros.sampler_node import PLAN_QOS
from mbpl_sim.robot import load_robot_spec


class PlannerNode(Node):
    """ROS shell over one PlannerService."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("planner", **node_kwargs)
        self.params = declare_parameters(self, PlannerNodeParams)
        settings = load_settings(self.params.config, self.params.run_dir)
        experiment = settings.experiment
        config = from_dict(PETSConfig, experiment.pets, "pets")
        cost = build_cost(settings.cost, experiment.layout, experiment.robot.dQ)
        limits = action_box(config, load_robot_spec(experiment.robot).compile().actuator_ctrlrange[:, 1])
        self.service = PlannerService(settings.run_dir / "model", cost, experiment.layout.dX, limits,
                                      experiment.task.T, config, config.model.device)
        self.rejected = 0
        self._T = experiment.task.T
        self._times: dict[int, list[float]] = {}  # planning seconds per open trial
        self._pub = self.create_publisher(Plan, "mbpl/plans", PLAN_QOS)
        # keep only the newest request: in real time the sampler asks every control step, and a planner
        # slower than that must plan from the latest state, not work through a backlog of stale ones
        newest_only = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(PlanRequest, "mbpl/plan_requests", self._on_request, newest_only)
        self.get_logger().info(f"planner ({config.planner.method}, horizon {config.planner.horizon}, "
                               f"population {config.planner.population}) over {settings.run_dir / 'model'}")

    def _on_request(self, msg: PlanRequest) -> None:
        try:
            if self.params.run_token and msg.run_token != self.params.run_token:
                raise ValueError("unknown run_token (not from this run)")
            request = conversions.msg_to_plan_request(msg)
            plan = self.service.plan(request)
        except Exception as err:  # noqa: BLE001 - a request never ends the node
            self.rejected += 1
            self.get_logger().warning(f"plan request of trial {msg.trial_id} step {msg.t} rejected "
                                      f"({self.rejected} so far): {err}")
            return
        self._pub.publish(conversions.plan_to_msg(plan, self.get_clock().now().to_msg()))
        times = self._times.setdefault(request.trial_id, [])
        times.append(plan.planning_time)
        while len(self._times) > 16:  # trials that never reached their last step (aborted)
            self._times.pop(next(iter(self._times)))
        if request.t == self._T - 1:
            ms = 1e3 * np.asarray(self._times.pop(request.trial_id))
            self.get_logger().info(
                f"trial {request.trial_id}: {ms.size} plans over model v{request.model_version}, planning "
                f"median {np.median(ms):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms")


def main(args: list[str] | None = None) -> int:
    """Run the planner node until SIGINT/SIGTERM; exit code 2 on a configuration error."""
    return spin_node(PlannerNode, "planner node", args)


if __name__ == "__main__":
    raise SystemExit(main())
