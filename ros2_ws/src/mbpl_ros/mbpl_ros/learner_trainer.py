"""The trainer's loop for the policy learners (sac, mbpo, bptt) without ROS: trials through the sampler.

The learner is an :class:`mbpl_core.learners.episodic.EpisodeLearner` (SB3's SAC, MBPO, BPTT fed whole
trials; the exploration and step accounting are explained there). Iteration i:

1. every trial (condition m, kind) of ``learner.trials(i)`` in order, index = its number among condition
   m's trials of the iteration: the recorded sample when the bags hold it, else for kind "policy" the
   learner's exploring policy is published (policy id :func:`policy_id`) and run once with the
   sampler's noise (seed ``trial_seed(seed, i, m, index, attempt)``), for kind "random" uniformly random
   efforts; each sample is written to its bag at once (:class:`mbpl_ros.recording.SampleStore`), then
   absorbed by the learner (replay buffer and SAC updates, MBPO's model and rollouts, BPTT's data);
2. the learner closes the iteration; its deployed (noiseless) policy is published and run once per
   training condition through the sampler (evaluation: not recorded, not counted in env_steps, as
   ``mbpl train``'s evaluation), and ``held_out`` (the trainer's simulation) gives its held-out distances;
3. the history record (format of :mod:`mbpl_sim.history`, the fields of ``mbpl train``'s runners),
   ``<run_dir>/policy/policy.npz`` (what the sampler and ``mbpl eval --policy`` deploy) and the
   checkpoint ``trainer_state.json``.

Resuming (a new trainer on the same run folder): the learner is rebuilt from its seed and every
recorded trial of the finished iterations is absorbed again, in the same order (nothing is run again,
no real data is lost); the first unfinished iteration then reuses the trials it had recorded. Learner
state is thus re-derived from the bags rather than saved, which costs the finished iterations' training
time again at a restart but needs no serialisation of SB3's buffers or MBPO's model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mbpl_core.containers import SampleBatch, StateLayout
from mbpl_core.costs import Cost
from mbpl_core.learners.episodic import POLICY, EpisodeLearner
from mbpl_core.policy import PolicyParams, save_numpy_policy
from mbpl_ros.console import progress_message
from mbpl_ros.recording import SampleStore
from mbpl_ros.trainer_logic import (
    MAX_SAMPLES,
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
from mbpl_sim.history import success_fields

POLICY_FOLDER = "policy"
EVAL_INDEX = MAX_SAMPLES - 1  # trial index of the evaluation trials (never a recorded sample)
EVAL_SLOT = 9_999  # policy_id(i, EVAL_SLOT): the deployed policy of iteration i


def policy_id(iteration: int, slot: int) -> int:
    """Id of the policy published for trial ``slot`` of ``iteration`` (EVAL_SLOT: its evaluation); >= 1."""
    return (iteration + 1) * 10_000 + slot


@dataclass(frozen=True)
class LearnerLoopSettings:
    """Training conditions, iterations, base seed of the trials' noise, attempts per trial."""

    num_conditions: int
    iterations: int
    seed: int = 0
    max_attempts: int = 5


class LearnerTrainerLoop:
    """Iterations of an EpisodeLearner over a transport (run_trial, decode, publish_policy), resumable.

    held_out: the deployed policy's final tip distance on each held-out condition (None: none);
    threshold: the success distance of the history's success fields.
    """

    def __init__(self, run_dir: str | Path, settings: LearnerLoopSettings, transport: Any, cost: Cost,
                 layout: StateLayout, learner: EpisodeLearner, threshold: float,
                 held_out: Callable[[PolicyParams], list[float]] | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.run_dir = Path(run_dir)
        self.settings, self.transport, self.cost, self.layout = settings, transport, cost, layout
        self.learner, self.threshold, self.held_out, self.log = learner, threshold, held_out, log
        self.store = SampleStore(self.run_dir)
        self.state: TrainerState = load_state(self.run_dir, settings.num_conditions)
        self.state = replace(self.state, session=self.state.session + 1)
        save_state(self.run_dir, self.state)

    def run(self) -> TrainerState:
        """Replay the finished iterations into the learner, run the remaining ones; the final state."""
        done = self.state.completed_iterations
        if done:
            start = time.perf_counter()
            for i in range(done):
                self._trials(i, replay=True)
                self.learner.end_iteration()
            self.log(f"resuming at iteration {done} (session {self.state.session}): the learner re-trained "
                     f"on the recorded trials of {done} iterations in {time.perf_counter() - start:.1f} s")
        while self.state.completed_iterations < self.settings.iterations:
            self.iteration(self.state.completed_iterations)
        return self.state

    def iteration(self, i: int) -> dict[str, Any]:
        """One iteration (module docstring); checkpoints and returns its history record."""
        start = time.perf_counter()
        batches = self._trials(i, replay=False)
        sampled = time.perf_counter()
        extra = self.learner.end_iteration()
        params = self.learner.deployed_params()
        evaluation = self._evaluate(i, params)
        eval_cost = [float(sample_costs(self.cost, r.batch)[0]) for r in evaluation]  # type: ignore[arg-type]
        tips = [float(final_distances(self.layout, r.batch)[0]) for r in evaluation]  # type: ignore[arg-type]
        mean_cost = [float(np.mean(sample_costs(self.cost, SampleBatch.concatenate(bs))))
                     if bs else eval_cost[m] for m, bs in enumerate(batches)]
        record: dict[str, Any] = {"iteration": i, "mean_cost": mean_cost, "eval_cost": eval_cost,
                                  "eval_final_distance": tips, "success_threshold_m": self.threshold}
        record |= success_fields("policy", tips, self.threshold)
        if self.held_out is not None:
            record |= success_fields("policy_held_out", self.held_out(params), self.threshold)
        seconds = {**extra.pop("seconds", {}), "sampling_and_learning": sampled - start}
        record |= extra
        save_numpy_policy(self.run_dir / POLICY_FOLDER, params, self.learner.policy_config())
        record["seconds"] = {**seconds, "total": time.perf_counter() - start}
        self.state = replace(self.state, completed_iterations=i + 1, history=self.state.history + (record,))
        save_state(self.run_dir, self.state)
        dist = ", ".join(f"{100 * d:.2f}" for d in tips)
        self.log(f"iteration {i}: mean cost {np.mean(record['mean_cost']):.4g}, deployed policy final "
                 f"distance (cm) [{dist}], {record['env_steps']} env steps, "
                 f"{record['seconds']['total']:.1f} s")
        self.log(progress_message(i, self.settings.iterations, float(np.mean(record["mean_cost"])), tips,
                                  time.perf_counter() - start))
        return record

    def _trials(self, i: int, replay: bool) -> list[list[SampleBatch]]:
        """Every trial of iteration i into the learner, in order; the batches per condition."""
        plan = self.learner.trials(i)
        M = self.settings.num_conditions
        recorded = [self.store.samples(i, m) for m in range(M)]
        counts, batches = [0] * M, [[] for _ in range(M)]  # type: list[int], list[list[SampleBatch]]
        for slot, (m, kind) in enumerate(plan):
            index = counts[m]
            counts[m] += 1
            params = self.learner.exploring_params() if kind == POLICY else None
            if index in recorded[m]:
                result = self.transport.decode(recorded[m][index])
            elif replay:
                raise TrialFailedError(f"iteration {i} is finished but its trial {index} of condition {m} is "
                                       f"not in the bags of {self.store.root}")
            else:
                result = self._run(i, m, index, kind, slot, params)
                self.store.record_trial(i, m, index, result.raw, time.time_ns())
            assert result.batch is not None
            self.learner.absorb(result.batch, kind)
            batches[m].append(result.batch)
        for m in range(M):
            if counts[m]:
                self.store.close_batch(i, m, counts[m])
        return batches

    def _run(self, i: int, m: int, index: int, kind: str, slot: int, params: PolicyParams | None,
             ) -> TrialResult:
        def request(attempt: int) -> TrialRequest:
            return TrialRequest(condition=m, trial_id=trial_id(self.state.session, i, m, index, attempt),
                                controller_id=pid, seed=trial_seed(self.settings.seed, i, m, index, attempt),
                                add_noise=kind == POLICY, policy_kind=kind)

        what = f"{kind} trial (iteration {i}, condition {m}, sample {index})"
        if params is not None:
            pid = policy_id(i, slot)
            self.transport.publish_policy(params, pid)
            return run_policy_trial(self.transport, request, pid, self.settings.max_attempts, what)
        pid = 0
        for attempt in range(self.settings.max_attempts):
            result = self.transport.run_trial(request(attempt))
            if result is not None and not result.meta.aborted:
                return result
            self.log(f"{what} {'no sample' if result is None else 'aborted'}; re-running")
        raise TrialFailedError(f"{what}: no sample in {self.settings.max_attempts} attempts")

    def _evaluate(self, i: int, params: PolicyParams) -> Sequence[TrialResult]:
        """One noiseless trial of the deployed policy per training condition (not recorded)."""
        pid = policy_id(i, EVAL_SLOT)
        self.transport.publish_policy(params, pid)
        out = []
        for m in range(self.settings.num_conditions):
            def request(attempt: int, m: int = m) -> TrialRequest:
                tid = trial_id(self.state.session, i, m, EVAL_INDEX, attempt)
                return TrialRequest(condition=m, trial_id=tid, controller_id=pid, seed=0, add_noise=False,
                                    policy_kind=POLICY)

            out.append(run_policy_trial(self.transport, request, pid, self.settings.max_attempts,
                                        f"evaluation trial of iteration {i}, condition {m}"))
        return out


# ------------------------------------------------------------------------------------- the learners
def _sac(experiment: Any, cost: Cost, env: Any) -> EpisodeLearner:
    from mbpl_core.config import from_dict
    from mbpl_core.learners.episodic import episodic_sac
    from mbpl_core.learners.sac import SACConfig
    from mbpl_sim.gym_env import MbplGymEnv

    config = from_dict(SACConfig, experiment.section("sac"), "sac")
    gym_env = MbplGymEnv(experiment, cost=cost, action_limits=config.action_limits)
    gym_env.reset(seed=config.seed)  # as mbpl train: the same seeding of SB3 and the spaces
    return episodic_sac(gym_env, cost, env.T, env.num_conditions, config)


def _mbpo(experiment: Any, cost: Cost, env: Any) -> EpisodeLearner:
    from mbpl_core.config import from_dict
    from mbpl_core.learners.episodic import EpisodicMBPO
    from mbpl_core.learners.mbpo import MBPOConfig
    from mbpl_sim.gym_env import MbplGymEnv

    config = from_dict(MBPOConfig, experiment.section("mbpo"), "mbpo")
    gym_env = MbplGymEnv(experiment, cost=cost, action_limits=config.action_limits)
    gym_env.reset(seed=config.seed)
    return EpisodicMBPO(gym_env, cost, env.T, env.num_conditions, config)


def _bptt(experiment: Any, cost: Cost, env: Any) -> EpisodeLearner:
    from mbpl_core.config import from_dict
    from mbpl_core.learners.bptt import BPTT, BPTTConfig
    from mbpl_core.learners.episodic import EpisodicBPTT

    # env: the trainer's simulation, for the sizes, effort limits and layout only (the sampler runs trials)
    return EpisodicBPTT(BPTT(env, cost, from_dict(BPTTConfig, experiment.section("bptt"), "bptt")))


# method → builder(experiment, cost, MujocoEnv of the training conditions) of its EpisodeLearner
LEARNERS: dict[str, Callable[[Any, Cost, Any], EpisodeLearner]] = {"sac": _sac, "mbpo": _mbpo, "bptt": _bptt}
