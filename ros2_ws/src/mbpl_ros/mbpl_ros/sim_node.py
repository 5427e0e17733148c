"""MuJoCo simulation node: stands in for the robot driver (same topics), a thin shell over MujocoEnv.

Topics and services (relative names, so a namespace moves them all):

* publishes ``joint_states`` (sensor_msgs/JointState, stamped with sim time — seconds simulated since
  the node started, monotonic across resets; effort = the clipped command applied during the step
  that led to this state, zeros after a reset),
  ``/clock`` (rosgraph_msgs/Clock, lockstep only, while something subscribes to it: a message per step
  costs) and ``/diagnostics`` (counters);
* subscribes ``<controller>/commands`` (std_msgs/Float64MultiArray, dU efforts in joint order);
* serves ``reset_sim`` (mbpl_msgs/ResetSim: condition → success, message); the condition indexes the
  experiment's training conditions, or the held-out ones with ``condition_set: held_out`` (policy
  evaluation through the graph).

Modes:

* ``lockstep`` — publish x_k, wait for a command, step one control period (env.dt), publish x_{k+1}.
  A command carries no sequence number, so the node pairs the k-th command it receives with the k-th
  state it published; a client answers every state exactly once. ``reset_sim`` publishes the new
  x_0 and commands received afterwards pair with it. joint_states is reliable + transient-local
  (depth 1) so a client that subscribes late still receives the pending state.
* ``realtime`` — a thread steps the env at ``realtime_rate`` Hz against absolute wall-clock deadlines
  (one env.dt of sim time per tick, so the real-time factor is realtime_rate·dt) and holds the last
  command (zero-order hold).

A command of the wrong length or with NaN/Inf is rejected (logged with the reason, counted) and
zero effort is applied in its place.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from mbpl_msgs.srv import ResetSim
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from mbpl_core.config import ConfigError
from mbpl_ros import conversions
from mbpl_ros.params import declare_parameters, param
from mbpl_sim.env import MujocoEnv, SimulationError
from mbpl_sim.experiment import load_experiment
from mbpl_sim.task import CONDITION_SETS

STATE_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@dataclass(frozen=True)
class SimNodeParams:
    """Parameters of the sim node (declared on the node with these defaults and descriptions)."""

    config: str = param("experiment YAML file (robot, task, conditions, control period)", "")
    mode: str = param('"lockstep": one step per command; "realtime": wall-clock steps', "lockstep")
    controller: str = param("commands arrive on <controller>/commands", "effort_controller")
    realtime_rate: float = param("realtime mode: env steps per wall-clock second; 0 = 1/dt (real time)", 0.0)
    initial_condition: int = param("condition the simulation is reset to at start-up", 0)
    condition_set: str = param('conditions reset_sim indexes: "train", "held_out" or "validation"',
                               "train")
    publish_clock: bool = param("lockstep mode: publish sim time on /clock", True)
    command_timeout: float = param(
        "realtime mode: seconds without a command after which zero effort is applied (a driver's "
        "watchdog: a silent controller must not leave the last effort on); 0: hold it forever", 0.25)
    diagnostics_period: float = param("seconds between diagnostics messages", 1.0)

    def __post_init__(self) -> None:
        if not self.config:
            raise ConfigError("sim node: parameter 'config' (experiment YAML path) is required")
        if self.mode not in ("lockstep", "realtime"):
            raise ConfigError(f"sim node: mode must be 'lockstep' or 'realtime', got {self.mode!r}")
        if not self.controller or any(c.isspace() for c in self.controller):
            raise ConfigError(f"sim node: invalid controller name {self.controller!r}")
        if not np.isfinite(self.realtime_rate) or self.realtime_rate < 0:
            raise ConfigError(f"sim node: realtime_rate must be >= 0, got {self.realtime_rate}")
        if self.condition_set not in CONDITION_SETS:
            raise ConfigError(f"sim node: condition_set must be one of {CONDITION_SETS}, got "
                              f"{self.condition_set!r}")
        if self.initial_condition < 0:
            raise ConfigError(f"sim node: initial_condition must be >= 0, got {self.initial_condition}")
        if not np.isfinite(self.command_timeout) or self.command_timeout < 0:
            raise ConfigError(f"sim node: command_timeout must be >= 0, got {self.command_timeout}")
        if not self.diagnostics_period > 0:
            raise ConfigError(f"sim node: diagnostics_period must be > 0, got {self.diagnostics_period}")


@dataclass
class SimCounters:
    """What the node reports on /diagnostics."""

    steps: int = 0
    commands_received: int = 0
    commands_rejected: int = 0
    last_reject_reason: str = ""
    resets: int = 0
    simulation_errors: int = 0
    deadline_misses: int = 0
    command_timeouts: int = 0

    def as_key_values(self) -> list[KeyValue]:
        return [KeyValue(key=k, value=str(v)) for k, v in vars(self).items()]


def load_env(config_path: str, condition_set: str = "train") -> MujocoEnv:
    """MujocoEnv of an experiment file on its training (or held-out, or validation) conditions."""
    return MujocoEnv(load_experiment(config_path), condition_set=condition_set)


class Simulation:
    """MuJoCo stepped as the sim node steps it, for the sim node and for a sampler that steps MuJoCo itself
    (``sim_in_process``): one :meth:`step` is one control period (efforts clipped to the effort limits by
    the env), states are stamped with sim time monotonic across resets, and an unstable simulation is reset
    to its condition before :class:`SimulationError` propagates. ``counters``: steps, resets, simulation
    errors (the sim node adds its own commands and timing to the same record)."""

    def __init__(self, env: MujocoEnv) -> None:
        self.env = env
        self.joint_names = tuple(env.joint_names)
        self.condition = 0
        self._time_offset = 0.0
        self.counters = SimCounters()

    @property
    def sim_time(self) -> float:
        """Seconds simulated since the start: monotonic across resets, unlike env.time."""
        return self._time_offset + float(self.env.time)

    def reading(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(q, qd, sim time) now, in the env's joint order."""
        return self.env.joint_positions(), self.env.joint_velocities(), self.sim_time

    def reset(self, condition: int) -> tuple[np.ndarray, np.ndarray, float]:
        """x_0 of a condition (ConfigError if out of range), as :meth:`reading`."""
        self._time_offset += float(self.env.time)  # sim time (and /clock) must never run backwards
        self.env.reset(condition)
        self.condition = condition
        self.counters.resets += 1
        return self.reading()

    def step(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """One control period with effort u (dU,), as :meth:`reading`; the state vector is the sampler's
        to compute."""
        try:
            self.env.advance(u)
        except SimulationError:
            self.counters.simulation_errors += 1
            self.reset(self.condition)
            raise
        self.counters.steps += 1
        return self.reading()


class SimNode(Node):
    """ROS shell over one MujocoEnv; see the module docstring for topics and modes."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("sim", **node_kwargs)
        self.params = declare_parameters(self, SimNodeParams)
        self.env = load_env(self.params.config, self.params.condition_set)
        if self.params.initial_condition >= self.env.num_conditions:
            raise ConfigError(
                f"sim node: initial_condition {self.params.initial_condition} is out of range: "
                f"the experiment has {self.env.num_conditions} conditions"
            )
        self.sim = Simulation(self.env)
        self.joint_names = list(self.env.joint_names)
        self.dU = len(self.joint_names)
        self.effort_limits = np.asarray(self.env.effort_limits, dtype=np.float64)
        self.counters = self.sim.counters
        self._lock = threading.Lock()
        self._held = np.zeros(self.dU)
        self._last_command_ns = time.monotonic_ns()
        self._stop = threading.Event()
        self.context.on_shutdown(self._stop.set)
        self._state_pub = self.create_publisher(JointState, "joint_states", STATE_QOS)
        self._clock_pub = self.create_publisher(Clock, "/clock", 10) if self._publishes_clock else None
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        topic = f"{self.params.controller}/commands"
        self.create_subscription(Float64MultiArray, topic, self._on_command, COMMAND_QOS)
        self.create_service(ResetSim, "reset_sim", self._on_reset)
        self.create_timer(self.params.diagnostics_period, self._publish_diagnostics)
        self._reset(self.params.initial_condition)
        self._thread: threading.Thread | None = None
        if self.params.mode == "realtime":
            self._thread = threading.Thread(target=self._realtime_loop, name="sim_realtime", daemon=True)
            self._thread.start()
        self.get_logger().info(
            f"{self.params.mode} sim of {self.params.config}: {self.dU} joints, dt={self.env.dt:g} s, "
            f"commands on '{topic}'"
        )

    @property
    def _publishes_clock(self) -> bool:
        return self.params.mode == "lockstep" and self.params.publish_clock

    # -- commands --------------------------------------------------------------------------------
    def _validated(self, msg: Float64MultiArray) -> np.ndarray:
        """The command clipped to the effort limits, or zeros (counted and logged) if malformed."""
        self.counters.commands_received += 1
        try:
            u = conversions.msg_to_efforts(msg, self.dU)
        except Exception as err:  # noqa: BLE001 - ShapeError or anything else: zero effort, never an exit
            self.counters.commands_rejected += 1
            self.counters.last_reject_reason = str(err)
            reason = f"command rejected, zero effort applied: {err}"
            self.get_logger().warning(reason, throttle_duration_sec=1.0)
            return np.zeros(self.dU)
        return np.clip(u, -self.effort_limits, self.effort_limits)

    def _on_command(self, msg: Float64MultiArray) -> None:
        with self._lock:
            u = self._validated(msg)
            if self.params.mode == "realtime":
                self._held = u
                self._last_command_ns = time.monotonic_ns()
                return
            self._step_and_publish(u)

    def _step_and_publish(self, u: np.ndarray) -> None:
        """One control period with effort u (dU,), then publish; an unstable simulation is reset."""
        try:
            self.sim.step(u)
        except SimulationError as err:  # the simulation is back at its condition's initial state
            self.get_logger().error(f"{err}; reset to condition {self.sim.condition}")
            self._held = np.zeros(self.dU)
            self._publish_state(self._held)
            return
        self._publish_state(u)

    # -- state -------------------------------------------------------------------------------------
    def _publish_state(self, effort: np.ndarray) -> None:
        q, qd, sim_time = self.sim.reading()
        stamp = conversions.seconds_to_time(sim_time)
        if self._clock_pub is not None and self._clock_pub.get_subscription_count() > 0:
            self._clock_pub.publish(Clock(clock=stamp))  # a message per step costs, so only when read
        self._state_pub.publish(conversions.arrays_to_joint_state(self.joint_names, q, qd, effort, stamp))

    def _reset(self, condition: int) -> None:
        self.sim.reset(condition)
        self._held = np.zeros(self.dU)
        self._publish_state(self._held)

    def _on_reset(self, request: ResetSim.Request, response: ResetSim.Response) -> ResetSim.Response:
        with self._lock:
            try:
                self._reset(int(request.condition))
            except Exception as err:  # noqa: BLE001 - a bad request is answered, never a node exit
                response.success = False
                response.message = f"reset to condition {request.condition} failed: {err}"
                return response
        response.success, response.message = True, f"reset to condition {request.condition}"
        return response

    # -- realtime ------------------------------------------------------------------------------------
    def _realtime_loop(self) -> None:
        """Step at absolute deadlines (a sleeping thread keeps 1 kHz where rclpy timers drop ticks)."""
        rate = self.params.realtime_rate or 1.0 / float(self.env.dt)
        period_ns = int(round(1e9 / rate))
        deadline = time.monotonic_ns() + period_ns
        while not self._stop.is_set():
            delay = deadline - time.monotonic_ns()
            if delay > 0:
                self._stop.wait(delay * 1e-9)
            elif delay < -period_ns:
                self.counters.deadline_misses += 1
                deadline = time.monotonic_ns()  # resynchronise instead of bursting to catch up
            with self._lock:
                if not self.context.ok():
                    return
                self._watchdog(time.monotonic_ns())
                try:
                    self._step_and_publish(self._held)
                except RCLError:
                    if self.context.ok():
                        raise
                    return  # shutdown raced with the publish
            deadline += period_ns

    def _watchdog(self, now_ns: int) -> None:
        """Zero effort once no command came for command_timeout s (counted once per silence)."""
        timeout_ns = self.params.command_timeout * 1e9
        if timeout_ns > 0 and now_ns - self._last_command_ns > timeout_ns and np.any(self._held != 0.0):
            self._held = np.zeros(self.dU)
            self.counters.command_timeouts += 1
            self.get_logger().warning(f"no command for {self.params.command_timeout:g} s: zero effort")

    def stop(self) -> None:
        """Stop the realtime thread (if any) and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    # -- diagnostics -----------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"mbpl_sim: {self.get_fully_qualified_name()}", hardware_id="mujoco")
        with self._lock:
            values = self.counters.as_key_values()
            sim_time = self.sim.sim_time
        troubled = self.counters.commands_rejected or self.counters.deadline_misses
        status.level = DiagnosticStatus.WARN if troubled else DiagnosticStatus.OK
        status.message = f"{self.params.mode}, sim time {sim_time:.3f} s"
        status.values = values + [KeyValue(key="mode", value=self.params.mode)]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args: list[str] | None = None) -> int:
    """Run the sim node until SIGINT/SIGTERM; exit code 2 on a configuration error."""
    rclpy.init(args=args)
    node: SimNode | None = None
    try:
        node = SimNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as err:
        print(f"sim node: configuration error: {err}", flush=True)
        return 2
    finally:
        if node is not None:
            node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
