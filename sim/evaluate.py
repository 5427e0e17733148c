"""Evaluate a controller or a trained policy on a condition set in simulation (``mbpl eval``).

Success is measured on the first end-effector point (the fingertip / peg tip): its distance to its
target at the last step of the trial. Default thresholds follow the tasks' acceptance criteria:
1 cm for peg insertion (tip at the hole bottom), 2 cm for reaching.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbpl_core.containers import SampleBatch
from mbpl_core.local.lqr_flm import Policy
from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import ExperimentConfig

DEFAULT_SUCCESS_THRESHOLD = {"peg": 0.01, "reach": 0.02}


@dataclass(frozen=True)
class EvaluationResult:
    """Per-condition outcome of noise-free rollouts.

    conditions: (C,) indices in ``condition_set``; tip_distance, mean_point_distance: (C,) metres at the
    last step; success: (C,) tip_distance < threshold.
    """

    condition_set: str
    conditions: tuple[int, ...]
    tip_distance: np.ndarray
    mean_point_distance: np.ndarray
    threshold: float

    @property
    def success(self) -> np.ndarray:
        return self.tip_distance < self.threshold

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.success)) if len(self.conditions) else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "condition_set": self.condition_set,
            "conditions": list(self.conditions),
            "tip_distance": self.tip_distance.tolist(),
            "mean_point_distance": self.mean_point_distance.tolist(),
            "threshold": self.threshold,
            "success": self.success.tolist(),
            "success_rate": self.success_rate,
        }

    def summary(self) -> str:
        lines = [f"{'condition':>9}  {'tip dist (m)':>12}  {'mean dist (m)':>13}  success"]
        for c, d, m, s in zip(self.conditions, self.tip_distance, self.mean_point_distance, self.success,
                              strict=True):
            lines.append(f"{c:>9}  {d:>12.4f}  {m:>13.4f}  {'yes' if s else 'no'}")
        lines.append(f"success: {int(np.sum(self.success))}/{len(self.conditions)} "
                     f"({100 * self.success_rate:.0f} %) at threshold {self.threshold * 100:.1f} cm; "
                     f"mean tip distance {np.mean(self.tip_distance):.4f} m")
        return "\n".join(lines)


def final_distances(env: MujocoEnv, batch: SampleBatch) -> tuple[float, float]:
    """(tip distance, mean point distance) at the last step of a one-sample batch."""
    d = batch.X[0, -1, env.layout.ee_points].reshape(-1, 3)
    norms = np.linalg.norm(d, axis=1)
    return float(norms[0]), float(np.mean(norms))


def evaluate_in_sim(
    experiment: ExperimentConfig,
    policy: Policy,
    condition_set: str = "held_out",
    conditions: Sequence[int] | None = None,
    threshold: float | None = None,
    render_dir: Path | None = None,
) -> EvaluationResult:
    """Roll ``policy`` out without noise on each condition; optionally render each rollout to a GIF."""
    env = MujocoEnv(experiment, condition_set=condition_set)
    chosen = tuple(range(env.num_conditions)) if conditions is None else tuple(int(c) for c in conditions)
    for c in chosen:
        if not 0 <= c < env.num_conditions:
            raise ValueError(f"condition {c} is out of range: the {condition_set!r} set has "
                             f"{env.num_conditions} conditions")
    if threshold is None:
        threshold = DEFAULT_SUCCESS_THRESHOLD.get(experiment.task.scene, 0.02)
    tips, means = [], []
    for c in chosen:
        batch = env.sample(policy, c, None)
        tip, mean = final_distances(env, batch)
        tips.append(tip)
        means.append(mean)
        if render_dir is not None:
            from mbpl_sim.render import render_sample

            render_dir.mkdir(parents=True, exist_ok=True)
            render_sample(env, batch, c, render_dir / f"{condition_set}_{c}.gif",
                          strip_path=render_dir / f"{condition_set}_{c}.png")
    return EvaluationResult(condition_set, chosen, np.asarray(tips), np.asarray(means), float(threshold))


def write_result(result: EvaluationResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2))
