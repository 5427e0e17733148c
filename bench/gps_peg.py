"""Benchmark: MDGPS learning peg insertion on arm7 in one process (the acceptance of the GPS issue).

configs/arm7_peg.yaml: 9 training hole positions (a 3 x 3 grid over a ±8 cm square), 5 samples per condition
per iteration, 16 held-out positions inside the square. After every iteration it records:

* LG controllers: mean sampled cost per training condition, and the final peg-tip distance to the hole
  bottom of a noiseless rollout of each new controller (success: < 1 cm);
* neural policy: final tip distance of a noiseless rollout from each held-out condition (success < 1 cm)
  and the mean ee-point distance (tip and top);
* the deployed policy (``MDGPS.deployed_policy``: with gps.select_best the snapshot of lowest noiseless
  cost on the validation holes, chosen without the held-out ones): its held-out success;
* step_mult and KL per condition, fallbacks, steps rejected by algorithm.step_check and its noiseless
  trials, S-step losses and the wall time of the iteration's phases.

Per seed: the iteration at which all LG controllers first insert (``lg_all_inserted_after``), how many
noiseless LG trials of later iterations jam (``later_jams``: (iteration, condition) pairs with the tip
>= 1 cm), the held-out success per iteration of the newest and the deployed policy and the wall time.
``--compare OLD.json`` checks, for every seed run in both, that every figure but the wall times equals the
earlier run's (config and overrides must be the same), so one seed can be repeated against a 5-seed run.

Acceptance: LG success on all training conditions within 10 iterations; policy success on >= 90 % of
the held-out conditions after <= 12 iterations. Writes bench/results/gps_peg.json and gps_peg.png.
Run: ``.venv/bin/python bench/gps_peg.py [--iterations 12] [--seeds 0 1 2] [--config PATH]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from mbpl_core.config import from_dict
from mbpl_core.costs import CostConfig, build_cost
from mbpl_core.guided.mdgps import MDGPS
from mbpl_core.local.lqr_flm import AlgorithmConfig, Policy
from mbpl_core.policy import GPSConfig
from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import load_experiment
from mbpl_sim.training import validation_env

ROOT = Path(__file__).resolve().parents[1]
SUCCESS_M = 0.01  # peg tip within 1 cm of the hole bottom


def tip_distances(env: MujocoEnv, policies: list[Policy] | Policy) -> np.ndarray:
    """Final tip-to-hole-bottom distance (m) of a noiseless rollout per condition: (num_conditions,)."""
    out = []
    for m in range(env.num_conditions):
        policy = policies[m] if isinstance(policies, list) else policies
        x_final = env.sample(policy, m, None).X[0, -1, env.layout.ee_points]
        out.append(float(np.linalg.norm(x_final[:3])))  # point 0 is the tip; its target is the hole bottom
    return np.asarray(out)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(dict(out.get(key) or {}), value) if isinstance(value, dict) else value
    return out


def run_seed(config_path: Path, iterations: int, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """One MDGPS run; per-iteration figures as plain lists. overrides: {"algorithm": {...}, "gps": {...}}."""
    exp = load_experiment(config_path)
    exp = dataclasses.replace(exp, **{k: _merge(getattr(exp, k) or {}, v) for k, v in overrides.items()})
    train, held_out = MujocoEnv(exp), MujocoEnv(exp, "held_out")
    cost = build_cost(from_dict(CostConfig, exp.cost), exp.layout, train.dU)
    algorithm = from_dict(AlgorithmConfig, {**exp.algorithm, "seed": seed})
    gps_config = from_dict(GPSConfig, {**exp.gps, "seed": seed})
    mdgps = MDGPS(train, cost, algorithm, gps_config, eval_env=held_out, eval_cost=cost,
                  select_env=validation_env(exp, gps_config))
    rows = []
    start = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        report = mdgps.iteration()
        wall = time.perf_counter() - t0
        lg_tip = tip_distances(train, mdgps.controllers)
        policy_tip = tip_distances(held_out, mdgps.numpy_policy)
        deployed_tip = policy_tip if mdgps.best is None else tip_distances(held_out, mdgps.deployed_policy)
        rows.append({
            "iteration": report.iteration,
            "lg_cost": list(report.lg_cost),
            "lg_tip_m": lg_tip.tolist(),
            "lg_success": float(np.mean(lg_tip < SUCCESS_M)),
            "policy_tip_m": policy_tip.tolist(),
            "policy_success": float(np.mean(policy_tip < SUCCESS_M)),
            "policy_ee_distance_m": list(report.policy_distance or ()),
            "deployed_tip_m": deployed_tip.tolist(),
            "deployed_success": float(np.mean(deployed_tip < SUCCESS_M)),
            "deployed_from_iteration": None if mdgps.best is None else mdgps.best[1] + 1,
            "step_mult": list(report.step_mult),
            "kl": list(report.kl),
            "fallbacks": sum(1 for i, _ in mdgps.fallbacks if i == report.iteration),
            "rejected_steps": [int(r) for r in report.rejected],
            "check_trials": report.check_trials,
            "s_step_loss": [report.s_step.loss_before, report.s_step.loss_after],
            "wall_s": wall,
            "sampling_s": report.sampling_s, "c_step_s": report.c_step_s, "s_step_s": report.s_step_s,
        })
        row = rows[-1]
        print(f"seed {seed} iteration {row['iteration'] + 1:2d} {wall:5.1f}s  "
              f"LG cost {np.mean(row['lg_cost']):7.1f} "
              f"tip cm {np.round(100 * lg_tip, 1)}  policy held-out success {row['policy_success']:.2f} "
              f"mean tip {100 * policy_tip.mean():.1f} cm  deployed {row['deployed_success']:.2f}  "
              f"step_mult {min(row['step_mult']):.3g}-{max(row['step_mult']):.3g}  "
              f"rejected {sum(row['rejected_steps'])}", flush=True)
    inserted = _first(rows, "lg_success", 1.0)
    later = [] if inserted is None else [(r["iteration"] + 1, m) for r in rows[inserted:]
                                         for m, tip in enumerate(r["lg_tip_m"]) if tip >= SUCCESS_M]
    return {"seed": seed, "iterations": rows, "total_s": time.perf_counter() - start,
            "lg_all_inserted_after": inserted,
            "later_jams": len(later), "later_jam_trials": later,
            "policy_success_per_iteration": [r["policy_success"] for r in rows],
            "deployed_success_per_iteration": [r["deployed_success"] for r in rows],
            "policy_90_after": _first(rows, "policy_success", 0.9),
            "policy_best": max(r["policy_success"] for r in rows),
            "deployed_90_after": _first(rows, "deployed_success", 0.9)}


def figures(value: Any) -> Any:
    """``value`` without wall-clock entries (keys ending in _s): what two runs of one seed must share."""
    if isinstance(value, dict):
        return {k: figures(v) for k, v in value.items() if not k.endswith("_s") and k != "machine"}
    if isinstance(value, list):
        return [figures(v) for v in value]
    return value


def _first(rows: list[dict[str, Any]], key: str, level: float) -> int | None:
    """Number of iterations run when ``key`` first reached ``level`` (1-based; None if never)."""
    return next((r["iteration"] + 1 for r in rows if r[key] >= level), None)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """LG cost, LG success and held-out policy success per iteration, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for res in results:
        its = [r["iteration"] + 1 for r in res["iterations"]]
        label = f"seed {res['seed']}"
        axes[0].semilogy(its, [np.mean(r["lg_cost"]) for r in res["iterations"]], marker="o", label=label)
        axes[1].plot(its, [r["lg_success"] for r in res["iterations"]], marker="o", label=label)
        line = axes[2].plot(its, [r["policy_success"] for r in res["iterations"]], marker="o", label=label)
        if any(r["deployed_from_iteration"] for r in res["iterations"]):
            axes[2].plot(its, [r["deployed_success"] for r in res["iterations"]], ls=":", marker="x",
                         color=line[0].get_color(), label=f"{label} deployed (best on training)")
    axes[0].set_title("LG sampled cost (mean over the training conditions)")
    axes[1].set_title("LG insertion success (training holes)")
    axes[2].set_title("policy insertion success (16 held-out holes)")
    axes[2].axhline(0.9, color="k", ls="--", lw=0.8)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs/arm7_peg.yaml")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--override", type=json.loads, default={},
                        help='JSON merged into the config, e.g. \'{"gps": {"iterations": 4000}}\'')
    parser.add_argument("--out", default="gps_peg", help="results name: bench/results/<out>.json and .png")
    parser.add_argument("--compare", type=Path, default=None,
                        help="earlier results JSON: are all figures but the wall times identical?")
    args = parser.parse_args()
    results = [run_seed(args.config, args.iterations, seed, args.override) for seed in args.seeds]
    out = {
        "benchmark": "gps_peg",
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "overrides": args.override,
        "success_threshold_m": SUCCESS_M,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "runs": results,
    }
    results_dir = ROOT / "bench/results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{args.out}.json").write_text(json.dumps(out, indent=1))
    plot(results, results_dir / f"{args.out}.png")
    print("seed | LG all inserted at | later jams | newest / deployed held-out at the last iteration | s")
    for res in results:
        last = res["iterations"][-1]
        print(f"{res['seed']:4d} | {res['lg_all_inserted_after']!s:>18} | {res['later_jams']:10d} | "
              f"{last['policy_success']:.2f} / {last['deployed_success']:.2f} | {res['total_s']:.0f}")
    for res in results:
        last = res["iterations"][-1]
        print(f"seed {res['seed']}: LG all inserted after {res['lg_all_inserted_after']} iterations, "
              f"policy >= 90 % after {res['policy_90_after']}, best {res['policy_best']:.2f}, "
              f"final policy success {last['policy_success']:.2f}, "
              f"final deployed success {last['deployed_success']:.2f} "
              f"(from iteration {last['deployed_from_iteration']}), "
              f"{res['total_s']:.0f} s")
    if args.compare is not None:
        same = compare_runs(json.loads(json.dumps(out)), json.loads(args.compare.read_text()))
        for seed, identical in same.items():
            print(f"seed {seed}: figures identical to {args.compare}: {identical}")
        print(f"all identical: {bool(same) and all(same.values())}")


def compare_runs(new: dict[str, Any], old: dict[str, Any]) -> dict[int, bool]:
    """{seed: figures identical} for the seeds run in both results (empty when config or overrides differ,
    or no seed is shared)."""
    if (new["config"], new["overrides"]) != (old["config"], old["overrides"]):
        return {}
    earlier = {run["seed"]: run for run in old["runs"]}
    return {run["seed"]: figures(run) == figures(earlier[run["seed"]]) for run in new["runs"]
            if run["seed"] in earlier}


if __name__ == "__main__":
    main()
