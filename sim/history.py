"""One ``history.json`` format for every run (``mbpl train`` and ``mbpl launch``) and its plot.

history.json is a JSON list with one record (dict) per finished iteration. Keys every record has:

* ``iteration`` (int), ``mean_cost`` (per training condition: mean over the iteration's trials of
  Σ_t c(x_t, u_t)), ``seconds`` ({"total": s, ...stages}), ``success_threshold_m``;
* ``eval_final_distance`` (per training condition, m): final distance of ee point 0 of the noiseless
  trial of what the method runs on the robot (LG controller; PETS: the MPC trial);

and, where the method has them:

* ``policy_held_out_tip_distance``, ``policy_held_out_success``, ``policy_held_out_success_rate`` (the
  neural policy on the held-out conditions; the same with ``policy_`` on the training conditions);
* ``env_steps`` (real environment steps so far), ``model_holdout_nll``, ``planning_ms_p50`` / ``_p99``
  (PETS), ``step_mult`` / ``eta`` / ``kl`` (LG methods).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def success_fields(prefix: str, distances: Sequence[float], threshold: float) -> dict[str, Any]:
    """``{prefix}_tip_distance`` / ``_success`` / ``_success_rate`` and ``success_threshold_m``."""
    success = [bool(d < threshold) for d in distances]
    return {f"{prefix}_tip_distance": [float(d) for d in distances], f"{prefix}_success": success,
            f"{prefix}_success_rate": float(np.mean(success)) if success else 0.0,
            "success_threshold_m": float(threshold)}


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so a crash leaves old or new, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/history.json``."""
    data = json.loads((Path(run_dir) / "history.json").read_text())
    if not isinstance(data, list):
        raise ValueError(f"{run_dir}/history.json: expected a list of per-iteration records")
    return data


def _distance_key(history: Sequence[dict[str, Any]]) -> str:
    return "eval_final_distance" if history and "eval_final_distance" in history[0] else "mean_final_distance"


def write_history(run_dir: str | Path, history: Sequence[dict[str, Any]], title: str = "",
                  ) -> tuple[Path, Path]:
    """Write ``history.json`` and ``history.png`` (cost, final distance, policy success per iteration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    write_json_atomic(run_dir / "history.json", list(history))
    iters = [r["iteration"] for r in history]
    rates = [(f"{prefix}_success_rate", name) for prefix, name in (
        ("policy", "policy, training"), ("policy_held_out", "policy, held-out"),
        ("deployed_policy_held_out", "deployed policy, held-out"))
        if history and f"{prefix}_success_rate" in history[-1]]
    fig, axes = plt.subplots(1, 3 if rates else 2, figsize=(15 if rates else 10, 4))
    ax_cost, ax_dist = axes[0], axes[1]
    costs = np.array([r["mean_cost"] for r in history])
    key = _distance_key(history)
    dists = np.array([r[key] for r in history])
    for m in range(costs.shape[1] if costs.ndim == 2 else 0):
        ax_cost.plot(iters, costs[:, m], marker="o", label=f"condition {m}")
        ax_dist.plot(iters, dists[:, m] * 100.0, marker="o", label=f"condition {m}")
    for prefix, name in (("policy", "training"), ("policy_held_out", "held-out")):
        if history and f"{prefix}_tip_distance" in history[-1]:
            points = [(r["iteration"], 100.0 * float(np.median(r[f"{prefix}_tip_distance"])))
                      for r in history if f"{prefix}_tip_distance" in r]
            ax_dist.plot(*zip(*points, strict=True), marker="s", linestyle="--",
                         label=f"policy, median {name}")
    ax_cost.set(xlabel="iteration", ylabel="mean trial cost", yscale="log", title="cost")
    which = "noiseless trial" if key.startswith("eval") else "mean over samples"
    ax_dist.set(xlabel="iteration", ylabel="final ee distance (cm)", yscale="log",
                title=f"final distance ({which})")
    threshold = history[-1].get("success_threshold_m", 0.02) if history else 0.02
    ax_dist.axhline(100.0 * threshold, color="gray", linestyle="--", linewidth=0.8, label="success threshold")
    ax_cost.legend(fontsize=7)
    ax_dist.legend(fontsize=7)
    for rate_key, name in rates:
        points = [(r["iteration"], r[rate_key]) for r in history if rate_key in r]
        axes[2].plot(*zip(*points, strict=True), marker="o", label=name)
    if rates:
        axes[2].set(xlabel="iteration", ylabel="success rate", ylim=(-0.05, 1.05),
                    title=f"policy success (tip within {100.0 * threshold:g} cm)")
        axes[2].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png = run_dir / "history.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return run_dir / "history.json", png
