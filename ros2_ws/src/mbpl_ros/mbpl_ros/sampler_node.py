"""Sampler node: runs LG controllers (or the deployed policy) on the robot or the sim, publishes trajectories.

A thin ROS shell over :class:`mbpl_ros.sampler_logic.Sampler` (trial logic, timing modes, safety: see
that module). Relative names, so a namespace moves them all:

* serves ``mbpl/run_trial`` (mbpl_msgs/RunTrial; answered at once, the trial is queued);
* subscribes ``joint_states``, ``mbpl/controllers`` (LinearGaussianController) and ``mbpl/policy``
  (PolicyParameters), the last two reliable + transient-local so a late-joining sampler gets them;
* publishes ``<controller>/commands`` (std_msgs/Float64MultiArray), ``mbpl/samples``
  (TrajectorySample at trial end) and ``/diagnostics``; calls ``reset_sim`` (ResetSim) before a trial.

With ``sim_in_process`` (``ros.sim_link: in_process``) the sampler is its own lockstep simulation
(:class:`mbpl_ros.sim_node.Simulation`, stepped as the sim node steps it): it publishes ``joint_states``
instead of subscribing to it, steps MuJoCo instead of publishing commands, resets it instead of calling
``reset_sim``, and adds the simulation's counters (``sim_steps``, ``sim_resets``,
``sim_simulation_errors``) to its diagnostics. An unstable simulation aborts the trial (the sim
node instead resets and the trial goes on from x_0).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import replace
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from mbpl_msgs.msg import LinearGaussianController as ControllerMsg
from mbpl_msgs.msg import Plan, PlanRequest, PolicyParameters, TrajectorySample
from mbpl_msgs.srv import ResetSim, RunTrial
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from mbpl_core.config import ConfigError
from mbpl_core.containers import ShapeError
from mbpl_core.policy import load_policy_checkpoint
from mbpl_ros import conversions
from mbpl_ros.node_main import spin_node
from mbpl_ros.params import declare_parameters
from mbpl_ros.plan_source import PlanRequestData
from mbpl_ros.sampler_logic import (
    RobotSetup,
    Sampler,
    SamplerParams,
    TrialAbortError,
    TrialRequest,
    TrialResult,
)
from mbpl_ros.sim_node import COMMAND_QOS, STATE_QOS, Simulation, load_env
from mbpl_sim.env import SimulationError
from mbpl_sim.experiment import load_experiment

PLAN_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
# a late-joining sampler must get the newest controller of every condition, however many there are
CONTROLLERS_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
# realtime: any driver's joint_states QoS is compatible with best effort, and a lost state is superseded
REALTIME_STATE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)


def _empty_sample(meta: conversions.SampleMetadata, stamp: Any) -> TrajectorySample:
    """An aborted trial with no recorded step: metadata only, t_steps = 0 (conversions needs T >= 1)."""
    msg = TrajectorySample(condition=meta.condition, trial_id=meta.trial_id, controller_id=meta.controller_id,
                           policy_kind=meta.policy_kind, aborted=meta.aborted, abort_reason=meta.abort_reason,
                           start_time=meta.start_time, end_time=meta.end_time, seed=meta.seed,
                           add_noise=meta.add_noise)
    msg.header.stamp = stamp
    return msg


class SamplerNode(Node):
    """ROS I/O of one :class:`Sampler` (it implements the sampler's SamplerIO protocol)."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("sampler", **node_kwargs)
        self.params = declare_parameters(self, SamplerParams)
        if self.params.mode == "realtime":
            # The control thread wakes from its sleep needing the GIL; with Python's default 5 ms
            # switch interval an executor callback in flight delays the tick by up to that much.
            sys.setswitchinterval(self.params.gil_switch_interval)
        experiment = load_experiment(self.params.config)
        setup = RobotSetup.from_experiment(experiment)
        if self.params.condition_set != "train":  # evaluation of a policy on targets never trained on
            others = experiment.conditions(self.params.condition_set)  # type: ignore[arg-type]
            setup = replace(setup, targets=tuple(experiment.target_points(c) for c in others))
        self.joint_order = conversions.JointOrder(setup.joint_names)
        self._command_pub = self.create_publisher(
            Float64MultiArray, f"{self.params.controller}/commands", COMMAND_QOS)
        self._sample_pub = self.create_publisher(TrajectorySample, "mbpl/samples", LATCHED_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._reset = None
        if self.params.reset_service and not self.params.sim_in_process:
            self._reset = self.create_client(ResetSim, self.params.reset_service)
        self.sampler = Sampler(self.params, setup, self)
        self._sim: Simulation | None = None
        if self.params.sim_in_process:  # the sampler is its own simulator: joint_states out, not in
            self._sim = Simulation(load_env(self.params.config, self.params.condition_set))
            if self._sim.joint_names != setup.joint_names:  # both are robot.joints, in that order
                raise ConfigError(f"sampler: the simulation's joints {self._sim.joint_names} are not the "
                                  f"robot's {setup.joint_names}")
            self._state_pub = self.create_publisher(JointState, "joint_states", STATE_QOS)
        else:
            state_qos = REALTIME_STATE_QOS if self.sampler.realtime else STATE_QOS
            self.create_subscription(JointState, "joint_states", self._on_joint_state, state_qos)
        self.create_subscription(ControllerMsg, "mbpl/controllers", self._on_controller, CONTROLLERS_QOS)
        self.create_subscription(PolicyParameters, "mbpl/policy", self._on_policy, LATCHED_QOS)
        # policy_kind "mpc": the planner node answers each step's request with a plan
        self._plan_request_pub = self.create_publisher(PlanRequest, "mbpl/plan_requests", PLAN_QOS)
        self.create_subscription(Plan, "mbpl/plans", self._on_plan, PLAN_QOS)
        self.create_service(RunTrial, "mbpl/run_trial", self._on_run_trial)
        self.create_timer(self.params.diagnostics_period, self._publish_diagnostics)
        if self.params.policy_checkpoint:
            self._deploy_checkpoint(self.params.policy_checkpoint)
        self.sampler.start()
        inside = ", MuJoCo in process" if self._sim is not None else ""
        self.get_logger().info(
            f"{self.params.mode} sampler of {self.params.config} at {1.0 / self.sampler.period_s:g} Hz: "
            f"{setup.num_conditions} conditions, T={setup.T}, dX={setup.dX}, dU={setup.dU}{inside}")

    def _deploy_checkpoint(self, path: str) -> None:
        """Deploy a saved policy (numpy only) as policy 0; ConfigError if it is missing or does not fit."""
        try:
            policy, _ = load_policy_checkpoint(path)
        except (OSError, ValueError) as err:  # ShapeError and ConfigError are ValueErrors
            raise ConfigError(f"sampler: policy_checkpoint {path!r} cannot be loaded: {err}") from err
        if not self.sampler.offer_policy(0, policy.params, self.params.run_token):
            raise ConfigError(f"sampler: policy_checkpoint {path!r} does not fit this robot: "
                              f"{self.sampler.counters.last_reject_reason}")

    # -- inputs: every callback is total, so no message can end the node -------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        try:
            q, qd = self.joint_order.extract(msg)
            stamp = conversions.time_to_seconds(msg.header.stamp)
        except Exception as err:  # noqa: BLE001 - ShapeError or anything else: an invalid state
            self.sampler.on_bad_state(str(err) or repr(err))
            return
        self.sampler.on_state(q, qd, stamp)

    def _on_controller(self, msg: ControllerMsg) -> None:
        setup = self.sampler.setup
        if not self.sampler.token_ok(msg.run_token):  # before any work on the arrays of a stranger
            self.sampler.offer_controller(int(msg.condition), int(msg.controller_id),
                                          ShapeError("unknown run_token"), msg.run_token)
            return
        try:
            controller: Any = conversions.msg_to_controller(msg, (setup.T, setup.dU, setup.dX))
        except Exception as err:  # noqa: BLE001 - a malformed message is a rejection, never an exit
            controller = err
        self.sampler.offer_controller(int(msg.condition), int(msg.controller_id), controller, msg.run_token)

    def _on_policy(self, msg: PolicyParameters) -> None:
        try:
            weights: Any = conversions.msg_to_policy_params(msg) if self.sampler.token_ok(msg.run_token) \
                else ShapeError("unknown run_token")
        except Exception as err:  # noqa: BLE001 - a malformed message is a rejection, never an exit
            weights = err
        self.sampler.offer_policy(int(msg.policy_id), weights, msg.run_token)

    def _on_plan(self, msg: Plan) -> None:
        try:
            plan: Any = conversions.msg_to_plan(msg)
        except Exception as err:  # noqa: BLE001 - a malformed message is a rejection, never an exit
            plan = err
        self.sampler.offer_plan(plan, msg.run_token)

    def _on_run_trial(self, request: RunTrial.Request, response: RunTrial.Response) -> RunTrial.Response:
        try:
            trial = TrialRequest(condition=int(request.condition), trial_id=int(request.trial_id),
                                 policy_kind=str(request.policy_kind), seed=int(request.seed),
                                 add_noise=bool(request.add_noise), controller_id=int(request.controller_id),
                                 run_token=str(request.run_token))
            response.accepted, response.message = self.sampler.request_trial(trial)
        except Exception as err:  # noqa: BLE001 - a malformed request is refused, never an exit
            response.accepted, response.message = False, f"refused: {err!r}"
        return response

    # -- SamplerIO --------------------------------------------------------------------------------------
    def publish_plan_request(self, request: PlanRequestData) -> None:
        """Ask the planner node for a plan from request.x (policy_kind "mpc")."""
        if self.context.ok():
            msg = conversions.plan_request_to_msg(request, self.get_clock().now().to_msg())
            self._plan_request_pub.publish(msg)

    def publish_command(self, u: np.ndarray) -> None:
        """Efforts u (dU,) on <controller>/commands (sim_in_process: one step of the simulation, whose
        next state is the sampler's next reading; TrialAbortError if the physics went unstable)."""
        if self._sim is not None:
            try:
                self._deliver(*self._sim.step(u), u)
            except SimulationError as err:
                self.get_logger().error(f"{err}; reset to condition {self._sim.condition}")
                raise TrialAbortError(f"simulation error: {err}") from err
            return
        if self.context.ok():  # the control thread may tick once more while SIGINT shuts rclpy down
            self._command_pub.publish(conversions.efforts_to_msg(u))

    def publish_sample(self, result: TrialResult) -> None:
        """The trial as a TrajectorySample on mbpl/samples (aborted ones too, with their reason)."""
        request = result.request
        meta = conversions.SampleMetadata(
            condition=request.condition, trial_id=request.trial_id, controller_id=result.controller_id,
            policy_kind=request.policy_kind, aborted=result.aborted, abort_reason=result.abort_reason,
            start_time=result.start_time, end_time=result.end_time, deadline_misses=result.deadline_misses,
            seed=request.seed, add_noise=request.add_noise)
        batch = result.batch()
        stamp = self.get_clock().now().to_msg()
        msg = conversions.sample_to_msg(batch, meta, stamp) if batch else _empty_sample(meta, stamp)
        self._sample_pub.publish(msg)

    def _deliver(self, q: np.ndarray, qd: np.ndarray, stamp: float, effort: np.ndarray) -> None:
        """sim_in_process: a state of the simulation to the sampler and joint_states."""
        time_msg = conversions.seconds_to_time(stamp)
        if self.context.ok():
            self._state_pub.publish(conversions.arrays_to_joint_state(self.joint_order.joint_names, q, qd,
                                                                      effort, time_msg))
        self.sampler.on_state(q, qd, stamp)

    def reset(self, condition: int, timeout: float) -> None:
        """Call ResetSim (blocking: runs on the sampler's worker thread); TrialAbortError on failure."""
        if self._sim is not None:
            try:
                reading = self._sim.reset(condition)
            except Exception as err:  # noqa: BLE001 - e.g. a condition out of range: the trial's reason
                raise TrialAbortError(f"reset to condition {condition} failed: {err}") from err
            self._deliver(*reading, np.zeros(len(reading[0])))
            return
        assert self._reset is not None
        name = self.params.reset_service
        if not self._reset.wait_for_service(timeout_sec=timeout):
            raise TrialAbortError(f"reset service '{name}' not available within {timeout:g} s")
        done = threading.Event()
        future = self._reset.call_async(ResetSim.Request(condition=condition))
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout) or future.result() is None:
            raise TrialAbortError(f"reset service '{name}' did not answer within {timeout:g} s")
        if not future.result().success:
            raise TrialAbortError(f"reset to condition {condition} failed: {future.result().message}")

    def log(self, level: str, text: str) -> None:
        """Log through the node's logger; level "info" | "warn" | "error"."""
        logger = self.get_logger()  # one call site per severity: rclpy refuses mixing them on one line
        if level == "info":
            logger.info(text)
        elif level == "warn":
            logger.warning(text)
        else:
            logger.error(text)

    def _publish_diagnostics(self) -> None:
        ok, message, values = self.sampler.diagnostics()
        if self._sim is not None:
            c = self._sim.counters
            values = values | {"sim_steps": str(c.steps), "sim_resets": str(c.resets),
                               "sim_simulation_errors": str(c.simulation_errors)}
        status = DiagnosticStatus(name=f"mbpl_sampler: {self.get_fully_qualified_name()}",
                                  hardware_id="mbpl_sampler", message=message,
                                  level=DiagnosticStatus.OK if ok else DiagnosticStatus.WARN)
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    """Run the sampler node until SIGINT/SIGTERM; exit code 2 on a configuration error.

    No callback here blocks (resets are awaited on the sampler's worker thread), and rclpy's
    MultiThreadedExecutor was measured to burn a whole core on 100 Hz joint_states and starve the
    control thread (25 Hz achieved of 100): spin_node's single executor thread it is.
    """
    return spin_node(SamplerNode, "sampler node", args, on_exit=lambda node: node.sampler.stop())


if __name__ == "__main__":
    raise SystemExit(main())
