"""Benchmark: PETS through the ROS 2 graph, lockstep and real time — how stale plans get, what it costs.

Runs ``mbpl launch CONFIG --set method=pets`` (sim, sampler, model, planner, trainer: separate processes
over DDS in a private domain) once in lockstep and once in real time (``ros.lockstep=false``: the sim
runs at wall-clock pace, the planner at its own rate), each for ``--iterations`` iterations without the
distillation, and reads the run folder:

* from the sampler's log, per MPC trial: the median and largest plan age (t − t0 of the plan whose
  action was executed; 0 in lockstep) and the steps at zero effort awaiting the first plan; aborted
  trials (a stale plan engages the safe hold) and their reasons;
* from the planner's log, per trial: the planning latency median / p99 (ms) against the control period;
* from history.json: the MPC trials' worst final distance per iteration, and the wall time.

Prints the figures and writes bench/results/pets_graph.json.
Run: ``.venv/bin/python bench/pets_graph.py [--config configs/reacher2_sim.yaml] [--iterations 3]
[--modes lockstep realtime] [--set KEY=VALUE ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AGE = re.compile(r"plan age \(steps\) median ([\d.]+), max (\d+), (\d+) waiting")
LATENCY = re.compile(r"planning median ([\d.]+) ms, p99 ([\d.]+) ms")


def graph_env(tmp: Path) -> dict[str, str]:
    """A private ROS graph: its own domain id, localhost discovery, logs under ``tmp``."""
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(os.getpid() % 50 + 150), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_HOME=str(tmp), ROS_LOG_DIR=str(tmp / "log"), PYTHONUNBUFFERED="1")
    return env


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def run_mode(config: Path, mode: str, iterations: int, timeout: float, extra: list[str]) -> dict[str, Any]:
    """One launch of the PETS graph in ``mode``; its figures."""
    from mbpl_ros.cli import effective_config
    from mbpl_sim.experiment import load_experiment

    with tempfile.TemporaryDirectory(prefix=f"mbpl-bench-pets-{mode}-") as folder:
        tmp = Path(folder)
        run_dir = tmp / "run"
        sets = ["method=pets", f"pets.iterations={iterations}", "pets.distill.enabled=false",
                f"ros.lockstep={'true' if mode == 'lockstep' else 'false'}", *extra]
        path, _ = effective_config(config, sets, run_dir)
        dt = load_experiment(path).task.dt
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "mbpl_ros.cli", "launch", str(path), "--run-dir",
                               str(run_dir)], env=graph_env(tmp), cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        wall = time.perf_counter() - start
        logs = run_dir / "logs"
        sampler, planner = (_read(logs / f"{name}.log") for name in ("sampler", "planner"))
        ages = [(float(m[1]), int(m[2]), int(m[3])) for m in AGE.finditer(sampler)]
        latencies = [(float(m[1]), float(m[2])) for m in LATENCY.finditer(planner)]
        aborts = [line.split("aborted", 1)[1].strip() for line in sampler.splitlines()
                  if "aborted after" in line]
        history = json.loads(_read(run_dir / "history.json") or "[]")
        return {
            "mode": mode, "returncode": done.returncode, "wall_s": wall, "control_period_ms": 1e3 * dt,
            "mpc_trials": len(ages),
            "plan_age_median_steps": float(np.median([a[0] for a in ages])) if ages else None,
            "plan_age_max_steps": max((a[1] for a in ages), default=None),
            "steps_waiting_first_plan_median": float(np.median([a[2] for a in ages])) if ages else None,
            "planning_ms_median": float(np.median([lat[0] for lat in latencies])) if latencies else None,
            "planning_ms_p99_median": float(np.median([lat[1] for lat in latencies])) if latencies else None,
            "aborted_trials": len(aborts), "abort_reasons": aborts[:10],
            "worst_final_distance_m": [float(max(r["eval_final_distance"])) for r in history],
            "output_tail": "" if done.returncode == 0 else (done.stdout[-3000:] + done.stderr[-2000:]),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "reacher2_sim.yaml")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["lockstep", "realtime"],
                        choices=["lockstep", "realtime"])
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides as for mbpl launch, e.g. ros.nodes.sampler.max_plan_age=14")
    args = parser.parse_args()
    results = []
    for mode in args.modes:
        r = run_mode(args.config, mode, args.iterations, args.timeout, args.set)
        results.append(r)
        print(f"{mode:9s}: exit {r['returncode']}, {r['wall_s']:.0f} s, {r['mpc_trials']} MPC trials, "
              f"plan age median {r['plan_age_median_steps']} / max {r['plan_age_max_steps']} steps (period "
              f"{r['control_period_ms']:.0f} ms), planning median {r['planning_ms_median']} ms "
              f"(p99 {r['planning_ms_p99_median']}), {r['aborted_trials']} aborted, worst final distance "
              f"per iteration (cm) {[round(100 * d, 2) for d in r['worst_final_distance_m']]}", flush=True)
        if r["returncode"] != 0:
            print(r["output_tail"])
    out = ROOT / "bench" / "results" / "pets_graph.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": str(args.config), "iterations": args.iterations, "set": args.set,
                               "runs": results},
                              indent=1))
    print(f"wrote {out}")
    return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
