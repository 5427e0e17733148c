"""In-process training (``mbpl train``): LQR-FLM or MDGPS over the MuJoCo environment, no ROS.

Every iteration is logged with the mean sampled cost and, from noise-free rollouts, the final tip
distance of each LG controller on the training conditions and (MDGPS) of the neural policy on the
held-out conditions. The run folder gets history.json, learning_curve.png, the pickled algorithm state
and, for MDGPS, the policy checkpoint (loadable by the sampler alone).
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbpl_core.blas import numerical_environment
from mbpl_core.config import from_dict
from mbpl_core.costs import CostConfig, build_cost
from mbpl_core.local.lqr_flm import LQRFLM, AlgorithmConfig
from mbpl_sim.env import MujocoEnv
from mbpl_sim.evaluate import DEFAULT_SUCCESS_THRESHOLD, final_distances
from mbpl_sim.experiment import ExperimentConfig


@dataclass
class TrainingHistory:
    """Per-iteration records (lists indexed by iteration) written to history.json."""

    method: str
    threshold: float
    mean_cost: list[list[float]] = field(default_factory=list)
    lg_tip_distance: list[list[float]] = field(default_factory=list)
    policy_tip_distance: list[list[float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "threshold": self.threshold,
            "mean_cost": self.mean_cost,
            "lg_tip_distance": self.lg_tip_distance,
            "lg_success_rate": [float(np.mean(np.asarray(d) < self.threshold)) for d in self.lg_tip_distance],
            "policy_tip_distance": self.policy_tip_distance,
            "policy_success_rate": [
                float(np.mean(np.asarray(d) < self.threshold)) for d in self.policy_tip_distance
            ],
            "seconds": self.seconds,
        }


def _tip_distances(env: MujocoEnv, policies: list[Any]) -> list[float]:
    """Final tip distance of a noise-free rollout of policies[c] (or one shared policy) per condition."""
    out = []
    for c in range(env.num_conditions):
        policy = policies[c] if len(policies) > 1 else policies[0]
        out.append(final_distances(env, env.sample(policy, c, None))[0])
    return out


def plot_history(history: TrainingHistory, path: Path, title: str) -> None:
    """Cost and final tip distance per iteration (log scale) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cost, ax_dist) = plt.subplots(1, 2, figsize=(10, 4))
    costs = np.asarray(history.mean_cost)
    for c in range(costs.shape[1]):
        ax_cost.plot(costs[:, c], marker="o", label=f"condition {c}")
    ax_cost.set(xlabel="iteration", ylabel="mean sampled cost", yscale="log", title="cost")
    ax_cost.legend(fontsize=7)
    lg = np.asarray(history.lg_tip_distance)
    ax_dist.plot(lg.max(axis=1), marker="o", label="LG controllers, worst training condition")
    ax_dist.plot(lg.mean(axis=1), marker=".", label="LG controllers, mean")
    if history.policy_tip_distance:
        pol = np.asarray(history.policy_tip_distance)
        ax_dist.plot(pol.mean(axis=1), marker="s", label="policy, mean held-out")
        ax_dist.plot(np.median(pol, axis=1), marker="^", label="policy, median held-out")
    ax_dist.axhline(history.threshold, color="k", linestyle="--", linewidth=0.8, label="success threshold")
    ax_dist.set(xlabel="iteration", ylabel="final tip distance (m)", yscale="log", title="distance")
    ax_dist.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_in_process(
    experiment: ExperimentConfig,
    run_dir: Path,
    iterations: int | None = None,
    log: Callable[[str], None] = print,
) -> TrainingHistory:
    """Run LQR-FLM or MDGPS (experiment.method) and write the run folder; returns the history."""
    env = MujocoEnv(experiment)
    cost = build_cost(from_dict(CostConfig, experiment.cost, "cost"), env.layout, env.dU)
    config = from_dict(AlgorithmConfig, experiment.algorithm, "algorithm")
    n_iter = config.iterations if iterations is None else iterations
    threshold = DEFAULT_SUCCESS_THRESHOLD.get(experiment.task.scene, 0.02)
    history = TrainingHistory(experiment.method, threshold)
    run_dir.mkdir(parents=True, exist_ok=True)
    algorithm: Any
    held_out = None
    if experiment.method == "mdgps":
        from mbpl_core.guided.mdgps import MDGPS
        from mbpl_core.policy import GPSConfig

        has_held_out = bool(experiment.conditions("held_out"))
        held_out = MujocoEnv(experiment, condition_set="held_out") if has_held_out else None
        gps_config = from_dict(GPSConfig, experiment.gps, "gps")
        algorithm = MDGPS(env, cost, config, gps_config, select_env=validation_env(experiment, gps_config))
    else:
        algorithm = LQRFLM(env, cost, config)
    log(f"[mbpl] {experiment.method} on {experiment.name or experiment.source}: {env.num_conditions} "
        f"conditions, T={env.T}, dX={env.dX}, dU={env.dU}, {n_iter} iterations")
    for i in range(n_iter):
        start = time.perf_counter()
        report = algorithm.iteration()
        mean_cost = list(getattr(report, "mean_cost", None) or report.lg_cost)
        lg_tip = _tip_distances(env, list(algorithm.controllers))
        history.mean_cost.append([float(c) for c in mean_cost])
        history.lg_tip_distance.append(lg_tip)
        line = (f"[mbpl] iteration {i}: cost {' '.join(f'{c:.4g}' for c in mean_cost)} | LG tip distance "
                f"max {max(lg_tip):.4f} m, {sum(d < threshold for d in lg_tip)}/{len(lg_tip)} within "
                f"{threshold * 100:.0f} cm")
        if held_out is not None:
            pol_tip = _tip_distances(held_out, [algorithm.deployed_policy])
            history.policy_tip_distance.append(pol_tip)
            line += (f" | policy held-out: {sum(d < threshold for d in pol_tip)}/{len(pol_tip)} within, "
                     f"median {np.median(pol_tip):.4f} m")
        history.seconds.append(time.perf_counter() - start)
        log(line + f" ({history.seconds[-1]:.1f} s)")
    _write_outputs(algorithm, experiment, history, run_dir, log)
    return history


def validation_env(experiment: ExperimentConfig, gps_config: Any) -> MujocoEnv | None:
    """The validation conditions' environment that gps.select_on "validation" needs, else None.

    ConfigError (from ExperimentConfig.check_sections) when the task has no ``validation:`` set.
    """
    if not (gps_config.select_best and gps_config.select_on == "validation"):
        return None
    experiment.check_sections()
    return MujocoEnv(experiment, condition_set="validation")


def _write_outputs(algorithm: Any, experiment: ExperimentConfig, history: TrainingHistory, run_dir: Path,
                   log: Callable[[str], None]) -> None:
    (run_dir / "history.json").write_text(json.dumps(history.to_dict(), indent=2))
    (run_dir / "environment.json").write_text(json.dumps(numerical_environment(), indent=2))
    with open(run_dir / "algorithm_state.pkl", "wb") as f:
        pickle.dump(algorithm.state_dict(), f)
    if history.mean_cost:
        plot_history(history, run_dir / "learning_curve.png", f"{experiment.name} ({experiment.method})")
    if experiment.method == "mdgps":
        from mbpl_core.guided.mdgps import save_policy_checkpoint
        from mbpl_core.policy import save_numpy_policy

        path = save_policy_checkpoint(run_dir / "policy", algorithm.policy, algorithm.gps_config)
        if algorithm.best is not None:
            # gps.select_best: policy.npz (what the sampler and `mbpl eval` load) holds the selected
            # snapshot; policy.pt keeps the latest network for further training.
            save_numpy_policy(path, algorithm.deployed_policy.params, algorithm.gps_config)
            log(f"[mbpl] deployed policy: S-step snapshot of iteration {algorithm.best[1]} (gps.select_best)")
        log(f"[mbpl] policy checkpoint {path} (run it with: mbpl eval {experiment.source} --policy {path})")
    log(f"[mbpl] wrote {run_dir}/history.json, learning_curve.png, algorithm_state.pkl, environment.json")
