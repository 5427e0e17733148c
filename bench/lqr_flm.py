"""Benchmark: one LQR-FLM iteration at robot size (T=100, dX=26, dU=7), per condition.

Synthetic 7-joint "robot": damped double integrator in joint space with weak coupling and process noise,
two end-effector points that are a fixed linear function of q (so the state has the layout and the
degeneracy of the real one: x = [q, q̇, J q + o, J q̇]), cost from build_cost with the GPS ee penalty.
4 conditions, 5 samples each, 20 trajectories kept for the GMM prior. The first iterations fill the prior;
the figures reported are means over the steady-state iterations (prior full).

Prints ms per condition per iteration (dynamics + cost model + KL step, sampling excluded), η-search
iteration counts, and the split EM / regression / cost / KL step; writes bench/results/lqr_flm.json.
Run: ``.venv/bin/python bench/lqr_flm.py [--iterations N]``.

``--compare-gmm REV`` also runs the same loop with ``mbpl_core/local/gmm.py`` as of git revision REV, old and
current alternately ``--repeats`` times in this one process, and reports the EM and total times as ratios
and whether every cost, EM and η iteration count and the final controllers are identical.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mbpl_core.containers import SampleBatch, StateLayout
from mbpl_core.costs import CostConfig, EndEffectorCostConfig, build_cost
from mbpl_core.local import dynamics as dynamics_module
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


def run(iterations: int, seed: int, controllers: list | None = None) -> dict:
    """Run the loop and collect per-iteration timings; returns the JSON-ready summary.

    ``controllers``, if given, receives the final per-condition controller gains (K, k) arrays.
    """
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
    if controllers is not None:
        controllers.extend((o.controller.K.copy(), o.controller.k.copy()) for o in alg.optimizers)
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


def _gmm_module_at(rev: str):  # noqa: ANN202 - a module object
    """mbpl_core/local/gmm.py as of git revision rev, imported as a separate module."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{rev}:mbpl_core/local/gmm.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "gmm_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("gmm_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gmm_at_rev"] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _gmm_class(cls: type) -> Iterator[None]:
    saved = dynamics_module.GaussianMixture
    dynamics_module.GaussianMixture = cls
    try:
        yield
    finally:
        dynamics_module.GaussianMixture = saved


def compare_gmm(rev: str, iterations: int, seed: int, repeats: int) -> dict:
    """The loop with the GMM of ``rev`` and the current one, alternately; timings and identity of results."""
    old_cls = _gmm_module_at(rev).GaussianMixture
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    finals: dict[str, list] = {}
    for r in range(repeats):
        order = (("old", old_cls), ("new", dynamics_module.GaussianMixture))
        for name, cls in order if r % 2 == 0 else order[::-1]:
            controllers: list = []
            with _gmm_class(cls):
                runs[name].append(run(iterations, seed, controllers))
            finals[name] = controllers
    keys = ("mean_cost", "em_iterations", "eta_iterations")
    trace = lambda result: [row[k] for row in result["per_iteration"] for k in keys]  # noqa: E731
    same_trace = all(trace(a) == trace(b) for a, b in zip(runs["old"], runs["new"], strict=True))
    same_controllers = all(
        np.array_equal(Ka, Kb) and np.array_equal(ka, kb)
        for (Ka, ka), (Kb, kb) in zip(finals["old"], finals["new"], strict=True)
    )
    em = {n: [x["split_ms_per_condition"]["em"] for x in v] for n, v in runs.items()}
    total = {n: [x["ms_per_condition_per_iteration"] for x in v] for n, v in runs.items()}
    return {
        "revision": rev, "repeats": repeats,
        "em_ms": em, "total_ms": total,
        "em_ratio_old_over_new": [o / n for o, n in zip(em["old"], em["new"], strict=True)],
        "total_ratio_old_over_new": [o / n for o, n in zip(total["old"], total["new"], strict=True)],
        "identical_costs_and_iteration_counts": same_trace,
        "identical_final_controllers": same_controllers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    default_out = Path(__file__).resolve().parent / "results" / "lqr_flm.json"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--compare-gmm", metavar="REV", help="also time the GMM of this git revision")
    parser.add_argument("--repeats", type=int, default=4, help="old/new runs each with --compare-gmm")
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
    if args.compare_gmm:
        cmp = compare_gmm(args.compare_gmm, args.iterations, args.seed, args.repeats)
        result["gmm_comparison"] = cmp
        fmt = lambda xs: " ".join(f"{x:6.1f}" for x in xs)  # noqa: E731
        print(f"GMM of {cmp['revision']} (old) vs current (new), {cmp['repeats']} runs each, alternating:")
        print(f"  EM ms/condition    old {fmt(cmp['em_ms']['old'])} | new {fmt(cmp['em_ms']['new'])}")
        print(f"  total ms/condition old {fmt(cmp['total_ms']['old'])} | new {fmt(cmp['total_ms']['new'])}")
        print(f"  ratio old/new: EM {fmt(cmp['em_ratio_old_over_new'])}, "
              f"total {fmt(cmp['total_ratio_old_over_new'])}")
        print("  identical costs and EM / eta iteration counts: "
              f"{cmp['identical_costs_and_iteration_counts']}; "
              f"identical final controllers: {cmp['identical_final_controllers']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
