"""Distil a planner into the deployable policy, DAgger-style (Ross et al., AISTATS 2011).

The policy is the Gaussian MLP that GPS deploys (:class:`mbpl_core.guided.mdgps.GaussianMLPPolicy`,
numpy forward pass on the robot). Round 0 regresses it onto the planner's own trajectories
(states x_t, planned actions u_t). Each later round rolls the *policy* out noiselessly on every
condition while the planner labels every state the policy visits with the action it would take there,
adds those (x, u*) pairs to the data set and refits — so the policy learns what to do in the states
it reaches itself, not only in the planner's (the distribution-shift fix DAgger is).

Loss: Σ_i (π(x_i) − u*_i)ᵀ Λ (π(x_i) − u*_i) with Λ = diag(1 / (scale · effort_limits)²), i.e. the
error measured in fractions of each joint's effort range, so joints with large limits do not dominate.

With ``select_best`` the round whose policy ends closest to the training targets (its worst condition)
is the one deployed — measured on arm7_reach, a later DAgger round can end farther off than round 0.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from mbpl_core.config import ConfigError
from mbpl_core.containers import SampleBatch, StateLayout
from mbpl_core.guided.mdgps import GaussianMLPPolicy, policy_to_params, train_policy
from mbpl_core.local.lqr_flm import Environment, Policy
from mbpl_core.policy import GPSConfig, NumpyPolicy


@dataclass(frozen=True)
class DistillConfig:
    """YAML section ``pets.distill``.

    rounds: DAgger rounds after round 0 (the planner's own data); 0 with ``enabled`` still fits round 0.
    enabled: distil at all; action_scale: the loss weights actions by 1/(action_scale · effort_limit)²,
    which also makes the policy's action covariance (action_scale · effort_limits)²;
    policy: network and Adam settings (the ``gps:`` keys hidden_sizes, activation, learning_rate,
    weight_decay, batch_size, iterations, seed, device; the MDGPS-only keys are ignored); select_best:
    deploy the round whose noiseless rollouts end closest to the training targets (lowest worst-condition
    distance; the rollouts every round runs anyway), else the last round.
    """

    enabled: bool = True
    rounds: int = 3
    action_scale: float = 0.1
    policy: GPSConfig = field(default_factory=lambda: GPSConfig(iterations=3000, refit_normalization=True))
    select_best: bool = True

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ConfigError(f"pets.distill.rounds must be >= 0, got {self.rounds}")
        if not (np.isfinite(self.action_scale) and self.action_scale > 0):
            raise ConfigError(f"pets.distill.action_scale must be > 0, got {self.action_scale}")


class LabellingPolicy:
    """Acts with ``policy`` and records what ``expert`` would do in each visited state (DAgger)."""

    def __init__(self, policy: Policy, expert: Policy) -> None:
        self.policy, self.expert = policy, expert
        self.labels: list[np.ndarray] = []

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """π(x) (noiseless); the expert's action at (t, x) is appended to ``labels``."""
        if t == 0:
            self.labels = []
        self.labels.append(np.asarray(self.expert.act(t, x, None), dtype=np.float64))
        return self.policy.act(t, x, None)


@dataclass(frozen=True)
class DistillRound:
    """One round: its index, the data set size (pairs), the S-step loss before/after, and per condition
    the final ee-point-0 distance of the policy's noiseless rollout (m) and the mean |π − u*| over it;
    deployed: this round's policy is the one returned."""

    round: int
    pairs: int
    loss_before: float
    loss_after: float
    final_distance: tuple[float, ...]
    label_gap: tuple[float, ...]
    deployed: bool = False


def deployed_round(rounds: Sequence[DistillRound]) -> DistillRound:
    """The round whose policy :func:`distill` returned."""
    return next(r for r in rounds if r.deployed)


Rollouts = Callable[[NumpyPolicy], Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]]
"""policy → per condition (X (T, dX) visited, U (T, dU) applied, U* (T, dU) the expert's labels)."""


def labelled_rollouts(env: Environment, expert: Policy) -> Rollouts:
    """In one process: a noiseless rollout of the policy per condition, labelled as it runs."""
    def run(policy: NumpyPolicy) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        out = []
        for m in range(env.num_conditions):
            labeller = LabellingPolicy(policy, expert)
            batch = env.sample(labeller, m, None)
            out.append((batch.X[0], batch.U[0], np.asarray(labeller.labels)))
        return out
    return run


def distill_planner(env: Environment, expert: Policy, expert_trials: Sequence[SampleBatch],
                    effort_limits: np.ndarray, config: DistillConfig,
                    ) -> tuple[GaussianMLPPolicy, list[DistillRound]]:
    """Train the deployable policy to imitate ``expert`` on ``env`` (see the module docstring).

    expert_trials: the planner's own trajectories (X (1, T, dX), U (1, T, dU) the actions it applied).
    Returns the policy and one record per DAgger round (round 0 is evaluated like the others).
    """
    return distill(expert_trials, labelled_rollouts(env, expert), env.dX, env.dU, env.layout,
                   effort_limits, config)


def distill(expert_trials: Sequence[SampleBatch], rollouts: Rollouts, dX: int, dU: int, layout: StateLayout,
            effort_limits: np.ndarray, config: DistillConfig) -> tuple[GaussianMLPPolicy, list[DistillRound]]:
    """DAgger with any way of running the policy (in process, or through the robot's sampler)."""
    limits = np.asarray(effort_limits, dtype=np.float64)
    prec = np.diag(1.0 / (config.action_scale * limits) ** 2)
    X = np.concatenate([b.X[0] for b in expert_trials])
    U = np.concatenate([b.U[0] for b in expert_trials])
    policy = GaussianMLPPolicy.from_config(config.policy, dX, dU)
    rounds: list[DistillRound] = []
    best: tuple[float, int, GaussianMLPPolicy] | None = None
    for r in range(config.rounds + 1):
        fit = train_policy(policy, policy.observe(X), U, np.broadcast_to(prec, (len(X), *prec.shape)),
                           config.policy)
        runs = rollouts(NumpyPolicy(policy_to_params(policy)))
        finals = tuple(float(np.linalg.norm(Xr[-1, layout.ee_points][:3])) for Xr, _, _ in runs)
        gaps = tuple(float(np.mean(np.abs(Ur - np.clip(Us, -limits, limits)))) for _, Ur, Us in runs)
        rounds.append(DistillRound(r, len(X), fit.loss_before, fit.loss_after, finals, gaps))
        if config.select_best and (best is None or max(finals) < best[0]):
            best = (max(finals), r, copy.deepcopy(policy))  # training continues on ``policy``
        elif not config.select_best and r == config.rounds:
            best = (max(finals), r, policy)
        if r < config.rounds:
            X = np.concatenate([X, *(Xr for Xr, _, _ in runs)])
            U = np.concatenate([U, *(Us for _, _, Us in runs)])
    assert best is not None
    rounds[best[1]] = replace(rounds[best[1]], deployed=True)
    return best[2], rounds
