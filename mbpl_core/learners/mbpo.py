"""MBPO: model-based policy optimisation with short branched rollouts (Janner et al., NeurIPS 2019, Alg. 2).

The learner is stable-baselines3's SAC (:mod:`mbpl_core.learners.sac`); the model is the probabilistic
ensemble PETS uses (:mod:`mbpl_core.models`). Per real environment step of the current SAC policy:

1. the transition goes to the real buffer (SB3's replay buffer);
2. every ``model_train_every`` steps (from ``initial_random_steps`` on, which are uniformly random
   actions): the ensemble is refitted to every real transition (continuing from its weights);
3. every ``rollout_every`` steps: ``rollout_batch_size`` branched rollouts of length k start at states
   sampled from the real buffer, each step by the current policy's sampled action and one elite member
   drawn at random per rollout and step; k follows MBPO's schedule [epoch_min, epoch_max, k_min, k_max]
   over iterations (epochs), and the rewards are the experiment's cost at each row's own episode step
   (a row stops where its episode would: step T);
4. SAC takes ``updates_per_step`` gradient steps on minibatches of which ``real_ratio`` come from the
   real buffer and the rest from the model buffer (:class:`MixtureReplayBuffer`; real only while the
   model buffer is empty).

How model data reaches SB3: SB3 lets an algorithm take its replay-buffer class (``replay_buffer_class``);
:class:`MixtureReplayBuffer` is SB3's ReplayBuffer (real transitions, filled by SB3's own rollout
collection) holding a second, model buffer, and its ``sample`` returns the mixture as one
ReplayBufferSamples, so SAC's ``train`` is SB3's, unchanged. Steps 2-3 run in an SB3 callback after
each environment step. Actions: SB3 stores squashed actions a ∈ [−1, 1]^dU; the model and the cost see
efforts u = low + ½ (a + 1)(high − low), as the environment does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from mbpl_core.config import ConfigError
from mbpl_core.costs import Cost
from mbpl_core.learners.sac import SACAgentConfig, build_sac, check_exploration_std
from mbpl_core.limits import check_action_limits
from mbpl_core.models import EnsembleConfig, ProbabilisticEnsemble, TrainReport, torch_threads, train_ensemble


@dataclass(frozen=True)
class MBPOConfig:
    """YAML section ``mbpo``.

    iterations: epochs of ``steps_per_iteration`` real steps; initial_random_steps: uniformly random steps
    before the first model and update; model_train_every: n, real steps between ensemble refits;
    rollout_every / rollout_batch_size: real steps between rollout rounds and the rollouts each starts;
    rollout_schedule: [epoch_min, epoch_max, k_min, k_max], k = k_min before epoch_min, k_max after
    epoch_max, linear (floored) between (epoch = iteration + 1); model_retain_iterations: the model
    buffer holds this many iterations of rollouts (at k_max); updates_per_step: G, SAC gradient steps per
    real step; real_ratio: fraction of real transitions in each minibatch; seed: every draw (SB3's too);
    model: the ensemble; agent: the SAC learner; graph_exploration_std: as ``sac.graph_exploration_std``
    (the sampler's action noise through the graph, fraction of the effort limits); action_limits: as
    ``sac.action_limits`` (the box MBPO acts in; None: the effort limits).
    """

    iterations: int = 10
    steps_per_iteration: int = 250
    initial_random_steps: int = 250
    model_train_every: int = 250
    rollout_every: int = 25
    rollout_batch_size: int = 400
    rollout_schedule: tuple[int, int, int, int] = (1, 10, 1, 5)
    model_retain_iterations: int = 1
    updates_per_step: int = 10
    real_ratio: float = 0.05
    seed: int = 0
    model: EnsembleConfig = field(default_factory=EnsembleConfig)
    agent: SACAgentConfig = field(default_factory=SACAgentConfig)
    graph_exploration_std: float = 0.2
    action_limits: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_exploration_std("mbpo", self.graph_exploration_std)
        check_action_limits("mbpo", self)
        positive = ("steps_per_iteration", "model_train_every", "rollout_every", "rollout_batch_size",
                    "model_retain_iterations", "updates_per_step")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"mbpo.{name} must be >= 1, got {getattr(self, name)}")
        if self.iterations < 0 or self.initial_random_steps < 1:
            raise ConfigError(f"mbpo.iterations must be >= 0 and mbpo.initial_random_steps >= 1 (the first "
                              f"model needs data), got {self.iterations}, {self.initial_random_steps}")
        object.__setattr__(self, "rollout_schedule", tuple(int(v) for v in self.rollout_schedule))
        e_min, e_max, k_min, k_max = self.rollout_schedule
        if not (0 <= e_min <= e_max and 1 <= k_min and 1 <= k_max):
            raise ConfigError("mbpo.rollout_schedule must be [epoch_min <= epoch_max, k_min >= 1, "
                              f"k_max >= 1], got {list(self.rollout_schedule)}")
        if not 0.0 <= self.real_ratio <= 1.0:
            raise ConfigError(f"mbpo.real_ratio must be in [0, 1], got {self.real_ratio}")

    @property
    def max_rollout_length(self) -> int:
        return max(self.rollout_schedule[2], self.rollout_schedule[3])

    def model_capacity(self) -> int:
        """Model-buffer rows: retained iterations × rollout rounds per iteration × rollouts × k_max."""
        rounds = max(1, self.steps_per_iteration // self.rollout_every)
        return self.model_retain_iterations * rounds * self.rollout_batch_size * self.max_rollout_length


def rollout_length(schedule: tuple[int, int, int, int], epoch: int) -> int:
    """MBPO's truncated linear schedule: k at ``epoch`` for [epoch_min, epoch_max, k_min, k_max]."""
    e_min, e_max, k_min, k_max = schedule
    if epoch <= e_min or e_max == e_min:
        return k_min if epoch <= e_min else k_max
    if epoch >= e_max:
        return k_max
    return int(k_min + (epoch - e_min) / (e_max - e_min) * (k_max - k_min))


class ModelBuffer:
    """FIFO ring of model transitions: obs, next_obs (capacity, dX), actions (capacity, dU) in SB3's
    squashed units, rewards (capacity,); every model transition is non-terminal."""

    def __init__(self, capacity: int, dX: int, dU: int) -> None:
        self.capacity, self.size, self.pos = int(capacity), 0, 0
        self.obs = np.zeros((capacity, dX))
        self.next_obs = np.zeros((capacity, dX))
        self.actions = np.zeros((capacity, dU), dtype=np.float32)
        self.rewards = np.zeros(capacity, dtype=np.float32)

    def add(self, obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray, rewards: np.ndarray) -> None:
        """Append M rows (M, ·) — the oldest rows go first once full."""
        M = obs.shape[0]
        rows = (self.pos + np.arange(M)) % self.capacity if M <= self.capacity else None
        if rows is None:  # more rows than room: keep the newest
            obs, actions, next_obs, rewards = obs[-self.capacity:], actions[-self.capacity:], \
                next_obs[-self.capacity:], rewards[-self.capacity:]
            rows, M = np.arange(self.capacity), self.capacity
        self.obs[rows], self.actions[rows] = obs, actions
        self.next_obs[rows], self.rewards[rows] = next_obs, rewards
        self.pos = int((self.pos + M) % self.capacity)
        self.size = min(self.capacity, self.size + M)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        """n rows drawn uniformly with replacement: (obs, actions, next_obs, rewards)."""
        idx = rng.integers(0, self.size, size=n)
        return self.obs[idx], self.actions[idx], self.next_obs[idx], self.rewards[idx]


def _mixture_buffer_class() -> type:
    """MixtureReplayBuffer, built on first use so this module imports without stable-baselines3."""
    global MixtureReplayBuffer
    if MixtureReplayBuffer is not None:
        return MixtureReplayBuffer
    from stable_baselines3.common.buffers import ReplayBuffer
    from stable_baselines3.common.type_aliases import ReplayBufferSamples

    class _MixtureReplayBuffer(ReplayBuffer):
        """SB3's ReplayBuffer of real transitions plus ``model`` (a :class:`ModelBuffer`); ``sample`` mixes.

        Also records the episode step t of every real transition (``steps``, from the environment's
        ``info["t"]``): a branched rollout from that state pays the cost of steps t, t+1, ….
        """

        def __init__(self, *args: Any, real_ratio: float = 0.05, model_capacity: int = 1, seed: int = 0,
                     **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.real_ratio = float(real_ratio)
            self.steps = np.full((self.buffer_size, self.n_envs), -1, dtype=np.int64)
            self.model = ModelBuffer(model_capacity, self.obs_shape[0], self.action_dim)
            self.rng = np.random.default_rng(seed)

        def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
                done: np.ndarray, infos: list[dict[str, Any]]) -> None:
            self.steps[self.pos] = [int(info.get("t", -1)) for info in infos]
            super().add(obs, next_obs, action, reward, done, infos)

        def real_size(self) -> int:
            return self.buffer_size if self.full else self.pos

        def sample(self, batch_size: int, env: Any = None) -> Any:
            n_model = 0 if self.model.size == 0 else batch_size - int(round(self.real_ratio * batch_size))
            real = super().sample(batch_size - n_model, env) if n_model < batch_size else None
            if n_model == 0:
                return real
            obs, act, nxt, rew = self.model.sample(n_model, self.rng)
            like = real if real is not None else None
            parts = [obs, act, nxt, np.zeros((n_model, 1)), rew.reshape(-1, 1)]
            model = [self._as_like(p, like, i) for i, p in enumerate(parts)]
            if real is None:
                return ReplayBufferSamples(*model)
            return ReplayBufferSamples(*(torch.cat([r, m]) for r, m in zip(real[:5], model, strict=True)))

        def _as_like(self, array: np.ndarray, like: Any, i: int) -> torch.Tensor:
            dtype = like[i].dtype if like is not None else torch.float32
            return torch.as_tensor(array, device=self.device).to(dtype)

    MixtureReplayBuffer = _MixtureReplayBuffer
    return MixtureReplayBuffer


MixtureReplayBuffer: Any = None


@dataclass(frozen=True)
class BranchedRollouts:
    """N rollouts of up to k steps. X (N, k+1, dX) states (X[:, 0] the real start states); A (N, k, dU)
    squashed actions, U (N, k, dU) efforts; rewards (N, k); steps (N, k) episode steps t0 + h; members
    (N, k) the ensemble member of each step; valid (N, k): the step lies inside the episode (step < T)."""

    X: np.ndarray
    A: np.ndarray
    U: np.ndarray
    rewards: np.ndarray
    steps: np.ndarray
    members: np.ndarray
    valid: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Valid steps per rollout (N,)."""
        return self.valid.sum(axis=1)


def step_rewards(cost: Cost, X: np.ndarray, U: np.ndarray, steps: np.ndarray, T: int) -> np.ndarray:
    """−l_t(x_n, u_n) at each row's own episode step t = steps[n]: X (N, dX), U (N, dU) → (N,); 0 at t ≥ T."""
    out = np.zeros(X.shape[0])
    for t in np.unique(steps):
        rows = np.flatnonzero(steps == t)
        if t < T:
            out[rows] = -cost.value_batched(X[rows, None], U[rows, None], t0=int(t), T=T)[:, 0]
    return out


@torch.no_grad()
def branched_rollouts(model: ProbabilisticEnsemble, policy: Callable[[np.ndarray], np.ndarray],
                      unscale: Callable[[np.ndarray], np.ndarray], cost: Cost, X0: np.ndarray, t0: np.ndarray,
                      k: int, T: int, rng: np.random.Generator, generator: torch.Generator | None = None,
                      ) -> BranchedRollouts:
    """k-step rollouts of the model from real states X0 (N, dX) at episode steps t0 (N,) (MBPO Alg. 2, l. 8).

    policy: squashed actions (N, dU) of states (N, dX) (the current SAC policy, sampled); unscale: squashed
    → efforts; each step every row draws one of the model's elites at random and samples its Gaussian.
    """
    N, dX = X0.shape
    elites = np.asarray(model.elite_indices)
    X = np.empty((N, k + 1, dX))
    X[:, 0] = X0
    A, U = np.empty((N, k, model.dU)), np.empty((N, k, model.dU))
    rewards, members = np.zeros((N, k)), np.empty((N, k), dtype=np.int64)
    steps = np.asarray(t0, dtype=np.int64)[:, None] + np.arange(k)[None, :]
    for h in range(k):
        A[:, h] = policy(X[:, h])
        U[:, h] = unscale(A[:, h])
        choice = rng.integers(0, elites.size, size=N)
        members[:, h] = elites[choice]
        x = torch.as_tensor(X[:, h], dtype=model.dtype, device=model.device).expand(elites.size, N, dX)
        u = torch.as_tensor(U[:, h], dtype=model.dtype, device=model.device).expand(elites.size, N, model.dU)
        nxt = model.step(x, u, generator, sample=True, members=elites.tolist())  # (E, N, dX)
        X[:, h + 1] = nxt[torch.as_tensor(choice), torch.arange(N)].double().cpu().numpy()
        rewards[:, h] = step_rewards(cost, X[:, h], U[:, h], steps[:, h], T)
    return BranchedRollouts(X, A, U, rewards, steps, members, steps < T)


@dataclass(frozen=True)
class MBPOIterationReport:
    """One MBPO epoch: env_steps (real, total), rollout_length k, model_fits and rollout rounds in it,
    model_rows (model-buffer size), holdout_nll of the last fit, and seconds spent per stage."""

    iteration: int
    env_steps: int
    rollout_length: int
    model_fits: int
    rollout_rounds: int
    model_rows: int
    holdout_nll: float
    model_s: float
    rollout_s: float
    total_s: float


class MBPO:
    """The MBPO loop over a gymnasium env whose info carries ``t`` (:class:`mbpl_sim.gym_env.MbplGymEnv`).

    cost, T: the experiment's cost and horizon (model rollouts' rewards). Attributes: ``sac`` (SB3 SAC,
    whose ``replay_buffer`` is the :class:`MixtureReplayBuffer`), ``model`` (the ensemble), ``reports``.
    """

    def __init__(self, env: gym.Env, cost: Cost, T: int, config: MBPOConfig | None = None) -> None:
        self.config = config if config is not None else MBPOConfig()
        self.cost, self.T = cost, int(T)
        self.rng = np.random.default_rng(self.config.seed)
        dX, dU = int(env.observation_space.shape[0]), int(env.action_space.shape[0])
        self.model = ProbabilisticEnsemble(dX, dU, self.config.model, self.rng)
        self.generator = torch.Generator(device=self.model.device).manual_seed(int(self.rng.integers(2**62)))
        self.low = np.asarray(env.action_space.low, np.float64)
        self.high = np.asarray(env.action_space.high, np.float64)
        kwargs = {"real_ratio": self.config.real_ratio, "model_capacity": self.config.model_capacity(),
                  "seed": int(self.rng.integers(2**62))}
        self.sac = build_sac(env, self.config.agent, learning_starts=self.config.initial_random_steps,
                             gradient_steps=self.config.updates_per_step, seed=self.config.seed,
                             replay_buffer_class=_mixture_buffer_class(), replay_buffer_kwargs=kwargs)
        self.model_fitted = False
        self.reports: list[MBPOIterationReport] = []
        self.last_fit: TrainReport | None = None
        self._counts = {"fits": 0, "rounds": 0, "model_s": 0.0, "rollout_s": 0.0}
        self._start = time.perf_counter()

    @property
    def buffer(self) -> Any:
        """The MixtureReplayBuffer (real + model transitions)."""
        return self.sac.replay_buffer

    @property
    def rollout_k(self) -> int:
        """k of the running epoch (epoch = iteration + 1)."""
        return rollout_length(self.config.rollout_schedule, len(self.reports) + 1)

    def unscale(self, A: np.ndarray) -> np.ndarray:
        """Efforts of squashed actions: low + ½ (a + 1)(high − low) (SB3's unscale_action)."""
        return self.low + 0.5 * (np.asarray(A) + 1.0) * (self.high - self.low)

    def policy_actions(self, X: np.ndarray) -> np.ndarray:
        """The current SAC policy's sampled squashed actions (N, dU) at states X (N, dX)."""
        with torch.no_grad():
            obs = torch.as_tensor(X, dtype=torch.float32, device=self.sac.device)
            return self.sac.actor(obs, deterministic=False).double().cpu().numpy()

    def real_transitions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every real transition so far: X (M, dX), U (M, dU) efforts, X_next (M, dX), steps t (M,)."""
        b, n = self.buffer, self.buffer.real_size()
        return (b.observations[:n, 0].astype(np.float64), self.unscale(b.actions[:n, 0]),
                b.next_observations[:n, 0].astype(np.float64), b.steps[:n, 0].copy())

    def fit_model(self) -> TrainReport:
        """Refit the ensemble to every real transition (warm start)."""
        start = time.perf_counter()
        X, U, X_next, _ = self.real_transitions()
        threads = torch_threads(1) if self.model.device.type == "cpu" else _null()
        with threads:
            self.last_fit = train_ensemble(self.model, X, U, X_next, self.config.model, self.rng)
        self.model_fitted = True
        self._counts["fits"] += 1
        self._counts["model_s"] += time.perf_counter() - start
        return self.last_fit

    def rollout(self) -> BranchedRollouts:
        """One round of branched rollouts from real states into the model buffer; returns them."""
        start = time.perf_counter()
        X, _, _, steps = self.real_transitions()
        rows = self.rng.integers(0, X.shape[0], size=self.config.rollout_batch_size)
        result = branched_rollouts(self.model, self.policy_actions, self.unscale, self.cost, X[rows],
                                   steps[rows], self.rollout_k, self.T, self.rng, self.generator)
        v = result.valid
        self.buffer.model.add(result.X[:, :-1][v], result.A[v], result.X[:, 1:][v], result.rewards[v])
        self._counts["rounds"] += 1
        self._counts["rollout_s"] += time.perf_counter() - start
        return result

    def on_env_step(self) -> None:
        """After each real step: refit the model every n steps, roll out every rollout_every steps."""
        n, c = int(self.sac.num_timesteps), self.config
        if n >= c.initial_random_steps and (n - c.initial_random_steps) % c.model_train_every == 0:
            self.fit_model()
        if self.model_fitted and n % c.rollout_every == 0:
            self.rollout()

    def iteration(self) -> MBPOIterationReport:
        """One epoch: steps_per_iteration real steps with the model fits, rollouts and SAC updates."""
        self.begin_iteration()
        self.sac.learn(self.config.steps_per_iteration, callback=_callback(self), reset_num_timesteps=False)
        return self.end_iteration()

    def begin_iteration(self) -> None:
        """Start an epoch's counters and clock (its k is :attr:`rollout_k` until :meth:`end_iteration`).

        Between the two, the real steps arrive either from SB3's own rollout collection
        (:meth:`iteration`) or whole trials at a time (:class:`mbpl_core.learners.episodic.EpisodicMBPO`,
        the graph's trainer); both call :meth:`on_env_step` after every real step."""
        self._start = time.perf_counter()
        self._counts = {"fits": 0, "rounds": 0, "model_s": 0.0, "rollout_s": 0.0}

    def end_iteration(self) -> MBPOIterationReport:
        """Close the epoch begun by :meth:`begin_iteration`: its report (appended to ``reports``)."""
        nll = float(self.last_fit.elite_holdout_nll) if self.last_fit is not None else float("nan")
        report = MBPOIterationReport(
            iteration=len(self.reports), env_steps=int(self.sac.num_timesteps), rollout_length=self.rollout_k,
            model_fits=int(self._counts["fits"]), rollout_rounds=int(self._counts["rounds"]),
            model_rows=int(self.buffer.model.size), holdout_nll=nll, model_s=float(self._counts["model_s"]),
            rollout_s=float(self._counts["rollout_s"]), total_s=time.perf_counter() - self._start)
        self.reports.append(report)
        return report


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _callback(mbpo: MBPO) -> Any:
    """An SB3 callback calling ``mbpo.on_env_step()`` after every real environment step."""
    from stable_baselines3.common.callbacks import BaseCallback

    class _MBPOStep(BaseCallback):
        def _on_step(self) -> bool:
            mbpo.on_env_step()
            return True

    return _MBPOStep()
