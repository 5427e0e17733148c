"""Fitting node: local linear dynamics per condition (BLR with a GMM prior), a thin shell over DynamicsFitter.

* serves ``mbpl/fit_dynamics`` (mbpl_msgs/FitDynamics: condition, iteration, samples → dynamics);
  idempotent per (condition, iteration): a repeated request returns the stored result;
* publishes every fit on ``mbpl/dynamics`` (mbpl_msgs/LinearDynamics, reliable, transient-local).

Per-condition state is persisted to ``<run_dir>/fitting/condition_<m>.pkl`` after each fit and
reloaded at start (:mod:`mbpl_ros.step_logic`), so a restarted node resumes where it was.
"""

from __future__ import annotations

from typing import Any

from mbpl_msgs.msg import LinearDynamics as LinearDynamicsMsg
from mbpl_msgs.srv import FitDynamics
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from mbpl_core.containers import SampleBatch, ShapeError
from mbpl_ros import conversions
from mbpl_ros.node_main import spin_node
from mbpl_ros.node_params import FittingNodeParams, load_settings
from mbpl_ros.params import declare_parameters
from mbpl_ros.step_logic import fit, fitting_conditions


def latched_qos(depth: int) -> QoSProfile:
    """Reliable + transient-local: a late subscriber still receives the last ``depth`` messages."""
    return QoSProfile(depth=max(10, depth), reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def samples_to_batch(samples: list[Any]) -> SampleBatch:
    """TrajectorySample messages → one SampleBatch X (N, T, dX), U (N, T, dU); ShapeError if malformed."""
    if not samples:
        raise ShapeError("the request holds no samples")
    return SampleBatch.concatenate([conversions.msg_to_sample(msg)[0] for msg in samples])


class FittingNode(Node):
    """ROS shell over one persisted DynamicsFitter per condition."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("fitting", **node_kwargs)
        self.params = declare_parameters(self, FittingNodeParams)
        settings = load_settings(self.params.config, self.params.run_dir)
        folder = settings.run_dir / "fitting"
        self.conditions = fitting_conditions(folder, settings.num_conditions, settings.algorithm.dynamics,
                                             self.params.keep_results)
        qos = latched_qos(settings.num_conditions)
        self._pub = self.create_publisher(LinearDynamicsMsg, "mbpl/dynamics", qos)
        self.create_service(FitDynamics, "mbpl/fit_dynamics", self._on_fit)
        resumed = {m: c.last_iteration for m, c in enumerate(self.conditions) if c.last_iteration is not None}
        self.get_logger().info(f"fitting {settings.num_conditions} conditions, state in {folder}"
                               + (f"; resumed at iterations {resumed}" if resumed else ""))

    def _on_fit(self, request: FitDynamics.Request, response: FitDynamics.Response) -> FitDynamics.Response:
        m, i = int(request.condition), int(request.iteration)
        try:
            if m >= len(self.conditions):
                raise ShapeError(f"condition {m} out of range [0, {len(self.conditions)})")
            batch = samples_to_batch(list(request.samples))
            dynamics, computed = fit(self.conditions[m], i, batch)
        except Exception as err:  # noqa: BLE001 - ShapeError, StaleRequestError, KL/PD failures, anything
            # else a request could provoke: answered success = false, never a node exit
            response.success, response.message = False, f"fit of condition {m}, iteration {i} failed: {err}"
            self.get_logger().error(response.message)
            return response
        response.dynamics = conversions.dynamics_to_msg(dynamics, m, i, self.get_clock().now().to_msg())
        response.success = True
        verb = "fitted" if computed else "stored fit of"
        response.message = f"{verb} condition {m}, iteration {i} (N={batch.N})"
        self.get_logger().info(response.message)
        if computed:
            self._pub.publish(response.dynamics)
        return response


def main(args: list[str] | None = None) -> int:
    """Run the fitting node until SIGINT/SIGTERM; exit code 2 on a configuration error."""
    return spin_node(FittingNode, "fitting node", args)


if __name__ == "__main__":
    raise SystemExit(main())
