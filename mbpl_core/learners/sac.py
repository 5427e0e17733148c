"""The SAC adapter: stable-baselines3's SAC as the model-free learner of family 3 and its baseline.

Haarnoja et al. 2018 (SAC), as stable-baselines3 implements it; mbpl writes no SAC of its own. This module
holds what mbpl adds around it: the typed settings (:class:`SACAgentConfig`: the learner's networks and
Adam/TD settings; :class:`SACConfig`: the ``sac:`` method section), the construction of an SB3 SAC over a
gymnasium view of a task (:func:`build_sac`), and the deployment of its actor as the squashed numpy policy
(:func:`actor_to_params`): SB3's deterministic action is ``unscale(tanh(μ(latent_π(obs))))`` with
unscale(a) = low + ½ (a + 1)(high − low), i.e. action_bias + action_scale ⊙ tanh(μ) with
action_scale = ½ (high − low), action_bias = ½ (high + low).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from mbpl_core.config import ConfigError
from mbpl_core.containers import ShapeError
from mbpl_core.limits import check_action_limits
from mbpl_core.policy import GPSConfig, PolicyParams

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


@dataclass(frozen=True)
class SACAgentConfig:
    """The SB3 SAC learner's settings (``sac.agent`` / ``mbpo.agent``).

    hidden_sizes: actor and critic MLP widths; activation: "relu" | "tanh"; learning_rate: Adam step of
    actor, critics and temperature; batch_size: minibatch per gradient step; buffer_size: replay capacity
    (real transitions); gamma: discount; tau: Polyak rate of the target critics; ent_coef: "auto"
    (learned temperature, SAC's target entropy −dU) | "auto_<init>" | a fixed number; device: "cpu" |
    "auto" | "cuda" (SB3's small MLPs are fastest on the CPU).
    """

    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: Literal["relu", "tanh"] = "relu"
    learning_rate: float = 3e-4
    batch_size: int = 256
    buffer_size: int = 100_000
    gamma: float = 0.99
    tau: float = 0.005
    ent_coef: str | float = "auto"
    device: Literal["cpu", "auto", "cuda"] = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ConfigError(f"agent.hidden_sizes must be a non-empty list of positive widths, "
                              f"got {self.hidden_sizes}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"agent.activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"agent.learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1 or self.buffer_size < self.batch_size:
            raise ConfigError(f"agent.batch_size must be >= 1 and <= buffer_size, got {self.batch_size}, "
                              f"{self.buffer_size}")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"agent.gamma and agent.tau must be in (0, 1], got {self.gamma}, {self.tau}")
        _check_ent_coef(self.ent_coef)
        if self.device not in ("cpu", "auto", "cuda"):
            raise ConfigError(f"agent.device must be 'cpu', 'auto' or 'cuda', got {self.device!r}")


def _check_ent_coef(value: str | float) -> None:
    if isinstance(value, str):
        head, _, init = value.partition("_")
        ok = head == "auto" and (not init or _is_positive_number(init))
    else:
        ok = bool(np.isfinite(value) and value >= 0)
    if not ok:
        raise ConfigError(f"agent.ent_coef must be 'auto', 'auto_<initial value>' or a number >= 0, "
                          f"got {value!r}")


def _is_positive_number(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


@dataclass(frozen=True)
class SACConfig:
    """YAML section ``sac`` (``method: sac``, the model-free baseline).

    iterations: rounds of ``steps_per_iteration`` real environment steps, each followed by a noiseless
    evaluation of the deterministic actor; learning_starts: uniformly random steps before the first
    update (SB3); gradient_steps: SAC updates per environment step; seed: SB3's seed (weights, replay
    sampling, exploration) and the environment's; agent: the learner; graph_exploration_std: through the
    graph (``mbpl launch``) only, the std of the sampler's Gaussian action noise, a fraction of each effort
    limit (see :mod:`mbpl_core.learners.episodic`; ``mbpl train`` explores with SB3's own policy noise);
    action_limits: per-joint bound (N m; dU values, or one for every joint) of the efforts SAC acts with,
    within the effort limits (None: the effort limits) — its action space, random steps and squashed actor.
    """

    iterations: int = 20
    steps_per_iteration: int = 1000
    learning_starts: int = 1000
    gradient_steps: int = 1
    seed: int = 0
    agent: SACAgentConfig = field(default_factory=SACAgentConfig)
    graph_exploration_std: float = 0.2
    action_limits: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_action_limits("sac", self)
        if self.iterations < 0 or self.steps_per_iteration < 1:
            raise ConfigError(f"sac.iterations must be >= 0 and sac.steps_per_iteration >= 1, got "
                              f"{self.iterations}, {self.steps_per_iteration}")
        if self.learning_starts < 0 or self.gradient_steps < 1:
            raise ConfigError(f"sac.learning_starts must be >= 0 and sac.gradient_steps >= 1, got "
                              f"{self.learning_starts}, {self.gradient_steps}")
        check_exploration_std("sac", self.graph_exploration_std)


def check_exploration_std(section: str, value: float) -> None:
    """ConfigError unless ``<section>.graph_exploration_std`` is a positive finite number."""
    if not (np.isfinite(value) and value > 0):
        raise ConfigError(f"{section}.graph_exploration_std must be > 0, got {value!r}")


def build_sac(env: gym.Env, agent: SACAgentConfig, *, learning_starts: int, gradient_steps: int, seed: int,
              **kwargs: Any) -> Any:
    """An SB3 SAC over ``env`` with one update round per environment step (train_freq 1).

    kwargs go to SB3's SAC (e.g. replay_buffer_class, replay_buffer_kwargs for MBPO's mixture).
    """
    from stable_baselines3 import SAC

    policy_kwargs = {"net_arch": list(agent.hidden_sizes), "activation_fn": ACTIVATIONS[agent.activation]}
    return SAC("MlpPolicy", env, learning_rate=agent.learning_rate, buffer_size=agent.buffer_size,
               learning_starts=learning_starts, batch_size=agent.batch_size, tau=agent.tau, gamma=agent.gamma,
               train_freq=1, gradient_steps=gradient_steps, ent_coef=agent.ent_coef,
               policy_kwargs=policy_kwargs, seed=seed, device=agent.device, verbose=0, **kwargs)


def actor_to_params(actor: Any, action_space: gym.spaces.Box, action_covar: np.ndarray | None = None,
                    ) -> PolicyParams:
    """The deterministic action of an SB3 SAC actor as squashed :class:`PolicyParams` (see module doc).

    actor: ``sac.actor`` (no state-dependent exploration, a flat Box observation of dX entries, the raw
    state: SB3 does not normalise it); action_space: the Box of the environment (dU,); action_covar:
    deployment noise (dU, dU), default a tiny multiple of the identity (the policy is used noiselessly).
    """
    if getattr(actor, "use_sde", False):
        raise ShapeError("actors with state-dependent exploration (use_sde) are not supported")
    linears = [m for m in actor.latent_pi if isinstance(m, nn.Linear)] + [actor.mu]
    if not isinstance(actor.mu, nn.Linear):
        raise ShapeError(f"actor.mu must be a Linear layer, got {type(actor.mu).__name__}")
    kinds = {type(m) for m in actor.latent_pi if not isinstance(m, nn.Linear)}
    names = [name for name, cls in ACTIVATIONS.items() if kinds <= {cls}]
    if len(kinds) > 1 or not names:
        raise ShapeError(f"actor activations {sorted(k.__name__ for k in kinds)} are not one of relu/tanh")
    weights = tuple((layer.weight.detach().cpu().double().numpy().copy(),
                     layer.bias.detach().cpu().double().numpy().copy()) for layer in linears)
    low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
    dX, dU = int(np.prod(actor.observation_space.shape)), low.shape[0]
    covar = 1e-8 * np.eye(dU) if action_covar is None else action_covar
    return PolicyParams(weights=weights, activation=names[0] if kinds else "relu", obs_mean=np.zeros(dX),
                        obs_std=np.ones(dX), obs_indices=np.arange(dX), action_covar=covar, state_dim=dX,
                        squash="tanh", action_scale=0.5 * (high - low), action_bias=0.5 * (high + low))


def policy_config(agent: SACAgentConfig) -> GPSConfig:
    """The GPSConfig written beside a deployed SAC actor (architecture fields; the checkpoint needs one)."""
    return GPSConfig(hidden_sizes=agent.hidden_sizes, activation=agent.activation, device="cpu")


def torch_actor_action(actor: Any, policy: Any, obs: np.ndarray) -> np.ndarray:
    """SB3's deterministic action in float64: unscale(tanh(μ(latent_π(obs)))) on a float64 copy of the actor.

    obs (M, dX) → (M, dU); the float64 torch reference that :func:`actor_to_params` reproduces in numpy.
    """
    import copy

    twin = copy.deepcopy(actor).double()
    with torch.no_grad():
        scaled = torch.tanh(twin.mu(twin.latent_pi(torch.as_tensor(obs, dtype=torch.float64))))
    return policy.unscale_action(scaled.numpy())
