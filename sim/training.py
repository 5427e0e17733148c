"""In-process training (``mbpl train``): any method of the experiment over the MuJoCo environment, no ROS.

One small runner per method (:data:`METHOD_RUNNERS`: lqr_flm, mdgps, pets) adapts its core object to
what this loop needs — ``iteration()`` returning the history record of one iteration (format:
:mod:`mbpl_sim.history`), ``finish()`` for what only the end of a run does (PETS: distil the planner),
and ``save()`` for the run folder. The loop itself has no per-method branches: adding a method is one
runner class and one registry entry.

The run folder gets history.json and history.png (the same format ``mbpl launch`` writes),
algorithm_state.pkl, environment.json (library versions and kernels: what a seed's result depends on),
and, for methods with a deployable policy, ``policy/`` (loadable by the sampler alone and by
``mbpl eval``).
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mbpl_core.blas import numerical_environment
from mbpl_core.config import from_dict
from mbpl_core.costs import Cost, CostConfig, build_cost
from mbpl_core.local.lqr_flm import LQRFLM, AlgorithmConfig
from mbpl_sim.env import MujocoEnv
from mbpl_sim.evaluate import DEFAULT_SUCCESS_THRESHOLD, final_distances
from mbpl_sim.experiment import ExperimentConfig
from mbpl_sim.history import success_fields, write_history


class MethodRunner(Protocol):
    """A method as ``mbpl train`` drives it (see the module docstring)."""

    num_iterations: int
    """The experiment's iteration count for this method."""

    def iteration(self) -> dict[str, Any]: ...

    def finish(self, log: Callable[[str], None]) -> dict[str, Any]: ...

    def save(self, run_dir: Path, log: Callable[[str], None]) -> None: ...

    def summary(self, record: dict[str, Any]) -> str: ...


def tip_distances(env: MujocoEnv, policies: list[Any]) -> list[float]:
    """Final tip distance of a noise-free rollout of policies[c] (or one shared policy) per condition."""
    out = []
    for c in range(env.num_conditions):
        policy = policies[c] if len(policies) > 1 else policies[0]
        out.append(final_distances(env, env.sample(policy, c, None))[0])
    return out


def _within(distances: list[float], threshold: float) -> str:
    return f"{sum(d < threshold for d in distances)}/{len(distances)} within {threshold * 100:g} cm"


class LQRFLMRunner:
    """LQR-FLM: per iteration the LG controllers' sampled cost, then a noiseless trial of each."""

    def __init__(self, experiment: ExperimentConfig, env: MujocoEnv, cost: Cost, threshold: float) -> None:
        self.env, self.threshold = env, threshold
        self.config = from_dict(AlgorithmConfig, experiment.algorithm, "algorithm")
        self.num_iterations = self.config.iterations
        self.algorithm: Any = self._build(experiment, cost)
        self.env_steps = 0

    def _build(self, experiment: ExperimentConfig, cost: Cost) -> Any:
        return LQRFLM(self.env, cost, self.config)

    def _lg_record(self, report: Any, mean_cost: tuple[float, ...]) -> dict[str, Any]:
        env = self.env
        # the sampled trials and the step check's noiseless ones (algorithm.step_check): every real step
        trials = self.config.samples_per_condition * env.num_conditions + report.check_trials
        self.env_steps += trials * env.T
        return {"iteration": report.iteration, "mean_cost": [float(c) for c in mean_cost],
                "eval_final_distance": tip_distances(env, list(self.algorithm.controllers)),
                "step_mult": [float(s) for s in report.step_mult], "eta": [float(e) for e in report.eta],
                "kl": [float(k) for k in report.kl], "env_steps": self.env_steps,
                "success_threshold_m": self.threshold}

    def iteration(self) -> dict[str, Any]:
        """One LQR-FLM iteration's record."""
        report = self.algorithm.iteration()
        return self._lg_record(report, report.mean_cost)

    def finish(self, log: Callable[[str], None]) -> dict[str, Any]:
        """Nothing to do at the end of LQR-FLM."""
        return {}

    def summary(self, record: dict[str, Any]) -> str:
        """Cost per condition and the LG controllers' final tip distances."""
        tips = record["eval_final_distance"]
        return (f"cost {' '.join(f'{c:.4g}' for c in record['mean_cost'])} | LG tip distance max "
                f"{max(tips):.4f} m, {_within(tips, self.threshold)}")

    def save(self, run_dir: Path, log: Callable[[str], None]) -> None:
        """algorithm_state.pkl."""
        with open(run_dir / "algorithm_state.pkl", "wb") as f:
            pickle.dump(self.algorithm.state_dict(), f)


class MDGPSRunner(LQRFLMRunner):
    """MDGPS: the LG record plus the deployed policy on the held-out conditions every iteration."""

    def _build(self, experiment: ExperimentConfig, cost: Cost) -> Any:
        from mbpl_core.guided.mdgps import MDGPS
        from mbpl_core.policy import GPSConfig

        self.held_out = (MujocoEnv(experiment, condition_set="held_out")
                         if experiment.conditions("held_out") else None)
        self.gps_config = from_dict(GPSConfig, experiment.gps, "gps")
        return MDGPS(self.env, cost, self.config, self.gps_config,
                     select_env=validation_env(experiment, self.gps_config))

    def iteration(self) -> dict[str, Any]:
        """One MDGPS iteration's record (with ``policy_held_out_*`` when there are held-out conditions)."""
        report = self.algorithm.iteration()
        record = self._lg_record(report, report.lg_cost)
        if self.held_out is not None:
            tips = tip_distances(self.held_out, [self.algorithm.deployed_policy])
            record |= success_fields("policy_held_out", tips, self.threshold)
        return record

    def summary(self, record: dict[str, Any]) -> str:
        """The LG summary and the policy's held-out success."""
        line = super().summary(record)
        if "policy_held_out_tip_distance" in record:
            tips = record["policy_held_out_tip_distance"]
            line += f" | policy held-out: {_within(tips, self.threshold)}, median {np.median(tips):.4f} m"
        return line

    def save(self, run_dir: Path, log: Callable[[str], None]) -> None:
        """algorithm_state.pkl and policy/ (with gps.select_best, policy.npz is the selected snapshot)."""
        from mbpl_core.guided.mdgps import save_policy_checkpoint
        from mbpl_core.policy import save_numpy_policy

        super().save(run_dir, log)
        path = save_policy_checkpoint(run_dir / "policy", self.algorithm.policy, self.gps_config)
        if self.algorithm.best is not None:
            # policy.npz (what the sampler and `mbpl eval` load) holds the selected snapshot;
            # policy.pt keeps the latest network for further training.
            save_numpy_policy(path, self.algorithm.deployed_policy.params, self.gps_config)
            log(f"[mbpl] deployed policy: S-step snapshot of iteration {self.algorithm.best[1]} "
                "(gps.select_best)")
        log(f"[mbpl] policy checkpoint {path}")


class PETSRunner:
    """PETS: per iteration the model fit and the MPC trials; at the end the planner distilled (DAgger)."""

    def __init__(self, experiment: ExperimentConfig, env: MujocoEnv, cost: Cost, threshold: float) -> None:
        from mbpl_core.planning.pets import PETS, PETSConfig

        self.experiment, self.env, self.threshold = experiment, env, threshold
        self.config = from_dict(PETSConfig, experiment.pets, "pets")
        self.num_iterations = self.config.iterations
        self.algorithm = PETS(env, cost, self.config)
        self.policy: Any = None
        self.distill_rounds: list[Any] = []

    def iteration(self) -> dict[str, Any]:
        """One PETS iteration's record (MPC trial distances, model NLL, planning latency)."""
        r = self.algorithm.iteration()
        return {"iteration": r.iteration, "mean_cost": list(r.mean_cost),
                "eval_final_distance": list(r.final_distance), "env_steps": r.env_steps,
                "model_holdout_nll": r.holdout_nll, "model_epochs": r.model.epochs,
                "planning_ms_p50": r.planning_ms_p50, "planning_ms_p99": r.planning_ms_p99,
                "seconds": {"model": r.model_s, "sampling": r.sampling_s},
                "success_threshold_m": self.threshold}

    def summary(self, record: dict[str, Any]) -> str:
        """Cost, MPC tip distances, model NLL, planning latency, environment steps."""
        tips = record["eval_final_distance"]
        return (f"cost {' '.join(f'{c:.4g}' for c in record['mean_cost'])} | MPC tip distance max "
                f"{max(tips):.4f} m, {_within(tips, self.threshold)} | model held-out NLL "
                f"{record['model_holdout_nll']:.2f} | planning {record['planning_ms_p50']:.1f} ms/step "
                f"(p99 {record['planning_ms_p99']:.1f}) | {record['env_steps']} env steps")

    def finish(self, log: Callable[[str], None]) -> dict[str, Any]:
        """Distil the planner into the deployable policy; its held-out figures join the last record."""
        from mbpl_core.guided.mdgps import policy_to_params
        from mbpl_core.planning.distill import deployed_round, distill_planner
        from mbpl_core.policy import NumpyPolicy

        extra: dict[str, Any] = {}
        if not self.algorithm.reports:
            return extra
        if self.config.evaluate_held_out and self.experiment.conditions("held_out"):
            held_out = MujocoEnv(self.experiment, condition_set="held_out")
            tips = tip_distances(held_out, [self.algorithm.mpc])
            extra |= success_fields("mpc_held_out", tips, self.threshold)
            log(f"[mbpl] MPC on the held-out conditions: {_within(tips, self.threshold)}, "
                f"median {np.median(tips):.4f} m")
        distill = self.config.distill
        if not distill.enabled:
            return extra
        log(f"[mbpl] distilling the planner into a policy ({distill.rounds} DAgger rounds)")
        # round 0 imitates the last iteration's MPC trials: earlier ones planned over worse models
        expert_trials = self.algorithm.data[-self.config.trials_per_condition * self.env.num_conditions:]
        self.policy, self.distill_rounds = distill_planner(self.env, self.algorithm.mpc, expert_trials,
                                                           self.algorithm.action_limits, distill)
        for r in self.distill_rounds:
            log(f"[mbpl] DAgger round {r.round}: {r.pairs} pairs, loss {r.loss_before:.4g} -> "
                f"{r.loss_after:.4g}, policy tip distance max {max(r.final_distance):.4f} m on the "
                "training conditions")
        deployed = deployed_round(self.distill_rounds)
        log(f"[mbpl] deployed policy: DAgger round {deployed.round} (pets.distill.select_best)")
        extra |= success_fields("policy", list(deployed.final_distance), self.threshold)
        if self.experiment.conditions("held_out"):
            held_out = MujocoEnv(self.experiment, condition_set="held_out")
            numpy_policy = NumpyPolicy(policy_to_params(self.policy))
            tips = tip_distances(held_out, [numpy_policy])
            extra |= success_fields("policy_held_out", tips, self.threshold)
            log(f"[mbpl] distilled policy held-out: {_within(tips, self.threshold)}, "
                f"median {np.median(tips):.4f} m")
        return extra

    def save(self, run_dir: Path, log: Callable[[str], None]) -> None:
        """algorithm_state.pkl, model/ensemble.pt and (distilled) policy/."""
        from mbpl_core.guided.mdgps import save_policy_checkpoint
        from mbpl_core.models import save_ensemble

        with open(run_dir / "algorithm_state.pkl", "wb") as f:
            pickle.dump(self.algorithm.state_dict(), f)
        (run_dir / "model").mkdir(exist_ok=True)
        save_ensemble(self.algorithm.model, run_dir / "model" / "ensemble.pt")
        if self.policy is not None:
            path = save_policy_checkpoint(run_dir / "policy", self.policy, self.config.distill.policy)
            rounds = [vars(r) for r in self.distill_rounds]
            (run_dir / "distill.json").write_text(json.dumps(rounds, indent=1))
            log(f"[mbpl] policy checkpoint {path}")


# A runner class, or "module:Class" for a runner in its own module (imported only when the method runs).
METHOD_RUNNERS: dict[str, type | str] = {"lqr_flm": LQRFLMRunner, "mdgps": MDGPSRunner, "pets": PETSRunner,
                                         "sac": "mbpl_sim.learner_runners:SACRunner",
                                         "mbpo": "mbpl_sim.learner_runners:MBPORunner",
                                         "bptt": "mbpl_sim.bptt_runner:BPTTRunner"}


def runner_class(method: str) -> type:
    """The runner of a method (see :data:`METHOD_RUNNERS`)."""
    import importlib

    entry = METHOD_RUNNERS[method]
    if isinstance(entry, str):
        module, cls = entry.split(":")
        entry = getattr(importlib.import_module(module), cls)
    return entry


def train_in_process(
    experiment: ExperimentConfig,
    run_dir: Path,
    iterations: int | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run the experiment's method and write the run folder; returns the history records."""
    env = MujocoEnv(experiment)
    cost = build_cost(from_dict(CostConfig, experiment.cost, "cost"), env.layout, env.dU)
    threshold = DEFAULT_SUCCESS_THRESHOLD.get(experiment.task.scene, 0.02)
    runner: MethodRunner = runner_class(experiment.method)(experiment, env, cost, threshold)
    n_iter = runner.num_iterations if iterations is None else iterations
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"[mbpl] {experiment.method} on {experiment.name or experiment.source}: {env.num_conditions} "
        f"conditions, T={env.T}, dX={env.dX}, dU={env.dU}, {n_iter} iterations")
    history: list[dict[str, Any]] = []
    for _ in range(n_iter):
        start = time.perf_counter()
        record = runner.iteration()
        record["seconds"] = {**record.get("seconds", {}), "total": time.perf_counter() - start}
        history.append(record)
        log(f"[mbpl] iteration {record['iteration']}: {runner.summary(record)} "
            f"({record['seconds']['total']:.1f} s)")
    if history:
        history[-1] |= runner.finish(log)
    _write_outputs(runner, experiment, history, run_dir, log)
    return history


def validation_env(experiment: ExperimentConfig, gps_config: Any) -> MujocoEnv | None:
    """The validation conditions' environment that gps.select_on "validation" needs, else None.

    ConfigError (from ExperimentConfig.check_sections) when the task has no ``validation:`` set.
    """
    if not (gps_config.select_best and gps_config.select_on == "validation"):
        return None
    experiment.check_sections()
    return MujocoEnv(experiment, condition_set="validation")


def _write_outputs(runner: MethodRunner, experiment: ExperimentConfig, history: list[dict[str, Any]],
                   run_dir: Path, log: Callable[[str], None]) -> None:
    write_history(run_dir, history, f"{experiment.name} ({experiment.method})")
    (run_dir / "environment.json").write_text(json.dumps(numerical_environment(), indent=2))
    runner.save(run_dir, log)
    if (run_dir / "policy").is_dir():
        log(f"[mbpl] run it with: mbpl eval {experiment.source} --policy {run_dir / 'policy'}")
    log(f"[mbpl] wrote {run_dir}/history.json, history.png, algorithm_state.pkl, environment.json")
