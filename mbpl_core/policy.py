"""The deployable side of the global policy: config, numpy forward pass, linearisation, checkpoint loading.

Nothing here imports torch, so a sampler on the robot can load and run a trained policy with numpy alone.
The trainer side (torch module, S-step, MDGPS loop) lives in :mod:`mbpl_core.guided.mdgps`.

The policy is π(u | x) = N(g(f_θ((x[obs_indices] − obs_mean) / obs_std)), action_covar), f_θ an MLP and
g the output map: the identity (``squash = "none"``, the MDGPS / PETS policies) or
g(h) = action_bias + action_scale ⊙ tanh(h) (``squash = "tanh"``: SAC's squashed Gaussian, deterministic
mean, rescaled to the effort range as stable-baselines3's ``unscale_action`` does).
Shapes: x (dX,), obs (dO,), u (dU,), action_covar (dU, dU); weights W_l (n_out, n_in), b_l (n_out,);
action_scale, action_bias (dU,).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from mbpl_core.blas import with_single_threaded_blas
from mbpl_core.config import ConfigError, from_dict, to_dict
from mbpl_core.containers import LinearGaussianController, ShapeError, check_finite, check_shape

Activation = Literal["relu", "tanh"]
Squash = Literal["none", "tanh"]
SQUASHES: tuple[str, ...] = ("none", "tanh")
MIN_OBS_STD = 1e-3  # a nearly constant observation must not blow up the normalised input


@dataclass(frozen=True)
class GPSConfig:
    """Global-policy and MDGPS settings (YAML section ``gps:``).

    hidden_sizes: MLP hidden layer widths (empty: a linear policy); activation: "relu" | "tanh";
    learning_rate, weight_decay, batch_size: Adam settings of the S-step; iterations: gradient steps per
    S-step (warm-started); init_policy_var: action variance before the first S-step; sample_on_policy:
    sample the neural policy instead of the LG controllers; step_rule: "global" (one step_mult from costs
    averaged over conditions) | "classic" (per condition); policy_prior_strength: weight of the
    normal-inverse-Wishart prior of the regression linearisation; observation: "state" or state indices;
    device: "auto" | "cpu" | "cuda"; seed: seeds the torch generator (weight init, minibatches) and the
    augmentation rng; refit_normalization: refit the observation normalisation to every S-step's data
    (function-preserving, see ``GaussianMLPPolicy.fit_normalization``) instead of freezing it after the
    first; linearization: "jacobian" (the policy's own derivatives at the samples,
    :func:`linearize_policy_jacobian`) | "regression" (GPS's prior-regularised fit, :func:`linearize_policy`);
    step_estimate: what the step rule compares, "mc" (sampled costs of consecutive iterations against the
    model's prediction) | "laplace" (the model's expected costs of the policy linearisations, GPS's default;
    unreliable when a linearisation's closed loop explodes under the fitted dynamics); s_step_order:
    "before_c_step" (fit π to the controllers just sampled, at their own samples, then linearise it at those
    same states) | "after_c_step" (GPS: fit π to the new controllers at the previous controllers' samples);
    augment_copies, augment_scale: extra S-step targets per sample at states perturbed within the samples'
    spread (× scale), labelled by the LG controllers
    (``mbpl_core.guided.mdgps.perturbed_policy_targets``; 0: none).
    average_last: the S-step returns the mean of the weights of its last ``average_last`` Adam steps
    (Polyak-Ruppert iterate averaging; 0: the last iterate). policy_ema: after each S-step (from the second)
    θ ← β θ_before + (1 − β) θ_trained with β = policy_ema (0: no averaging across iterations).
    select_best: after each S-step roll the policy out noiselessly and keep the snapshot with the lowest
    mean cost as ``MDGPS.deployed_policy`` (off: the last one); select_on: where those rollouts run,
    "train" (the training conditions) | "validation" (the task's validation conditions: positions never
    trained on and kept apart from the held-out ones, which stay for reporting only).
    """

    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: Activation = "relu"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 128
    iterations: int = 2000
    init_policy_var: float = 1.0
    sample_on_policy: bool = False
    step_rule: Literal["global", "classic"] = "global"
    policy_prior_strength: float = 1.0
    observation: str | tuple[int, ...] = "state"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    refit_normalization: bool = True
    linearization: Literal["jacobian", "regression"] = "jacobian"
    step_estimate: Literal["mc", "laplace"] = "mc"
    s_step_order: Literal["before_c_step", "after_c_step"] = "before_c_step"
    augment_copies: int = 0
    augment_scale: float = 1.0
    average_last: int = 0
    policy_ema: float = 0.0
    select_best: bool = False
    select_on: Literal["train", "validation"] = "train"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        if any(int(h) < 1 for h in self.hidden_sizes):
            raise ConfigError(f"gps.hidden_sizes must be positive, got {self.hidden_sizes}")
        if self.activation not in ("relu", "tanh"):
            raise ConfigError(f"gps.activation must be 'relu' or 'tanh', got {self.activation!r}")
        if self.step_rule not in ("global", "classic"):
            raise ConfigError(f"gps.step_rule must be 'global' or 'classic', got {self.step_rule!r}")
        if self.s_step_order not in ("before_c_step", "after_c_step"):
            raise ConfigError("gps.s_step_order must be 'before_c_step' or 'after_c_step', "
                              f"got {self.s_step_order!r}")
        if self.step_estimate not in ("mc", "laplace"):
            raise ConfigError(f"gps.step_estimate must be 'mc' or 'laplace', got {self.step_estimate!r}")
        if self.linearization not in ("jacobian", "regression"):
            raise ConfigError("gps.linearization must be 'jacobian' or 'regression', "
                              f"got {self.linearization!r}")
        if self.select_on not in ("train", "validation"):
            raise ConfigError(f"gps.select_on must be 'train' or 'validation', got {self.select_on!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"gps.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        for name in ("learning_rate", "init_policy_var", "policy_prior_strength"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ConfigError(f"gps.{name} must be a positive number, got {value}")
        if not np.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"gps.weight_decay must be >= 0, got {self.weight_decay}")
        if self.augment_copies < 0 or not (np.isfinite(self.augment_scale) and self.augment_scale > 0):
            raise ConfigError(f"gps.augment_copies must be >= 0 and augment_scale > 0, got "
                              f"{self.augment_copies}, {self.augment_scale}")
        if self.average_last < 0 or self.average_last > max(self.iterations, 0):
            raise ConfigError(f"gps.average_last must be in [0, iterations], got {self.average_last}")
        if not (np.isfinite(self.policy_ema) and 0.0 <= self.policy_ema < 1.0):
            raise ConfigError(f"gps.policy_ema must be in [0, 1), got {self.policy_ema}")
        if self.batch_size < 1 or self.iterations < 0:
            raise ConfigError(f"gps.batch_size must be >= 1 and iterations >= 0, got "
                              f"{self.batch_size}, {self.iterations}")
        self._validate_observation()

    def _validate_observation(self) -> None:
        if isinstance(self.observation, str):
            if self.observation != "state":
                raise ConfigError(
                    f"gps.observation must be 'state' or a list of indices, got {self.observation!r}"
                )
            return
        idx = tuple(int(i) for i in self.observation)
        if not idx or min(idx) < 0 or len(set(idx)) != len(idx):
            raise ConfigError(
                f"gps.observation indices must be non-empty, non-negative and unique, got {idx}"
            )
        object.__setattr__(self, "observation", idx)

    def observation_indices(self, dX: int) -> np.ndarray:
        """Indices (dO,) of the state entries the policy sees; ConfigError if one is >= dX."""
        if self.observation == "state":
            return np.arange(dX)
        idx = np.asarray(self.observation, dtype=np.int64)
        if idx.max() >= dX:
            raise ConfigError(f"gps.observation index {int(idx.max())} is out of range for dX={dX}")
        return idx


@dataclass(frozen=True)
class PolicyParams:
    """Everything the numpy forward pass needs, as plain arrays.

    weights: [(W_l (n_l, n_{l-1}), b_l (n_l,))] for l = 1..L (the last layer is linear, L >= 1);
    activation: applied after every layer but the last; obs_indices (dO,) int; obs_mean, obs_std (dO,);
    action_covar (dU, dU) symmetric positive definite; state_dim: dX of the states the policy is
    applied to (None: max(obs_indices) + 1, exact when the observation is the full state).
    squash: output map of the last layer's h (dU,): "none" (u = h) | "tanh"
    (u = action_bias + action_scale ⊙ tanh(h)); action_scale (positive) and action_bias (dU,) belong to
    "tanh" only (None there: ones and zeros) and must be None with "none".
    """

    weights: tuple[tuple[np.ndarray, np.ndarray], ...]
    activation: str
    obs_mean: np.ndarray
    obs_std: np.ndarray
    obs_indices: np.ndarray
    action_covar: np.ndarray
    state_dim: int | None = None
    squash: str = "none"
    action_scale: np.ndarray | None = None
    action_bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.activation not in ("relu", "tanh"):
            raise ShapeError(f"activation must be 'relu' or 'tanh', got {self.activation!r}")
        weights = tuple(
            (np.array(W, dtype=np.float64), np.array(b, dtype=np.float64)) for W, b in self.weights
        )
        if not weights:
            raise ShapeError("a policy needs at least one layer")
        idx = np.array(self.obs_indices, dtype=np.int64)
        dO = idx.shape[0]
        n_in = dO
        for i, (W, b) in enumerate(weights):
            if W.ndim != 2 or W.shape[1] != n_in:
                raise ShapeError(f"weights[{i}].W has shape {W.shape}, expected (n_out, {n_in})")
            check_shape(f"weights[{i}].b", b, (W.shape[0],))
            check_finite(f"weights[{i}].W", W)
            check_finite(f"weights[{i}].b", b)
            n_in = W.shape[0]
        mean, std = np.array(self.obs_mean, dtype=np.float64), np.array(self.obs_std, dtype=np.float64)
        covar = np.array(self.action_covar, dtype=np.float64)
        check_shape("obs_mean", mean, (dO,))
        check_shape("obs_std", std, (dO,))
        check_shape("action_covar", covar, (n_in, n_in))
        for name, arr in (("obs_mean", mean), ("obs_std", std), ("action_covar", covar)):
            check_finite(name, arr)
        if np.any(std <= 0):
            raise ShapeError("obs_std must be positive")
        if idx.min() < 0 or (self.state_dim is not None and idx.max() >= self.state_dim):
            raise ShapeError(
                f"obs_indices must lie in [0, state_dim={self.state_dim}), got {idx.min()}..{idx.max()}"
            )
        state_dim = self.state_dim if self.state_dim is not None else idx.max() + 1
        object.__setattr__(self, "state_dim", int(state_dim))
        object.__setattr__(self, "weights", weights)
        named = [("obs_indices", idx), ("obs_mean", mean), ("obs_std", std), ("action_covar", covar)]
        named += self._checked_squash(n_in)
        for name, arr in named:
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    def _checked_squash(self, dU: int) -> list[tuple[str, np.ndarray]]:
        """The (name, array) pairs of action_scale / action_bias to store; ShapeError if inconsistent."""
        if self.squash not in SQUASHES:
            raise ShapeError(f"squash must be one of {list(SQUASHES)}, got {self.squash!r}")
        if self.squash == "none":
            if self.action_scale is not None or self.action_bias is not None:
                raise ShapeError("action_scale / action_bias need squash='tanh' (squash is 'none')")
            return []
        scale = np.ones(dU) if self.action_scale is None else np.array(self.action_scale, dtype=np.float64)
        bias = np.zeros(dU) if self.action_bias is None else np.array(self.action_bias, dtype=np.float64)
        for name, arr in (("action_scale", scale), ("action_bias", bias)):
            check_shape(name, arr, (dU,))
            check_finite(name, arr)
        if np.any(scale <= 0):
            raise ShapeError(f"action_scale must be positive, got {scale}")
        return [("action_scale", scale), ("action_bias", bias)]

    @classmethod
    def from_layers(
        cls,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        obs_mean: np.ndarray,
        obs_std: np.ndarray,
        action_covar: np.ndarray,
        activation: str = "relu",
        obs_indices: np.ndarray | None = None,
        state_dim: int | None = None,
        squash: str = "none",
        action_scale: np.ndarray | None = None,
        action_bias: np.ndarray | None = None,
    ) -> PolicyParams:
        """From separate weight and bias lists (the message layout); obs_indices default: arange(dO)."""
        if len(weights) != len(biases):
            raise ShapeError(f"got {len(weights)} weight matrices but {len(biases)} bias vectors")
        idx = np.arange(np.asarray(obs_mean).shape[0]) if obs_indices is None else obs_indices
        return cls(tuple(zip(weights, biases, strict=True)), activation, obs_mean, obs_std, idx, action_covar,
                   state_dim, squash, action_scale, action_bias)

    @property
    def squashed(self) -> bool:
        """Whether the output goes through action_bias + action_scale ⊙ tanh(·)."""
        return self.squash != "none"

    @property
    def biases(self) -> tuple[np.ndarray, ...]:
        """b_l (n_l,) of every layer, in order."""
        return tuple(b for _, b in self.weights)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """(dO, n_1, ..., dU)."""
        return (self.dO, *(int(W.shape[0]) for W, _ in self.weights))

    @property
    def dU(self) -> int:
        return int(self.weights[-1][0].shape[0])

    @property
    def dO(self) -> int:
        return int(self.obs_indices.shape[0])


class BatchPolicy(Protocol):
    """A policy whose mean can be evaluated on many states at once (torch module or numpy)."""

    @property
    def action_covar(self) -> np.ndarray: ...  # (dU, dU)

    def mean_batch(self, X: np.ndarray) -> np.ndarray: ...  # (M, dX) -> (M, dU)


class NumpyPolicy:
    """Deployment forward pass of the neural policy in pure numpy.

    The normalisation and the observation selection are folded into the first layer once
    (W_1' = W_1 diag(1/obs_std) scattered onto the dX state columns, b_1' = b_1 − W_1 (obs_mean/obs_std)),
    and every layer writes into a preallocated buffer, so :meth:`act` allocates only its result.
    A squashed policy (``params.squash == "tanh"``) maps the last layer's h to action_bias +
    action_scale ⊙ tanh(h); exploration noise is added after that map, in effort units.
    Not re-entrant: one instance per control thread.
    """

    def __init__(self, params: PolicyParams) -> None:
        self.params = params
        self.dX = int(params.state_dim)  # type: ignore[arg-type]
        W1, b1 = params.weights[0]
        W1_scaled = W1 / params.obs_std
        W1_state = np.zeros((W1.shape[0], self.dX))
        np.add.at(W1_state, (slice(None), params.obs_indices), W1_scaled)
        self._layers = [(np.ascontiguousarray(W1_state), b1 - W1_scaled @ params.obs_mean)]
        self._layers += [(np.ascontiguousarray(W), b.copy()) for W, b in params.weights[1:]]
        self._buffers = [np.empty(W.shape[0]) for W, _ in self._layers[:-1]]
        self._relu = params.activation == "relu"
        self._squash = (params.action_scale, params.action_bias) if params.squashed else None
        self._action_covar = params.action_covar
        self._chol = np.linalg.cholesky(params.action_covar) if self._is_pd(params.action_covar) else None

    @staticmethod
    def _is_pd(covar: np.ndarray) -> bool:
        try:
            np.linalg.cholesky(covar)
        except np.linalg.LinAlgError:
            return False
        return True

    @property
    def dU(self) -> int:
        return self.params.dU

    @property
    def action_covar(self) -> np.ndarray:
        """Policy covariance (dU, dU)."""
        return self._action_covar

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """u = f(x) + chol(action_covar) @ noise; x: (dX,), noise: (dU,) standard normal or None; t unused.

        Returns a new (dU,) array. Raises ShapeError on a wrong x shape, a non-finite action (NaN/Inf
        state or weights overflow), or noise with a non-PD action_covar.
        """
        if x.shape != (self.dX,):
            raise ShapeError(f"x has shape {x.shape}, expected ({self.dX},)")
        h = x
        for (W, b), buf in zip(self._layers[:-1], self._buffers, strict=True):
            np.dot(W, h, out=buf)
            buf += b
            if self._relu:
                np.maximum(buf, 0.0, out=buf)
            else:
                np.tanh(buf, out=buf)
            h = buf
        W, b = self._layers[-1]
        u = np.dot(W, h)  # the one allocation: the caller keeps the action
        u += b
        if self._squash is not None:
            np.tanh(u, out=u)
            u *= self._squash[0]
            u += self._squash[1]
        if noise is not None:
            if self._chol is None:
                raise ShapeError("action_covar is not positive definite; cannot add noise")
            u += self._chol @ noise
        # One dot product detects any NaN/Inf for a fraction of a microsecond.
        if not math.isfinite(float(u @ u)):
            raise ShapeError(f"policy action is not finite: {u} (state {x})")
        return u

    def mean_batch(self, X: np.ndarray) -> np.ndarray:
        """Mean actions f(x) for states X: (M, dX) -> (M, dU)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dX:
            raise ShapeError(f"X has shape {X.shape}, expected (M, {self.dX})")
        h = X
        for i, (W, b) in enumerate(self._layers):
            h = h @ W.T + b
            if i < len(self._layers) - 1:
                h = np.maximum(h, 0.0) if self._relu else np.tanh(h)
        if self._squash is not None:
            h = self._squash[1] + self._squash[0] * np.tanh(h)
        return h

    def jacobian_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean actions f(x) (M, dU) and their Jacobians ∂f/∂x (M, dU, dX) at states X (M, dX).

        Chain rule through the folded layers: J = W_L D_{L−1} W_{L−1} ⋯ D_1 W_1' with D_l the diagonal of
        the activation's derivative (ReLU: 1[a > 0]; tanh: 1 − tanh²) at the pre-activations a_l; a squashed
        output adds the factor diag(action_scale ⊙ (1 − tanh² h_L)) on the left.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dX:
            raise ShapeError(f"X has shape {X.shape}, expected (M, {self.dX})")
        W1, b1 = self._layers[0]
        h = X @ W1.T + b1
        J = np.broadcast_to(W1, (X.shape[0], *W1.shape))
        for W, b in self._layers[1:]:
            if self._relu:
                slope = (h > 0.0).astype(np.float64)
                h = np.maximum(h, 0.0)
            else:
                h = np.tanh(h)
                slope = 1.0 - h * h
            J = W @ (slope[:, :, None] * J)
            h = h @ W.T + b
        if self._squash is not None:
            squashed = np.tanh(h)
            J = (self._squash[0] * (1.0 - squashed**2))[:, :, None] * J
            h = self._squash[1] + self._squash[0] * squashed
        return h, np.array(J)


class JacobianPolicy(BatchPolicy, Protocol):
    """A batch policy that also gives the Jacobian of its mean (the numpy deployment pass does)."""

    def jacobian_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...  # (M,dU), (M,dU,dX)


@with_single_threaded_blas
def linearize_policy_jacobian(policy: JacobianPolicy, X: np.ndarray) -> LinearGaussianController:
    """Time-varying linear-Gaussian π̂_t(u|x) = N(K_t x + k_t, Σ_t) from the policy's own derivatives.

    X: (N, T, dX) states (N >= 1); returns K (T, dU, dX), k (T, dU), pol_covar (T, dU, dU):
        K_t = mean_n ∂μ_π/∂x (x_{n,t}),  k_t = mean_n μ_π(x_{n,t}) − K_t mean_n x_{n,t},
        Σ_t = action_covar + mean_n r_{n,t} r_{n,t}ᵀ,  r_{n,t} = μ_π(x_{n,t}) − K_t x_{n,t} − k_t.
    Why derivatives rather than the regression of :func:`linearize_policy`: with N = 5 samples in
    dX = 26 dimensions the regression's gains in unexcited directions come from the prior (a fit over
    all time steps through nearly collinear state entries) and reached 100-300 N m per unit on peg
    insertion, whose closed loop under the fitted dynamics explodes; the policy's own slope is what it
    does near the samples. The residual term keeps what one linearisation per step cannot express.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3:
        raise ShapeError(f"X must be (N, T, dX), got shape {X.shape}")
    check_finite("X", X)
    N, T, dX = X.shape
    mu, J = policy.jacobian_batch(X.reshape(N * T, dX))
    check_finite("policy mean actions", mu)
    check_finite("policy Jacobians", J)
    dU = mu.shape[1]
    mu, J = mu.reshape(N, T, dU), J.reshape(N, T, dU, dX)
    K = J.mean(axis=0)
    k = mu.mean(axis=0) - np.einsum("tux,tx->tu", K, X.mean(axis=0))
    resid = mu - np.einsum("tux,ntx->ntu", K, X) - k
    covar = np.einsum("ntu,ntv->tuv", resid, resid) / N + policy.action_covar
    return LinearGaussianController.from_covariance(K, k, covar)


@with_single_threaded_blas
def linearize_policy(
    policy: BatchPolicy, X: np.ndarray, prior_strength: float = 1.0, regularization: float = 1e-8
) -> LinearGaussianController:
    """Time-varying linear-Gaussian fit π̂_t(u|x) = N(K_t x + k_t, Σ_t) of the policy at sampled states.

    X: (N, T, dX) states; returns K (T, dU, dX), k (T, dU), pol_covar (T, dU, dU).
    Per step t, the joint (x, μ_π(x)) over the N samples is fitted by the MAP estimate under a
    normal-inverse-Wishart prior (GPS ``gauss_fit_joint_prior``; Levine et al. JMLR 2016 §B):
        Σ = (N Σ̂_t + Φ + N m/(N+m) (μ̂_t − μ_0)(μ̂_t − μ_0)ᵀ) / (N + n_0),
    then conditioned: K_t = Σ_ux Σ_xx⁻¹, k_t = μ_u − K_t μ_x, Σ_t = Σ_uu − K_t Σ_xu + action_covar.
    Simplification of GPS's PolicyPriorGMM: the prior is a single Gaussian cluster over all N·T points
    of this call (μ_0, Φ = strength · covariance, m = strength, n_0 = strength · (NT − 2 − D)/(NT)).
    regularization · I is added to every Σ_xx (GPS adds it at t = 0 only): samples start at the same x0,
    and states may hold exactly collinear entries (q and ee points of a point mass).
    A policy that is exactly linear in x is recovered (all points share its hyperplane) up to the ridge.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3:
        raise ShapeError(f"X must be (N, T, dX), got shape {X.shape}")
    check_finite("X", X)
    N, T, dX = X.shape
    if N < 2:
        raise ShapeError(f"linearising a policy needs at least 2 samples, got N={N}")
    if not np.isfinite(prior_strength) or prior_strength <= 0:
        raise ValueError(f"prior_strength must be positive, got {prior_strength}")
    U = policy.mean_batch(X.reshape(N * T, dX)).reshape(N, T, -1)
    check_finite("policy mean actions", U)
    dU = U.shape[2]
    XU = np.concatenate([X, U], axis=2)  # (N, T, D)
    mu0, Phi, m, n0 = _single_cluster_prior(XU.reshape(N * T, dX + dU), prior_strength)
    mun = XU.mean(axis=0)  # (T, D)
    diff = XU - mun
    empsig = np.einsum("nti,ntj->tij", diff, diff) / N
    dmu = mun - mu0
    sigma = (N * empsig + Phi + (N * m) / (N + m) * np.einsum("ti,tj->tij", dmu, dmu)) / (N + n0)
    sigma = 0.5 * (sigma + np.swapaxes(sigma, 1, 2))
    sigma[:, :dX, :dX] += regularization * np.eye(dX)
    return _condition_on_state(sigma, mun, dX, policy.action_covar)


def _single_cluster_prior(points: np.ndarray, strength: float) -> tuple[np.ndarray, np.ndarray, float, float]:
    """NIW prior (μ_0 (D,), Φ (D, D), m, n_0) from points (P, D): GPS's GMM.inference, one cluster."""
    P, D = points.shape
    mu0 = points.mean(axis=0)
    diff = points - mu0
    Phi = diff.T @ diff / P
    n0 = max(float(P - 2 - D) / P, 0.0)
    return mu0, strength * Phi, strength, strength * n0


def _condition_on_state(
    sigma: np.ndarray, mu: np.ndarray, dX: int, action_covar: np.ndarray
) -> LinearGaussianController:
    """Conditional u | x of joint Gaussians N(mu (T, D), sigma (T, D, D)), plus the policy noise (dU, dU)."""
    Sxx, Sxu, Suu = sigma[:, :dX, :dX], sigma[:, :dX, dX:], sigma[:, dX:, dX:]
    try:
        K = np.swapaxes(np.linalg.solve(Sxx, Sxu), 1, 2)  # (T, dU, dX)
    except np.linalg.LinAlgError as err:
        raise ShapeError("state covariance of the policy samples is singular; raise prior_strength") from err
    k = mu[:, dX:] - np.einsum("tux,tx->tu", K, mu[:, :dX])
    resid = Suu - np.einsum("tux,txv->tuv", K, Sxu)
    resid = 0.5 * (resid + np.swapaxes(resid, 1, 2))
    # Round-off can leave a tiny negative eigenvalue in an exactly deterministic fit.
    resid = _clip_to_psd(resid)
    return LinearGaussianController.from_covariance(K, k, resid + action_covar)


def _clip_to_psd(covar: np.ndarray) -> np.ndarray:
    """Project symmetric (T, d, d) matrices onto the PSD cone by clipping eigenvalues at zero."""
    w, V = np.linalg.eigh(covar)
    return np.einsum("tij,tj,tkj->tik", V, np.maximum(w, 0.0), V)


NPZ_NAME = "policy.npz"


def params_to_arrays(params: PolicyParams, config: GPSConfig) -> dict[str, np.ndarray]:
    """Flat dict of arrays (for ``np.savez``) of params and config; inverse: :func:`params_from_arrays`."""
    arrays: dict[str, np.ndarray] = {
        "n_layers": np.array(len(params.weights)),
        "activation": np.array(params.activation),
        "obs_mean": params.obs_mean,
        "obs_std": params.obs_std,
        "obs_indices": params.obs_indices,
        "action_covar": params.action_covar,
        "state_dim": np.array(params.state_dim),
        "gps_config_json": np.array(json.dumps(to_dict(config))),
        "squash": np.array(params.squash),
    }
    if params.squashed:
        arrays["action_scale"] = np.asarray(params.action_scale)
        arrays["action_bias"] = np.asarray(params.action_bias)
    for i, (W, b) in enumerate(params.weights):
        arrays[f"W{i}"] = W
        arrays[f"b{i}"] = b
    return arrays


def params_from_arrays(arrays: Mapping[str, np.ndarray]) -> tuple[PolicyParams, GPSConfig]:
    """Inverse of :func:`params_to_arrays`; ShapeError/ConfigError on a malformed file.

    A checkpoint without a ``squash`` entry (written before squashed outputs existed) loads unsquashed.
    """
    try:
        squash = str(arrays["squash"]) if "squash" in arrays else "none"
        squashed = squash != "none"
        n_layers = int(arrays["n_layers"])
        weights = tuple((np.asarray(arrays[f"W{i}"]), np.asarray(arrays[f"b{i}"])) for i in range(n_layers))
        params = PolicyParams(
            weights=weights,
            activation=str(arrays["activation"]),
            obs_mean=arrays["obs_mean"],
            obs_std=arrays["obs_std"],
            obs_indices=arrays["obs_indices"],
            action_covar=arrays["action_covar"],
            state_dim=int(arrays["state_dim"]),
            squash=squash,
            action_scale=arrays["action_scale"] if squashed else None,
            action_bias=arrays["action_bias"] if squashed else None,
        )
        config = from_dict(GPSConfig, json.loads(str(arrays["gps_config_json"])))
    except KeyError as err:
        raise ShapeError(f"policy checkpoint is missing entry {err}") from err
    return params, config


def save_numpy_policy(folder: str | Path, params: PolicyParams, config: GPSConfig) -> Path:
    """Write ``<folder>/policy.npz`` (what the sampler and ``mbpl eval`` deploy); returns its path.

    Written to a temporary file first and renamed, so a reader never sees half a checkpoint.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, tmp = folder / NPZ_NAME, folder / f".{NPZ_NAME}.tmp.npz"
    np.savez(tmp, **params_to_arrays(params, config))
    os.replace(tmp, path)
    return path


def load_policy_checkpoint(path: str | Path) -> tuple[NumpyPolicy, GPSConfig]:
    """Load the numpy side of a checkpoint written by ``mbpl_core.guided.mdgps.save_policy_checkpoint``.

    path: the checkpoint directory or its ``policy.npz``. Needs numpy only (no torch).
    """
    path = Path(path)
    npz = path / NPZ_NAME if path.is_dir() else path
    with np.load(npz, allow_pickle=False) as data:
        params, config = params_from_arrays(data)
    return NumpyPolicy(params), config
