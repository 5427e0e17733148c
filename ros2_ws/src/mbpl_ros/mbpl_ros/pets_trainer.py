"""The trainer's PETS loop without ROS: trials through the sampler, fits through the model node, resumable.

Rounds of data: round 0 holds ``pets.random_trials`` trials per condition of uniformly random efforts
(policy_kind "random"), round i + 1 the MPC trials of iteration i (policy_kind "mpc", planned by the
planner node over model version i + 1). Iteration i:

1. ``fit_model(i, round i)``: the model node adds round i to its data and refits (idempotent per i);
2. ``pets.trials_per_condition`` MPC trials per condition over the new version → round i + 1, each
   sample written to its bag at once (:class:`mbpl_ros.recording.SampleStore`);
3. the history record (mean cost, final distance of each condition's MPC trial, model NLL, environment
   steps) and the checkpoint ``trainer_state.json``.

At the end the planner is distilled into the deployable policy (:func:`mbpl_core.planning.distill.distill`):
the policy runs on the robot through the sampler (policy trials), and the trainer labels the states it
visited with its own MPC over the final model. A restarted trainer resumes at its first unfinished
iteration and keeps every recorded sample (round numbers double as bag iterations).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mbpl_core.containers import SampleBatch, StateLayout
from mbpl_core.costs import Cost
from mbpl_core.policy import NumpyPolicy, PolicyParams
from mbpl_ros.console import progress_message
from mbpl_ros.recording import SampleStore
from mbpl_ros.trainer_logic import (
    TrainerState,
    TrialFailedError,
    TrialRequest,
    TrialResult,
    final_distances,
    load_state,
    run_policy_trial,
    sample_costs,
    save_state,
    trial_id,
    trial_seed,
)

DISTILL_INDEX = 900  # trial index of the distillation's policy trials (never a recorded sample)


@dataclass(frozen=True)
class ModelFit:
    """What the model node answered: the version to plan over, held-out NLL, transitions in its data."""

    version: int
    holdout_nll: float
    transitions: int


class ModelTransport(Protocol):
    """How the PETS loop reaches the sampler and the model node (DDS in the node, in-process in tests)."""

    def run_trial(self, request: TrialRequest) -> TrialResult | None: ...

    def decode(self, raw: bytes) -> TrialResult: ...

    def fit_model(self, iteration: int, samples: Sequence[TrialResult]) -> ModelFit: ...

    def publish_policy(self, params: PolicyParams, policy_id: int) -> None: ...


@dataclass(frozen=True)
class PETSLoopSettings:
    """Conditions, iterations, trials per round and condition, base seed, attempts per trial, horizon T."""

    num_conditions: int
    iterations: int
    random_trials: int
    trials_per_condition: int
    T: int
    seed: int = 0
    max_attempts: int = 5


class PETSTrainerLoop:
    """PETS iterations over a :class:`ModelTransport`, resumable from ``run_dir`` (module docstring).

    finish: called with the loop after the last iteration (the distillation, see :func:`distill_in_graph`).
    """

    def __init__(self, run_dir: str | Path, settings: PETSLoopSettings, transport: ModelTransport, cost: Cost,
                 layout: StateLayout, threshold: float = 0.02, log: Callable[[str], None] = print) -> None:
        self.run_dir = Path(run_dir)
        self.settings, self.transport, self.cost, self.layout = settings, transport, cost, layout
        self.threshold, self.log = threshold, log
        self.store = SampleStore(self.run_dir)
        self.state: TrainerState = load_state(self.run_dir, settings.num_conditions)
        self.state = replace(self.state, session=self.state.session + 1)
        save_state(self.run_dir, self.state)

    def run(self) -> TrainerState:
        """Run the remaining iterations; returns the final state (one history record per iteration)."""
        if self.state.completed_iterations:
            done, session = self.state.completed_iterations, self.state.session
            self.log(f"resuming at iteration {done} (session {session})")
        while self.state.completed_iterations < self.settings.iterations:
            self.iteration(self.state.completed_iterations)
        return self.state

    def round_trials(self, r: int) -> int:
        """Trials per condition of data round r (0: random, else MPC)."""
        return self.settings.random_trials if r == 0 else self.settings.trials_per_condition

    def round_results(self, r: int) -> list[list[TrialResult]]:
        """Every condition's trials of round r (the recorded ones from the bags, the missing ones run now)."""
        kind = "random" if r == 0 else "mpc"  # MPC round r plans over version r (fitted at iteration r - 1)
        return [self._round_condition(r, m, kind, r) for m in range(self.settings.num_conditions)]

    def iteration(self, i: int) -> dict[str, Any]:
        """One PETS iteration (module docstring); checkpoints and returns its history record."""
        start = time.perf_counter()
        data = [t for trials in self.round_results(i) for t in trials]
        fit = self.transport.fit_model(i, data)
        fitted = time.perf_counter()
        if fit.version != i + 1:
            raise RuntimeError(f"model node answered version {fit.version} for iteration {i}, "
                               f"expected {i + 1}")
        M = self.settings.num_conditions
        mpc = [self._round_condition(i + 1, m, "mpc", fit.version) for m in range(M)]
        batches = [SampleBatch.concatenate([t.batch for t in ts if t.batch is not None]) for ts in mpc]
        # rounds 0 .. i + 1: the random one and i + 1 MPC rounds
        trials = self.settings.random_trials + (i + 1) * self.settings.trials_per_condition
        steps = self.settings.T * M * trials
        record: dict[str, Any] = {
            "iteration": i,
            "mean_cost": [float(np.mean(sample_costs(self.cost, b))) for b in batches],
            "eval_final_distance": [float(final_distances(self.layout, b)[-1]) for b in batches],
            "env_steps": steps, "model_version": fit.version, "model_holdout_nll": fit.holdout_nll,
            "model_transitions": fit.transitions, "success_threshold_m": self.threshold,
            "seconds": {"model": fitted - start, "sampling": time.perf_counter() - fitted,
                        "total": time.perf_counter() - start}}
        history = self.state.history + (record,)
        self.state = replace(self.state, completed_iterations=i + 1, history=history)
        save_state(self.run_dir, self.state)
        dist = ", ".join(f"{100 * d:.2f}" for d in record["eval_final_distance"])
        self.log(f"iteration {i}: model v{fit.version} ({fit.transitions} transitions, held-out NLL "
                 f"{fit.holdout_nll:.2f}); MPC mean cost {np.mean(record['mean_cost']):.4g}, final distance "
                 f"(cm) [{dist}], {steps} env steps, {record['seconds']['total']:.1f} s")
        self.log(progress_message(i, self.settings.iterations, float(np.mean(record["mean_cost"])),
                                  record["eval_final_distance"], time.perf_counter() - start))
        return record

    def _round_condition(self, r: int, m: int, kind: str, version: int) -> list[TrialResult]:
        n = self.round_trials(r)
        recorded = self.store.samples(r, m)
        for index in range(n):
            if index not in recorded:
                recorded[index] = self._run_trial(r, m, index, kind, version).raw
        self.store.close_batch(r, m, n)
        return [self.transport.decode(recorded[index]) for index in range(n)]

    def _run_trial(self, r: int, m: int, index: int, kind: str, version: int) -> TrialResult:
        for attempt in range(self.settings.max_attempts):
            request = TrialRequest(condition=m, trial_id=trial_id(self.state.session, r, m, index, attempt),
                                   controller_id=version, add_noise=False, policy_kind=kind,
                                   seed=trial_seed(self.settings.seed, r, m, index, attempt))
            result = self.transport.run_trial(request)
            if result is not None and not result.meta.aborted:
                self.store.record_trial(r, m, index, result.raw, time.time_ns())
                return result
            reason = "no sample" if result is None else f"aborted: {result.meta.abort_reason}"
            self.log(f"{kind} trial {request.trial_id} (round {r}, condition {m}, sample {index}) {reason}; "
                     "re-running")
        raise TrialFailedError(f"round {r} condition {m} sample {index}: no sample in "
                               f"{self.settings.max_attempts} attempts")

    def policy_trials(self, policy: NumpyPolicy, policy_id: int) -> list[TrialResult]:
        """Publish ``policy`` and run one noiseless trial of it per condition on the robot."""
        self.transport.publish_policy(policy.params, policy_id)
        out = []
        for m in range(self.settings.num_conditions):
            def request(attempt: int, m: int = m) -> TrialRequest:
                tid = trial_id(self.state.session, policy_id % 10_000, m, DISTILL_INDEX, attempt)
                return TrialRequest(condition=m, trial_id=tid, controller_id=policy_id, seed=0,
                                    add_noise=False, policy_kind="policy")

            out.append(run_policy_trial(self.transport, request, policy_id, self.settings.max_attempts,
                                        f"policy trial of condition {m}"))
        return out


POLICY_ID_BASE = 1_000_000  # ids of the distilled policies published during distillation


def distill_in_graph(loop: PETSTrainerLoop, planner: Any, dX: int, dU: int, effort_limits: np.ndarray,
                     config: Any, log: Callable[[str], None] = print) -> tuple[Any, list[Any]]:
    """DAgger through the robot: the policy runs on the sampler, the trainer's planner labels its states.

    planner: a :class:`mbpl_ros.model_logic.PlannerService` over the run's models; config: DistillConfig.
    Round 0 imitates the last MPC round; returns (GaussianMLPPolicy, [DistillRound]).
    """
    from mbpl_core.planning.distill import distill
    from mbpl_ros.plan_source import PlanRequestData

    version = loop.settings.iterations
    last_round = loop.round_results(version)
    expert_trials = [t.batch for trials in last_round for t in trials if t.batch is not None]
    published = [0]

    def rollouts(policy: NumpyPolicy) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        published[0] += 1
        pid = POLICY_ID_BASE + published[0]
        out = []
        for m, result in enumerate(loop.policy_trials(policy, pid)):
            assert result.batch is not None
            X, U = result.batch.X[0], result.batch.U[0]
            labels = [planner.plan(PlanRequestData(pid * 1000 + m, m, t, m, version, X[t])).actions[0]
                      for t in range(X.shape[0])]
            out.append((X, U, np.asarray(labels)))
        log(f"distillation: policy {pid} ran on {len(out)} conditions")
        return out

    return distill(expert_trials, rollouts, dX, dU, loop.layout, effort_limits, config)
