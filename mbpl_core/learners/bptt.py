"""Backpropagation through the learned model (BPTT) and its short-horizon remedy SVG(H).

A deterministic policy u = π_θ(x) = bias + scale ⊙ tanh(f_θ((x − obs_mean) / obs_std)) (scale = the effort
limits, so every action is admissible) is trained by the analytic gradient of the predicted cost

    J_H(θ) = E_{x_0, b, ε} [ Σ_{h=0}^{H−1} l_{t0+h}(x_h, π_θ(x_h)) + V_φ(x_H, t0 + H) ],
    x_{h+1} = x_h + μ_b(x_h, π_θ(x_h)) + σ_b(x_h, π_θ(x_h)) ⊙ ε_h                      (reparameterised)

through the probabilistic ensemble (member b fixed along a rollout, TS-∞; ε_h ~ N(0, I) drawn before the
rollout, so ∂J/∂θ is the pathwise derivative), from real start states x_0 taken out of the data buffer at
their episode step t0. l_t is the experiment's own cost (:meth:`mbpl_core.costs.Cost.value_batched`,
torch, differentiable, with the ramp and final multiplier of the absolute step t); steps past the episode
end cost nothing. Without a value (plain BPTT) V ≡ 0; with ``value.enabled`` (SVG(H), Heess et al. 2015)
V_φ(x, t) is a critic of the cost-to-go trained by TD on real transitions and model transitions under π.

The loop (:class:`BPTT`): random trials first; then every iteration: fit the ensemble to all data, train
critic and policy for ``gradient_steps`` steps, run ``trials_per_condition`` real trials per condition with
π plus Gaussian exploration noise, aggregate them. What the material warns of is measured by
:func:`gradient_statistics` (norm and variance of ∂J_H/∂θ vs H) and :func:`jacobian_spectrum` (largest
singular value of ∏ dx_{h+1}/dx_h along model rollouts vs H).

Arrays: N start states, H horizon, E elite members, M = rollouts per member (N = E M), dX, dU; T the
episode length. Float32 by default; every function follows the dtype of the modules it is given (the
finite-difference tests run the same code in float64).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from mbpl_core.config import ConfigError
from mbpl_core.containers import SampleBatch
from mbpl_core.costs import Cost
from mbpl_core.limits import bounded_limits, check_action_limits
from mbpl_core.models import EnsembleConfig, ProbabilisticEnsemble, TrainReport, torch_threads, train_ensemble
from mbpl_core.planning.pets import PlanningEnvironment, UniformRandomPolicy, final_tip_distance, refit_inputs
from mbpl_core.policy import GPSConfig, PolicyParams, save_numpy_policy

# A state entry whose std in the data is below this is constant (e.g. the height of a planar arm's tip): the
# policy and value only centre it, so a model error there cannot be amplified by 1 / std.
CONSTANT_STD = 1e-6


def _require(ok: bool, name: str, value: object, what: str) -> None:
    if not ok:
        raise ConfigError(f"bptt.{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class ValueConfig:
    """YAML ``bptt.value``: the terminal value V_φ(x, t) of SVG(H).

    enabled: bootstrap the H-step rollout with V (off: plain BPTT, V ≡ 0); hidden: MLP widths;
    learning_rate: Adam step; batch_size: TD targets per step; warmup_steps: TD steps per iteration before
    the policy steps (then one TD step per policy step); model_ratio: fraction of each TD batch that are
    H-step model rollouts under π from real states (value expansion); the rest are real states with
    n-step TD targets along their recorded trial (n = td_steps: faster propagation over a T-step episode
    than one step); target_tau: Polyak rate of the target network.
    """

    enabled: bool = False
    hidden: tuple[int, ...] = (64, 64)
    learning_rate: float = 1e-3
    batch_size: int = 256
    warmup_steps: int = 200
    model_ratio: float = 0.5
    td_steps: int = 10
    target_tau: float = 0.05

    def __post_init__(self) -> None:
        _require(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden), "value.hidden", self.hidden,
                 "a non-empty list of positive widths")
        _require(self.learning_rate > 0, "value.learning_rate", self.learning_rate, "> 0")
        _require(self.batch_size >= 1, "value.batch_size", self.batch_size, ">= 1")
        _require(self.warmup_steps >= 0, "value.warmup_steps", self.warmup_steps, ">= 0")
        _require(0.0 <= self.model_ratio <= 1.0, "value.model_ratio", self.model_ratio, "in [0, 1]")
        _require(self.td_steps >= 1, "value.td_steps", self.td_steps, ">= 1")
        _require(0.0 < self.target_tau <= 1.0, "value.target_tau", self.target_tau, "in (0, 1]")


@dataclass(frozen=True)
class BPTTConfig:
    """YAML section ``bptt`` (method: bptt). See the module docstring for the objective.

    iterations: fit + train + trial rounds; trials_per_condition: real trials of π + noise per condition
    per iteration; random_trials: uniformly random trials per condition before the first fit; horizon: H,
    steps backpropagated (a rollout stops at the episode end); start: where rollouts start, "buffer" (any
    real state, at its step t0) | "initial" (the real states at t = 0); gradient_steps: G policy steps per
    iteration; batch_size: rollouts per step (rounded up to a multiple of the elites); learning_rate,
    grad_clip (max gradient norm, 0: none): Adam on θ; hidden_sizes, activation: the policy MLP;
    exploration_std: std of the Gaussian noise on the real trials' actions, fraction of the action limit;
    action_limits: per-joint bound (N m; dU values, or one for every joint) of the policy's squashed output
    and the random trials, within the effort limits (None: the effort limits; exploration noise is added
    on top and clipped to the effort limits only); sample_model: reparameterised draws from the members
    (false: their means); retrain: "continue" |
    "scratch" for the ensemble; seed: every random draw; model: the ensemble; value: SVG(H)'s critic.
    """

    iterations: int = 10
    trials_per_condition: int = 1
    random_trials: int = 1
    horizon: int = 10
    start: Literal["buffer", "initial"] = "buffer"
    gradient_steps: int = 200
    batch_size: int = 64
    learning_rate: float = 1e-3
    grad_clip: float = 0.0
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: Literal["relu", "tanh"] = "tanh"
    exploration_std: float = 0.1
    sample_model: bool = True
    retrain: Literal["continue", "scratch"] = "continue"
    seed: int = 0
    model: EnsembleConfig = field(default_factory=EnsembleConfig)
    value: ValueConfig = field(default_factory=ValueConfig)
    action_limits: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        check_action_limits("bptt", self)
        _require(self.iterations >= 0, "iterations", self.iterations, ">= 0")
        _require(self.trials_per_condition >= 1, "trials_per_condition", self.trials_per_condition, ">= 1")
        _require(self.random_trials >= 1 or self.iterations == 0, "random_trials", self.random_trials,
                 ">= 1 (the first model needs data)")
        _require(self.horizon >= 1, "horizon", self.horizon, ">= 1")
        _require(self.start in ("buffer", "initial"), "start", self.start, "'buffer' or 'initial'")
        _require(self.gradient_steps >= 0, "gradient_steps", self.gradient_steps, ">= 0")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _require(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _require(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0 (0: no clipping)")
        _require(len(self.hidden_sizes) >= 1 and all(h >= 1 for h in self.hidden_sizes), "hidden_sizes",
                 self.hidden_sizes, "a non-empty list of positive widths")
        _require(self.activation in ("relu", "tanh"), "activation", self.activation, "'relu' or 'tanh'")
        _require(self.exploration_std >= 0, "exploration_std", self.exploration_std, ">= 0")
        _require(self.retrain in ("continue", "scratch"), "retrain", self.retrain, "'continue' or 'scratch'")


# ------------------------------------------------------------------------------------------- networks


def fit_obs_normalisation(net: nn.Module, X: np.ndarray) -> None:
    """Set a network's obs_mean, obs_std buffers (dX,) from states X (N, dX); constant entries get std 1."""
    X = np.asarray(X, dtype=np.float64)
    std = X.std(axis=0)
    std[std < CONSTANT_STD] = 1.0
    with torch.no_grad():
        net.obs_mean.copy_(torch.as_tensor(X.mean(axis=0)))
        net.obs_std.copy_(torch.as_tensor(std))


def _mlp(sizes: Sequence[int], generator: torch.Generator, dtype: torch.dtype) -> nn.ModuleList:
    layers = nn.ModuleList()
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layer = nn.Linear(n_in, n_out, dtype=dtype)
        bound = 1.0 / math.sqrt(n_in)  # torch's default range, drawn from the explicit generator
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
        layers.append(layer)
    return layers


class SquashedMLPPolicy(nn.Module):
    """u = action_bias + action_scale ⊙ tanh(f_θ((x − obs_mean) / obs_std)): x (..., dX) → u (..., dU).

    f_θ: MLP with ``activation`` after every hidden layer, linear last layer (scaled by 0.1 at
    initialisation so the first actions are small). obs_mean, obs_std (dX,), action_scale, action_bias
    (dU,) are buffers; exported to the numpy deployment pass by :func:`policy_to_params`.
    """

    obs_mean: Tensor
    obs_std: Tensor
    action_scale: Tensor
    action_bias: Tensor

    def __init__(self, dX: int, dU: int, hidden: Sequence[int], activation: str, action_scale: np.ndarray,
                 generator: torch.Generator, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dX, self.dU, self.activation = int(dX), int(dU), activation
        self.layers = _mlp([dX, *hidden, dU], generator, dtype)
        with torch.no_grad():
            self.layers[-1].weight.mul_(0.1)
            self.layers[-1].bias.zero_()
        self.register_buffer("obs_mean", torch.zeros(dX, dtype=dtype))
        self.register_buffer("obs_std", torch.ones(dX, dtype=dtype))
        scale = torch.tensor(np.asarray(action_scale, dtype=np.float64), dtype=dtype)
        self.register_buffer("action_scale", scale)
        self.register_buffer("action_bias", torch.zeros(dU, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        h = (x - self.obs_mean) / self.obs_std
        act = torch.tanh if self.activation == "tanh" else torch.relu
        for layer in self.layers[:-1]:
            h = act(layer(h))
        return self.action_bias + self.action_scale * torch.tanh(self.layers[-1](h))


class ValueNetwork(nn.Module):
    """V_φ(x, t): cost-to-go from state x (..., dX) at episode step t (...,) of a T-step episode → (...,).

    Input [(x − obs_mean) / obs_std, t / T]; V(·, t ≥ T) = 0 is applied by :func:`terminal_value`.
    """

    obs_mean: Tensor
    obs_std: Tensor

    def __init__(self, dX: int, T: int, hidden: Sequence[int], generator: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.T = int(T)
        self.layers = _mlp([dX + 1, *hidden, 1], generator, dtype)
        self.register_buffer("obs_mean", torch.zeros(dX, dtype=dtype))
        self.register_buffer("obs_std", torch.ones(dX, dtype=dtype))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = torch.cat([(x - self.obs_mean) / self.obs_std, (t.to(x.dtype) / self.T)[..., None]], dim=-1)
        for layer in self.layers[:-1]:
            h = torch.nn.functional.silu(layer(h))
        return self.layers[-1](h)[..., 0]


def terminal_value(value: ValueNetwork | None, x: Tensor, t: Tensor, T: int) -> Tensor:
    """V(x, t) where t < T, else 0 (the episode is over): x (N, dX), t (N,) → (N,). None: zeros."""
    if value is None:
        return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    return torch.where(t < T, value(x, t), torch.zeros((), dtype=x.dtype, device=x.device))


# -------------------------------------------------------------------------------- model and objective


def model_step(model: ProbabilisticEnsemble, x: Tensor, u: Tensor, noise: Tensor | None,
               members: Sequence[int] | Tensor | None, moving: Tensor | None = None) -> Tensor:
    """x_next = x + m ⊙ denorm(μ + exp(½ logvar) ⊙ ε) per member: x (E, M, dX), u (E, M, dU), ε (E, M, dX).

    The reparameterised form of :meth:`ProbabilisticEnsemble.step` with the draws ε given (None: the
    mean), in the dtype of the model's parameters (so a float64 copy of the ensemble runs in float64).
    moving m (dX,) 0/1: the entries that ever changed in the data (None: all); the others stay put, as
    they did on the robot, instead of drifting by the model's error and noise.
    """
    xu = model.input_normaliser.normalise(torch.cat([x, u], dim=-1))
    mean, logvar = model(xu, members)
    if noise is not None:
        mean = mean + torch.exp(0.5 * logvar) * noise
    delta = model.target_normaliser.denormalise(mean)
    return x + (delta if moving is None else moving * delta)


def model_rollout(model: ProbabilisticEnsemble, policy: nn.Module, x0: Tensor, H: int,
                  noise: Tensor | None, members: Sequence[int] | None,
                  moving: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Closed-loop rollout u_h = π(x_h), x_{h+1} = model_step: x0 (E, M, dX), noise (H, E, M, dX) | None.

    Returns X (E, M, H + 1, dX) (X[..., 0, :] = x0) and U (E, M, H, dU), differentiable in the policy's
    parameters and in x0 (the gradient flows through every x_h: that is what BPTT is).
    """
    xs, us = [x0], []
    x = x0
    for h in range(H):
        u = policy(x)
        x = model_step(model, x, u, None if noise is None else noise[h], members, moving)
        xs.append(x)
        us.append(u)
    return torch.stack(xs, dim=-2), torch.stack(us, dim=-2)


def piece_costs(cost: Cost, X: Tensor, U: Tensor, t0: Tensor, T: int) -> Tensor:
    """Per-step cost l_{t0_n + h}(x_{n,h}, u_{n,h}) of pieces X (N, H, dX), U (N, H, dU) → (N, H).

    Each piece starts at its own episode step t0 (N,): it is placed at its steps of a zero-padded
    (N, T + H) episode, evaluated there by the experiment's Cost (ramps and final multiplier at the
    absolute steps; steps ≥ T cost 0), and read back — one batched call for any mix of start steps.
    """
    N, H, dX = X.shape
    steps = t0[:, None] + torch.arange(H, device=X.device)  # (N, H), each < T + H
    padded_x = X.new_zeros(N, T + H, dX).scatter(1, steps[..., None].expand(N, H, dX), X)
    dU = U.shape[-1]
    padded_u = U.new_zeros(N, T + H, dU).scatter(1, steps[..., None].expand(N, H, dU), U)
    l = cost.value_batched(padded_x, padded_u, 0, T)  # (N, T + H)
    return torch.gather(l, 1, steps)


def bptt_objective(model: ProbabilisticEnsemble, policy: nn.Module, cost: Cost, x0: Tensor, t0: Tensor,
                   T: int, H: int, noise: Tensor | None, members: Sequence[int] | None,
                   value: ValueNetwork | None = None, moving: Tensor | None = None) -> Tensor:
    """J_H: mean over the E M rollouts of Σ_h l_{t0+h} + V(x_H, t0 + H) (module docstring). Scalar.

    x0 (E, M, dX) start states at steps t0 (E, M); noise (H, E, M, dX) | None; members: the E members
    (None: all); moving as in :func:`model_step`. Rollouts that reach the episode end stop counting there
    (their V is 0).
    """
    E, M, dX = x0.shape
    X, U = model_rollout(model, policy, x0, H, noise, members, moving)
    t0_flat = t0.reshape(-1)
    running = piece_costs(cost, X[..., :H, :].reshape(E * M, H, dX), U.reshape(E * M, H, -1), t0_flat, T)
    tail = terminal_value(value, X[..., H, :].reshape(E * M, dX), t0_flat + H, T)
    return (running.sum(dim=1) + tail).mean()


# -------------------------------------------------------------------------------------- data buffer


@dataclass
class StartStates:
    """Real states to start rollouts from: X (N, dX) with their episode steps t (N,)."""

    X: np.ndarray
    t: np.ndarray

    @classmethod
    def from_batches(cls, batches: Sequence[SampleBatch], initial_only: bool) -> StartStates:
        X = np.concatenate([b.X for b in batches])  # (n, T, dX)
        n, T, dX = X.shape
        steps = np.broadcast_to(np.arange(T), (n, T))
        if initial_only:
            return cls(X[:, 0].copy(), np.zeros(n, dtype=np.int64))
        return cls(X.reshape(n * T, dX), steps.reshape(-1).astype(np.int64))


# ------------------------------------------------------------------------------------------ reports


@dataclass(frozen=True)
class BPTTIterationReport:
    """One iteration. mean_cost / final_distance per condition: of this iteration's noisy real trials
    (the cost Σ_t l_t, the last trial's final ee distance); env_steps: real steps so far; objective:
    J_H of the policy before and after its G steps (mean over the last 10 minibatches each); grad_norm:
    median ‖∂J_H/∂θ‖ over the G steps; value_loss: last TD loss (nan without a value)."""

    iteration: int
    mean_cost: tuple[float, ...]
    final_distance: tuple[float, ...]
    env_steps: int
    model: TrainReport
    holdout_nll: float
    objective_start: float
    objective_end: float
    grad_norm: float
    value_loss: float
    model_s: float
    policy_s: float
    sampling_s: float


@dataclass(frozen=True)
class TrainedStep:
    """What :meth:`BPTT.train` did: the model fit, J_H at the start and end of the policy steps, their
    median gradient norm, the last TD loss (NaN without a value), seconds of each part."""

    model: TrainReport
    objective_start: float
    objective_end: float
    grad_norm: float
    value_loss: float
    model_s: float
    policy_s: float


class ExplorationPolicy:
    """u = π(x) + exploration_std · action_limits ⊙ ε, ε ~ N(0, I) from ``rng`` (the env clips)."""

    def __init__(self, policy: SquashedMLPPolicy, std: np.ndarray, rng: np.random.Generator) -> None:
        self.policy, self.std, self.rng = policy, std, rng

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        return policy_action(self.policy, x) + self.std * self.rng.standard_normal(self.std.shape)


def policy_action(policy: nn.Module, x: np.ndarray) -> np.ndarray:
    """π(x) for one state x (dX,) as float64 numpy (dU,)."""
    p = next(policy.parameters())
    with torch.no_grad():
        return policy(torch.as_tensor(x, dtype=p.dtype, device=p.device)).double().cpu().numpy()


class TorchPolicyAdapter:
    """act(t, x, noise) of the torch policy without noise (for env.sample)."""

    def __init__(self, policy: nn.Module) -> None:
        self.policy = policy

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        return policy_action(self.policy, x)


# ------------------------------------------------------------------------------------------ learner


class BPTT:
    """The BPTT / SVG(H) loop over every condition of ``env`` (module docstring).

    Attributes: ``model`` (ensemble), ``policy`` (SquashedMLPPolicy), ``value`` (ValueNetwork or None),
    ``data`` (one SampleBatch per real trial), ``reports``, ``env_steps``.
    """

    def __init__(self, env: PlanningEnvironment, cost: Cost, config: BPTTConfig | None = None) -> None:
        self.env, self.cost = env, cost
        self.config = config if config is not None else BPTTConfig()
        c = self.config
        self.rng = np.random.default_rng(c.seed)
        self.model = ProbabilisticEnsemble(env.dX, env.dU, c.model, self.rng)
        self.device = self.model.device
        self.torch_gen = torch.Generator().manual_seed(int(self.rng.integers(2**62)))
        self.action_limits = bounded_limits(c.action_limits, np.asarray(env.effort_limits, dtype=np.float64),
                                            "bptt.action_limits")
        self.policy = SquashedMLPPolicy(env.dX, env.dU, c.hidden_sizes, c.activation, self.action_limits,
                                        self.torch_gen).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=c.learning_rate)
        self.value: ValueNetwork | None = None
        self.value_target: ValueNetwork | None = None
        if c.value.enabled:
            self.value = ValueNetwork(env.dX, env.T, c.value.hidden, self.torch_gen).to(self.device)
            self.value_target = copy.deepcopy(self.value)
            self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=c.value.learning_rate)
        self.data: list[SampleBatch] = []
        self.reports: list[BPTTIterationReport] = []
        self.env_steps = 0
        self._normalised = False
        self.moving: Tensor | None = None  # (dX,) 1 for the state entries that ever changed in the data

    # ------------------------------------------------------------------ data

    def _collect(self, policy: Any, condition: int) -> SampleBatch:
        batch = self.env.sample(policy, condition, None)
        self.add_trial(batch)
        return batch

    def collect_random(self) -> None:
        """``random_trials`` uniformly random trials per condition (before the first fit)."""
        policy = UniformRandomPolicy(self.action_limits, self.rng)
        for _ in range(self.config.random_trials):
            for m in range(self.env.num_conditions):
                self._collect(policy, m)

    def fit_model(self) -> TrainReport:
        """Fit the ensemble to every transition so far (one CPU thread, as PETS: reproducible)."""
        X, U, X_next = refit_inputs(self.model, self.data, self.config.retrain, self.rng)
        if not self._normalised:  # once, from the first data: later refits would move the policy
            for net in (self.policy, self.value, self.value_target):
                if net is not None:
                    fit_obs_normalisation(net, X)
            self._normalised = True
        delta = X_next - X
        moving = (delta.std(axis=0) > CONSTANT_STD) | (np.abs(delta.mean(axis=0)) > CONSTANT_STD)
        self.moving = torch.as_tensor(moving, dtype=next(self.policy.parameters()).dtype, device=self.device)
        self._real_states = np.concatenate([b.X for b in self.data])
        self._real_costs = np.stack([self.cost.evaluate(b.X[0], b.U[0]).l for b in self.data])
        self.model.requires_grad_(True)
        with self._threads():
            report = train_ensemble(self.model, X, U, X_next, self.config.model, self.rng)
        self.model.requires_grad_(False)  # the policy's gradient flows through the model, not into it
        return report

    def _threads(self) -> contextlib.AbstractContextManager[None]:
        return torch_threads(1) if self.device.type == "cpu" else contextlib.nullcontext()

    # ------------------------------------------------------------------ minibatches

    @property
    def elites(self) -> tuple[int, ...]:
        return self.model.elite_indices

    def start_batch(self, n: int, initial_only: bool | None = None) -> tuple[Tensor, Tensor]:
        """x0 (E, M, dX), t0 (E, M) drawn with replacement from the real states, M = ceil(n / E)."""
        initial = self.config.start == "initial" if initial_only is None else initial_only
        starts = StartStates.from_batches(self.data, initial)
        E = len(self.elites)
        M = -(-n // E)
        idx = self.rng.integers(0, starts.X.shape[0], size=E * M)
        dtype = next(self.policy.parameters()).dtype
        x0 = torch.as_tensor(starts.X[idx], dtype=dtype, device=self.device).reshape(E, M, -1)
        t0 = torch.as_tensor(starts.t[idx], device=self.device).reshape(E, M)
        return x0, t0

    def draw_noise(self, H: int, shape: tuple[int, ...]) -> Tensor | None:
        """ε (H, *shape) ~ N(0, I) from the learner's torch generator, or None when not sample_model."""
        if not self.config.sample_model:
            return None
        eps = torch.randn((H, *shape), generator=self.torch_gen, dtype=next(self.policy.parameters()).dtype)
        return eps.to(self.device)

    def objective(self, H: int | None = None, initial_only: bool | None = None,
                  use_value: bool = True) -> Tensor:
        """J_H on a fresh minibatch of start states and draws (H: config.horizon)."""
        H = self.config.horizon if H is None else H
        x0, t0 = self.start_batch(self.config.batch_size, initial_only)
        noise = self.draw_noise(H, tuple(x0.shape))
        value = self.value if use_value else None
        return bptt_objective(self.model, self.policy, self.cost, x0, t0, self.env.T, H, noise,
                              list(self.elites), value, self.moving)

    # ------------------------------------------------------------------ training

    def policy_step(self) -> tuple[float, float]:
        """One Adam step on J_H; returns (J_H, ‖∂J_H/∂θ‖ before clipping)."""
        self.optimizer.zero_grad(set_to_none=True)
        J = self.objective()
        J.backward()
        params = list(self.policy.parameters())
        norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params
                                                           if p.grad is not None])))
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()
        return float(J.detach()), norm

    def value_step(self) -> float:
        """One TD step: V(x_t, t) → l_t(x_t, u_t) + V'(x_{t+1}, t + 1) on real and model transitions."""
        assert self.value is not None and self.value_target is not None
        vc = self.config.value
        n_model = int(round(vc.model_ratio * vc.batch_size))
        x, t, target = self._td_targets(vc.batch_size - n_model, n_model)
        loss = torch.mean((self.value(x, t) - target) ** 2)
        self.value_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.value_optimizer.step()
        with torch.no_grad():
            for p, q in zip(self.value_target.parameters(), self.value.parameters(), strict=True):
                p.lerp_(q, vc.target_tau)
        return float(loss.detach())

    @torch.no_grad()
    def _td_targets(self, n_real: int, n_model: int) -> tuple[Tensor, Tensor, Tensor]:
        """States x (n, dX), steps t (n,) and TD targets (n,); V'(·, t ≥ T) = 0.

        Real rows (trial i, step t): the n-step target Σ_{k<n} l_{t+k} + V'(x_{t+n}, t + n) along the
        recorded trial (n = value.td_steps, cut at the episode end). Model rows (about n_model, rounded up
        to a multiple of the elites): the H-step model rollout under π from a real state x_t, as the policy's
        objective sees it, Σ_{h<H} l_{t+h} + V'(x_H, t + H) (model-based value expansion).
        """
        X, L = self._real_states, self._real_costs  # (n, T, dX), (n, T)
        n, T, _ = X.shape
        dtype = next(self.policy.parameters()).dtype
        rows, steps = self.rng.integers(0, n, n_real + n_model), self.rng.integers(0, T, n_real + n_model)
        x = torch.as_tensor(X[rows, steps], dtype=dtype, device=self.device)
        t = torch.as_tensor(steps, device=self.device)
        k = self.config.value.td_steps
        r_rows, r_steps = rows[:n_real], steps[:n_real]
        window = r_steps[:, None] + np.arange(k)
        inside = window < T
        returns = np.where(inside, L[r_rows[:, None], np.minimum(window, T - 1)], 0.0).sum(axis=1)
        boot_step = r_steps + k
        boot_x = torch.as_tensor(X[r_rows, np.minimum(boot_step, T - 1)], dtype=dtype, device=self.device)
        real = torch.as_tensor(returns, dtype=dtype, device=self.device) + terminal_value(
            self.value_target, boot_x, torch.as_tensor(boot_step, device=self.device), T)
        if not n_model:
            return x, t, real
        x0, t0 = self.start_batch(n_model, initial_only=False)  # (E, M, dX), (E, M): M E >= n_model
        H = self.config.horizon
        E, M, dX = x0.shape
        X, U = model_rollout(self.model, self.policy, x0, H, self.draw_noise(H, tuple(x0.shape)),
                             list(self.elites), self.moving)
        t0 = t0.reshape(-1)
        running = piece_costs(self.cost, X[..., :H, :].reshape(E * M, H, dX), U.reshape(E * M, H, -1), t0, T)
        model = running.sum(dim=1) + terminal_value(self.value_target, X[..., H, :].reshape(E * M, dX),
                                                    t0 + H, T)
        x = torch.cat([x[:n_real], x0.reshape(E * M, dX)])
        return x, torch.cat([t[:n_real], t0]), torch.cat([real, model])

    def train_policy(self) -> tuple[float, float, float, float]:
        """Value warm-up, then G policy steps (each after one TD step when there is a value).

        Returns (J at the start, J at the end, median gradient norm, last TD loss)."""
        value_loss = float("nan")
        if self.value is not None:
            for _ in range(self.config.value.warmup_steps):
                value_loss = self.value_step()
        objectives, norms = [], []
        for _ in range(self.config.gradient_steps):
            if self.value is not None:
                value_loss = self.value_step()
            J, norm = self.policy_step()
            objectives.append(J)
            norms.append(norm)
        if not objectives:
            return float("nan"), float("nan"), float("nan"), value_loss
        return (float(np.mean(objectives[:10])), float(np.mean(objectives[-10:])), float(np.median(norms)),
                value_loss)

    def iteration(self) -> BPTTIterationReport:
        """Fit the model to all data, train the policy through it, run and aggregate the real trials."""
        if not self.data:
            self.collect_random()
        trained = self.train()
        start = time.perf_counter()
        explorer = ExplorationPolicy(self.policy, self.exploration_std(), self.rng)
        trials = [[self._collect(explorer, m) for _ in range(self.config.trials_per_condition)]
                  for m in range(self.env.num_conditions)]
        return self.close_iteration(trained, trials, time.perf_counter() - start)

    def exploration_std(self) -> np.ndarray:
        """(dU,) std of the Gaussian noise on the real trials' actions: exploration_std × action limits."""
        return self.config.exploration_std * self.action_limits

    def train(self) -> TrainedStep:
        """The first half of an iteration: the ensemble fitted to all data, then the policy trained."""
        start = time.perf_counter()
        report = self.fit_model()
        model_s = time.perf_counter() - start
        start = time.perf_counter()
        with self._threads():
            J0, J1, grad_norm, value_loss = self.train_policy()
        return TrainedStep(report, J0, J1, grad_norm, value_loss, model_s, time.perf_counter() - start)

    def close_iteration(self, trained: TrainedStep, trials: Sequence[Sequence[SampleBatch]],
                        sampling_s: float) -> BPTTIterationReport:
        """The second half: the report of the exploring trials (already in ``data``), per condition."""
        costs = [float(np.mean([self._trajectory_cost(b) for b in ts])) for ts in trials]
        distances = [final_tip_distance(self.env.layout, ts[-1]) for ts in trials]
        t = trained
        result = BPTTIterationReport(
            iteration=len(self.reports), mean_cost=tuple(costs), final_distance=tuple(distances),
            env_steps=self.env_steps, model=t.model, holdout_nll=t.model.elite_holdout_nll,
            objective_start=t.objective_start, objective_end=t.objective_end, grad_norm=t.grad_norm,
            value_loss=t.value_loss, model_s=t.model_s, policy_s=t.policy_s, sampling_s=sampling_s)
        self.reports.append(result)
        return result

    def add_trial(self, batch: SampleBatch) -> None:
        """A real trial run elsewhere (the graph's sampler) joins the data: ``data`` and ``env_steps``."""
        self.data.append(batch)
        self.env_steps += batch.T

    def run(self, iterations: int | None = None) -> list[BPTTIterationReport]:
        """config.iterations (or ``iterations``) iterations."""
        n = self.config.iterations if iterations is None else iterations
        return [self.iteration() for _ in range(n)]

    def _trajectory_cost(self, batch: SampleBatch) -> float:
        return float(np.sum(self.cost.evaluate(batch.X[0], batch.U[0]).l))

    def state_dict(self) -> dict[str, Any]:
        """Config, data, weights of model / policy / value, rng state and reports (to resume or inspect)."""
        nets = {"model": self.model, "policy": self.policy, "value": self.value}
        return {"config": self.config, "data": list(self.data), "env_steps": self.env_steps,
                "rng": self.rng.bit_generator.state, "reports": list(self.reports),
                **{k: None if v is None else {n: p.cpu() for n, p in v.state_dict().items()}
                   for k, v in nets.items()}}


# ---------------------------------------------------------------------------------- deployment


def policy_to_params(policy: SquashedMLPPolicy, action_std: np.ndarray) -> PolicyParams:
    """The deployable numpy form (squash "tanh", action_scale / action_bias) of the torch policy.

    action_std (dU,): the std of the Gaussian the sampler may add on the robot (action_covar = diag²).
    """
    weights = tuple((layer.weight.detach().double().cpu().numpy(), layer.bias.detach().double().cpu().numpy())
                    for layer in policy.layers)
    std = np.asarray(action_std, dtype=np.float64)
    return PolicyParams(weights=weights, activation=policy.activation,
                        obs_mean=policy.obs_mean.double().cpu().numpy(),
                        obs_std=policy.obs_std.double().cpu().numpy(), obs_indices=np.arange(policy.dX),
                        action_covar=np.diag(std**2), state_dim=policy.dX, squash="tanh",
                        action_scale=policy.action_scale.double().cpu().numpy(),
                        action_bias=policy.action_bias.double().cpu().numpy())


def deployable_params(learner: BPTT) -> PolicyParams:
    """The learner's policy as PolicyParams; action_covar: its exploration noise (floored, so PD)."""
    std = learner.exploration_std()
    return policy_to_params(learner.policy, np.maximum(std, 1e-6))


def save_policy(folder: Any, learner: BPTT) -> Any:
    """Write ``<folder>/policy.npz`` (numpy deployment pass, loadable by the sampler and ``mbpl eval``)."""
    c = learner.config
    return save_numpy_policy(folder, deployable_params(learner),
                             GPSConfig(hidden_sizes=c.hidden_sizes, activation=c.activation, device="cpu",
                                       seed=c.seed))


# --------------------------------------------------------------------------------- measurements


def flat_policy_gradient(learner: BPTT, x0: Tensor, t0: Tensor, H: int, noise: Tensor | None,
                         use_value: bool) -> np.ndarray:
    """∂J_H/∂θ (n_params,) for given start states, steps and draws (float64 numpy)."""
    learner.policy.zero_grad(set_to_none=True)
    J = bptt_objective(learner.model, learner.policy, learner.cost, x0, t0, learner.env.T, H, noise,
                       list(learner.elites), learner.value if use_value else None, learner.moving)
    grads = torch.autograd.grad(J, list(learner.policy.parameters()), allow_unused=True)
    parts = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, learner.policy.parameters(),
                                                                    strict=True)]
    return torch.cat([g.reshape(-1) for g in parts]).double().cpu().numpy()


@dataclass(frozen=True)
class GradientStatistics:
    """Over `batches` minibatches of rollouts from t = 0 of length H: mean_norm / std_norm of ‖g‖,
    norm_of_mean ‖E g‖, variance tr Cov(g) and snr = ‖E g‖ / sqrt(tr Cov g); per_step_norm = mean_norm / H
    (the gradient of the per-step average cost)."""

    H: int
    mean_norm: float
    std_norm: float
    norm_of_mean: float
    variance: float
    snr: float
    per_step_norm: float


def gradient_statistics(learner: BPTT, horizons: Sequence[int], batches: int = 16,
                        use_value: bool = False) -> list[GradientStatistics]:
    """∂J_H/∂θ over independent minibatches (start states at t = 0, member assignment, draws) per H."""
    out = []
    for H in horizons:
        G = []
        for _ in range(batches):
            x0, t0 = learner.start_batch(learner.config.batch_size, initial_only=True)
            G.append(flat_policy_gradient(learner, x0, t0, H, learner.draw_noise(H, tuple(x0.shape)),
                                          use_value))
        g = np.asarray(G)
        norms = np.linalg.norm(g, axis=1)
        mean = g.mean(axis=0)
        var = float(np.sum(g.var(axis=0, ddof=1))) if batches > 1 else 0.0
        out.append(GradientStatistics(int(H), float(norms.mean()), float(norms.std()),
                                      float(np.linalg.norm(mean)), var,
                                      float(np.linalg.norm(mean) / max(math.sqrt(var), 1e-300)),
                                      float(norms.mean() / H)))
    return out


def step_jacobians(model: ProbabilisticEnsemble, policy: nn.Module | None, x: Tensor, u: Tensor | None,
                   noise: Tensor | None, members: Sequence[int] | None,
                   moving: Tensor | None = None) -> Tensor:
    """dx_{h+1}/dx_h (E, M, dX, dX) at x (E, M, dX): closed loop (u = π(x), policy given) or open loop
    (u fixed). Rows are independent, so row i of every Jacobian is one backward pass of Σ x_{h+1, i}."""
    x = x.detach().requires_grad_(True)
    a = policy(x) if policy is not None else u
    assert a is not None
    nxt = model_step(model, x, a, noise, members, moving)
    rows = [torch.autograd.grad(nxt[..., i].sum(), x, retain_graph=True)[0] for i in range(x.shape[-1])]
    return torch.stack(rows, dim=-2)


def jacobian_spectrum(learner: BPTT, H_max: int, rollouts: int = 20,
                      closed_loop: bool = True) -> np.ndarray:
    """σ_max(∏_{h<H} dx_{h+1}/dx_h) for H = 1..H_max along model rollouts of π from real t = 0 states.

    Returns (rollouts', H_max) largest singular values (rollouts' = E · ceil(rollouts / E)). Open loop:
    the actions stay the rollout's own π(x_h), but ∂π/∂x is left out (the model's own ∂f/∂x).
    """
    x, _ = learner.start_batch(rollouts, initial_only=True)
    noise = learner.draw_noise(H_max, tuple(x.shape))
    members = list(learner.elites)
    E, M, dX = x.shape
    P = torch.eye(dX, dtype=torch.float64).expand(E, M, dX, dX)
    sigmas = []
    for h in range(H_max):
        eps = None if noise is None else noise[h]
        with torch.no_grad():
            u = learner.policy(x)
        J = step_jacobians(learner.model, learner.policy if closed_loop else None, x, u, eps, members,
                           learner.moving)
        P = J.double() @ P
        sigmas.append(torch.linalg.matrix_norm(P, ord=2).reshape(-1))
        with torch.no_grad():
            x = model_step(learner.model, x, u, eps, members, learner.moving)
    return torch.stack(sigmas, dim=1).cpu().numpy()
