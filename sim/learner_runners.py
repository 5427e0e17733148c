"""``mbpl train`` runners of the policy learners (family 3 and its model-free baseline): SAC and MBPO.

Both learn over the gymnasium view of the experiment's training conditions (:class:`MbplGymEnv`, one
episode per condition in turn) with stable-baselines3's SAC, and deploy the SAC actor as the squashed
numpy policy (``policy/policy.npz``, loadable by the sampler alone and by ``mbpl eval --policy``). One
iteration = ``steps_per_iteration`` real environment steps, then a noiseless trial of the deployed policy
per training (and held-out) condition. Records follow :mod:`mbpl_sim.history`: ``mean_cost`` is the mean
Σ_t l_t of the iteration's training episodes per condition (exploration included),
``eval_final_distance`` the deployed policy's final tip distance per training condition, ``env_steps``
every real step so far (random warm-up steps included), plus ``policy_*`` / ``policy_held_out_*``
success fields.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from mbpl_core.config import from_dict
from mbpl_core.costs import Cost
from mbpl_core.policy import NumpyPolicy, save_numpy_policy
from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import ExperimentConfig
from mbpl_sim.gym_env import MbplGymEnv
from mbpl_sim.history import success_fields
from mbpl_sim.training import _within, tip_distances


class EpisodeCosts(gym.Wrapper):
    """Records (condition, Σ_t l_t) of every finished episode of an :class:`MbplGymEnv` in ``finished``."""

    def __init__(self, env: MbplGymEnv) -> None:
        super().__init__(env)
        self.finished: list[tuple[int, float]] = []
        self._total = 0.0

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        self._total = 0.0
        return self.env.reset(**kwargs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._total += info["cost"]
        if terminated or truncated:
            self.finished.append((info["condition"], self._total))
        return obs, reward, terminated, truncated, info

    def take_mean_costs(self, fallback: list[float]) -> list[float]:
        """Mean episode cost per condition since the last call (``fallback[c]`` where none finished)."""
        out = []
        for c, default in enumerate(fallback):
            costs = [v for m, v in self.finished if m == c]
            out.append(float(np.mean(costs)) if costs else float(default))
        self.finished.clear()
        return out


class _ActorRunner:
    """What SAC and MBPO share: the gym env, evaluation of the deployed actor, records, saving."""

    section = ""

    def __init__(self, experiment: ExperimentConfig, env: MujocoEnv, cost: Cost, threshold: float,
                 action_limits: tuple[float, ...] | None = None) -> None:
        self.experiment, self.env, self.cost, self.threshold = experiment, env, cost, threshold
        self.held_out = (MujocoEnv(experiment, condition_set="held_out")
                         if experiment.conditions("held_out") else None)
        self.gym_env = EpisodeCosts(MbplGymEnv(experiment, cost=cost, action_limits=action_limits))
        self.iteration_count = 0

    @property
    def learner(self) -> Any:
        """The SB3 SAC whose actor is deployed."""
        raise NotImplementedError

    def deployed_params(self) -> Any:
        """The actor as squashed PolicyParams."""
        from mbpl_core.learners.sac import actor_to_params

        return actor_to_params(self.learner.actor, self.gym_env.action_space)

    def _record(self, extra: dict[str, Any]) -> dict[str, Any]:
        policy = NumpyPolicy(self.deployed_params())
        runs = [self.env.sample(policy, c, None) for c in range(self.env.num_conditions)]
        from mbpl_sim.evaluate import final_distances

        tips = [final_distances(self.env, b)[0] for b in runs]
        eval_cost = [float(np.sum(self.cost.evaluate(b.X[0], b.U[0]).l)) for b in runs]
        record = {"iteration": self.iteration_count, "mean_cost": self.gym_env.take_mean_costs(eval_cost),
                  "eval_cost": eval_cost, "eval_final_distance": tips,
                  "env_steps": int(self.learner.num_timesteps), "success_threshold_m": self.threshold}
        record |= success_fields("policy", tips, self.threshold)
        if self.held_out is not None:
            held_out = tip_distances(self.held_out, [policy])
            record |= success_fields("policy_held_out", held_out, self.threshold)
        self.iteration_count += 1
        return record | extra

    def finish(self, log: Callable[[str], None]) -> dict[str, Any]:
        """Nothing to do at the end: the actor is deployed as it is."""
        return {}

    def summary(self, record: dict[str, Any]) -> str:
        """Episode cost, the deployed policy's tip distances (training, held-out), environment steps."""
        tips = record["eval_final_distance"]
        line = (f"episode cost {' '.join(f'{c:.4g}' for c in record['mean_cost'])} | policy tip distance max "
                f"{max(tips):.4f} m, {_within(tips, self.threshold)}")
        if "policy_held_out_tip_distance" in record:
            line += f" | held-out: {_within(record['policy_held_out_tip_distance'], self.threshold)}"
        return line + f" | {record['env_steps']} env steps"

    def save(self, run_dir: Path, log: Callable[[str], None]) -> None:
        """policy/ (policy.npz, the squashed actor), sac.zip (the SB3 learner) and algorithm_state.pkl."""
        from mbpl_core.learners.sac import policy_config

        path = save_numpy_policy(run_dir / "policy", self.deployed_params(), policy_config(self.config.agent))
        self.learner.save(run_dir / "sac.zip")
        with open(run_dir / "algorithm_state.pkl", "wb") as f:
            pickle.dump(self.state_dict(), f)
        log(f"[mbpl] policy checkpoint {path.parent} (squashed SAC actor); SB3 learner {run_dir / 'sac.zip'}")

    def state_dict(self) -> dict[str, Any]:
        """Config and counters (the learner's weights and buffer are SB3's: sac.zip)."""
        return {"config": self.config, "iterations": self.iteration_count,
                "env_steps": int(self.learner.num_timesteps)}


class SACRunner(_ActorRunner):
    """SAC, the model-free baseline: stable-baselines3's SAC on the task's gymnasium view."""

    def __init__(self, experiment: ExperimentConfig, env: MujocoEnv, cost: Cost, threshold: float) -> None:
        from mbpl_core.learners.sac import SACConfig, build_sac

        self.config = from_dict(SACConfig, experiment.section("sac"), "sac")
        super().__init__(experiment, env, cost, threshold, self.config.action_limits)
        self.num_iterations = self.config.iterations
        self.gym_env.reset(seed=self.config.seed)
        self.sac = build_sac(self.gym_env, self.config.agent, learning_starts=self.config.learning_starts,
                             gradient_steps=self.config.gradient_steps, seed=self.config.seed)

    @property
    def learner(self) -> Any:
        return self.sac

    def iteration(self) -> dict[str, Any]:
        """steps_per_iteration SAC environment steps (and their updates), then the evaluation record."""
        self.sac.learn(self.config.steps_per_iteration, reset_num_timesteps=False)
        return self._record({})


class MBPORunner(_ActorRunner):
    """MBPO: SB3's SAC trained on real and branched model rollouts of the probabilistic ensemble."""

    def __init__(self, experiment: ExperimentConfig, env: MujocoEnv, cost: Cost, threshold: float) -> None:
        from mbpl_core.learners.mbpo import MBPO, MBPOConfig

        self.config = from_dict(MBPOConfig, experiment.section("mbpo"), "mbpo")
        super().__init__(experiment, env, cost, threshold, self.config.action_limits)
        self.num_iterations = self.config.iterations
        self.gym_env.reset(seed=self.config.seed)
        self.algorithm = MBPO(self.gym_env, cost, env.T, self.config)

    @property
    def learner(self) -> Any:
        return self.algorithm.sac

    def iteration(self) -> dict[str, Any]:
        """One MBPO epoch (steps_per_iteration real steps), then the evaluation record."""
        r = self.algorithm.iteration()
        return self._record({"rollout_length": r.rollout_length, "model_fits": r.model_fits,
                             "rollout_rounds": r.rollout_rounds, "model_rows": r.model_rows,
                             "model_holdout_nll": r.holdout_nll,
                             "seconds": {"model": r.model_s, "rollouts": r.rollout_s}})

    def summary(self, record: dict[str, Any]) -> str:
        """The SAC summary, the rollout length and the model's held-out NLL."""
        return (super().summary(record) + f" | k = {record['rollout_length']}, model held-out NLL "
                f"{record['model_holdout_nll']:.2f}, {record['model_rows']} model rows")

    def save(self, run_dir: Path, log: Callable[[str], None]) -> None:
        """The SAC outputs plus model/ensemble.pt."""
        from mbpl_core.models import save_ensemble

        super().save(run_dir, log)
        (run_dir / "model").mkdir(exist_ok=True)
        save_ensemble(self.algorithm.model, run_dir / "model" / "ensemble.pt")
