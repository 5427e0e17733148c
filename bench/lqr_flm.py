"""Benchmark: one LQR-FLM iteration at robot size (T=100, dX=26, dU=7), per condition.

Synthetic 7-joint "robot": damped double integrator in joint space with weak coupling and process noise,
two end-effector points that are a fixed linear function of q (so the state has the layout and the
degeneracy of the real one: x = [q, q̇, J q + o, J q̇]), cost from build_cost with the GPS ee penalty.
4 conditions, 5 samples each, 20 trajectories kept for the GMM prior. The first iterations fill the prior;
the figures reported are means over the steady-state iterations (prior full).

Prints ms per condition per iteration (dynamics + cost model + KL step, sampling excluded), η-search
iteration counts, and the split EM / regression / cost / KL step; writes bench/results/lqr_flm.json.
Run: ``.venv/bin/python bench/lqr_flm.py [--iterations N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np

from mbpl_core.containers import SampleBatch, StateLayout
from mbpl_core.costs import CostConfig, EndEffectorCostConfig, build_cost
from mbpl_core.local.dynamics import DynamicsFitConfig
from mbpl_core.local.lqr_flm import LQRFLM, AlgorithmConfig, Policy

T, DQ, N_POINTS, CONDITIONS, SAMPLES, KEPT = 100, 7, 2, 4, 5, 20


class SyntheticArm:
    """Stable linear stand-in for a 7-DoF arm; implements mbpl_core.local.lqr_flm.Environment."""

    def __init__(self, rng: np.random.Generator, dt: float = 0.05, process_std: float = 0.01) -> None:
        self.T, self.dt, self.layout = T, dt, StateLayout(DQ, N_POINTS)
        self.dX, self.dU, self.num_conditions = self.layout.dX, DQ, CONDITIONS
        coupling = 0.05 * rng.standard_normal((DQ, DQ))
        self.Aqd = (1.0 - 2.0 * dt) * np.eye(DQ) + dt * (coupling - coupling.T)
        self.Bqd = dt * np.diag(rng.uniform(0.5, 2.0, DQ))
        self.J = rng.standard_normal((self.layout.dP, DQ)) / np.sqrt(DQ)
        self.offset = 0.3 * rng.standard_normal(self.layout.dP)
        self.q0s = [0.5 * rng.standard_normal(DQ) for _ in range(CONDITIONS)]
        self.process_std = process_std
        self.rng = rng

    def _state(self, q: np.ndarray, qd: np.ndarray) -> np.ndarray:
        return np.concatenate([q, qd, self.J @ q + self.offset, self.J @ qd])

    def x0(self, condition: int) -> np.ndarray:
        return self._state(self.q0s[condition], np.zeros(DQ))

    def sample(self, policy: Policy, condition: int, noise: np.ndarray | None) -> SampleBatch:
        X, U = np.zeros((1, T, self.dX)), np.zeros((1, T, self.dU))
        q, qd = self.q0s[condition].copy(), np.zeros(DQ)
        for t in range(T):
            x = self._state(q, qd)
            u = policy.act(t, x, None if noise is None else noise[t])
            X[0, t], U[0, t] = x, u
            q = q + self.dt * qd
            qd = self.Aqd @ qd + self.Bqd @ u + self.process_std * self.rng.standard_normal(DQ)
        return SampleBatch(X, U)


def run(iterations: int, seed: int) -> dict:
    """Run the loop and collect per-iteration timings; returns the JSON-ready summary."""
    env = SyntheticArm(np.random.default_rng(seed + 1))
    cost = build_cost(CostConfig(action_weight=1e-3, ee=EndEffectorCostConfig()), env.layout, env.dU)
    dynamics = DynamicsFitConfig(max_samples=KEPT)
    config = AlgorithmConfig(samples_per_condition=SAMPLES, seed=seed, dynamics=dynamics)
    alg = LQRFLM(env, cost, config)
    rows = []
    for _ in range(iterations):
        report = alg.iteration()
        em = sum(f.timings["prior"] for f in alg.fitters)
        regression = sum(f.timings["regression"] for f in alg.fitters)
        rows.append({
            "iteration": report.iteration,
            "kept_samples": alg.fitters[0].prior.num_samples,
            "gmm_clusters": alg.fitters[0].prior.gmm.K,
            "em_iterations": [f.em_iterations for f in alg.fitters],
            "eta_iterations": list(report.eta_iterations),
            "mean_cost": list(report.mean_cost),
            "ms_per_condition": {
                "em": 1e3 * em / CONDITIONS,
                "regression": 1e3 * regression / CONDITIONS,
                "cost": 1e3 * report.cost_s / CONDITIONS,
                "kl_step": 1e3 * report.lqr_s / CONDITIONS,
                "sampling": 1e3 * report.sampling_s / CONDITIONS,
            },
        })
    steady = [r for r in rows if r["kept_samples"] == KEPT] or rows[-1:]
    parts = ("em", "regression", "cost", "kl_step")
    split = {p: float(np.mean([r["ms_per_condition"][p] for r in steady])) for p in parts}
    return {
        "setup": {
            "T": T, "dX": env.dX, "dU": env.dU, "conditions": CONDITIONS, "samples_per_condition": SAMPLES,
            "kept_samples": KEPT, "iterations": iterations, "seed": seed,
        },
        "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        },
        "steady_state_iterations": [r["iteration"] for r in steady],
        "ms_per_condition_per_iteration": float(sum(split.values())),
        "split_ms_per_condition": split,
        "eta_iterations_steady": [n for r in steady for n in r["eta_iterations"]],
        "em_iterations_steady": [n for r in steady for n in r["em_iterations"]],
        "per_iteration": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    default_out = Path(__file__).resolve().parent / "results" / "lqr_flm.json"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    result = run(args.iterations, args.seed)
    for r in result["per_iteration"]:
        ms = r["ms_per_condition"]
        print(f"iter {r['iteration']}: kept {r['kept_samples']:2d}  K={r['gmm_clusters']:2d}  "
              f"EM its {r['em_iterations']}  eta its {r['eta_iterations']}  "
              + "  ".join(f"{k} {v:7.1f} ms" for k, v in ms.items()))
    split = result["split_ms_per_condition"]
    print(f"steady state (iterations {result['steady_state_iterations']}): "
          f"{result['ms_per_condition_per_iteration']:.1f} ms per condition per iteration "
          "(sampling excluded)")
    print("  split: " + ", ".join(f"{k} {v:.1f} ms" for k, v in split.items()))
    print(f"  eta-search iterations: {result['eta_iterations_steady']}")
    print(f"  EM iterations: {result['em_iterations_steady']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
