"""Sim node over DDS: lockstep control steps per second and realtime rate / jitter.

Lockstep: the sim node runs as its own process; a minimal client answers every joint state with a
zero command (state out → command in → one env step → next state), for reacher2 and arm7. Reported:
steps/s and the round-trip time per step (p50, p99).

Realtime: the sim node steps itself at 100 Hz and 500 Hz; the client records arrival times.
Reported: achieved rate, inter-arrival jitter (std, p99 |interval − period|) at the client, and the
node's own deadline-miss counter.

Prints a table and writes bench/results/sim_lockstep.json. Run inside scripts/ros_env.sh (make bench)
or on its own: it isolates its graph with a pid-derived ROS_DOMAIN_ID when none is set.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 101))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOG_DIR", str(Path(tempfile.gettempdir()) / "mbpl-bench-ros-log"))

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.params import write_params_file  # noqa: E402
from mbpl_ros.sim_node import COMMAND_QOS, STATE_QOS  # noqa: E402

LOCKSTEP_CONFIGS = ["reacher2_sim", "arm7_reach"]
LOCKSTEP_STEPS = 3000
REALTIME_RATES = [100.0, 500.0]
REALTIME_SECONDS = 4.0
STARTUP_TIMEOUT = 60.0


def start_sim(workdir: Path, config: str, **params: Any) -> subprocess.Popen:
    """The sim node as its own process."""
    params = {"config": str(ROOT / f"configs/{config}.yaml")} | params
    path = write_params_file(workdir / f"{config}.yaml", "/**", params)
    cmd = [sys.executable, "-m", "mbpl_ros.sim_node", "--ros-args", "--params-file", str(path)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def stop_sim(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def spin_until(executor: SingleThreadedExecutor, predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        executor.spin_once(timeout_sec=0.05)


def bench_lockstep(node: Any, executor: SingleThreadedExecutor, workdir: Path, config: str) -> dict[str, Any]:
    """Zero command for every state; returns steps/s and round-trip times."""
    proc = start_sim(workdir, config, mode="lockstep")
    arrivals: list[float] = []
    sent: list[float] = []
    zero: Float64MultiArray | None = None
    pub = node.create_publisher(Float64MultiArray, "effort_controller/commands", COMMAND_QOS)

    def on_state(msg: JointState) -> None:
        nonlocal zero
        arrivals.append(time.perf_counter())
        if len(arrivals) <= LOCKSTEP_STEPS:
            zero = zero or conversions.efforts_to_msg(np.zeros(len(msg.name)))
            sent.append(time.perf_counter())
            pub.publish(zero)

    sub = node.create_subscription(JointState, "joint_states", on_state, STATE_QOS)
    try:
        spin_until(executor, lambda: len(arrivals) >= 1, STARTUP_TIMEOUT, f"{config}: first state")
        spin_until(executor, lambda: len(arrivals) > LOCKSTEP_STEPS, 300.0, f"{config}: all steps")
    finally:
        node.destroy_subscription(sub)
        node.destroy_publisher(pub)
        stop_sim(proc)
    t = np.asarray(arrivals)
    round_trip = (t[1 : LOCKSTEP_STEPS + 1] - np.asarray(sent[:LOCKSTEP_STEPS])) * 1e3
    return {
        "config": config,
        "steps": LOCKSTEP_STEPS,
        "steps_per_s": LOCKSTEP_STEPS / float(t[LOCKSTEP_STEPS] - t[0]),
        "round_trip_ms_p50": float(np.percentile(round_trip, 50)),
        "round_trip_ms_p99": float(np.percentile(round_trip, 99)),
    }


def bench_realtime(node: Any, executor: SingleThreadedExecutor, workdir: Path, rate: float) -> dict[str, Any]:
    """Record state arrivals for REALTIME_SECONDS with the node stepping itself at ``rate``."""
    proc = start_sim(workdir, "reacher2_sim", mode="realtime", realtime_rate=rate, diagnostics_period=0.5)
    arrivals: list[float] = []
    misses: list[int] = []

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            if "deadline_misses" in values:
                misses.append(int(values["deadline_misses"]))

    def on_state(_msg: JointState) -> None:
        arrivals.append(time.perf_counter())

    subs = [
        node.create_subscription(JointState, "joint_states", on_state, 100),
        node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10),
    ]
    try:
        spin_until(executor, lambda: len(arrivals) >= 10, STARTUP_TIMEOUT, f"{rate} Hz: first states")
        start = len(arrivals)
        wanted = int(rate * REALTIME_SECONDS)
        spin_until(executor, lambda: len(arrivals) - start >= wanted, 4 * REALTIME_SECONDS + 30, f"{rate} Hz")
        misses_seen = len(misses)
        spin_until(executor, lambda: len(misses) > misses_seen, 10.0, "a diagnostics message")
    finally:
        for sub in subs:
            node.destroy_subscription(sub)
        stop_sim(proc)
    t = np.asarray(arrivals[start:])
    intervals = np.diff(t)
    period = 1.0 / rate
    return {
        "rate_hz": rate,
        "achieved_hz": (len(t) - 1) / float(t[-1] - t[0]),
        "interval_std_ms": float(np.std(intervals) * 1e3),
        "interval_abs_dev_ms_p99": float(np.percentile(np.abs(intervals - period), 99) * 1e3),
        "deadline_misses": misses[-1],
    }


def main() -> int:
    rclpy.init()
    node = rclpy.create_node("sim_lockstep_bench")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    results: dict[str, Any] = {"machine": platform.platform(), "cpus": os.cpu_count()}
    results |= {"lockstep": [], "realtime": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for config in LOCKSTEP_CONFIGS:
                r = bench_lockstep(node, executor, Path(tmp), config)
                results["lockstep"].append(r)
                print(f"lockstep {config:12s}: {r['steps_per_s']:7.0f} steps/s  round trip p50 "
                      f"{r['round_trip_ms_p50']:.3f} ms  p99 {r['round_trip_ms_p99']:.3f} ms")  # fmt: skip
            for rate in REALTIME_RATES:
                r = bench_realtime(node, executor, Path(tmp), rate)
                results["realtime"].append(r)
                print(f"realtime {rate:5.0f} Hz    : achieved {r['achieved_hz']:7.1f} Hz  interval std "
                      f"{r['interval_std_ms']:.3f} ms  p99 |dev| {r['interval_abs_dev_ms_p99']:.3f} ms  "
                      f"deadline misses {r['deadline_misses']}", flush=True)  # fmt: skip
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    out = ROOT / "bench/results/sim_lockstep.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
