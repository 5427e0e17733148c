"""Benchmark: every method on the same robots, one table (``mbpl train`` in one process per run).

For each task (experiment file), method and seed it runs :func:`mbpl_sim.training.train_in_process` —
exactly what ``mbpl train CONFIG --set method=M`` does — and reads the run's history.json:

* ``steps_to_success``: environment steps until every training condition's noiseless trial (the LG
  controllers for lqr_flm / mdgps, the MPC for pets, the policy for the policy learners) ends within the
  task's success distance (2 cm reach, 1 cm peg); null if never within the budget;
* ``final_distance_max_m``: the last iteration's worst training-condition distance;
* ``held_out_policy``: held-out success rate of the deployable policy (mdgps: the deployed snapshot;
  pets: the distilled policy; policy learners: their policy); ``held_out_mpc``: PETS's MPC on the
  held-out conditions; null where a method has none (LQR-FLM's controllers are per condition);
* wall time per environment step and in all; PETS: model-fit seconds per iteration, planning latency
  per control step (median / p99 of the last iteration, ms) against the control period.

Learning curves (worst training distance vs environment steps, log axis) go to
bench/results/methods.png, the figures to bench/results/methods.json and the table (markdown) to
stdout and, for a full run, docs/methods.md. ``--quick`` runs tiny budgets (CI smoke test: the script
and every method's runner work; its numbers mean nothing).

Run: ``.venv/bin/python bench/methods.py [--tasks reacher2 arm7_reach] [--methods lqr_flm mdgps pets]
[--seeds 0 1 2] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"reacher2": ROOT / "configs" / "reacher2_sim.yaml",
         "arm7_reach": ROOT / "configs" / "arm7_reach.yaml",
         "arm7_peg": ROOT / "configs" / "arm7_peg.yaml"}
# tiny budgets for --quick (the smoke test): a couple of iterations, small planners and networks
QUICK = {
    "lqr_flm": ["algorithm.samples_per_condition=2"],
    "mdgps": ["algorithm.samples_per_condition=2", "gps.iterations=50"],
    "pets": ["pets.planner.population=32", "pets.planner.elites=4", "pets.planner.horizon=4",
             "pets.planner.iterations=1", "pets.model.max_epochs=3", "pets.distill.rounds=1",
             "pets.distill.policy.iterations=50"],
    "sac": ["sac.steps_per_iteration=100", "sac.learning_starts=50", "sac.agent.batch_size=32"],
    "mbpo": ["mbpo.steps_per_iteration=100", "mbpo.initial_random_steps=100", "mbpo.model_train_every=100",
             "mbpo.rollout_batch_size=20", "mbpo.updates_per_step=1", "mbpo.model.max_epochs=3",
             "mbpo.agent.batch_size=32"],
    "bptt": ["bptt.gradient_steps=5", "bptt.model.max_epochs=3", "bptt.value.warmup_steps=5"],
}
QUICK_ITERATIONS = 2
# methods of the table that are settings of a registered method: name -> (method, its --set assignments)
VARIANTS = {"bptt_svg": ("bptt", ["bptt.value.enabled=true"])}


def method_of(name: str) -> tuple[str, list[str]]:
    """The registered method behind a table method name, and the settings that make the variant."""
    return VARIANTS.get(name, (name, []))


def seed_overrides(method: str, seed: int) -> list[str]:
    """``--set`` assignments that make ``seed`` the run's seed for ``method``."""
    from mbpl_sim.experiment import METHOD_SECTIONS

    sets = [f"algorithm.seed={seed}"]
    entry = METHOD_SECTIONS[method]
    if entry is not None:
        sets.append(f"{entry[0]}.seed={seed}")
    return sets


def steps_to_success(history: list[dict[str, Any]]) -> int | None:
    """Environment steps of the first iteration whose every training condition is within the threshold."""
    for record in history:
        if max(record["eval_final_distance"]) < record["success_threshold_m"]:
            return int(record["env_steps"])
    return None


def summarise(task: str, method: str, seed: int, history: list[dict[str, Any]], wall_s: float,
              dt: float) -> dict[str, Any]:
    """One row of the table from a run's history records."""
    last = history[-1]
    row: dict[str, Any] = {
        "task": task, "method": method, "seed": seed, "iterations": len(history),
        "env_steps": int(last["env_steps"]), "steps_to_success": steps_to_success(history),
        "final_distance_max_m": float(max(last["eval_final_distance"])),
        "final_distance_mean_m": float(np.mean(last["eval_final_distance"])),
        "held_out_policy": last.get("policy_held_out_success_rate"),
        "held_out_mpc": last.get("mpc_held_out_success_rate"),
        "wall_s": wall_s, "wall_ms_per_env_step": 1e3 * wall_s / max(1, int(last["env_steps"])),
        "success_threshold_m": float(last["success_threshold_m"]), "control_period_ms": 1e3 * dt,
        "curve": [[int(r["env_steps"]), float(max(r["eval_final_distance"]))] for r in history],
    }
    if "planning_ms_p50" in last:
        row |= {"planning_ms_p50": float(last["planning_ms_p50"]),
                "planning_ms_p99": float(last["planning_ms_p99"]),
                "model_s_per_iteration": float(np.mean([r["seconds"]["model"] for r in history]))}
    return row


def run_one(task: str, method: str, seed: int, quick: bool, log_dir: Path, extra: list[str] | None = None,
            ) -> dict[str, Any]:
    """Train ``method`` on ``task`` with ``seed`` in a scratch run folder; its summary row."""
    from mbpl_ros.cli import effective_config
    from mbpl_sim.experiment import load_experiment
    from mbpl_sim.training import train_in_process

    with tempfile.TemporaryDirectory(prefix=f"mbpl-bench-{task}-{method}-") as folder:
        run_dir = Path(folder) / "run"
        base, variant = method_of(method)
        sets = [f"method={base}", *variant, *seed_overrides(base, seed),
                *(QUICK.get(method, QUICK.get(base, [])) if quick else []), *(extra or [])]
        path, _ = effective_config(TASKS[task], sets, run_dir)
        experiment = load_experiment(path)
        lines: list[str] = []
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            history = train_in_process(experiment, run_dir, QUICK_ITERATIONS if quick else None,
                                       log=lines.append)
        wall = time.perf_counter() - start
        (log_dir / f"{task}-{method}-seed{seed}.log").write_text("\n".join(lines) + "\n")
        return summarise(task, method, seed, history, wall, experiment.task.dt)


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "—"
    return format(value, spec) if spec else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: a line per (task, method, budget), figures over seeds (median, each seed's steps)."""
    lines = ["| task | method | seeds | env steps to success (per seed) | budget (env steps) | "
             "worst final distance (cm) | held-out policy | held-out MPC | planning ms p50/p99 (period) | "
             "wall ms / env step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    def budget_of(r: dict[str, Any]) -> int:
        return int(r["curve"][-1][0])

    # one line per task, method and budget (a run with a longer budget, e.g. --set sac.iterations=60, is
    # its own line)
    keys = sorted({(r["task"], r["method"], budget_of(r)) for r in rows},
                  key=lambda k: (list(TASKS).index(k[0]), k[1], k[2]))
    for task, method, budget in keys:
        group = [r for r in rows if r["task"] == task and r["method"] == method and budget_of(r) == budget]
        steps = " / ".join(_fmt(r["steps_to_success"]) for r in group)
        worst = np.median([r["final_distance_max_m"] for r in group]) * 100
        pol = [r["held_out_policy"] for r in group if r["held_out_policy"] is not None]
        mpc = [r["held_out_mpc"] for r in group if r["held_out_mpc"] is not None]
        plan = "—"
        if "planning_ms_p50" in group[0]:
            plan = (f"{np.median([r['planning_ms_p50'] for r in group]):.0f}/"
                    f"{np.median([r['planning_ms_p99'] for r in group]):.0f} "
                    f"({group[0]['control_period_ms']:.0f})")
        pol_s = _fmt(np.mean(pol) if pol else None, ".2f")
        mpc_s = _fmt(np.mean(mpc) if mpc else None, ".2f")
        wall = np.median([r["wall_ms_per_env_step"] for r in group])
        lines.append(f"| {task} | {method} | {len(group)} | {steps} | {budget} | {worst:.2f} | {pol_s} | "
                     f"{mpc_s} | {plan} | {wall:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Worst training distance against environment steps, one panel per task, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    colours: dict[str, Any] = {}
    for ax, task in zip(axes[0], tasks, strict=True):
        labelled: set[str] = set()
        for r in (r for r in rows if r["task"] == task):
            colour = colours.setdefault(r["method"], f"C{len(colours)}")
            steps, dist = np.asarray(r["curve"]).T
            ax.plot(steps, 100 * dist, color=colour, alpha=0.8,
                    label=None if r["method"] in labelled else r["method"])
            labelled.add(r["method"])
        ax.axhline(100 * rows[0]["success_threshold_m"] if task != "arm7_peg" else 1.0, color="k", ls=":",
                   lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="environment steps", ylabel="worst training distance (cm)",
               title=task)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


RESULTS = ROOT / "bench" / "results"


def write_doc(text: str, commands: list[str], machine: dict[str, Any]) -> None:
    """docs/methods.md: the table with the commands that measured it."""
    doc = ROOT / "docs" / "methods.md"
    runs = "\n".join(f"    {c}" for c in commands)
    doc.write_text("# Methods compared (measured)\n\nMeasured with (one process per run, `mbpl train`) on "
                   f"{machine['cpus']} CPUs ({machine['platform']}):\n\n{runs}\n\n{text}\n\n"
                   "Columns: see bench/methods.py. Wall times depend on the machine's load; compare them "
                   "within one run only.\n")


def merge(paths: list[Path], out: Path) -> int:
    """One table from several runs of this script (e.g. one per task)."""
    results = [json.loads(p.read_text()) for p in paths]
    rows = [r for res in results for r in res["rows"]]
    text = table(rows)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    # methods_partial.json (a run cut short) holds its rows only
    merged = {"machine": next((r["machine"] for r in results if "machine" in r), {}),
              "quick": any(r.get("quick", False) for r in results),
              "command": "; ".join(r.get("command", f"(partial: {path})")
                                   for r, path in zip(results, paths, strict=True)),
              "rows": rows, "table": text}
    (out / "methods.json").write_text(json.dumps(merged, indent=1))
    plot(rows, out / "methods.png")
    if not merged["quick"] and out.resolve() == RESULTS.resolve():
        write_doc(text, [r["command"] for r in results], merged["machine"])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["reacher2", "arm7_reach"], choices=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=["lqr_flm", "mdgps", "pets"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test, not figures")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="experiment override of every run (mbpl train --set), e.g. sac.iterations=100")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of every run (default 1: compute per step on one core)")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="results folder; docs/methods.md is rewritten only for the default one")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="no runs: one table, plot and docs/methods.md from earlier methods.json files")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    from mbpl_sim.experiment import METHODS

    known = [*METHODS, *VARIANTS]
    unknown = sorted(set(args.methods) - set(known))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; known: {known}")
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "methods_logs"
    log_dir.mkdir(exist_ok=True)
    rows = []
    for task in args.tasks:
        for method in args.methods:
            for seed in args.seeds:
                row = run_one(task, method, seed, args.quick, log_dir, args.sets)
                rows.append(row)
                # every finished row is kept at once: a long comparison cut short loses nothing done
                (args.out / "methods_partial.json").write_text(json.dumps({"rows": rows}, indent=1))
                print(f"{task:10s} {method:8s} seed {seed}: steps to success "
                      f"{_fmt(row['steps_to_success'])}, "
                      f"worst final {100 * row['final_distance_max_m']:.2f} cm, held-out policy "
                      f"{_fmt(row['held_out_policy'], '.2f')}, MPC {_fmt(row['held_out_mpc'], '.2f')}, "
                      f"{row['wall_s']:.0f} s", flush=True)
    text = table(rows)
    print(text)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": args.threads}
    result = {"machine": machine,
              "quick": args.quick, "command": "python bench/methods.py " + " ".join(
                  [f"--tasks {' '.join(args.tasks)}", f"--methods {' '.join(args.methods)}",
                   f"--seeds {' '.join(map(str, args.seeds))}"] + (["--quick"] if args.quick else [])
                  + [f"--set {s}" for s in args.sets]),
              "rows": rows, "table": text}
    (args.out / "methods.json").write_text(json.dumps(result, indent=1))
    plot(rows, args.out / "methods.png")
    if not args.quick and args.out.resolve() == RESULTS.resolve():
        write_doc(text, [result["command"]], result["machine"])
    print(f"wrote {args.out / 'methods.json'} and {args.out / 'methods.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
