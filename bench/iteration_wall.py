"""Benchmark: wall time of one LQR-FLM iteration through the real node graph, MuJoCo in lockstep.

Runs ``mbpl launch`` on an experiment (default configs/reacher2_sim.yaml) for a few iterations in a
private ROS domain; the trainer's history gives each iteration's wall time split into sampling (the
trials, lockstep over DDS), fitting (FitDynamics round trips), LQR (UpdateController round trips),
evaluation (one noiseless trial per condition), rosbag2 writing, and the trainer's other bookkeeping
(costs, checkpoint). The same work is then replayed in one process from the recorded bags — sampling with
MujocoEnv, DynamicsFitter.update, cost model + ConditionOptimizer.update — and the difference between
the graph's time and the in-process compute of each phase is reported as messaging (DDS, (de)
serialisation, executor and lockstep hand-offs).

Prints the split per iteration and the mean over iterations ≥ 1 (iteration 0 includes start-up);
writes bench/results/iteration_wall.json. Run:
``.venv/bin/python bench/iteration_wall.py [--config FILE] [--iterations N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHASES = ("sampling", "fitting", "lqr", "evaluation")


def run_graph(config: Path, iterations: int, run_dir: Path) -> float:
    """``mbpl launch`` of the experiment in a private domain; returns its wall time (s)."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(os.getpid() % 50 + 180),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_HOME=str(run_dir.parent),
               ROS_LOG_DIR=str(run_dir.parent / "log"), PYTHONUNBUFFERED="1")
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (sys.prefix, env.get("AMENT_PREFIX_PATH", "")) if p)
    sets = [f"algorithm.iterations={iterations}"]
    sets += [f"ros.nodes.{n}.run_dir={run_dir}" for n in ("sampler", "fitting", "ilqr", "trainer")]
    cmd = [sys.executable, "-m", "mbpl_ros.cli", "launch", str(config), "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"the graph failed ({done.returncode}):\n{done.stdout[-5000:]}")
    return time.perf_counter() - start


def replay_compute(run_dir: Path, iterations: int) -> list[dict[str, float]]:
    """In-process seconds of each iteration's sampling, fitting, LQR and evaluation work, from the bags."""
    from mbpl_msgs.msg import TrajectorySample
    from rclpy.serialization import deserialize_message

    from mbpl_core.containers import SampleBatch
    from mbpl_core.costs import build_cost, quadratic_cost_model
    from mbpl_core.local.dynamics import DynamicsFitter
    from mbpl_core.local.init import initial_controller
    from mbpl_core.local.traj_opt import ConditionOptimizer
    from mbpl_core.noise import generate_noise
    from mbpl_ros import conversions
    from mbpl_ros.node_params import load_settings
    from mbpl_ros.recording import SampleStore
    from mbpl_sim.env import MujocoEnv

    settings = load_settings(str(run_dir / "config.yaml"), str(run_dir))
    env, algo = MujocoEnv(settings.experiment), settings.algorithm
    cost = build_cost(settings.cost, env.layout, env.dU)
    store = SampleStore(run_dir)
    fitters = [DynamicsFitter(algo.dynamics) for _ in range(env.num_conditions)]
    initial = [initial_controller(algo.init, env.layout, env.dU, env.T, env.dt, env.x0(m))
               for m in range(env.num_conditions)]
    optimizers = [ConditionOptimizer(c, algo.kl) for c in initial]
    rng, out = np.random.default_rng(0), []
    for i in range(iterations):
        clock = dict.fromkeys(PHASES, 0.0)
        for m in range(env.num_conditions):
            raws = store.samples(i, m)
            start = time.perf_counter()
            for _ in raws:
                env.sample(optimizers[m].controller, m, generate_noise(env.T, env.dU, rng, algo.noise))
            clock["sampling"] += time.perf_counter() - start
            msgs = [deserialize_message(raws[k], TrajectorySample) for k in sorted(raws)]
            batch = SampleBatch.concatenate([conversions.msg_to_sample(msg)[0] for msg in msgs])
            start = time.perf_counter()
            dynamics = fitters[m].update(batch)
            clock["fitting"] += time.perf_counter() - start
            start = time.perf_counter()
            optimizers[m].update(dynamics, quadratic_cost_model(cost, batch)[1])
            clock["lqr"] += time.perf_counter() - start
            start = time.perf_counter()
            env.sample(optimizers[m].controller, m, None)
            clock["evaluation"] += time.perf_counter() - start
        out.append(clock)
    return out


def split(history: list[dict[str, Any]], compute: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per iteration: wall seconds per phase, in-process compute per phase, messaging = the difference."""
    rows = []
    for record, comp in zip(history, compute, strict=True):
        wall = record["seconds"]
        row = {"iteration": record["iteration"], "total_s": wall["total"]}
        for phase in PHASES:
            row[f"{phase}_wall_s"] = wall[phase]
            row[f"{phase}_compute_s"] = comp[phase]
        row["messaging_s"] = sum(wall[p] - comp[p] for p in PHASES)
        row["recording_s"] = wall.get("recording", 0.0)
        row["trainer_bookkeeping_s"] = wall["total"] - sum(wall[p] for p in PHASES) - row["recording_s"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "reacher2_sim.yaml"))
    parser.add_argument("--iterations", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mbpl-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        graph_s = run_graph(Path(args.config), args.iterations, run_dir)
        history = json.loads((run_dir / "history.json").read_text())
        rows = split(history, replay_compute(run_dir, args.iterations))
        conditions = len(history[0]["mean_cost"])
    steady = rows[1:] if len(rows) > 1 else rows
    mean = {k: float(np.mean([r[k] for r in steady])) for k in rows[0] if k != "iteration"}
    print(f"graph run: {graph_s:.1f} s for {args.iterations} iterations, {conditions} conditions")
    print(f"{'iteration':>9} {'total':>7} {'sampling':>17} {'fitting':>15} {'lqr':>15} {'eval':>15} "
          f"{'messaging':>9} {'bags':>6} {'other':>6}")
    for r in rows + [dict(mean, iteration="mean≥1")]:
        phases = " ".join(f"{r[f'{p}_wall_s']:7.3f} ({r[f'{p}_compute_s']:6.3f})" for p in PHASES)
        print(f"{r['iteration']!s:>9} {r['total_s']:7.3f} {phases} {r['messaging_s']:9.3f} "
              f"{r['recording_s']:6.3f} {r['trainer_bookkeeping_s']:6.3f}")
    print("seconds: wall (in-process compute of the same work); messaging = Σ wall − compute; "
          "bags: rosbag2 writing; other: trainer bookkeeping (costs, checkpoint)")
    config = Path(args.config).resolve()
    result = {
        "setup": {"config": str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config),
                  "iterations": args.iterations, "conditions": conditions, "mode": "lockstep"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "graph_wall_s": graph_s,
        "per_iteration": rows,
        "mean_steady_iteration": mean,
    }
    out = REPO / "bench" / "results" / "iteration_wall.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
