"""Guided Policy Search as approximate mirror descent (MDGPS): neural policy, S-step, C-step wiring.

Montgomery & Levine, NIPS 2016, "Guided Policy Search as Approximate Mirror Descent" (Alg. 2);
Levine et al., JMLR 2016 (§4, App. B). One iteration, per condition m:
  1. sample N trajectories from the LG controller p_m (or from the policy π_θ when sampling on-policy),
  2. S-step: θ ← argmin Σ_{m,n,t} (μ_θ(x) − μ_p(x))ᵀ Λ_p (μ_θ(x) − μ_p(x)) with Λ_p = pol_covar⁻¹, on the
     samples just drawn (``s_step_order: before_c_step``; GPS's order, after the C-step, is available),
  3. fit the local dynamics; linearise π_θ at the same samples → π̄_m (its own Jacobians by default),
  4. step rule: ε_m = kl_step · step_mult · T from predicted vs. achieved cost (GPS ``_stepadjust``),
  5. C-step: p_m ← argmin E_p[c] s.t. KL(p ‖ π̄_m) ≤ ε_m (LQR-FLM against the policy linearisation).
Why this order and linearisation (measured on arm7 peg insertion, bench/gps_peg.py): GPS's order
linearises π where it was never trained (the new controller's states), and GPS's regression
linearisation gave gains of 100-300 N m per unit whose closed loop explodes under the fitted dynamics;
both made the C-step's trust region centre a poor controller and the LG costs blow up.
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
    LinearDynamics,
    LinearGaussianController,
    SampleBatch,
    ShapeError,
    StateLayout,
    check_finite,
    check_shape,
)
from mbpl_core.costs import Cost, QuadraticCost, quadratic_cost_model
from mbpl_core.local.lqr_flm import LQRFLM, AlgorithmConfig, Environment, Policy
from mbpl_core.local.traj_opt import (
    ConditionOptimizer,
    KLSearchError,
    KLStepConfig,
    UpdateInfo,
    adapt_step_mult,
    total_expected_cost,
)
from mbpl_core.noise import generate_noise
from mbpl_core.policy import (
    MIN_OBS_STD,
    GPSConfig,
    NumpyPolicy,
    PolicyParams,
    linearize_policy,
    linearize_policy_jacobian,
    load_policy_checkpoint,
    save_numpy_policy,
)

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
    "perturbed_policy_targets",
    "evaluate_policy",
    "final_ee_distances",
    "linearize_policy",
    "linearize_policy_jacobian",
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

    def fit_normalization(self, obs: np.ndarray, refit: bool = False) -> None:
        """Set obs_mean, obs_std (dO,) from obs (M, dO) on the first call; later calls only with ``refit``.

        A refit keeps the network's function unchanged: with h = (o − m)/s entering the first layer,
        new (m', s') are compensated by W₁' = W₁ diag(s'/s), b₁' = b₁ + W₁ (m' − m)/s. Why refit at all:
        statistics frozen on the first iteration's (nearly motionless) samples leave later states tens
        of standard deviations out, where a ReLU network extrapolates with huge gains.
        """
        std = np.maximum(obs.std(axis=0), MIN_OBS_STD)
        mean = obs.mean(axis=0)
        if bool(self.normalization_fitted):
            if not refit:
                return
            old_mean, old_std = self.obs_mean.cpu().numpy(), self.obs_std.cpu().numpy()
            first = self.layers[0]
            with torch.no_grad():
                shift = torch.as_tensor((mean - old_mean) / old_std, dtype=DTYPE, device=self.device)
                first.bias.add_(first.weight @ shift)
                first.weight.mul_(torch.as_tensor(std / old_std, dtype=DTYPE, device=self.device))
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=DTYPE))
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
    """Torch policy holding exactly ``params`` (normalisation marked as fitted); ShapeError if squashed."""
    if params.squashed:
        raise ShapeError("GaussianMLPPolicy has no squashed output; this policy has squash="
                         f"{params.squash!r}")
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


def perturbed_policy_targets(
    controllers: list[LinearGaussianController], batches: list[SampleBatch], obs_indices: np.ndarray,
    copies: int, scale: float, rng: np.random.Generator,
) -> PolicyTargets:
    """Extra S-step targets at states drawn around the samples, labelled by the (linear) LG controllers.

    For condition m, step t, with the samples' states x_{n,t} (N of them) and their covariance S_t:
    x' = x_{n,t} + scale · D_t z / √N, D_t = [x_{1,t} − x̄_t, …], z ~ N(0, I_N),
    so x' − x_{n,t} ~ N(0, scale² S_t)
    stays in the span the samples explored; μ = K_t x' + k_t and Λ = inv_pol_covar_t are exact for the LG
    controller there. Why: five samples show the policy the controller's feedback only along five noise
    draws; the MDGPS S-step objective is an expectation over the controller's state distribution, and
    these draws estimate it with lower variance. Returns copies · Σ_m N_m · T rows.
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    obs, mus, precs = [], [], []
    for c, batch in zip(controllers, batches, strict=True):
        D = batch.X - batch.X.mean(axis=0)  # (N, T, dX)
        z = rng.standard_normal((copies, batch.N, batch.N))  # (copy, new point, weight on sample)
        X = batch.X[None] + scale * np.einsum("cpn,ntx->cptx", z, D) / np.sqrt(batch.N)
        mus.append((np.einsum("tux,cptx->cptu", c.K, X) + c.k).reshape(-1, c.dU))
        obs.append(X[..., obs_indices].reshape(-1, len(obs_indices)))
        prec = np.broadcast_to(c.inv_pol_covar, (copies, batch.N, *c.inv_pol_covar.shape))
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
    (refits it later when config.refit_normalization), then sets action_covar = (mean_i Λ_i)⁻¹
    (GPS policy_opt). generator: minibatch order
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
    policy.fit_normalization(obs, refit=config.refit_normalization)
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
    """config.iterations Adam steps on minibatches of the precision-weighted loss; (loss before, after).

    With config.average_last = A > 0 the policy ends at θ̄ = (1/A) Σ_{s > S−A} θ_s, the mean of the last A
    iterates (S = config.iterations), instead of θ_S.
    """
    dev = policy.device
    o, mu, prec = (torch.as_tensor(a, dtype=DTYPE, device=dev) for a in (obs, target_mu, target_prec))
    gen = generator if generator is not None else torch.Generator().manual_seed(config.seed)
    loss_before = _full_loss(policy, o, mu, prec)
    opt = torch.optim.Adam(policy.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    M, batch = o.shape[0], min(config.batch_size, o.shape[0])
    # The permutation is drawn on the CPU generator (same order on every device), moved once per epoch.
    perm, pos = torch.randperm(M, generator=gen).to(dev), 0
    params = list(policy.parameters())
    average = [torch.zeros_like(p) for p in params]
    first_averaged = config.iterations - config.average_last
    policy.train()
    for step in range(config.iterations):
        if pos + batch > M:
            perm, pos = torch.randperm(M, generator=gen).to(dev), 0
        idx = perm[pos:pos + batch]
        pos += batch
        loss = precision_weighted_loss(policy(o[idx]), mu[idx], prec[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= first_averaged:
            with torch.no_grad():
                for acc, p in zip(average, params, strict=True):
                    acc.add_(p, alpha=1.0 / config.average_last)
    policy.eval()
    if config.average_last:
        # Polyak-Ruppert: the mean iterate has the minibatch noise of the last steps averaged out.
        with torch.no_grad():
            for acc, p in zip(average, params, strict=True):
                p.copy_(acc)
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
    save_numpy_policy(path, policy_to_params(policy), config)
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
    *_s: wall-clock seconds of the phases; train_policy_cost: Σ_t c of the gps.select_best rollouts (on the
    training or, with select_on "validation", the validation conditions), None without select_best;
    rejected: per condition, the step check (algorithm.step_check) kept the controller; check_trials: the
    noiseless trials the step check ran this iteration (not counted in sampling).
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
    train_policy_cost: tuple[float, ...] | None = None
    rejected: tuple[bool, ...] = ()
    check_trials: int = 0


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


@dataclass(frozen=True, eq=False)
class CStepRecord:
    """One condition's C-step, kept for the next iteration's step rule.

    reference: the trust-region centre (policy linearisation π̄, or the LG controller itself in an
    LQR-FLM step; None where it was not kept: only the "laplace" estimate needs it); controller: the
    C-step's new LG controller; dynamics, quad: the model it was solved on; sample_cost: mean Σ_t c of
    the samples that model was fitted on.
    """

    reference: LinearGaussianController | None
    controller: LinearGaussianController
    dynamics: LinearDynamics
    quad: QuadraticCost
    sample_cost: float = float("nan")


def mdgps_step_costs(record: CStepRecord, reference: LinearGaussianController, dynamics: LinearDynamics,
                     quad: QuadraticCost, sample_cost: float = float("nan"),
                     estimate: str = "laplace") -> tuple[float, float, float]:
    """(previous, predicted, actual) Σ_t c for the MDGPS step rule (GPS ``_stepadjust``).

    predicted: E[c] of record.controller under record's model, in both estimates. "laplace":
    previous = E[c] of record.reference under record's model, actual = E[c] of today's ``reference``
    (the policy linearisation) under today's ``dynamics`` and ``quad``. "mc": previous =
    record.sample_cost, actual = today's ``sample_cost`` (mean Σ_t c of today's samples).
    Non-finite values (a linearisation whose closed loop explodes under the model) come back as inf.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        predicted = total_expected_cost(record.controller, record.dynamics, record.quad)
        if estimate == "mc":
            values = (record.sample_cost, predicted, sample_cost)
        else:
            if record.reference is None:
                raise ValueError("the laplace step estimate needs the last C-step's reference")
            values = (total_expected_cost(record.reference, record.dynamics, record.quad), predicted,
                      total_expected_cost(reference, dynamics, quad))
    return tuple(float(v) if np.isfinite(v) else np.inf for v in values)  # type: ignore[return-value]


def mdgps_step_mult(step_mult: float, previous: float, predicted: float, actual: float,
                    min_step_mult: float, max_step_mult: float) -> float:
    """GPS step-size rule (see :func:`mbpl_core.local.traj_opt.adapt_step_mult`) with MDGPS's cost estimates.

    new = clip(step_mult · clip(pred_impr / (2 max(1e-4, pred_impr − act_impr)), 0.1, 5), min, max) with
    pred_impr = previous − predicted, act_impr = previous − actual. An infinite (exploded) estimate
    shrinks the step by the rule's smallest factor, 0.1.
    """
    if not all(np.isfinite(v) for v in (previous, predicted, actual)):
        return float(min(max(0.1 * step_mult, min_step_mult), max_step_mult))
    return adapt_step_mult(step_mult, previous, predicted, actual, min_step_mult, max_step_mult)


def mdgps_step_mults(step_mults: Sequence[float], records: Sequence[CStepRecord],
                     references: Sequence[LinearGaussianController],
                     models: Sequence[tuple[LinearDynamics, QuadraticCost]], sample_costs: Sequence[float],
                     config: GPSConfig, kl: KLStepConfig) -> list[float]:
    """MDGPS step rule (GPS ``AlgorithmMDGPS._stepadjust``): each condition's new step multiplier.

    Per condition m: previous = E[c] of the last reference π̄ under the last model, predicted = E[c] of the
    LG controller that C-step produced under the same model, actual = E[c] of today's reference (the
    policy linearised at today's samples) under today's model (or sampled costs: config.step_estimate
    "mc", see :func:`mdgps_step_costs`). The policy's actual improvement, not the LG controller's, sets
    the step; step_rule "global" averages the three over conditions. records, references, models
    (dynamics, cost model) and sample_costs: one per condition, as step_mults.
    """
    rows = zip(records, references, models, sample_costs, strict=True)
    costs = np.array([mdgps_step_costs(rec, ref, dyn, quad, cost, config.step_estimate)
                      for rec, ref, (dyn, quad), cost in rows])
    if config.step_rule == "global":
        costs = np.broadcast_to(costs.mean(axis=0), costs.shape)
    return [mdgps_step_mult(s, previous, predicted, actual, kl.min_step_mult, kl.max_step_mult)
            for s, (previous, predicted, actual) in zip(step_mults, costs, strict=True)]


def s_step_update(policy: GaussianMLPPolicy, controllers: Sequence[LinearGaussianController],
                  batches: Sequence[SampleBatch], config: GPSConfig, generator: torch.Generator,
                  augment_rng: np.random.Generator) -> TrainReport:
    """The MDGPS S-step in place on ``policy``: regression onto the LG controllers at the sampled states.

    Targets: :func:`build_policy_targets` plus ``config.augment_copies`` perturbed copies
    (:func:`perturbed_policy_targets`, drawn from ``augment_rng``); training: :func:`train_policy` with
    ``generator``. With config.policy_ema = β > 0 (and a policy trained before):
    θ ← β θ_before + (1 − β) θ_trained, an exponential moving average over S-steps.
    """
    obs_idx = policy.obs_indices.cpu().numpy()
    controllers, batches = list(controllers), list(batches)
    targets = build_policy_targets(controllers, batches, obs_idx)
    if config.augment_copies:
        extra = perturbed_policy_targets(controllers, batches, obs_idx, config.augment_copies,
                                         config.augment_scale, augment_rng)
        targets = PolicyTargets(*(np.concatenate([getattr(targets, name), getattr(extra, name)])
                                  for name in ("obs", "target_mu", "target_prec")))
    before = None
    if config.policy_ema > 0 and bool(policy.normalization_fitted):
        # Refit first (function-preserving, idempotent in train_policy) so that θ_before and θ_trained
        # share one observation scaling and their average is meaningful.
        policy.fit_normalization(targets.obs, refit=config.refit_normalization)
        before = [p.detach().clone() for p in policy.parameters()]
    report = train_policy(policy, targets.obs, targets.target_mu, targets.target_prec, config, generator)
    if before is not None:
        with torch.no_grad():
            for old, p in zip(before, policy.parameters(), strict=True):
                p.mul_(1.0 - config.policy_ema).add_(old, alpha=config.policy_ema)
    return report


class MDGPS:
    """MDGPS in one process (module docstring; Montgomery & Levine 2016, Alg. 2).

    env, cost (one, or one per condition), algorithm_config (samples, KL step, dynamics fit, init, noise),
    gps_config (policy and S-step), rng (all exploration noise; default from algorithm_config.seed).
    eval_env/eval_conditions/eval_cost: held-out conditions on which the policy is rolled out after each
    S-step (eval_cost defaults to ``cost`` when that is a single Cost). select_env: the validation
    conditions of gps.select_on "validation" (rolled out with eval_cost; ValueError if missing).
    With ``s_step_order: after_c_step`` iteration 0 takes an LQR-FLM step (reference = the LG controller):
    the policy is still untrained then. A condition whose KL step is infeasible takes the zero step
    (:meth:`_zero_step`) and is listed in ``fallbacks`` as (iteration, condition).
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
        select_env: Environment | None = None,
    ) -> None:
        self.config = AlgorithmConfig() if algorithm_config is None else algorithm_config
        self.gps_config = GPSConfig() if gps_config is None else gps_config
        # LQRFLM owns sampling, dynamics fitters, cost models and per-condition optimizers; MDGPS
        # changes only the reference of the C-step, the step rule, and adds the S-step.
        self.lg = LQRFLM(env, cost, self.config, rng, initial_controllers)
        self.env = env
        self.policy = GaussianMLPPolicy.from_config(self.gps_config, env.dX, env.dU)
        self.torch_generator = torch.Generator().manual_seed(self.gps_config.seed)
        self.augment_rng = np.random.default_rng(self.gps_config.seed)
        self.eval_env = eval_env
        self.eval_conditions = list(range(eval_env.num_conditions) if eval_env and eval_conditions is None
                                    else eval_conditions or [])
        self.eval_cost = eval_cost if eval_cost is not None or not isinstance(cost, Cost) else cost
        if eval_env is not None and self.eval_cost is None:
            raise ValueError("eval_cost is needed when costs are given per condition")
        validating = self.gps_config.select_best and self.gps_config.select_on == "validation"
        if validating and (select_env is None or self.eval_cost is None):
            raise ValueError("gps.select_on: validation needs select_env (and eval_cost when costs are given "
                             "per condition)")
        self.select_env = select_env
        self.iteration_count = 0
        self.reports: list[GPSIterationReport] = []
        self.fallbacks: list[tuple[int, int]] = []
        self._records: list[CStepRecord] | None = None
        self._numpy_policy = NumpyPolicy(policy_to_params(self.policy))
        self.best: tuple[float, int, NumpyPolicy] | None = None  # (mean training cost, iteration, policy)

    @property
    def deployed_policy(self) -> NumpyPolicy:
        """The policy to deploy: with gps.select_best the S-step snapshot of lowest noiseless training cost
        (:meth:`_select`), otherwise (or before any S-step) the latest, :attr:`numpy_policy`."""
        return self._numpy_policy if self.best is None else self.best[2]

    def _select(self) -> tuple[float, ...] | None:
        """With gps.select_best: noiseless rollouts of the new policy on the training (or, with gps.select_on
        "validation", the validation) conditions, costs Σ_t c_m (M,); the snapshot replaces :attr:`best`
        when mean_m Σ_t c_m is lower."""
        if not self.gps_config.select_best:
            return None
        on_train = self.gps_config.select_on == "train"
        env = self.env if on_train else self.select_env
        assert env is not None
        batches = policy_rollouts(env, self._numpy_policy, range(env.num_conditions))
        cost_of = self.lg.costs if on_train else [self.eval_cost] * env.num_conditions
        costs = tuple(float(quadratic_cost_model(c, b)[0].sum()) for c, b in zip(cost_of, batches,
                                                                                     strict=True))
        score = float(np.mean(costs))
        if np.isfinite(score) and (self.best is None or score < self.best[0]):
            self.best = (score, self.iteration_count, self._numpy_policy)
        return costs

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
        if self.iteration_count == 0 and self.gps_config.s_step_order == "after_c_step":
            return [None] * len(batches)
        if self.gps_config.linearization == "jacobian":
            return [linearize_policy_jacobian(self._numpy_policy, b.X) for b in batches]
        strength = self.gps_config.policy_prior_strength
        return [linearize_policy(self._numpy_policy, b.X, strength) for b in batches]

    def _adapt_step(self, models: Sequence[tuple[LinearDynamics, QuadraticCost]],
                    references: Sequence[LinearGaussianController | None],
                    sample_costs: Sequence[float]) -> None:
        """:func:`mdgps_step_mults` from the last iteration's C-step records onto the optimizers (none before
        the first C-step or while a condition has no policy reference)."""
        if self._records is None or any(r is None for r in references):
            return
        mults = mdgps_step_mults([opt.step_mult for opt in self.lg.optimizers], self._records,
                                 references, models, sample_costs,  # type: ignore[arg-type]
                                 self.gps_config, self.config.kl)
        for opt, mult in zip(self.lg.optimizers, mults, strict=True):
            opt.step_mult = mult

    def _c_step(self, batches: Sequence[SampleBatch]) -> tuple[list[UpdateInfo], tuple[float, ...]]:
        """Fit dynamics and cost models, adapt the step, then each condition's KL step against its reference.

        Returns the update infos and each condition's mean sampled cost Σ_t c (mean over samples).
        A condition whose KL constraint around the policy linearisation is infeasible (KLSearchError: the
        linearisation's closed loop under the fitted dynamics is so expansive that even max_eta cannot
        hold the step to ε) takes the zero step (:meth:`_zero_step`); ``fallbacks`` lists them.
        With the step check and step_rule "global", a condition's backtracked multiplier holds for this
        C-step only: the global rule sets one multiplier from the conditions' averaged costs, and a
        condition-specific shrink, multiplied by every later global factor, never rejoins it (peg, seed 1:
        5 of 9 conditions at the floor 0.01 from iteration 7 on, their controllers within 1 nat of π̄).
        """
        models, sample_costs = [], []
        for batch, fitter, cost in zip(batches, self.lg.fitters, self.lg.costs, strict=True):
            costs, quad = quadratic_cost_model(cost, batch)
            models.append((fitter.update(batch), quad))
            sample_costs.append(float(np.mean(np.sum(costs, axis=1))))
        references = self._references(batches)
        self._adapt_step(models, references, sample_costs)
        infos, records = [], []
        for m, (opt, (dyn, quad), ref) in enumerate(zip(self.lg.optimizers, models, references, strict=True)):
            centre = opt.controller if ref is None else ref
            try:
                if self.config.step_check.enabled:
                    mult = opt.step_mult
                    controller, info, _ = self.lg.checked_c_step(m, dyn, quad, ref)
                    if self.gps_config.step_rule == "global":
                        opt.step_mult = mult  # see the docstring
                else:
                    controller, info = opt.update(dyn, quad, reference=ref, adapt_step=False)
            except KLSearchError:  # only when the optimizer's own zero step is switched off
                controller, info = self._zero_step(opt, centre, dyn, quad)
                self.fallbacks.append((self.iteration_count, m))
            else:
                if info.fallback:
                    self.fallbacks.append((self.iteration_count, m))
            infos.append(info)
            records.append(CStepRecord(centre, controller, dyn, quad, sample_costs[m]))
        self._records = records
        return infos, tuple(sample_costs)

    @staticmethod
    def _zero_step(opt: ConditionOptimizer, centre: LinearGaussianController, dynamics: LinearDynamics,
                   quad: QuadraticCost) -> tuple[LinearGaussianController, UpdateInfo]:
        """The η → ∞ end of the KL step: the trust region's centre itself (KL = 0).

        Taken when no η up to max_eta meets the constraint: the centre's closed loop is so expansive under
        the fitted dynamics (predicted cost ~1e40 from unexcited directions) that cost/η still outweighs
        the KL there. GPS reaches the same controller by rounding (its cost/η vanishes next to the
        reference's log-density terms); here it is explicit and counted.
        """
        epsilon = opt.config.kl_step * opt.step_mult * dynamics.T
        with np.errstate(over="ignore", invalid="ignore"):
            cost = total_expected_cost(centre, dynamics, quad)
        opt.controller, opt.eta = centre, opt.config.max_eta
        opt.iteration += 1
        return centre, UpdateInfo(opt.config.max_eta, 0.0, epsilon, opt.step_mult, 0, cost)

    def s_step(self, batches: Sequence[SampleBatch]) -> TrainReport:
        """:func:`s_step_update` onto the current LG controllers; refreshes the numpy copy."""
        report = s_step_update(self.policy, self.controllers, batches, self.gps_config, self.torch_generator,
                               self.augment_rng)
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
        """One MDGPS iteration: sample, S-step and C-step (in the configured order), evaluate."""
        t0 = time.perf_counter()
        on_policy = self.gps_config.sample_on_policy and self.iteration_count > 0
        checks_before = self.lg.check_trials
        batches = self._sample_all()
        t1 = time.perf_counter()
        if self.gps_config.s_step_order == "before_c_step":
            s_report = self.s_step(batches)
            t2 = time.perf_counter()
            infos, lg_cost = self._c_step(batches)
            c_step_s, s_step_s = time.perf_counter() - t2, t2 - t1
        else:
            infos, lg_cost = self._c_step(batches)
            t2 = time.perf_counter()
            s_report = self.s_step(batches)
            c_step_s, s_step_s = t2 - t1, time.perf_counter() - t2
        policy_cost, policy_distance = self._evaluate()
        train_policy_cost = self._select()
        report = GPSIterationReport(
            iteration=self.iteration_count, lg_cost=lg_cost,
            step_mult=tuple(i.step_mult for i in infos), eta=tuple(i.eta for i in infos),
            kl=tuple(i.kl for i in infos), s_step=s_report, sampled_on_policy=on_policy,
            policy_cost=policy_cost, policy_distance=policy_distance,
            sampling_s=t1 - t0, c_step_s=c_step_s, s_step_s=s_step_s, train_policy_cost=train_policy_cost,
            rejected=tuple(i.rejected for i in infos), check_trials=self.lg.check_trials - checks_before,
        )
        self.iteration_count += 1
        self.reports.append(report)
        return report

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (picklable): the LQR-FLM state, policy weights and normalisation,
        torch generator and augmentation rng states, iteration count, reports, the step rule's C-step records,
        fallbacks and the selected snapshot (gps.select_best). The environments and costs are not included."""
        return {
            "lg": self.lg.state_dict(),
            "gps_config": self.gps_config,
            "policy": {k: v.detach().cpu().clone() for k, v in self.policy.state_dict().items()},
            "torch_generator": self.torch_generator.get_state(),
            "augment_rng": self.augment_rng.bit_generator.state,
            "iteration_count": self.iteration_count,
            "reports": list(self.reports),
            "records": self._records,
            "fallbacks": list(self.fallbacks),
            "best": None if self.best is None else (self.best[0], self.best[1], self.best[2].params),
        }

    @classmethod
    def from_state(cls, env: Environment, cost: Cost | Sequence[Cost], state: dict[str, Any],
                   eval_env: Environment | None = None, eval_conditions: Sequence[int] | None = None,
                   eval_cost: Cost | None = None, select_env: Environment | None = None) -> MDGPS:
        """Rebuild a loop from :meth:`state_dict` output; continuing it matches the original run."""
        lg = LQRFLM.from_state(env, cost, state["lg"])
        obj = cls(env, cost, lg.config, state["gps_config"], lg.rng, eval_env, eval_conditions, eval_cost,
                  initial_controllers=lg.controllers, select_env=select_env)
        obj.lg = lg
        obj.policy.load_state_dict(state["policy"])
        obj.torch_generator.set_state(state["torch_generator"])
        if "augment_rng" in state:
            obj.augment_rng.bit_generator.state = state["augment_rng"]
        obj.iteration_count = int(state["iteration_count"])
        obj.reports = list(state["reports"])
        obj._records = state.get("records")
        obj.fallbacks = list(state.get("fallbacks", []))
        obj._numpy_policy = NumpyPolicy(policy_to_params(obj.policy))
        best = state.get("best")
        obj.best = None if best is None else (float(best[0]), int(best[1]), NumpyPolicy(best[2]))
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
