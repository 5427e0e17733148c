"""iLQR node: the KL-constrained LQR step per condition, a thin shell over ConditionOptimizer.

* serves ``mbpl/update_controller`` (mbpl_msgs/UpdateController: condition, iteration, dynamics,
  samples, optional reference, optional step_mult → new controller, η, KL, ε, step_mult, expected
  cost); the cost model comes from the samples (build_cost of the experiment's ``cost:`` +
  quadratic_cost_model); reference given → MDGPS, none → LQR-FLM; step_mult given (> 0) → the step
  is taken with it (MDGPS's step rule, decided by the trainer), 0 → the node's own LQR-FLM step rule.
  Idempotent per (condition, iteration).
* publishes controllers on ``mbpl/controllers`` (reliable, transient-local, so a late sampler gets
  them): at start the current one of every condition (the initial controllers on a fresh run), then
  each new one. Ids: ``trainer_logic.controller_id(i, m) = 1 + 1000 i + m`` for the controller that
  iteration i samples; the step of iteration i publishes ``controller_id(i + 1, m)``.

Per-condition state is persisted to ``<run_dir>/ilqr/condition_<m>.pkl`` (:mod:`mbpl_ros.step_logic`).
Settings the graph's step does not carry out (algorithm.step_check) are logged as warnings at start
(``step_logic.settings_not_honoured``).
"""

from __future__ import annotations

from typing import Any

from mbpl_msgs.msg import LinearGaussianController as ControllerMsg
from mbpl_msgs.srv import UpdateController
from rclpy.node import Node

from mbpl_core.containers import ShapeError
from mbpl_core.costs import build_cost
from mbpl_ros import conversions
from mbpl_ros.fitting_node import latched_qos, samples_to_batch
from mbpl_ros.node_main import spin_node
from mbpl_ros.node_params import IlqrNodeParams, load_settings
from mbpl_ros.params import declare_parameters
from mbpl_ros.step_logic import lqr_conditions, lqr_step, settings_not_honoured
from mbpl_ros.trainer_logic import controller_id
from mbpl_sim.env import MujocoEnv


class IlqrNode(Node):
    """ROS shell over one persisted ConditionOptimizer per condition."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("ilqr", **node_kwargs)
        self.params = declare_parameters(self, IlqrNodeParams)
        settings = load_settings(self.params.config, self.params.run_dir)
        env = MujocoEnv(settings.experiment)  # kinematics only: x0 of each condition
        algo, layout = settings.algorithm, settings.experiment.layout
        self.cost = build_cost(settings.cost, layout, env.dU)
        folder = settings.run_dir / "ilqr"
        x0s = [env.x0(m) for m in range(env.num_conditions)]
        self.conditions = lqr_conditions(folder, x0s, layout, env.dU, env.T, env.dt, algo.init, algo.kl,
                                         self.params.keep_results)
        self._pub = self.create_publisher(ControllerMsg, "mbpl/controllers", latched_qos(env.num_conditions))
        self.create_service(UpdateController, "mbpl/update_controller", self._on_update)
        for m in range(len(self.conditions)):
            self._publish_current(m)
        self.get_logger().info(f"LQR steps for {env.num_conditions} conditions, state in {folder}")
        for note in settings_not_honoured(algo):
            self.get_logger().warning(note)

    def _publish_current(self, m: int) -> None:
        cond = self.conditions[m]
        i = cond.last_iteration
        cid = controller_id(0 if i is None else i + 1, m)
        stamp = self.get_clock().now().to_msg()
        self._pub.publish(conversions.controller_to_msg(cond.state.controller, m, cid, stamp,
                                                        self.params.run_token))
        self.get_logger().info(f"published controller {cid} for condition {m}")

    def _on_update(self, request: UpdateController.Request,
                   response: UpdateController.Response) -> UpdateController.Response:
        m, i = int(request.condition), int(request.iteration)
        try:
            if m >= len(self.conditions):
                raise ShapeError(f"condition {m} out of range [0, {len(self.conditions)})")
            dynamics = conversions.msg_to_dynamics(request.dynamics)
            batch = samples_to_batch(list(request.samples))
            reference = conversions.msg_to_controller(request.reference) if request.has_reference else None
            step_mult = float(request.step_mult) if request.step_mult != 0.0 else None  # 0: LQR-FLM rule
            (controller, info), computed = lqr_step(self.conditions[m], i, dynamics, batch, self.cost,
                                                    reference, step_mult)
        except Exception as err:  # noqa: BLE001 - ShapeError, StaleRequestError, KL/PD failures, anything
            # else a request could provoke: answered success = false, never a node exit
            response.success = False
            response.message = f"LQR step of condition {m}, iteration {i} failed: {err}"
            self.get_logger().error(response.message)
            return response
        cid = controller_id(i + 1, m)
        stamp = self.get_clock().now().to_msg()
        response.controller = conversions.controller_to_msg(controller, m, cid, stamp, self.params.run_token)
        response.success = True
        response.eta, response.kl, response.epsilon = info.eta, info.kl, info.epsilon
        response.step_mult, response.expected_cost = info.step_mult, info.expected_cost
        response.message = (f"{'computed' if computed else 'stored'} controller {cid}: eta {info.eta:.3g}, "
                             f"kl {info.kl:.3g} / eps {info.epsilon:.3g}, step_mult {info.step_mult:.3g}"
                             + (" — zero step: no eta met the KL bound, kept the reference" if info.fallback
                                else ""))
        self.get_logger().info(f"condition {m}, iteration {i}: {response.message}")
        self._pub.publish(response.controller)  # again on a repeat: the sampler may have missed it
        return response


def main(args: list[str] | None = None) -> int:
    """Run the iLQR node until SIGINT/SIGTERM; exit code 2 on a configuration error."""
    return spin_node(IlqrNode, "iLQR node", args)


if __name__ == "__main__":
    raise SystemExit(main())
