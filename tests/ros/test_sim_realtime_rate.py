"""The real-time sim node's rate: sim time advances with wall time at the real-time factor realtime_rate·dt.

Counted, not timed against a threshold: over a window of >= 1.5 s of wall time (measured on receipt in this
process) the sim time carried by the states must advance by the factor within a generous band. The
upper edge is firm (the loop sleeps to absolute deadlines and never bursts to catch up, so it cannot run
fast); the lower edge leaves 30 % for a loaded machine (measured under a load average of ~5 on 2 cores:
within 0.5 % of the factor) and still catches a period off by a factor of 2.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")
pytest.importorskip("mbpl_sim.env")

from sensor_msgs.msg import JointState  # noqa: E402

from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.sim_node import STATE_QOS  # noqa: E402

DT = 0.01  # the experiment_file fixture's control period
WINDOW = 1.5  # s of wall time


@pytest.mark.parametrize(("rate", "factor"), [(0.0, 1.0), (50.0, 0.5)])
def test_sim_time_advances_with_wall_time_at_the_real_time_factor(
    ros_processes, rclpy_node, wait_for, experiment_file: Path, rate: float, factor: float
) -> None:
    received: list[tuple[float, float]] = []  # (wall time of receipt, sim time of the state)

    def on_state(msg: JointState) -> None:
        received.append((time.monotonic(), conversions.time_to_seconds(msg.header.stamp)))

    rclpy_node.create_subscription(JointState, "joint_states", on_state, STATE_QOS)
    ros_processes.start("mbpl_ros.sim_node", "sim", {"config": str(experiment_file), "mode": "realtime",
                                                     "realtime_rate": rate, "diagnostics_period": 0.5})
    wait_for(rclpy_node, lambda: len(received) >= 5, 30.0, "the first streamed states")

    def window_done() -> bool:
        return received[-1][0] - received[4][0] >= WINDOW

    wait_for(rclpy_node, window_done, 30.0, f"{WINDOW} s of streamed states")
    (wall0, sim0), (wall1, sim1) = received[4], received[-1]
    measured = (sim1 - sim0) / (wall1 - wall0)
    assert 0.7 * factor < measured < 1.2 * factor, (
        f"sim time advanced {sim1 - sim0:.3f} s in {wall1 - wall0:.3f} s of wall time: "
        f"factor {measured:.3f}, expected realtime_rate·dt = {factor}")
    steps = [b - a for (_, a), (_, b) in zip(received[4:], received[5:], strict=False)]
    assert min(steps) == pytest.approx(DT, rel=1e-6), "one env.dt of sim time per published state"
