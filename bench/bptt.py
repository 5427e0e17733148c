"""Benchmark of backpropagation through the learned model on reacher2: the instability and its remedy.

1. Instability (on the ensemble and policy of a plain BPTT run after ``--iterations`` iterations, and
   after its first iteration): the policy gradient g = ∂J_H/∂θ from the real t = 0 states, over
   ``--batches`` independent minibatches (start states, member assignment, model draws) per H: mean ‖g‖,
   its spread, tr Cov(g) and the signal-to-noise ‖E g‖ / sqrt(tr Cov g); and the largest singular value
   of the Jacobian products ∏_{h<H} dx_{h+1}/dx_h along model rollouts (closed loop through π, and the
   model alone), median over rollouts, for H = 1 … T.
2. Remedy: the same budget of real trials for plain BPTT over the whole episode (H = T, from t = 0),
   plain BPTT over a short horizon (H = 10, from buffer states, no value: myopic) and SVG(H)-style BPTT
   (H = 10 + the TD-trained terminal value); per iteration the noiseless policy's final tip distance on
   the training conditions and the held-out ones.

Prints the figures, writes bench/results/bptt.json and bench/results/bptt.png. One torch thread.

Measured (reacher2, seed 0, ``--iterations 5 --gradient-steps 100``, a loaded 2-core machine, ~4 min per
method): after 5 iterations of plain H = 10, mean ‖g‖ = 0.092 / 0.27 / 0.65 / 8.6 / 38 / 93 / 576 for
H = 1 / 5 / 10 / 20 / 30 / 40 / 50, tr Cov g = 2e-4 → 1e-2 (H = 10) → 5e4 (H = 50), SNR 5.8-7 up to H = 10 and
2.5 at H = T; σ_max of the closed-loop Jacobian product 14 (H = 1) to 49 (H = 50). Final noiseless policy
(1200 real steps): plain H = 10 training median 4.4 cm (one condition still at the start), held-out median
2.1 cm; plain H = T 6.8 cm / 15 cm; SVG(10) 4.6 cm (max 8.0) / 6.0 cm. With 8 iterations and 150 steps plain
H = 10 reached training max 6.5 cm, median 1.7 cm, held-out median 1.7 cm. One seed: no ranking claim between
H = 10 with and without the value. (All measured before the ensemble's constant-column fix — reacher2's ee z
had model noise then; see docs/methods.md "Why MBPO lags". Re-measured after it, ``--methods plain_10``,
after 5 iterations: mean ‖g‖ 0.095 / 0.25 / 0.60 / 10 / 49 / 127 / 623 for H = 1 / 5 / 10 / 20 / 30 / 40 / 50,
tr Cov g 2e-4 → 1e-2 → 4e4, σ_max closed loop 14 → 71: the same growth.)
Usage:  python bench/bptt.py [--iterations 6] [--gradient-steps 100] [--batches 8] [--seed 0]
                             [--methods plain_T plain_10 svg_10]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbpl_core.config import from_dict
from mbpl_core.costs import CostConfig, build_cost
from mbpl_core.learners.bptt import (
    BPTT,
    BPTTConfig,
    TorchPolicyAdapter,
    gradient_statistics,
    jacobian_spectrum,
)
from mbpl_sim.env import MujocoEnv
from mbpl_sim.evaluate import final_distances
from mbpl_sim.experiment import load_experiment

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
BENCH_MODEL = {"hidden": [64, 64], "max_epochs": 50}  # the experiment's bptt.model keys override these
HORIZONS = (1, 2, 5, 10, 20, 30, 40, 50)
METHODS: dict[str, dict[str, Any]] = {
    "plain_T": {"horizon": 50, "start": "initial"},
    "plain_10": {"horizon": 10},
    "svg_10": {"horizon": 10, "value": {"enabled": True}},
    "svg_5": {"horizon": 5, "value": {"enabled": True}},
}


def _learner(experiment: Any, env: MujocoEnv, overrides: dict[str, Any], args: argparse.Namespace) -> BPTT:
    cost = build_cost(from_dict(CostConfig, experiment.cost, "cost"), env.layout, env.dU)
    section = {"learning_rate": 3e-3, **experiment.section("bptt"), **overrides, "seed": args.seed,
               "gradient_steps": args.gradient_steps}
    section["model"] = {**BENCH_MODEL, **experiment.section("bptt").get("model", {}), "device": "cpu"}
    if "value" in overrides:
        section["value"] = {**experiment.section("bptt").get("value", {}), **overrides["value"]}
    return BPTT(env, cost, from_dict(BPTTConfig, section, "bptt"))


def _tips(env: MujocoEnv, learner: BPTT) -> list[float]:
    policy = TorchPolicyAdapter(learner.policy)
    return [final_distances(env, env.sample(policy, c, None))[0] for c in range(env.num_conditions)]


def instability(learner: BPTT, batches: int) -> dict[str, Any]:
    """Gradient statistics and Jacobian spectra vs H of the learner's current model and policy."""
    T = learner.env.T
    horizons = [H for H in HORIZONS if H <= T]
    grads = [dataclasses.asdict(s) for s in gradient_statistics(learner, horizons, batches)]
    closed = jacobian_spectrum(learner, T, rollouts=10, closed_loop=True)
    open_ = jacobian_spectrum(learner, T, rollouts=10, closed_loop=False)
    return {"gradient": grads, "sigma_max_closed_loop": np.median(closed, axis=0).tolist(),
            "sigma_max_open_loop": np.median(open_, axis=0).tolist()}


def print_instability(label: str, figures: dict[str, Any]) -> None:
    print(f"\n{label}")
    print(f"{'H':>4} {'mean |g|':>11} {'std |g|':>10} {'|E g|':>10} {'tr Cov g':>11} {'SNR':>7} "
          f"{'|g|/H':>9} {'sigma_cl':>10} {'sigma_ol':>10}")
    for g in figures["gradient"]:
        H = g["H"]
        print(f"{H:>4} {g['mean_norm']:>11.4g} {g['std_norm']:>10.3g} {g['norm_of_mean']:>10.4g} "
              f"{g['variance']:>11.4g} {g['snr']:>7.3g} {g['per_step_norm']:>9.3g} "
              f"{figures['sigma_max_closed_loop'][H - 1]:>10.4g} "
              f"{figures['sigma_max_open_loop'][H - 1]:>10.4g}")


def run_method(name: str, experiment: Any, args: argparse.Namespace) -> dict[str, Any]:
    env = MujocoEnv(experiment)
    held_out = MujocoEnv(experiment, condition_set="held_out")
    learner = _learner(experiment, env, METHODS[name], args)
    curve, figures = [], {}
    start = time.perf_counter()
    for i in range(args.iterations):
        r = learner.iteration()
        tips, held = _tips(env, learner), _tips(held_out, learner)
        curve.append({"iteration": i, "env_steps": r.env_steps, "train_tip_distance": tips,
                      "held_out_tip_distance": held, "objective": [r.objective_start, r.objective_end],
                      "grad_norm_median": r.grad_norm, "seconds": time.perf_counter() - start})
        print(f"[{name}] it {i}: env steps {r.env_steps}, train tips max {max(tips):.4f} m "
              f"(median {np.median(tips):.4f}), held-out median {np.median(held):.4f} m, "
              f"J_H {r.objective_start:.4g} -> {r.objective_end:.4g}, median |g| {r.grad_norm:.3g}",
              flush=True)
        if name == "plain_10" and i in (0, args.iterations - 1):
            figures[f"after_iteration_{i}"] = instability(learner, args.batches)
            print_instability(f"[{name}] instability after iteration {i}", figures[f"after_iteration_{i}"])
    return {"config": dataclasses.asdict(learner.config), "curve": curve, "instability": figures}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    inst = next((r["instability"] for r in results["methods"].values() if r["instability"]), {})
    for label, figs in inst.items():
        H = [g["H"] for g in figs["gradient"]]
        grads = figs["gradient"]
        axes[0].errorbar(H, [g["mean_norm"] for g in grads], [g["std_norm"] for g in grads], marker="o",
                         label=f"mean |g| ({label})")
        axes[0].plot(H, [math_sqrt(g["variance"]) for g in grads], "--", label=f"sqrt tr Cov ({label})")
        steps = np.arange(1, len(figs["sigma_max_closed_loop"]) + 1)
        axes[1].plot(steps, figs["sigma_max_closed_loop"], label=f"closed loop ({label})")
        axes[1].plot(steps, figs["sigma_max_open_loop"], ":", label=f"model only ({label})")
    for ax, title in ((axes[0], "policy gradient vs H"), (axes[1], "sigma_max of Jacobian product vs H")):
        ax.set_yscale("log")
        ax.set_xlabel("H")
        ax.set_title(title)
        ax.legend(fontsize=7)
    for name, r in results["methods"].items():
        steps = [c["env_steps"] for c in r["curve"]]
        axes[2].plot(steps, [np.median(c["train_tip_distance"]) for c in r["curve"]], marker="o", label=name)
    axes[2].axhline(0.02, color="k", lw=0.5)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("real environment steps")
    axes[2].set_title("median final tip distance (training conditions), m")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def math_sqrt(v: float) -> float:
    return float(np.sqrt(max(v, 0.0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--gradient-steps", type=int, default=100)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["plain_T", "plain_10", "svg_10"],
                        choices=list(METHODS))
    parser.add_argument("--config", default=str(REPO / "configs" / "reacher2_sim.yaml"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    experiment = load_experiment(args.config)
    results: dict[str, Any] = {"args": vars(args), "methods": {}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.methods:
        results["methods"][name] = run_method(name, experiment, args)
        (RESULTS / "bptt.json").write_text(json.dumps(results, indent=1))  # each method as it finishes
        plot(results, RESULTS / "bptt.png")
    print("\nfinal noiseless policy, training conditions / held-out (m):")
    for name, r in results["methods"].items():
        last = r["curve"][-1]
        print(f"  {name:>9}: train max {max(last['train_tip_distance']):.4f} median "
              f"{np.median(last['train_tip_distance']):.4f} | held-out median "
              f"{np.median(last['held_out_tip_distance']):.4f}, within 2 cm "
              f"{sum(d < 0.02 for d in last['held_out_tip_distance'])}/{len(last['held_out_tip_distance'])} "
              f"| {last['env_steps']} env steps, {last['seconds']:.0f} s")
    print(f"wrote {RESULTS / 'bptt.json'} and {RESULTS / 'bptt.png'}")


if __name__ == "__main__":
    main()
