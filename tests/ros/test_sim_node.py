"""The sim node as a process over DDS: both modes answer, lockstep is deterministic, bad commands count."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")
pytest.importorskip("mbpl_sim.env")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from mbpl_msgs.srv import ResetSim  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.sim_node import COMMAND_QOS, STATE_QOS  # noqa: E402

STARTUP_TIMEOUT = 30.0
STEP_TIMEOUT = 10.0


class SimClient:
    """Records joint states and diagnostics of one sim node and sends it commands."""

    def __init__(self, node: object, namespace: str = "") -> None:
        self.node = node
        self.states: list[JointState] = []
        self.diagnostics: list[dict[str, str]] = []
        prefix = f"{namespace}/" if namespace else ""
        node.create_subscription(JointState, f"{prefix}joint_states", self.states.append, STATE_QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        topic = f"{prefix}effort_controller/commands"
        self.commands = node.create_publisher(Float64MultiArray, topic, COMMAND_QOS)
        self.reset = node.create_client(ResetSim, f"{prefix}reset_sim")

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            self.diagnostics.append({kv.key: kv.value for kv in status.values} | {"name": status.name})


def _run_lockstep(node: object, wait_for: object, commands: np.ndarray, namespace: str) -> np.ndarray:
    """Answer each state with the next command; returns [q, qd] of the T+1 states, (T+1, 2 dQ)."""
    client = SimClient(node, namespace)
    wait_for(node, lambda: len(client.states) >= 1, STARTUP_TIMEOUT, "the initial state")
    for k, u in enumerate(commands):
        client.commands.publish(conversions.efforts_to_msg(u))
        wait_for(node, lambda k=k: len(client.states) >= k + 2, STEP_TIMEOUT, f"state {k + 1}")
    return np.array([np.r_[s.position, s.velocity] for s in client.states])


def _sim_params(experiment: Path, **overrides: object) -> dict[str, object]:
    return {"config": str(experiment), "mode": "lockstep", "diagnostics_period": 0.2} | overrides


def test_lockstep_is_deterministic_and_steps_once_per_command(
    ros_processes, rclpy_node, wait_for, experiment_file: Path
) -> None:
    commands = np.random.default_rng(0).uniform(-2.0, 2.0, size=(15, 2))
    runs = []
    for run in range(2):
        ns = f"/run{run}"
        params = _sim_params(experiment_file)
        proc = ros_processes.start("mbpl_ros.sim_node", "sim", params, "-r", f"__ns:={ns}")
        runs.append(_run_lockstep(rclpy_node, wait_for, commands, ns))
        assert proc.poll() is None, ros_processes.output(proc)
    assert runs[0].shape == (16, 4)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.all(np.abs(np.diff(runs[0], axis=0)).sum(axis=1) > 0), "every command must advance the state"


def test_bad_command_is_rejected_counted_and_zero_applied(
    ros_processes, rclpy_node, wait_for, experiment_file: Path
) -> None:
    ros_processes.start("mbpl_ros.sim_node", "sim", _sim_params(experiment_file))
    client = SimClient(rclpy_node)
    wait_for(rclpy_node, lambda: len(client.states) >= 1, STARTUP_TIMEOUT, "the initial state")
    client.commands.publish(conversions.efforts_to_msg(np.array([1.0, 2.0, 3.0])))
    wait_for(rclpy_node, lambda: len(client.states) >= 2, STEP_TIMEOUT, "the state after a bad command")
    nan_cmd = Float64MultiArray(data=[float("nan"), 0.0])
    client.commands.publish(nan_cmd)
    wait_for(rclpy_node, lambda: len(client.states) >= 3, STEP_TIMEOUT, "the state after a NaN command")
    assert list(client.states[1].effort) == [0.0, 0.0] and list(client.states[2].effort) == [0.0, 0.0]

    def rejected_twice() -> bool:
        return any(d.get("commands_rejected") == "2" for d in client.diagnostics)

    wait_for(rclpy_node, rejected_twice, STEP_TIMEOUT, "diagnostics counting two rejected commands")
    last = [d for d in client.diagnostics if d.get("commands_rejected") == "2"][-1]
    assert last["commands_received"] == "2" and "NaN" in last["last_reject_reason"]


def test_reset_service_and_clock(ros_processes, rclpy_node, wait_for, experiment_file: Path) -> None:
    ros_processes.start("mbpl_ros.sim_node", "sim", _sim_params(experiment_file))
    client = SimClient(rclpy_node)
    wait_for(rclpy_node, lambda: len(client.states) >= 1, STARTUP_TIMEOUT, "the initial state")
    client.commands.publish(conversions.efforts_to_msg(np.array([1.0, -1.0])))
    wait_for(rclpy_node, lambda: len(client.states) >= 2, STEP_TIMEOUT, "one step")
    assert conversions.time_to_seconds(client.states[1].header.stamp) == pytest.approx(0.01)
    assert client.reset.wait_for_service(timeout_sec=STEP_TIMEOUT)
    for condition, success in ((1, True), (7, False)):
        future = client.reset.call_async(ResetSim.Request(condition=condition))
        wait_for(rclpy_node, future.done, STEP_TIMEOUT, f"reset_sim({condition})")
        assert future.result().success is success, future.result().message
    wait_for(rclpy_node, lambda: len(client.states) >= 3, STEP_TIMEOUT, "the state after reset")
    np.testing.assert_array_equal(client.states[2].position, client.states[0].position)
    stamp_after_reset = conversions.time_to_seconds(client.states[2].header.stamp)
    assert stamp_after_reset == pytest.approx(0.01), "sim time must not run backwards on reset"
    # /clock: published with each state once someone reads it (nobody here did until now)
    clocks: list[float] = []
    rclpy_node.create_subscription(Clock, "/clock",
                                   lambda m: clocks.append(conversions.time_to_seconds(m.clock)), 10)
    deadline = time.monotonic() + STEP_TIMEOUT
    while not clocks and time.monotonic() < deadline:  # step until the sim has matched the subscription
        before = len(client.states)
        client.commands.publish(conversions.efforts_to_msg(np.zeros(2)))
        wait_for(rclpy_node, lambda before=before: len(client.states) > before, STEP_TIMEOUT, "a step")
        t0 = time.monotonic()  # spin a little: a /clock may be in flight
        wait_for(rclpy_node, lambda t0=t0: bool(clocks) or time.monotonic() - t0 > 0.05, STEP_TIMEOUT, "")
    assert clocks, f"no /clock within {STEP_TIMEOUT:g} s of stepping"
    stamps = [conversions.time_to_seconds(st.header.stamp) for st in client.states]
    assert set(clocks) <= set(stamps), (clocks, stamps)  # the clock is the states' sim time


def test_realtime_mode_streams_states_and_holds_the_command(
    ros_processes, rclpy_node, wait_for, experiment_file: Path
) -> None:
    params = _sim_params(experiment_file, mode="realtime", realtime_rate=200.0, command_timeout=0.0)
    ros_processes.start("mbpl_ros.sim_node", "sim", params)
    client = SimClient(rclpy_node)
    wait_for(rclpy_node, lambda: len(client.states) >= 10, STARTUP_TIMEOUT, "10 streamed states")
    client.commands.publish(conversions.efforts_to_msg(np.array([0.5, -0.25])))

    def held() -> bool:
        return sum(list(s.effort) == [0.5, -0.25] for s in client.states) >= 5

    wait_for(rclpy_node, held, STEP_TIMEOUT, "5 states with the held command")
    stamps = [conversions.time_to_seconds(s.header.stamp) for s in client.states]
    assert all(b > a for a, b in zip(stamps[1:], stamps[2:], strict=False)), "sim time must advance"


def test_realtime_watchdog_zeroes_the_effort_of_a_silent_controller(
    ros_processes, rclpy_node, wait_for, experiment_file: Path
) -> None:
    params = _sim_params(experiment_file, mode="realtime", realtime_rate=200.0, command_timeout=0.2)
    ros_processes.start("mbpl_ros.sim_node", "sim", params)
    client = SimClient(rclpy_node)
    wait_for(rclpy_node, lambda: len(client.states) >= 1, STARTUP_TIMEOUT, "a streamed state")
    client.commands.publish(conversions.efforts_to_msg(np.array([0.5, -0.25])))
    wait_for(rclpy_node, lambda: any(list(s.effort) == [0.5, -0.25] for s in client.states), STEP_TIMEOUT,
             "a state with the command applied")
    first = next(i for i, s in enumerate(client.states) if list(s.effort) == [0.5, -0.25])
    # then the controller falls silent: the sim must go back to zero effort by itself
    wait_for(rclpy_node, lambda: any(not any(s.effort) for s in client.states[first:]), STEP_TIMEOUT,
             "zero effort after command_timeout without commands")
    wait_for(rclpy_node, lambda: client.diagnostics and int(client.diagnostics[-1].get("command_timeouts", 0))
             == 1, STEP_TIMEOUT, "the watchdog counted on /diagnostics")


def test_declared_parameters_match_the_schema(rclpy_node, experiment_file: Path) -> None:
    """The node's declared parameters are the schema's fields; overrides are typed and validated."""
    from rclpy.parameter import Parameter

    from mbpl_core.config import ConfigError
    from mbpl_ros.params import declare_parameters, schema_defaults
    from mbpl_ros.sim_node import SimNodeParams

    overrides = [Parameter("config", value=str(experiment_file)), Parameter("realtime_rate", value=250.0)]
    node = rclpy.create_node("schema_check", context=rclpy_node.context, parameter_overrides=overrides)
    params = declare_parameters(node, SimNodeParams)
    assert set(schema_defaults(SimNodeParams)) <= set(node._parameters)
    assert params == SimNodeParams(config=str(experiment_file), realtime_rate=250.0)
    node.destroy_node()
    bad_overrides = [Parameter("config", value="x.yaml"), Parameter("mode", value="fast")]
    bad = rclpy.create_node("schema_bad", context=rclpy_node.context, parameter_overrides=bad_overrides)
    with pytest.raises(ConfigError, match="mode must be"):
        declare_parameters(bad, SimNodeParams)
    bad.destroy_node()
