"""Guided Policy Search as approximate mirror descent (MDGPS): neural policy, S-step, C-step wiring.

Montgomery & Levine, NIPS 2016, "Guided Policy Search as Approximate Mirror Descent" (Alg. 2);
Levine et al., JMLR 2016 (§4, App. B). One iteration, per condition m:
  1. sample N trajectories from the LG controller p_m (or from the policy π_θ when sampling on-policy),
  2. fit the local dynamics, linearise π_θ at the sampled states → π̄_m,
  3. C-step: p_m ← argmin E_p[c] s.t. KL(p ‖ π̄_m) ≤ ε_m (LQR-FLM against the policy linearisation),
  4. S-step: θ ← argmin Σ_{m,n,t} (μ_θ(x) − μ_p(x))ᵀ Λ_p (μ_θ(x) − μ_p(x)) with Λ_p = pol_covar⁻¹.
The torch-free deployment side (config, numpy forward pass, linearisation, loading) is
:mod:`mbpl_core.policy`; its names are re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mbpl_core.config import ConfigError, from_dict, to_dict
from mbpl_core.containers import (
    LinearGaussianController,
    SampleBatch,
    ShapeError,
    StateLayout,
    check_finite,
    check_shape,
)
from mbpl_core.costs import Cost, quadratic_cost_model
from mbpl_core.lqr_flm import LQRFLM, AlgorithmConfig, Environment, Policy
from mbpl_core.noise import generate_noise
from mbpl_core.policy import (
    MIN_OBS_STD,
    NPZ_NAME,
    GPSConfig,
    NumpyPolicy,
    PolicyParams,
    linearize_policy,
    load_policy_checkpoint,
    params_to_arrays,
)
from mbpl_core.traj_opt import UpdateInfo, adapt_step_mult

__all__ = [
    "MDGPS",
    "GPSConfig",
    "GPSIterationReport",
    "GaussianMLPPolicy",
    "NumpyPolicy",
    "PolicyParams",
    "PolicyTargets",
    "TrainReport",
    "build_policy_targets",
    "evaluate_policy",
    "final_ee_distances",
    "linearize_policy",
    "load_policy_checkpoint",
    "load_torch_policy",
    "params_to_policy",
    "policy_rollouts",
    "policy_to_params",
    "precision_weighted_loss",
    "resolve_device",
    "save_policy_checkpoint",
    "single_torch_thread",
    "train_policy",
]

TORCH_NAME = "policy.pt"
DTYPE = torch.float64  # float64 keeps the numpy deployment pass equal to training to ~1e-12


@contextlib.contextmanager
def single_torch_thread(device: torch.device) -> Iterator[None]:
    """Run CPU torch ops on one intra-op thread for the duration (restored afterwards).

    The S-step's matrices are tiny (batch 128 × width 64): on a shared 2-core machine a second
    thread made each gradient step ~7× slower (bench/policy.py). No effect on GPU training.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_device(device: str) -> torch.device:
    """torch.device for "auto" (a GPU when present), "cpu" or "cuda" (ConfigError if none is present)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("gps.device is 'cuda' but no CUDA device is available")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class GaussianMLPPolicy(nn.Module):
    """π_θ(u | x) = N(MLP((x[obs_indices] − obs_mean) / obs_std), action_covar).

    obs_mean, obs_std (dO,): fitted once on the first training data, then frozen, so that the
    linearisations of successive iterations refer to the same function of x.
    action_covar (dU, dU): inverse of the mean target precision of the last S-step (GPS); before the
    first S-step init_policy_var · I.
    """

    def __init__(
        self,
        obs_indices: np.ndarray,
        dU: int,
        state_dim: int,
        hidden_sizes: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        init_policy_var: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        idx = np.asarray(obs_indices, dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= state_dim:
            raise ShapeError(f"obs_indices must be a non-empty 1-D index set into dX={state_dim}, got {idx}")
        if activation not in ("relu", "tanh"):
            raise ConfigError(f"activation must be 'relu' or 'tanh', got {activation!r}")
        self.activation = activation
        self.state_dim = int(state_dim)
        sizes = [idx.size, *hidden_sizes, dU]
        pairs = zip(sizes[:-1], sizes[1:], strict=True)
        self.layers = nn.ModuleList([nn.utils.skip_init(nn.Linear, a, b, dtype=DTYPE) for a, b in pairs])
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in self.layers:
                # PyTorch's default Linear init, drawn from our generator instead of the global one.
                bound = 1.0 / np.sqrt(layer.in_features)
                for param in (layer.weight, layer.bias):
                    param.copy_((2 * torch.rand(param.shape, generator=gen, dtype=DTYPE) - 1) * bound)
        self.register_buffer("obs_indices", torch.tensor(idx.tolist(), dtype=torch.int64))
        self.register_buffer("obs_mean", torch.zeros(idx.size, dtype=DTYPE))
        self.register_buffer("obs_std", torch.ones(idx.size, dtype=DTYPE))
        self.register_buffer("normalization_fitted", torch.tensor(False))
        self.register_buffer("action_covar_t", init_policy_var * torch.eye(dU, dtype=DTYPE))

    @classmethod
    def from_config(cls, config: GPSConfig, dX: int, dU: int) -> GaussianMLPPolicy:
        """Policy for states of size dX and actions of size dU, on the config's device."""
        gen = torch.Generator().manual_seed(config.seed)
        policy = cls(config.observation_indices(dX), dU, dX, config.hidden_sizes, config.activation,
                     config.init_policy_var, gen)
        return policy.to(resolve_device(config.device))

    @property
    def dU(self) -> int:
        return int(self.layers[-1].out_features)

    @property
    def device(self) -> torch.device:
        return self.layers[0].weight.device

    @property
    def action_covar(self) -> np.ndarray:
        """Policy covariance (dU, dU) as numpy."""
        return self.action_covar_t.detach().cpu().numpy().copy()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Mean action (B, dU) for raw observations obs (B, dO)."""
        h = (obs - self.obs_mean) / self.obs_std
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h) if self.activation == "relu" else torch.tanh(h)
        return h

    def fit_normalization(self, obs: np.ndarray) -> None:
        """Set obs_mean, obs_std (dO,) from obs (M, dO) unless already fitted (they stay frozen after)."""
        if bool(self.normalization_fitted):
            return
        std = np.maximum(obs.std(axis=0), MIN_OBS_STD)
        self.obs_mean.copy_(torch.as_tensor(obs.mean(axis=0), dtype=DTYPE))
        self.obs_std.copy_(torch.as_tensor(std, dtype=DTYPE))
        self.normalization_fitted.fill_(True)

    def observe(self, X: np.ndarray) -> np.ndarray:
        """Observations (..., dO) of states X (..., dX)."""
        return np.asarray(X)[..., self.obs_indices.cpu().numpy()]

    def mean_batch(self, X: np.ndarray) -> np.ndarray:
        """Mean actions (M, dU) for states X (M, dX), as numpy."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.state_dim:
            raise ShapeError(f"X has shape {X.shape}, expected (M, {self.state_dim})")
        with torch.no_grad():
            return self(torch.as_tensor(self.observe(X), dtype=DTYPE, device=self.device)).cpu().numpy()


def policy_to_params(policy: GaussianMLPPolicy) -> PolicyParams:
    """Numpy copy of the policy's weights, normalisation and covariance, for :class:`NumpyPolicy`."""
    weights = tuple(
        (layer.weight.detach().cpu().numpy().copy(), layer.bias.detach().cpu().numpy().copy())
        for layer in policy.layers
    )
    return PolicyParams(
        weights=weights,
        activation=policy.activation,
        obs_mean=policy.obs_mean.cpu().numpy().copy(),
        obs_std=policy.obs_std.cpu().numpy().copy(),
        obs_indices=policy.obs_indices.cpu().numpy().copy(),
        action_covar=policy.action_covar,
        state_dim=policy.state_dim,
    )


def params_to_policy(params: PolicyParams, device: str = "cpu") -> GaussianMLPPolicy:
    """Torch policy holding exactly ``params`` (normalisation marked as fitted)."""
    hidden = tuple(int(W.shape[0]) for W, _ in params.weights[:-1])
    policy = GaussianMLPPolicy(params.obs_indices, params.dU, int(params.state_dim),  # type: ignore[arg-type]
                               hidden, params.activation)
    with torch.no_grad():
        for layer, (W, b) in zip(policy.layers, params.weights, strict=True):
            layer.weight.copy_(torch.tensor(W, dtype=DTYPE))
            layer.bias.copy_(torch.tensor(b, dtype=DTYPE))
        policy.obs_mean.copy_(torch.tensor(params.obs_mean, dtype=DTYPE))
        policy.obs_std.copy_(torch.tensor(params.obs_std, dtype=DTYPE))
        policy.action_covar_t.copy_(torch.tensor(params.action_covar, dtype=DTYPE))
        policy.normalization_fitted.fill_(True)
    return policy.to(resolve_device(device))


@dataclass(frozen=True)
class PolicyTargets:
    """S-step regression data: obs (M, dO), target_mu (M, dU), target_prec (M, dU, dU)."""

    obs: np.ndarray
    target_mu: np.ndarray
    target_prec: np.ndarray


def build_policy_targets(
    controllers: list[LinearGaussianController], batches: list[SampleBatch], obs_indices: np.ndarray
) -> PolicyTargets:
    """Targets of the S-step from the LG controllers at their conditions' sampled states.

    For condition m, sample n, step t: μ = K_t x + k_t, Λ = inv_pol_covar_t (MDGPS Alg. 2, line 5);
    M = Σ_m N_m · T rows, in condition, sample, time order.
    """
    if len(controllers) != len(batches) or not batches:
        raise ShapeError(f"need one sample batch per controller, got {len(batches)} and {len(controllers)}")
    obs, mus, precs = [], [], []
    for c, batch in zip(controllers, batches, strict=True):
        if (c.T, c.dX) != (batch.T, batch.dX):
            raise ShapeError(f"controller (T={c.T}, dX={c.dX}) does not match samples {batch.X.shape}")
        mu = np.einsum("tux,ntx->ntu", c.K, batch.X) + c.k
        obs.append(batch.X[..., obs_indices].reshape(-1, len(obs_indices)))
        mus.append(mu.reshape(-1, c.dU))
        prec = np.broadcast_to(c.inv_pol_covar, (batch.N, *c.inv_pol_covar.shape))
        precs.append(prec.reshape(-1, c.dU, c.dU))
    return PolicyTargets(np.concatenate(obs), np.concatenate(mus), np.concatenate(precs))


@dataclass(frozen=True)
class TrainReport:
    """S-step outcome: precision-weighted loss over all targets before and after, gradient steps taken."""

    loss_before: float
    loss_after: float
    iterations: int


def precision_weighted_loss(mu_pi: torch.Tensor, mu: torch.Tensor, prec: torch.Tensor) -> torch.Tensor:
    """mean_i (μπ_i − μ_i)ᵀ Λ_i (μπ_i − μ_i); mu_pi, mu (B, dU), prec (B, dU, dU)."""
    d = mu_pi - mu
    return torch.einsum("bi,bij,bj->b", d, prec, d).mean()


def _check_targets(policy: GaussianMLPPolicy, obs: np.ndarray, mu: np.ndarray, prec: np.ndarray) -> None:
    M = obs.shape[0] if obs.ndim == 2 else -1
    check_shape("obs", obs, (M, len(policy.obs_indices)))
    check_shape("target_mu", mu, (M, policy.dU))
    check_shape("target_prec", prec, (M, policy.dU, policy.dU))
    if M == 0:
        raise ShapeError("the S-step needs at least one target")
    for name, arr in (("obs", obs), ("target_mu", mu), ("target_prec", prec)):
        check_finite(name, arr)


def train_policy(
    policy: GaussianMLPPolicy,
    obs: np.ndarray,
    target_mu: np.ndarray,
    target_prec: np.ndarray,
    config: GPSConfig,
    generator: torch.Generator | None = None,
) -> TrainReport:
    """S-step: minimise mean((μπ(o) − μ)ᵀ Λ (μπ(o) − μ)) with Adam, weight decay and minibatches.

    obs (M, dO), target_mu (M, dU), target_prec (M, dU, dU). Fits the normalisation on the first call,
    then sets action_covar = (mean_i Λ_i)⁻¹ (GPS policy_opt). generator: minibatch order
    (default: seeded from config.seed). Runs on the policy's device.
    """
    # Copies: torch must not alias read-only (frozen container) arrays.
    obs, target_mu, target_prec = (np.array(a, dtype=np.float64) for a in (obs, target_mu, target_prec))
    _check_targets(policy, obs, target_mu, target_prec)
    mean_prec = target_prec.mean(axis=0)
    try:
        covar = np.linalg.inv(np.linalg.cholesky(0.5 * (mean_prec + mean_prec.T)))
    except np.linalg.LinAlgError as err:
        raise ShapeError("mean target precision is not positive definite") from err
    policy.fit_normalization(obs)
    with single_torch_thread(policy.device):
        loss_before, loss_after = _adam_regression(policy, obs, target_mu, target_prec, config, generator)
    with torch.no_grad():
        policy.action_covar_t.copy_(torch.as_tensor(covar.T @ covar, dtype=DTYPE))
    return TrainReport(loss_before, loss_after, config.iterations)


def _adam_regression(
    policy: GaussianMLPPolicy,
    obs: np.ndarray,
    target_mu: np.ndarray,
    target_prec: np.ndarray,
    config: GPSConfig,
    generator: torch.Generator | None,
) -> tuple[float, float]:
    """config.iterations Adam steps on minibatches of the precision-weighted loss; (loss before, after)."""
    dev = policy.device
    o, mu, prec = (torch.as_tensor(a, dtype=DTYPE, device=dev) for a in (obs, target_mu, target_prec))
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    loss_before = _full_loss(policy, o, mu, prec)
    opt = torch.optim.Adam(policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    M, batch = o.shape[0], min(config.batch_size, o.shape[0])
    # The permutation is drawn on the CPU generator (same order on every device), moved once per epoch.
    perm, pos = torch.randperm(M, generator=gen).to(dev), 0
    policy.train()
    for _ in range(config.iterations):
        if pos + batch > M:
            perm, pos = torch.randperm(M, generator=gen).to(dev), 0
        idx = perm[pos:pos + batch]
        pos += batch
        loss = precision_weighted_loss(policy(o[idx]), mu[idx], prec[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    policy.eval()
    return loss_before, _full_loss(policy, o, mu, prec)


def _full_loss(policy: GaussianMLPPolicy, o: torch.Tensor, mu: torch.Tensor, prec: torch.Tensor) -> float:
    with torch.no_grad():
        value = float(precision_weighted_loss(policy(o), mu, prec))
    if not np.isfinite(value):
        raise ShapeError("S-step loss is NaN/Inf (diverged); lower gps.learning_rate")
    return value


def save_policy_checkpoint(path: str | Path, policy: GaussianMLPPolicy, config: GPSConfig) -> Path:
    """Write directory ``path`` with policy.pt (torch state dict, architecture, config) and policy.npz
    (numpy params + config, loadable by :func:`load_policy_checkpoint` without torch). Returns path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / NPZ_NAME, **params_to_arrays(policy_to_params(policy), config))
    state = {k: v.detach().cpu() for k, v in policy.state_dict().items()}
    meta = {"dU": policy.dU, "state_dim": policy.state_dim, "activation": policy.activation,
            "hidden_sizes": [layer.out_features for layer in policy.layers[:-1]]}
    torch.save({"state_dict": state, "meta": json.dumps(meta), "config": json.dumps(to_dict(config))},
               path / TORCH_NAME)
    return path


def load_torch_policy(path: str | Path, device: str = "cpu") -> tuple[GaussianMLPPolicy, GPSConfig]:
    """Trainer side of :func:`save_policy_checkpoint`: the torch policy (to resume training) and config."""
    blob = torch.load(Path(path) / TORCH_NAME, map_location="cpu", weights_only=True)
    meta, config = json.loads(blob["meta"]), from_dict(GPSConfig, json.loads(blob["config"]))
    state = blob["state_dict"]
    policy = GaussianMLPPolicy(state["obs_indices"].numpy(), meta["dU"], meta["state_dim"],
                               tuple(meta["hidden_sizes"]), meta["activation"])
    policy.load_state_dict(state)
    return policy.to(resolve_device(device)), config


@dataclass(frozen=True)
class GPSIterationReport:
    """What one MDGPS iteration did; per-condition tuples have one entry per training condition.

    lg_cost: mean over the samples of Σ_t c of the trajectories sampled this iteration (from the LG
    controllers, or from the policy when sampling on-policy); step_mult, eta, kl: of the C-step;
    s_step: the S-step's losses; policy_cost, policy_distance: noiseless policy rollouts on the
    evaluation conditions (Σ_t c and final mean ee distance), None without an evaluation env;
    *_s: wall-clock seconds of the phases.
    """

    iteration: int
    lg_cost: tuple[float, ...]
    step_mult: tuple[float, ...]
    eta: tuple[float, ...]
    kl: tuple[float, ...]
    s_step: TrainReport
    sampled_on_policy: bool
    policy_cost: tuple[float, ...] | None
    policy_distance: tuple[float, ...] | None
    sampling_s: float
    c_step_s: float
    s_step_s: float


def policy_rollouts(env: Environment, policy: Policy, conditions: Sequence[int]) -> list[SampleBatch]:
    """One noiseless trajectory (SampleBatch, N = 1) of ``policy`` per condition."""
    return [env.sample(policy, int(m), None) for m in conditions]


def final_ee_distances(layout: StateLayout, batches: Sequence[SampleBatch]) -> np.ndarray:
    """Mean Euclidean distance of the ee points to their targets at the last step, per batch: (len,)."""
    if layout.n_points == 0:
        raise ShapeError("the state layout has no end-effector points to measure")
    out = []
    for batch in batches:
        diff = batch.X[:, -1, layout.ee_points].reshape(batch.N, layout.n_points, 3)
        out.append(float(np.mean(np.linalg.norm(diff, axis=-1))))
    return np.asarray(out)


def evaluate_policy(env: Environment, policy: Policy, conditions: Sequence[int] | None = None) -> np.ndarray:
    """Final ee distances (C,) of noiseless rollouts of ``policy`` from ``conditions`` (default: all)."""
    conditions = range(env.num_conditions) if conditions is None else conditions
    return final_ee_distances(env.layout, policy_rollouts(env, policy, conditions))


class MDGPS:
    """MDGPS in one process (module docstring; Montgomery & Levine 2016, Alg. 2).

    env, cost (one, or one per condition), algorithm_config (samples, KL step, dynamics fit, init, noise),
    gps_config (policy and S-step), rng (all exploration noise; default from algorithm_config.seed).
    eval_env/eval_conditions/eval_cost: held-out conditions on which the policy is rolled out after each
    S-step (eval_cost defaults to ``cost`` when that is a single Cost).
    Iteration 0 takes an LQR-FLM step (reference = the LG controller): the policy is still untrained.
    """

    def __init__(
        self,
        env: Environment,
        cost: Cost | Sequence[Cost],
        algorithm_config: AlgorithmConfig | None = None,
        gps_config: GPSConfig | None = None,
        rng: np.random.Generator | None = None,
        eval_env: Environment | None = None,
        eval_conditions: Sequence[int] | None = None,
        eval_cost: Cost | None = None,
        initial_controllers: Sequence[LinearGaussianController] | None = None,
    ) -> None:
        self.config = AlgorithmConfig() if algorithm_config is None else algorithm_config
        self.gps_config = GPSConfig() if gps_config is None else gps_config
        # LQRFLM owns sampling, dynamics fitters, cost models and per-condition optimizers; MDGPS
        # changes only the reference of the C-step, the step rule, and adds the S-step.
        self.lg = LQRFLM(env, cost, self.config, rng, initial_controllers)
        self.env = env
        self.policy = GaussianMLPPolicy.from_config(self.gps_config, env.dX, env.dU)
        self.torch_generator = torch.Generator().manual_seed(self.gps_config.seed)
        self.eval_env = eval_env
        self.eval_conditions = list(range(eval_env.num_conditions) if eval_env and eval_conditions is None
                                    else eval_conditions or [])
        self.eval_cost = eval_cost if eval_cost is not None or not isinstance(cost, Cost) else cost
        if eval_env is not None and self.eval_cost is None:
            raise ValueError("eval_cost is needed when costs are given per condition")
        self.iteration_count = 0
        self.reports: list[GPSIterationReport] = []
        self._numpy_policy = NumpyPolicy(policy_to_params(self.policy))

    @property
    def controllers(self) -> list[LinearGaussianController]:
        """The current LG controller of every training condition."""
        return self.lg.controllers

    @property
    def numpy_policy(self) -> NumpyPolicy:
        """Numpy copy of the policy as of the last S-step."""
        return self._numpy_policy

    def _sample_all(self) -> list[SampleBatch]:
        on_policy = self.gps_config.sample_on_policy and self.iteration_count > 0
        if not on_policy:
            return [self.lg.sample_condition(m) for m in range(self.env.num_conditions)]
        env, noise_config = self.env, self.config.noise
        return [
            SampleBatch.concatenate([
                env.sample(self._numpy_policy, m, generate_noise(env.T, env.dU, self.lg.rng, noise_config))
                for _ in range(self.config.samples_per_condition)
            ])
            for m in range(env.num_conditions)
        ]

    def _references(self, batches: Sequence[SampleBatch]) -> list[LinearGaussianController | None]:
        """Policy linearisation at each condition's samples; None (LQR-FLM step) before the first S-step."""
        if self.iteration_count == 0:
            return [None] * len(batches)
        strength = self.gps_config.policy_prior_strength
        return [linearize_policy(self._numpy_policy, b.X, strength) for b in batches]

    def _c_step(self, batches: Sequence[SampleBatch]) -> tuple[list[UpdateInfo], tuple[float, ...]]:
        """Fit dynamics and cost models, then take each condition's KL step against its reference.

        Returns the update infos and each condition's mean sampled cost Σ_t c (mean over samples).
        """
        models, sample_costs = [], []
        for batch, fitter, cost in zip(batches, self.lg.fitters, self.lg.costs, strict=True):
            costs, quad = quadratic_cost_model(cost, batch)
            models.append((fitter.update(batch), quad))
            sample_costs.append(float(np.mean(np.sum(costs, axis=1))))
        optimizers = self.lg.optimizers
        global_rule = self.gps_config.step_rule == "global"
        if global_rule and all(opt.has_previous_update for opt in optimizers):
            # MDGPS "global" rule: one step size from improvements averaged over the conditions.
            previous, predicted, actual = np.mean(
                [opt.step_adjustment(dyn, quad) for opt, (dyn, quad) in zip(optimizers, models, strict=True)],
                axis=0)
            kl = self.config.kl
            for opt in optimizers:
                opt.step_mult = adapt_step_mult(opt.step_mult, previous, predicted, actual,
                                                kl.min_step_mult, kl.max_step_mult)
        infos = []
        for opt, (dyn, quad), ref in zip(optimizers, models, self._references(batches), strict=True):
            infos.append(opt.update(dyn, quad, reference=ref, adapt_step=not global_rule)[1])
        return infos, tuple(sample_costs)

    def s_step(self, batches: Sequence[SampleBatch]) -> TrainReport:
        """Train the policy onto the current LG controllers at the sampled states; refresh the numpy copy."""
        obs_idx = self.policy.obs_indices.cpu().numpy()
        targets = build_policy_targets(self.controllers, list(batches), obs_idx)
        report = train_policy(self.policy, targets.obs, targets.target_mu, targets.target_prec,
                              self.gps_config, self.torch_generator)
        self._numpy_policy = NumpyPolicy(policy_to_params(self.policy))
        return report

    def _evaluate(self) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        """Noiseless policy rollouts on the evaluation conditions: (Σ_t c, final ee distance) each."""
        cost = self.eval_cost
        if self.eval_env is None or not self.eval_conditions or cost is None:
            return None, None
        batches = policy_rollouts(self.eval_env, self._numpy_policy, self.eval_conditions)
        costs = tuple(float(quadratic_cost_model(cost, b)[0].sum()) for b in batches)
        return costs, tuple(float(d) for d in final_ee_distances(self.eval_env.layout, batches))

    def iteration(self) -> GPSIterationReport:
        """One MDGPS iteration: sample, C-step against the policy linearisation, S-step, evaluate."""
        t0 = time.perf_counter()
        on_policy = self.gps_config.sample_on_policy and self.iteration_count > 0
        batches = self._sample_all()
        t1 = time.perf_counter()
        infos, lg_cost = self._c_step(batches)
        t2 = time.perf_counter()
        s_report = self.s_step(batches)
        t3 = time.perf_counter()
        policy_cost, policy_distance = self._evaluate()
        report = GPSIterationReport(
            iteration=self.iteration_count, lg_cost=lg_cost,
            step_mult=tuple(i.step_mult for i in infos), eta=tuple(i.eta for i in infos),
            kl=tuple(i.kl for i in infos), s_step=s_report, sampled_on_policy=on_policy,
            policy_cost=policy_cost, policy_distance=policy_distance,
            sampling_s=t1 - t0, c_step_s=t2 - t1, s_step_s=t3 - t2,
        )
        self.iteration_count += 1
        self.reports.append(report)
        return report

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (picklable): the LQR-FLM state, policy weights and normalisation,
        torch generator state, iteration count and reports. The environments and costs are not included."""
        return {
            "lg": self.lg.state_dict(),
            "gps_config": self.gps_config,
            "policy": {k: v.detach().cpu().clone() for k, v in self.policy.state_dict().items()},
            "torch_generator": self.torch_generator.get_state(),
            "iteration_count": self.iteration_count,
            "reports": list(self.reports),
        }

    @classmethod
    def from_state(cls, env: Environment, cost: Cost | Sequence[Cost], state: dict[str, Any],
                   eval_env: Environment | None = None, eval_conditions: Sequence[int] | None = None,
                   eval_cost: Cost | None = None) -> MDGPS:
        """Rebuild a loop from :meth:`state_dict` output; continuing it matches the original run."""
        lg = LQRFLM.from_state(env, cost, state["lg"])
        obj = cls(env, cost, lg.config, state["gps_config"], lg.rng, eval_env, eval_conditions, eval_cost,
                  initial_controllers=lg.controllers)
        obj.lg = lg
        obj.policy.load_state_dict(state["policy"])
        obj.torch_generator.set_state(state["torch_generator"])
        obj.iteration_count = int(state["iteration_count"])
        obj.reports = list(state["reports"])
        obj._numpy_policy = NumpyPolicy(policy_to_params(obj.policy))
        return obj

    def run(self, iterations: int | None = None,
            callback: Callable[[GPSIterationReport], None] | None = None) -> list[GPSIterationReport]:
        """Run ``iterations`` (default: algorithm_config.iterations); callback(report) after each."""
        n = self.config.iterations if iterations is None else int(iterations)
        if n < 0:
            raise ValueError(f"iterations must be >= 0, got {n}")
        out = []
        for _ in range(n):
            out.append(self.iteration())
            if callback is not None:
                callback(out[-1])
        return out
