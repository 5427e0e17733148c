"""Benchmark: the graph against one process, and N robots sampling in parallel (lockstep MuJoCo).

For one experiment (default configs/reacher2_sim.yaml), in one script run so the figures compare:

* ``mbpl train`` (one process) for K iterations: wall seconds per iteration (history ``seconds.total``);
* ``mbpl launch --set ros.robots=N --set ros.sim_link=L`` for each N (default 1 and 2) and each link L
  (``dds``: sim nodes over DDS, one round trip per control step; ``in_process``: each sampler steps
  MuJoCo itself; default both): wall seconds per iteration, the
  trainer's split of it (sampling, recording on the critical path and off it, fitting, LQR, evaluation),
  and the trials' wall durations from the samplers' logs (time between two finished trials of one robot
  within a batch: reset, T steps over DDS, the sample's publication and the trainer's hand-off), with
  their spread (max / median); the speed-up of N robots over one robot on the same link; whether every
  sample equals the first one-robot run's (lockstep: it must, whatever the link and the robot);
* with ``--kill``: the N = 2 graph again with robot1's sampler SIGKILLed while it samples iteration 1 —
  samples lost (expected − recorded) and duplicated (recorded more than once), which must both be 0,
  and whether the run still equals the one-robot run sample for sample.

Iteration 0 (start-up, discovery) is left out of the means. Prints a table, writes
bench/results/graph_scaling.json. Run: ``.venv/bin/python bench/graph_scaling.py [--config FILE]
[--iterations 4] [--robots 1 2] [--links dds in_process] [--kill]``. Figures depend on the machine's
load and cores: compare them as ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DONE = re.compile(r"^\[\w+\] \[(\d+\.\d+)\] \[[\w.]+\]: trial (\d+) \(condition (\d+)\) done")


def ros_env(tmp: Path, domain: int) -> dict[str, str]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_HOME=str(tmp), ROS_LOG_DIR=str(tmp / "log"), PYTHONUNBUFFERED="1")
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (sys.prefix, env.get("AMENT_PREFIX_PATH", "")) if p)
    return env


def command(mode: str, config: Path, run_dir: Path, sets: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "mbpl_ros.cli", mode, str(config), "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def iteration_walls(run_dir: Path) -> list[float]:
    return [float(r["seconds"]["total"]) for r in json.loads((run_dir / "history.json").read_text())]


def trial_durations(run_dir: Path) -> list[float]:
    """Wall seconds between consecutive finished trials of one robot within one batch of training samples
    (ROS log stamps): the same session and iteration, neither an evaluation trial (sample index 999; the
    evaluation runs after the fitting and LQR step, which is not a trial's time)."""
    from mbpl_ros.trainer_logic import MAX_ATTEMPTS, MAX_CONDITIONS, MAX_SAMPLES

    def batch(trial: int) -> int | None:
        index = (trial // MAX_ATTEMPTS) % MAX_SAMPLES
        return None if index == MAX_SAMPLES - 1 else trial // (MAX_ATTEMPTS * MAX_SAMPLES * MAX_CONDITIONS)

    out = []
    for log in sorted((run_dir / "logs").rglob("sampler.log")):
        done = [(float(m[1]), int(m[2])) for m in map(DONE.match, log.read_text().splitlines()) if m]
        for (t0, id0), (t1, id1) in zip(done[:-1], done[1:], strict=True):
            if batch(id0) is not None and batch(id0) == batch(id1):
                out.append(t1 - t0)
    return out


def sampler_pid(namespace: str) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if b"mbpl_ros.sampler_node" in cmd and f"__ns:=/{namespace}".encode() in cmd:
            return int(proc.name)
    return None


def run_graph(config: Path, run_dir: Path, sets: list[str], env: dict[str, str], kill: bool) -> float:
    """``mbpl launch``; with ``kill``, robot1's sampler is SIGKILLed once it ran a trial of iteration 1."""
    start = time.perf_counter()
    proc = subprocess.Popen(command("launch", config, run_dir, sets), env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = run_dir / "logs" / "robot1" / "sampler.log"
    while kill and proc.poll() is None:
        done = [int(m[2]) for m in map(DONE.match, log.read_text().splitlines() if log.exists() else []) if m]
        pid = sampler_pid("robot1") if any((t // 100_000_000) % 10_000 == 1 for t in done) else None
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            print(f"  killed robot1's sampler (pid {pid}) during iteration 1", flush=True)
            break
        time.sleep(0.01)
    out, _ = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"the graph failed ({proc.returncode}):\n{out[-5000:]}")
    return time.perf_counter() - start


def samples_of(run_dir: Path, iterations: int, conditions: int,
               ) -> tuple[dict[tuple[int, int, int], bytes], int]:
    """Recorded samples by (iteration, condition, index) as their arrays' bytes, and the bags' total count."""
    from mbpl_ros.recording import SampleStore
    from mbpl_ros.trainer_transport import decode_sample

    store = SampleStore(run_dir)
    out = {}
    for i in range(iterations):
        for m in range(conditions):
            for index, raw in store.samples(i, m).items():
                r = decode_sample(raw)
                out[(i, m, index)] = r.batch.X.tobytes() + r.batch.U.tobytes()
    return out, store.count()


def summary(walls: list[float]) -> dict[str, float]:
    steady = walls[1:] if len(walls) > 1 else walls
    return {"iteration_s_mean": float(np.mean(steady)), "iteration_s_median": float(np.median(steady))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "reacher2_sim.yaml")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--robots", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--links", nargs="+", default=["dds", "in_process"], choices=["dds", "in_process"])
    parser.add_argument("--kill", action="store_true", help="also the 2-robot graph with one sampler killed")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import yaml

    raw = yaml.safe_load(args.config.read_text())
    samples = int((raw.get("algorithm") or {}).get("samples_per_condition", 5))
    sets = [f"algorithm.iterations={args.iterations}"]
    result: dict[str, Any] = {"config": str(args.config), "iterations": args.iterations,
                              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    with tempfile.TemporaryDirectory(prefix="mbpl-scaling-") as folder:
        tmp = Path(folder)
        start = time.perf_counter()
        done = subprocess.run(command("train", args.config, tmp / "train", sets), cwd=REPO, text=True,
                              capture_output=True, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"mbpl train failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        result["process"] = {"wall_s": time.perf_counter() - start, **summary(iteration_walls(tmp / "train"))}
        conditions = len(json.loads((tmp / "train" / "history.json").read_text())[0]["mean_cost"])
        runs = [(link, n, kill) for link in args.links
                for n, kill in [(n, False) for n in args.robots] + ([(2, True)] if args.kill else [])]
        reference = None
        for k, (link, n, kill) in enumerate(runs):
            run_dir = tmp / f"graph-{link}-{n}{'-kill' if kill else ''}"
            print(f"graph ({link}), {n} robot(s){' , one killed' if kill else ''} ...", flush=True)
            wall = run_graph(args.config, run_dir, [*sets, f"ros.robots={n}", f"ros.sim_link={link}"],
                             ros_env(tmp / f"ros{k}", 150 + os.getpid() % 40 + k), kill)
            history = json.loads((run_dir / "history.json").read_text())
            durations = trial_durations(run_dir)
            split = {key: float(np.mean([r["seconds"].get(key, 0.0) for r in history[1:] or history]))
                     for key in ("sampling", "recording", "recording_background", "fitting", "lqr",
                                 "evaluation")}
            recorded, count = samples_of(run_dir, args.iterations, conditions)
            expected = args.iterations * conditions * samples
            row = {"link": link, "robots": n, "killed_one": kill, "wall_s": wall,
                   **summary(iteration_walls(run_dir)),
                   "split_s": split, "trial_s_median": float(np.median(durations)),
                   "trial_s_max": float(np.max(durations)),
                   "trial_spread": float(np.max(durations) / np.median(durations)),
                   "samples_lost": expected - len(recorded), "samples_duplicated": count - len(recorded)}
            if reference is None and n == 1:
                reference = recorded
            if reference is not None:
                row["same_samples_as_one_robot"] = recorded == reference  # the first one-robot run's
            result.setdefault("graph", []).append(row)
    process = result["process"]["iteration_s_mean"]
    one = {r["link"]: r["iteration_s_mean"] for r in reversed(result["graph"])
           if r["robots"] == 1 and not r["killed_one"]}
    print(f"\n{'run':<32} {'iteration s':>11} {'vs process':>10} {'vs 1 robot':>10} {'trial ms p50/max':>17} "
          f"{'lost/dup':>8}  split (s: sampling, bags on/off path, fit, lqr, eval)")
    print(f"{'mbpl train':<32} {process:11.3f} {1.0:10.2f}")
    for r in result["graph"]:
        r["vs_process"] = r["iteration_s_mean"] / process
        base = one.get(r["link"])
        r["speedup_vs_one_robot"] = base / r["iteration_s_mean"] if base else None
        s = r["split_s"]
        name = f"graph ({r['link']}), {r['robots']} robot(s)" + (", kill" if r["killed_one"] else "")
        speed = f"{r['speedup_vs_one_robot']:10.2f}" if base else f"{'—':>10}"
        print(f"{name:<32} {r['iteration_s_mean']:11.3f} {r['vs_process']:10.2f} {speed} "
              f"{1e3 * r['trial_s_median']:8.0f}/{1e3 * r['trial_s_max']:<8.0f} "
              f"{r['samples_lost']:>3}/{r['samples_duplicated']:<4}  {s['sampling']:.2f}, "
              f"{s['recording']:.2f}/{s['recording_background']:.2f}, {s['fitting']:.2f}, {s['lqr']:.2f}, "
              f"{s['evaluation']:.2f}" + ("" if r.get("same_samples_as_one_robot", True) else "  DIFFERS"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "graph_scaling.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'graph_scaling.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
