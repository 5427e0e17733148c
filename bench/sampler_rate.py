"""Sampler node in realtime mode against the realtime sim node: rate, deadline misses, jitter, latency.

For each control rate (100, 500, 1000 Hz) the sim node (realtime, stepping dt = 1/rate per tick, so
real time) and the sampler node (realtime, ``rate_hz`` = rate) run as their own processes; this
script publishes an LG controller (a PD hold around the start pose plus a sinusoidal offset, so every
state differs), runs TRIALS trials of TRIAL_SECONDS each and reports:

* from the sampler's /diagnostics (its :class:`~mbpl_ros.rt_loop.LoopStats`, last 10 000 ticks):
  achieved rate, deadline misses, period jitter |Δt − period| p50/p99, per-step compute p50/p99, and
  state age (joint state received → command published, inside the sampler) p50/p99;
* from the samples: deadline misses per trial and the trial's achieved rate (T − 1)/(end − start);
* state → command round trip p50/p99, seen by this script as an observer beside the robot: the time
  from a joint state's arrival to the arrival of the command computed from it. Commands are matched
  to states exactly: the observer recomputes u = clip(K_t x + k_t) for the recent states and takes
  the one that reproduces the command bit for bit.

Prints a table and writes bench/results/sampler_rate.json. Isolates its graph with a pid-derived
ROS_DOMAIN_ID unless one is set. Figures swing a lot on shared 2-core machines: compare runs on one.
"""

from __future__ import annotations

import argparse
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
import yaml  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from mbpl_msgs.msg import LinearGaussianController as ControllerMsg  # noqa: E402
from mbpl_msgs.msg import TrajectorySample  # noqa: E402
from mbpl_msgs.srv import RunTrial  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from mbpl_core.containers import LinearGaussianController  # noqa: E402
from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.params import write_params_file  # noqa: E402
from mbpl_ros.sampler_logic import RobotSetup  # noqa: E402
from mbpl_ros.sampler_node import LATCHED_QOS  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

RATES = [100.0, 500.0, 1000.0]
TRIALS = 3
TRIAL_SECONDS = 2.0
STARTUP_TIMEOUT = 60.0
OBSERVER_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


def write_experiment(workdir: Path, rate: float) -> Path:
    """reacher2_sim with dt = 1/rate and T = rate · TRIAL_SECONDS (physics step <= 2 ms)."""
    raw = yaml.safe_load((ROOT / "configs" / "reacher2_sim.yaml").read_text())
    dt = 1.0 / rate
    raw["name"] = f"sampler_rate_{int(rate)}"
    raw["robot"]["description"] = str(ROOT / "urdf" / "reacher2" / "reacher2.urdf")
    raw["task"].update(T=int(rate * TRIAL_SECONDS), dt=dt, substeps=max(1, round(dt / 0.002)))
    path = workdir / f"sampler_rate_{int(rate)}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def start_node(workdir: Path, module: str, name: str, params: dict[str, Any]) -> subprocess.Popen:
    path = write_params_file(workdir / f"{name}.yaml", "/**", params)
    cmd = [sys.executable, "-m", module, "--ros-args", "-r", f"__node:={name}", "--params-file", str(path)]
    log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def stop_node(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_controller(setup: RobotSetup, q0: np.ndarray) -> LinearGaussianController:
    """u_t = Kp (q0 + a sin(2π t dt + π/4) − q) − Kd q̇ as K_t x + k_t: states differ, u_0 != 0."""
    T, dU, dX = setup.T, setup.dU, setup.dX
    kp, kd, amplitude = 2.0, 0.2, 0.3
    K = np.zeros((T, dU, dX))
    K[:, :, :dU] = -kp * np.eye(dU)
    K[:, :, dU:2 * dU] = -kd * np.eye(dU)
    phase = np.sin(2 * np.pi * np.arange(T) * setup.dt + np.pi / 4)
    k = kp * (q0[None, :] + amplitude * phase[:, None])
    return LinearGaussianController.from_covariance(K, k, np.tile(0.01 * np.eye(dU), (T, 1, 1)))


class Observer:
    """Records states, commands, samples and sampler diagnostics; matches commands to their states.

    A sample's X[t] starts with the exact (q, q̇) the sampler used at step t, and command t is the
    t-th non-zero command of the trial, so the state → command round trip of step t is
    arrival(command t) − arrival(joint state with that (q, q̇)).
    """

    def __init__(self, node: Any, setup: RobotSetup) -> None:
        self.setup = setup
        self.order = conversions.JointOrder(setup.joint_names)
        self.arrivals: dict[bytes, int] = {}
        self.commands: list[tuple[int, np.ndarray]] = []
        self.active = False
        self.round_trips_us: list[float] = []
        self.unmatched = 0
        self.samples: dict[int, TrajectorySample] = {}
        self.diagnostics: list[dict[str, str]] = []
        node.create_subscription(JointState, "joint_states", self._on_state, OBSERVER_QOS)
        node.create_subscription(Float64MultiArray, "effort_controller/commands", self._on_command,
                                 OBSERVER_QOS)
        node.create_subscription(TrajectorySample, "mbpl/samples", self._on_sample, LATCHED_QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def start_trial(self) -> None:
        self.arrivals.clear()
        self.commands.clear()
        self.active = True

    def _on_state(self, msg: JointState) -> None:
        if self.active:
            q, qd = self.order.extract(msg)
            self.arrivals.setdefault(np.concatenate([q, qd]).tobytes(), time.monotonic_ns())

    def _on_command(self, msg: Float64MultiArray) -> None:
        u = np.array(msg.data)
        if self.active and np.any(u):  # zero: the safe hold between trials
            self.commands.append((time.monotonic_ns(), u))

    def _on_sample(self, msg: TrajectorySample) -> None:
        self.active = False
        self.samples[msg.trial_id] = msg
        batch, _ = conversions.msg_to_sample(msg)
        dQ = self.setup.dU
        for t, (arrived, u) in enumerate(self.commands[: batch.T]):
            state_arrival = self.arrivals.get(batch.X[0, t, : 2 * dQ].tobytes())
            if state_arrival is None or not np.array_equal(u, batch.U[0, t]):
                self.unmatched += 1
                continue
            self.round_trips_us.append((arrived - state_arrival) * 1e-3)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("mbpl_sampler"):
                self.diagnostics.append({kv.key: kv.value for kv in status.values})


def spin_until(executor: SingleThreadedExecutor, predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        executor.spin_once(timeout_sec=0.05)


def run_trials(node: Any, executor: SingleThreadedExecutor, obs: Observer) -> list[TrajectorySample]:
    client = node.create_client(RunTrial, "mbpl/run_trial")
    if not client.wait_for_service(timeout_sec=STARTUP_TIMEOUT):
        raise TimeoutError("mbpl/run_trial never appeared")
    for trial in range(1, TRIALS + 1):
        obs.start_trial()
        future = client.call_async(RunTrial.Request(condition=0, trial_id=trial, policy_kind="lg",
                                                    add_noise=False, controller_id=1))
        spin_until(executor, future.done, 10.0, f"RunTrial {trial}")
        if not future.result().accepted:
            raise RuntimeError(f"trial {trial} refused: {future.result().message}")
        spin_until(executor, lambda t=trial: t in obs.samples, 10.0 + 3 * TRIAL_SECONDS, f"sample {trial}")
    return [obs.samples[t] for t in range(1, TRIALS + 1)]


def _pcts(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99)


def bench_rate(workdir: Path, rate: float, gil_switch_interval: float | None = None,
               realtime_priority: int = 0) -> dict[str, Any]:
    experiment = write_experiment(workdir, rate)
    setup = RobotSetup.from_experiment(load_experiment(experiment))
    q0 = np.asarray(load_experiment(experiment).conditions("train")[0].initial_q)
    controller = bench_controller(setup, q0)
    procs = [start_node(workdir, "mbpl_ros.sim_node", "sim",
                        {"config": str(experiment), "mode": "realtime", "realtime_rate": rate}),
             start_node(workdir, "mbpl_ros.sampler_node", "sampler",
                        {"config": str(experiment), "mode": "realtime", "rate_hz": rate,
                         "state_timeout": 0.5, "diagnostics_period": 0.5,
                         "realtime_priority": realtime_priority,
                         **({} if gil_switch_interval is None else
                            {"gil_switch_interval": gil_switch_interval})})]
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("sampler_rate_bench", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        obs = Observer(node, setup)
        publisher = node.create_publisher(ControllerMsg, "mbpl/controllers", LATCHED_QOS)
        publisher.publish(conversions.controller_to_msg(controller, 0, 1))
        spin_until(executor, lambda: obs.diagnostics and obs.diagnostics[-1]["controllers_received"] == "1",
                   STARTUP_TIMEOUT, "the sampler to receive the controller")
        samples = run_trials(node, executor, obs)
        n_diag = len(obs.diagnostics)
        spin_until(executor, lambda: len(obs.diagnostics) > n_diag, 5.0, "fresh diagnostics")
        return {**summarize(rate, samples, obs), "gil_switch_interval": gil_switch_interval,
                "realtime_priority": realtime_priority,
                "control_scheduling": obs.diagnostics[-1].get("control_scheduling", "")}
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        for proc in procs:
            stop_node(proc)


def summarize(rate: float, samples: list[TrajectorySample], obs: Observer) -> dict[str, Any]:
    diag = obs.diagnostics[-1]
    trial_rates = [(s.t_steps - 1) / (s.end_time - s.start_time)
                   for s in samples if s.end_time > s.start_time]
    rt50, rt99 = _pcts(obs.round_trips_us)
    return {
        "rate_hz": rate,
        "achieved_rate_hz": float(diag.get("achieved_rate_hz", "nan")),
        "trial_rate_hz_mean": float(np.mean(trial_rates)) if trial_rates else float("nan"),
        "deadline_misses_total": int(diag["deadline_misses"]),
        "deadline_misses_per_trial": [int(s.deadline_misses) for s in samples],
        "ticks": int(diag["ticks"]),
        "aborted_trials": sum(bool(s.aborted) for s in samples),
        "period_jitter_p50_us": float(diag["period_jitter_p50_us"]),
        "period_jitter_p99_us": float(diag["period_jitter_p99_us"]),
        "compute_p50_us": float(diag["compute_p50_us"]),
        "compute_p99_us": float(diag["compute_p99_us"]),
        "state_age_p50_us": float(diag["state_age_us_p50"]),
        "state_age_p99_us": float(diag["state_age_us_p99"]),
        "round_trip_p50_us": rt50,
        "round_trip_p99_us": rt99,
        "round_trips_matched": len(obs.round_trips_us),
        "round_trips_unmatched": obs.unmatched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gil-switch-interval", type=float, nargs="+", default=[None],
                        help="sampler gil_switch_interval values (s) to compare in one run; default: the "
                             "node's default")
    parser.add_argument("--realtime-priority", type=int, nargs="+", default=[50],
                        help="sampler realtime_priority values (SCHED_FIFO 1-99, 0: normal) to compare")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mbpl-sampler-bench-") as tmp:
        results = [bench_rate(Path(tmp), rate, gil, prio) for prio in args.realtime_priority
                   for gil in args.gil_switch_interval for rate in RATES]
    header = (f"{'prio':>4} {'gil s':>7} {'rate':>6} {'achieved':>9} {'misses':>7} {'jit50':>7} {'jit99':>8} "
              f"{'cmp50':>7} {'cmp99':>7} {'age50':>7} {'age99':>8} {'rt50':>7} {'rt99':>8}  (µs)")
    print(header)
    for r in results:
        gil = "default" if r["gil_switch_interval"] is None else f"{r['gil_switch_interval']:g}"
        prio = r["realtime_priority"] if r["control_scheduling"].startswith("SCHED_FIFO") else 0
        print(f"{prio:>4} {gil:>7} {r['rate_hz']:6.0f} {r['achieved_rate_hz']:9.1f} "
              f"{r['deadline_misses_total']:7d} "
              f"{r['period_jitter_p50_us']:7.0f} {r['period_jitter_p99_us']:8.0f} {r['compute_p50_us']:7.0f} "
              f"{r['compute_p99_us']:7.0f} {r['state_age_p50_us']:7.0f} {r['state_age_p99_us']:8.0f} "
              f"{r['round_trip_p50_us']:7.0f} {r['round_trip_p99_us']:8.0f}")
    meta = {"machine": platform.machine(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "trials_per_rate": TRIALS, "trial_seconds": TRIAL_SECONDS,
            "experiment": "reacher2_sim, dt = 1/rate"}
    out = ROOT / "bench" / "results" / "sampler_rate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
