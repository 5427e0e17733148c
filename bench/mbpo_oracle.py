"""Diagnostic benchmark: how much of MBPO's gap is model error? MBPO with a perfect model, against itself.

Three runs of the same budget and seed on a reach task (default reacher2), all through
:class:`mbpl_sim.learner_runners.MBPORunner` / ``SACRunner`` — what ``mbpl train`` runs:

* ``mbpo``: MBPO as configured (the learned probabilistic ensemble);
* ``mbpo_true_model``: the same MBPO whose branched rollouts step the simulator itself from each model
  state (:class:`SimulatorModel`; no model fits) — every rollout exact, so what is left of the gap to
  its paper is the learner's;
* ``sac_same_updates``: SAC on real data only with as many gradient steps per real step as MBPO takes
  (``mbpo.updates_per_step``) — what the extra updates alone give, without model data.

Per iteration: the noiseless policy's worst and mean final distance and episode cost on the training
conditions; for ``mbpo``, the k-step error of its branched rollouts (k = 1 … 5, from buffer states with
the policy's actions) against the simulator driven by the same actions: median and p90 of the ee error.

Reach scenes only (the condition changes only the target, so a state x gives the robot's joint state
and, through its ee-to-target vector, the condition; a peg's hole is a body the state does not carry).

Measured (reacher2, seed 0, ``--iterations 16 --updates-per-step 20``, 4000 real steps, two runs at a
time on the 2 cores, 2026-12-07; the first row before the constant-column fix of the ensemble's target
normaliser): see docs/methods.md "Why MBPO lags".

Usage:  python bench/mbpo_oracle.py [--task reacher2] [--iterations 16] [--updates-per-step 20] [--seed 0]
                                    [--runs mbpo mbpo_true_model sac_same_updates]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TASKS = {"reacher2": REPO / "configs" / "reacher2_sim.yaml",
         "arm7_reach": REPO / "configs" / "arm7_reach.yaml"}
RUNS = ("mbpo", "mbpo_true_model", "sac_same_updates")


class SimulatorModel:
    """The ensemble's ``step`` interface answered by the simulator: x (E, N, dX), u (E, N, dU) → the exact
    x_next for every row (the same for every member). The row's condition is the training condition whose
    target its ee-to-target vector gives (ValueError if none within 1e-6 m)."""

    def __init__(self, env: Any, like: Any) -> None:
        self.env = env
        self.elite_indices, self.dU = like.elite_indices, like.dU
        self.dtype, self.device = like.dtype, like.device
        self.targets = np.stack([env.target_points(c).ravel() for c in range(env.num_conditions)])

    def condition_of(self, x: np.ndarray) -> int:
        n, lay = self.env.dU, self.env.layout
        points = self.env.kinematics.compute(x[:n], x[n:2 * n]).points.ravel()
        gap = np.abs(self.targets - (points - x[lay.ee_points])).max(axis=1)
        if gap.min() > 1e-6:
            raise ValueError(f"no training condition has this state's target (closest {gap.min():.2e} m)")
        return int(gap.argmin())

    def next_state(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        n = self.env.dU
        self.env.place(self.condition_of(x), x[:n], x[n:2 * n])
        return self.env.step(u)

    def step(self, x: torch.Tensor, u: torch.Tensor, generator: Any = None, sample: bool = True,
             members: Any = None) -> torch.Tensor:
        X, U = x[0].double().cpu().numpy(), u[0].double().cpu().numpy()
        rows = [self.next_state(X[i], U[i]) for i in range(X.shape[0])]
        out = torch.as_tensor(np.stack(rows), dtype=x.dtype)
        return out.expand(x.shape[0], *out.shape)


def rollout_errors(algo: Any, truth: SimulatorModel, cost: Any, T: int, k: int = 5,
                   n: int = 200) -> list[dict]:
    """k-step error of the ensemble's branched rollouts against the simulator driven by the same actions."""
    from mbpl_core.learners.mbpo import branched_rollouts

    X, _, _, steps = algo.real_transitions()
    rng = np.random.default_rng(1)
    rows = rng.integers(0, X.shape[0], size=n)
    r = branched_rollouts(algo.model, algo.policy_actions, algo.unscale, cost, X[rows], steps[rows], k, T,
                          rng)
    lay, x, out = truth.env.layout, r.X[:, 0], []
    for h in range(k):
        x = np.stack([truth.next_state(x[i], r.U[i, h]) for i in range(n)])
        err = np.linalg.norm(r.X[:, h + 1][:, lay.ee_points] - x[:, lay.ee_points], axis=1)[r.valid[:, h]]
        out.append({"k": h + 1, "ee_error_median_m": float(np.median(err)),
                    "ee_error_p90_m": float(np.percentile(err, 90))})
    return out


def run(task: str, name: str, iterations: int, updates: int, seed: int) -> dict[str, Any]:
    from mbpl_core.config import from_dict
    from mbpl_core.costs import CostConfig, build_cost
    from mbpl_core.learners.mbpo import MBPOConfig
    from mbpl_ros.cli import effective_config
    from mbpl_sim.env import MujocoEnv
    from mbpl_sim.experiment import load_experiment
    from mbpl_sim.learner_runners import MBPORunner, SACRunner

    with tempfile.TemporaryDirectory(prefix="mbpl-oracle-") as folder:
        mbpo = [f"mbpo.iterations={iterations}", f"mbpo.updates_per_step={updates}", f"mbpo.seed={seed}"]
        if name == "sac_same_updates":  # MBPO's real-step budget and random start, SAC's learner alone
            probe_path = effective_config(TASKS[task], ["method=mbpo", *mbpo], Path(folder) / "p")[0]
            m = from_dict(MBPOConfig, load_experiment(probe_path).section("mbpo"), "mbpo")
            sets = ["method=sac", f"sac.iterations={iterations}", f"sac.gradient_steps={updates}",
                    f"sac.steps_per_iteration={m.steps_per_iteration}",
                    f"sac.learning_starts={m.initial_random_steps}", f"sac.seed={seed}"]
        else:
            sets = ["method=mbpo", *mbpo]
        experiment = load_experiment(effective_config(TASKS[task], sets, Path(folder) / "run")[0])
    env = MujocoEnv(experiment)
    if experiment.task.scene != "reach" and name == "mbpo_true_model":
        raise SystemExit(f"{task}: the true-model run needs a reach scene, not {experiment.task.scene!r}")
    cost = build_cost(from_dict(CostConfig, experiment.cost, "cost"), env.layout, env.dU)
    runner = (SACRunner if name == "sac_same_updates" else MBPORunner)(experiment, env, cost, 0.02)
    truth = None
    if name != "sac_same_updates":
        truth = SimulatorModel(MujocoEnv(experiment), runner.algorithm.model)
        x0 = env.reset(0)
        u = 0.3 * np.asarray(env.effort_limits)
        assert np.abs(truth.next_state(x0, u) - env.step(u)).max() < 1e-9, "the simulator model is not exact"
    if name == "mbpo_true_model":
        algo = runner.algorithm
        algo.model = truth

        def no_fit() -> None:
            algo.model_fitted = True

        algo.fit_model = no_fit
    curve, start = [], time.perf_counter()
    for i in range(iterations):
        record = runner.iteration()
        tips = record["eval_final_distance"]
        row = {"iteration": i, "env_steps": record["env_steps"], "worst_m": max(tips),
               "mean_m": float(np.mean(tips)),
               "eval_cost": float(np.mean(record["eval_cost"])), "wall_s": time.perf_counter() - start}
        if name == "mbpo":
            row["rollout_errors"] = rollout_errors(runner.algorithm, truth, cost, env.T)
        curve.append(row)
        extra = ""
        if "rollout_errors" in row:
            e = row["rollout_errors"]
            extra = f" | rollout ee error k=1 {100 * e[0]['ee_error_median_m']:.2f} cm, k=5 " \
                    f"{100 * e[-1]['ee_error_median_m']:.2f} cm (p90 {100 * e[-1]['ee_error_p90_m']:.2f})"
        print(f"{name:17s} it {i:2d} {row['env_steps']:5d} steps: worst {100 * row['worst_m']:5.1f} cm, mean "
              f"{100 * row['mean_m']:5.1f} cm, cost {row['eval_cost']:6.2f}{extra}", flush=True)
    return {"run": name, "task": task, "seed": seed, "updates_per_step": updates, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="reacher2", choices=list(TASKS))
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--updates-per-step", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--out", type=Path, default=RESULTS / "mbpo_oracle.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for name in args.runs:
        results.append(run(args.task, name, args.iterations, args.updates_per_step, args.seed))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "runs": results}, indent=1))
    print("\nlast 4 iterations (median):")
    for r in results:
        tail = r["curve"][-4:]
        print(f"  {r['run']:17s} worst {100 * np.median([c['worst_m'] for c in tail]):5.1f} cm, mean "
              f"{100 * np.median([c['mean_m'] for c in tail]):5.1f} cm, cost "
              f"{np.median([c['eval_cost'] for c in tail]):6.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
