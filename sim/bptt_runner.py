"""``mbpl train`` runner of method ``bptt``: backpropagation through the learned model (plain or SVG(H)).

Per iteration (:class:`mbpl_core.learners.bptt.BPTT`): the ensemble fitted to all real data, the policy
trained through it, then the policy's exploring trials on the robot. The record adds the noiseless policy
on the training conditions (``eval_final_distance``) and on the held-out ones (``policy_held_out_*``).
The deployed policy is the numpy pass of the last iteration's network (``policy/policy.npz``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mbpl_core.config import from_dict
from mbpl_core.costs import Cost
from mbpl_core.learners.bptt import BPTT, BPTTConfig, deployable_params, save_policy
from mbpl_core.policy import NumpyPolicy
from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import ExperimentConfig
from mbpl_sim.history import success_fields


def _within(distances: list[float], threshold: float) -> str:
    return f"{sum(d < threshold for d in distances)}/{len(distances)} within {threshold * 100:g} cm"


class BPTTRunner:
    """BPTT for ``mbpl train`` (the MethodRunner protocol of :mod:`mbpl_sim.training`)."""

    def __init__(self, experiment: ExperimentConfig, env: MujocoEnv, cost: Cost, threshold: float) -> None:
        self.env, self.threshold = env, threshold
        self.config = from_dict(BPTTConfig, experiment.section("bptt"), "bptt")
        self.num_iterations = self.config.iterations
        self.algorithm = BPTT(env, cost, self.config)
        self.held_out = (MujocoEnv(experiment, condition_set="held_out")
                         if experiment.conditions("held_out") else None)

    def _deployed(self) -> NumpyPolicy:
        return NumpyPolicy(deployable_params(self.algorithm))

    def _tips(self, env: MujocoEnv, policy: NumpyPolicy) -> list[float]:
        from mbpl_sim.training import tip_distances

        return tip_distances(env, [policy])

    def iteration(self) -> dict[str, Any]:
        """One BPTT iteration's record (policy distances, model NLL, BPTT objective and gradient norm)."""
        r = self.algorithm.iteration()
        policy = self._deployed()
        record = {"iteration": r.iteration, "mean_cost": list(r.mean_cost),
                  "eval_final_distance": self._tips(self.env, policy), "env_steps": r.env_steps,
                  "model_holdout_nll": r.holdout_nll, "model_epochs": r.model.epochs,
                  "bptt_objective": [r.objective_start, r.objective_end], "bptt_grad_norm": r.grad_norm,
                  "value_loss": None if np.isnan(r.value_loss) else r.value_loss,
                  "seconds": {"model": r.model_s, "policy": r.policy_s, "sampling": r.sampling_s},
                  "success_threshold_m": self.threshold}
        if self.held_out is not None:
            record |= success_fields("policy_held_out", self._tips(self.held_out, policy), self.threshold)
        return record

    def summary(self, record: dict[str, Any]) -> str:
        """Exploring-trial cost, noiseless policy distances, objective, gradient norm, env steps."""
        tips = record["eval_final_distance"]
        J0, J1 = record["bptt_objective"]
        line = (f"cost {' '.join(f'{c:.4g}' for c in record['mean_cost'])} | policy tip distance max "
                f"{max(tips):.4f} m, {_within(tips, self.threshold)} | J_H {J0:.4g} -> {J1:.4g}, |grad| "
                f"{record['bptt_grad_norm']:.3g} | model NLL {record['model_holdout_nll']:.2f} | "
                f"{record['env_steps']} env steps")
        if "policy_held_out_tip_distance" in record:
            held = record["policy_held_out_tip_distance"]
            line += f" | held-out: {_within(held, self.threshold)}, median {np.median(held):.4f} m"
        return line

    def finish(self, log: Callable[[str], None]) -> dict[str, Any]:
        """Nothing beyond the last iteration: its policy is the one deployed."""
        return {}

    def save(self, run_dir: Path, log: Callable[[str], None]) -> None:
        """algorithm_state.pkl, model/ensemble.pt and policy/policy.npz."""
        from mbpl_core.models import save_ensemble

        with open(run_dir / "algorithm_state.pkl", "wb") as f:
            pickle.dump(self.algorithm.state_dict(), f)
        (run_dir / "model").mkdir(exist_ok=True)
        save_ensemble(self.algorithm.model, run_dir / "model" / "ensemble.pt")
        path = save_policy(run_dir / "policy", self.algorithm)
        log(f"[mbpl] policy checkpoint {path.parent}")
