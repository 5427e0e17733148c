"""The family-3 learners fed whole trials: how the graph's trainer runs sac, mbpo and bptt.

In one process (``mbpl train``) the learners step the environment themselves (SB3's rollout collection,
``BPTT._collect``). Through the graph (``mbpl launch``) the sampler runs the trials on the robot and the
trainer only sees finished ones, so each learner here is driven by a small protocol
(:class:`EpisodeLearner`): ``trials(i)`` says which trials iteration i runs, in order ((condition,
kind): kind "random" for uniformly random efforts, "policy" for the learner's policy plus exploration
noise); before a policy trial ``exploring_params()`` gives the policy to deploy; every finished trial goes
to ``absorb``; ``end_iteration()`` closes the iteration. Nothing here knows ROS.

Exploration through the sampler. The numpy policy cannot express SB3's state-dependent std
(a = tanh(μ(s) + σ(s) ε) before the effort scaling). The deployed SAC actor is its deterministic action
u = bias + scale ⊙ tanh(μ(s)) and the sampler adds Gaussian noise after the squash, in effort units,
u + chol(action_covar) ε_t with action_covar = diag((graph_exploration_std · effort_limits)²) and ε the
sampler's pre-drawn (by default time-smoothed, ``algorithm.noise``) noise, then clips to the effort
limits. So the behaviour policy differs from SB3's own (fixed std instead of the learned σ(s), the noise
not squashed, correlated in time), and the entropy SAC learns does not shape the data. SAC and MBPO are
off-policy: their critic targets use the current actor's own sampled actions, never the behaviour
policy's, so the transitions stay valid data. BPTT already explores with Gaussian noise on the actions
(``bptt.exploration_std`` of the effort limits): in the graph the same std, but smoothed in time as the
sampler's noise is, where ``mbpl train`` draws it i.i.d.

Step accounting (same as in one process). SAC/MBPO: iteration i runs the episodes
e = i E … (i + 1) E − 1 with E = ceil(steps_per_iteration / T), condition e mod M (the gym view's
cycle); episode e is random while e T < learning_starts (SB3 draws random actions for the first
learning_starts steps). Every step of a trial counts (``num_timesteps`` += T), and after each step, as in
SB3's ``collect_rollouts``, the MBPO hook runs (model refits, branched rollouts), the transition is stored
and, past learning_starts, SAC takes its gradient steps (``SAC.train``); the difference is that the policy
of a whole trial is the one deployed at its start. A trial carries T states and T actions, so T − 1
transitions (x_t, u_t, x_{t+1}) go to the replay buffer: the state after the last action is not
recorded by the sampler. BPTT: its own iteration (random trials before the first fit, then per condition
``trials_per_condition`` exploring trials after the model fit and policy training), every trial's T steps
counted, as ``BPTT.iteration``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from mbpl_core.containers import SampleBatch
from mbpl_core.costs import Cost
from mbpl_core.policy import GPSConfig, PolicyParams

RANDOM, POLICY = "random", "policy"


class EpisodeLearner(Protocol):
    """A learner the graph's trainer feeds with finished trials (module docstring)."""

    num_iterations: int
    """The experiment's iteration count for this method."""

    def trials(self, iteration: int) -> list[tuple[int, str]]:
        """(condition, kind) of every trial of ``iteration``, in the order they run."""

    def exploring_params(self) -> PolicyParams:
        """The policy to deploy for the next policy trial, with its exploration noise as action_covar."""

    def absorb(self, batch: SampleBatch, kind: str) -> None:
        """A finished trial (N = 1, T steps) of the kind ``trials`` asked for."""

    def end_iteration(self) -> dict[str, Any]:
        """Close the iteration; the history fields only the learner knows (env_steps, model figures)."""

    def deployed_params(self) -> PolicyParams:
        """The noiseless deployable policy (what ``policy/policy.npz`` holds)."""

    def policy_config(self) -> GPSConfig:
        """The GPSConfig written beside the deployed policy."""


def trial_transitions(batch: SampleBatch, cost: Cost,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One trial's transitions: X (T−1, dX), U (T−1, dU) efforts, X_next (T−1, dX), rewards (T,).

    rewards_t = −l_t(x_t, u_t) at the trial's own steps (the gym view's reward: ramp and final multiplier
    at the same steps), for all T steps; the transitions stop one short (no state after the last action).
    """
    X, U = np.array(batch.X[0], dtype=np.float64), np.array(batch.U[0], dtype=np.float64)
    T = X.shape[0]
    rewards = -np.asarray(cost.value_batched(X[None], U[None], t0=0, T=T), dtype=np.float64)[0]
    return X[:-1], U[:-1], X[1:], rewards


class EpisodicSAC:
    """SB3's SAC fed whole trials (module docstring); ``step_hook`` runs after every real step (MBPO)."""

    def __init__(self, sac: Any, cost: Cost, T: int, num_conditions: int, iterations: int,
                 steps_per_iteration: int, learning_starts: int, gradient_steps: int, exploration_std: float,
                 agent: Any, step_hook: Callable[[], None] | None = None) -> None:
        from stable_baselines3.common.logger import Logger

        self.sac, self.cost, self.T, self.M = sac, cost, int(T), int(num_conditions)
        self.num_iterations = int(iterations)
        self.episodes_per_iteration = math.ceil(steps_per_iteration / self.T)
        self.learning_starts, self.gradient_steps = int(learning_starts), int(gradient_steps)
        self.agent, self.step_hook = agent, step_hook
        space = sac.action_space
        self.low, self.high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        self.action_covar = np.diag((exploration_std * 0.5 * (self.high - self.low)) ** 2)
        self.sac.set_logger(Logger(folder=None, output_formats=[]))  # SAC.train records into it

    @property
    def env_steps(self) -> int:
        return int(self.sac.num_timesteps)

    def trials(self, iteration: int) -> list[tuple[int, str]]:
        E = self.episodes_per_iteration
        return [(e % self.M, RANDOM if e * self.T < self.learning_starts else POLICY)
                for e in range(iteration * E, (iteration + 1) * E)]

    def exploring_params(self) -> PolicyParams:
        from mbpl_core.learners.sac import actor_to_params

        return actor_to_params(self.sac.actor, self.sac.action_space, action_covar=self.action_covar)

    def deployed_params(self) -> PolicyParams:
        from mbpl_core.learners.sac import actor_to_params

        return actor_to_params(self.sac.actor, self.sac.action_space)

    def policy_config(self) -> GPSConfig:
        from mbpl_core.learners.sac import policy_config

        return policy_config(self.agent)

    def scale(self, U: np.ndarray) -> np.ndarray:
        """SB3's scale_action of efforts: 2 (u − low) / (high − low) − 1, in [−1, 1] for clipped efforts."""
        return 2.0 * (np.asarray(U) - self.low) / (self.high - self.low) - 1.0

    def absorb(self, batch: SampleBatch, kind: str) -> None:
        """Every step of the trial as SB3's collect_rollouts takes it: count, hook, store, train."""
        X, U, X_next, rewards = trial_transitions(batch, self.cost)
        A = self.scale(U)
        buffer = self.sac.replay_buffer
        for t in range(self.T):
            self.sac.num_timesteps += 1
            if self.step_hook is not None:
                self.step_hook()
            if t < self.T - 1:
                buffer.add(X[t][None], X_next[t][None], A[t][None], rewards[t : t + 1],
                           np.zeros(1, dtype=bool), [{"t": t, "TimeLimit.truncated": False}])
            if self.sac.num_timesteps > self.learning_starts:
                self.sac.train(gradient_steps=self.gradient_steps, batch_size=self.sac.batch_size)

    def end_iteration(self) -> dict[str, Any]:
        return {"env_steps": self.env_steps}


class EpisodicMBPO(EpisodicSAC):
    """MBPO (:class:`mbpl_core.learners.mbpo.MBPO`) fed whole trials: its SAC as :class:`EpisodicSAC`, its
    per-step hook (ensemble refits every n steps, branched rollouts every ``rollout_every``) after each
    step."""

    def __init__(self, env: gym.Env, cost: Cost, T: int, num_conditions: int, config: Any) -> None:
        from mbpl_core.learners.mbpo import MBPO

        self.mbpo = MBPO(env, cost, T, config)
        super().__init__(self.mbpo.sac, cost, T, num_conditions, config.iterations,
                         config.steps_per_iteration, config.initial_random_steps, config.updates_per_step,
                         config.graph_exploration_std, config.agent, step_hook=self.mbpo.on_env_step)
        self.mbpo.begin_iteration()

    def end_iteration(self) -> dict[str, Any]:
        r = self.mbpo.end_iteration()
        self.mbpo.begin_iteration()
        return super().end_iteration() | {
            "rollout_length": r.rollout_length, "model_fits": r.model_fits,
            "rollout_rounds": r.rollout_rounds, "model_rows": r.model_rows,
            "model_holdout_nll": r.holdout_nll,
            "seconds": {"model": r.model_s, "rollouts": r.rollout_s}}


def episodic_sac(env: gym.Env, cost: Cost, T: int, num_conditions: int, config: Any) -> EpisodicSAC:
    """SAC (``sac`` section, :class:`mbpl_core.learners.sac.SACConfig`) over ``env``'s spaces, fed trials."""
    from mbpl_core.learners.sac import build_sac

    sac = build_sac(env, config.agent, learning_starts=config.learning_starts,
                    gradient_steps=config.gradient_steps, seed=config.seed)
    return EpisodicSAC(sac, cost, T, num_conditions, config.iterations, config.steps_per_iteration,
                       config.learning_starts, config.gradient_steps, config.graph_exploration_std,
                       config.agent)


class EpisodicBPTT:
    """BPTT (:class:`mbpl_core.learners.bptt.BPTT`) fed whole trials: the same iteration as
    ``BPTT.iteration``, its random and exploring trials run by the sampler (module docstring)."""

    def __init__(self, learner: Any) -> None:
        self.learner = learner
        self.num_iterations = int(learner.config.iterations)
        self._trained: Any = None
        self._trials: list[list[SampleBatch]] = []
        self._sampling_start = 0.0

    @property
    def env_steps(self) -> int:
        return int(self.learner.env_steps)

    def trials(self, iteration: int) -> list[tuple[int, str]]:
        c, M = self.learner.config, self.learner.env.num_conditions
        first = [(m, RANDOM) for _ in range(c.random_trials) for m in range(M)] if iteration == 0 else []
        return first + [(m, POLICY) for m in range(M) for _ in range(c.trials_per_condition)]

    def exploring_params(self) -> PolicyParams:
        """The policy after this iteration's model fit and training (done at the first call), noise
        std exploration_std × effort limits."""
        from mbpl_core.learners.bptt import deployable_params

        if self._trained is None:
            self._trained = self.learner.train()
            self._trials = [[] for _ in range(self.learner.env.num_conditions)]
            self._sampling_start = time.perf_counter()
        return deployable_params(self.learner)

    def deployed_params(self) -> PolicyParams:
        from mbpl_core.learners.bptt import deployable_params

        return deployable_params(self.learner)

    def policy_config(self) -> GPSConfig:
        c = self.learner.config
        return GPSConfig(hidden_sizes=c.hidden_sizes, activation=c.activation, device="cpu", seed=c.seed)

    def absorb(self, batch: SampleBatch, kind: str) -> None:
        self.learner.add_trial(batch)
        if kind == POLICY:
            condition = sum(len(ts) for ts in self._trials) // self.learner.config.trials_per_condition
            self._trials[condition].append(batch)

    def end_iteration(self) -> dict[str, Any]:
        if self._trained is None:
            raise RuntimeError("a BPTT iteration ended before its policy was trained")
        sampling_s = time.perf_counter() - self._sampling_start
        r = self.learner.close_iteration(self._trained, self._trials, sampling_s)
        self._trained, self._trials = None, []
        return {"mean_cost": list(r.mean_cost), "env_steps": r.env_steps, "model_holdout_nll": r.holdout_nll,
                "model_epochs": r.model.epochs, "bptt_objective": [r.objective_start, r.objective_end],
                "bptt_grad_norm": r.grad_norm, "value_loss": None if np.isnan(r.value_loss) else r.value_loss,
                "seconds": {"model": r.model_s, "policy": r.policy_s, "sampling": r.sampling_s}}
