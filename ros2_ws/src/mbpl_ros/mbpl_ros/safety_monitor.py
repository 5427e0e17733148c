"""Safety monitor: watches the effort topic and counts every command that is not safe to apply.

A command u on ``<controller>/commands`` (std_msgs/Float64MultiArray) is unsafe when it has the wrong
length (≠ dU), a NaN/Inf entry, or an entry beyond the robot's effort limit |u_i| > e_i. The monitor
only observes (the sampler already clips; a driver must still enforce its own limits): it publishes
its counts on ``/diagnostics`` (``commands_seen``, ``unsafe_commands``, ``last_unsafe``) and, with the
parameter ``summary_file``, writes them as JSON when it stops — so a test graph or a fault campaign can
assert that not one unsafe command was sent. :class:`CommandMonitor` is the logic, tested without ROS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbpl_core.config import ConfigError
from mbpl_ros.params import param


@dataclass
class CommandMonitor:
    """Counts of the commands seen and of the unsafe ones; effort_limits: (dU,) = e."""

    effort_limits: np.ndarray
    commands_seen: int = 0
    unsafe_commands: int = 0
    nonzero_commands: int = 0
    max_abs_ratio: float = 0.0
    last_unsafe: str = ""

    def check(self, data: Sequence[float]) -> str:
        """Record one command; the reason it is unsafe, or "" when it is safe."""
        u = np.asarray(data, dtype=np.float64)
        self.commands_seen += 1
        limits = np.asarray(self.effort_limits, dtype=np.float64)
        reason = ""
        if u.shape != limits.shape:
            reason = f"{u.size} efforts, expected {limits.size}"
        elif not np.all(np.isfinite(u)):
            reason = f"non-finite effort {u.tolist()}"
        else:
            ratio = float(np.max(np.abs(u) / limits, initial=0.0))
            self.max_abs_ratio = max(self.max_abs_ratio, ratio)
            self.nonzero_commands += bool(np.any(u != 0.0))
            if ratio > 1.0:
                reason = f"effort {u.tolist()} beyond the limits {limits.tolist()}"
        if reason:
            self.unsafe_commands += 1
            self.last_unsafe = reason
        return reason

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["effort_limits"] = [float(e) for e in self.effort_limits]
        return out


@dataclass(frozen=True)
class SafetyMonitorParams:
    """Parameters of the safety monitor node."""

    config: str = param("experiment YAML file (the robot and its effort limits)", "")
    controller: str = param("efforts are read from <controller>/commands", "effort_controller")
    summary_file: str = param("JSON file the counts are written to when the node stops; empty: none", "")
    diagnostics_period: float = param("seconds between /diagnostics messages", 1.0)

    def __post_init__(self) -> None:
        if not self.config:
            raise ConfigError("safety_monitor: parameter 'config' (experiment YAML path) is required")
        if not self.diagnostics_period > 0:
            raise ConfigError("safety_monitor: diagnostics_period must be > 0")


def main(args: list[str] | None = None) -> int:
    """Run the monitor until SIGINT/SIGTERM; write summary_file then."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from std_msgs.msg import Float64MultiArray

    from mbpl_ros.params import declare_parameters
    from mbpl_ros.sim_node import COMMAND_QOS
    from mbpl_sim.experiment import load_experiment
    from mbpl_sim.robot import load_robot_spec

    class SafetyMonitorNode(Node):
        def __init__(self) -> None:
            super().__init__("safety_monitor")
            self.params = declare_parameters(self, SafetyMonitorParams)
            model = load_robot_spec(load_experiment(self.params.config).robot).compile()
            self.monitor = CommandMonitor(model.actuator_ctrlrange[:, 1].copy())
            topic = f"{self.params.controller}/commands"
            self.create_subscription(Float64MultiArray, topic, self._on_command, COMMAND_QOS)
            self._diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            self.create_timer(self.params.diagnostics_period, self._publish)

        def _on_command(self, msg: Float64MultiArray) -> None:
            try:
                reason = self.monitor.check(msg.data)
            except Exception as err:  # noqa: BLE001 - the monitor must outlive any message
                self.monitor.unsafe_commands += 1
                reason = self.monitor.last_unsafe = f"undecodable command: {err!r}"
            if reason:
                self.get_logger().error(f"UNSAFE command: {reason}", throttle_duration_sec=1.0)

        def _publish(self) -> None:
            status = DiagnosticStatus(name="mbpl_safety_monitor", hardware_id="mbpl_safety_monitor",
                                      level=DiagnosticStatus.ERROR if self.monitor.unsafe_commands
                                      else DiagnosticStatus.OK,
                                      message=f"{self.monitor.unsafe_commands} unsafe of "
                                              f"{self.monitor.commands_seen} commands")
            status.values = [KeyValue(key=k, value=str(v)) for k, v in self.monitor.summary().items()]
            self._diag.publish(DiagnosticArray(status=[status]))

        def write_summary(self) -> None:
            if self.params.summary_file:
                Path(self.params.summary_file).write_text(json.dumps(self.monitor.summary(), indent=1))

    rclpy.init(args=args)
    node: Any = None
    try:
        node = SafetyMonitorNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as err:
        print(f"safety monitor: configuration error: {err}", flush=True)
        return 2
    finally:
        if node is not None:
            node.write_summary()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
