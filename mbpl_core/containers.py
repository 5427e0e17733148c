"""Frozen containers for controllers, dynamics and samples, with shape checks on construction.

Array conventions (see DESIGN.md): T, dX, dU are horizon, state and action dimensions;
K: (T, dU, dX), k: (T, dU), pol_covar: (T, dU, dU); Fm: (T, dX, dX+dU), fv: (T, dX),
dyn_covar: (T, dX, dX); X: (N, T, dX), U: (N, T, dU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg


class ShapeError(ValueError):
    """An array has the wrong shape, or holds NaN/Inf, or a covariance is not positive definite."""


def _as_array(name: str, value: object, ndim: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ShapeError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


def check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raise :class:`ShapeError` naming ``name`` unless ``arr.shape == shape``."""
    if arr.shape != tuple(shape):
        raise ShapeError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")


def check_finite(name: str, arr: np.ndarray) -> None:
    """Raise :class:`ShapeError` naming ``name`` and the first bad index if ``arr`` has NaN/Inf."""
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ShapeError(f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})")


def _freeze(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


def batched_cholesky(name: str, covar: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of (T, d, d) covariances; ShapeError naming the step if one is not PD."""
    chol = np.empty_like(covar)
    for t in range(covar.shape[0]):
        try:
            chol[t] = np.linalg.cholesky(covar[t])
        except np.linalg.LinAlgError as err:
            raise ShapeError(f"{name}[{t}] is not positive definite") from err
    return chol


@dataclass(frozen=True)
class LinearGaussianController:
    """Time-varying linear-Gaussian controller u_t ~ N(K_t x_t + k_t, pol_covar_t).

    K: (T, dU, dX); k: (T, dU); pol_covar, chol_pol_covar (lower), inv_pol_covar: (T, dU, dU).
    Build with :meth:`from_covariance` unless all three covariance forms are already at hand.
    """

    K: np.ndarray
    k: np.ndarray
    pol_covar: np.ndarray
    chol_pol_covar: np.ndarray
    inv_pol_covar: np.ndarray

    def __post_init__(self) -> None:
        K = _as_array("K", self.K, 3)
        T, dU, dX = K.shape
        arrays = {"K": K}
        for name, shape in (
            ("k", (T, dU)),
            ("pol_covar", (T, dU, dU)),
            ("chol_pol_covar", (T, dU, dU)),
            ("inv_pol_covar", (T, dU, dU)),
        ):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            check_shape(name, arr, shape)
            arrays[name] = arr
        for name, arr in arrays.items():
            check_finite(name, arr)
            arr = np.array(arr, copy=True)
            _freeze(arr)
            object.__setattr__(self, name, arr)

    @classmethod
    def from_covariance(cls, K: np.ndarray, k: np.ndarray, pol_covar: np.ndarray) -> LinearGaussianController:
        """Controller from gains, offsets and covariance; Cholesky and inverse are computed here.

        Raises ShapeError if a pol_covar[t] is not symmetric positive definite.
        """
        pol_covar = _as_array("pol_covar", pol_covar, 3)
        check_finite("pol_covar", pol_covar)
        pol_covar = 0.5 * (pol_covar + np.swapaxes(pol_covar, 1, 2))
        chol = batched_cholesky("pol_covar", pol_covar)
        eye = np.eye(pol_covar.shape[1])
        inv = np.empty_like(pol_covar)
        for t in range(pol_covar.shape[0]):
            inv[t] = scipy.linalg.cho_solve((chol[t], True), eye)
        return cls(K=K, k=k, pol_covar=pol_covar, chol_pol_covar=chol, inv_pol_covar=inv)

    @property
    def T(self) -> int:
        return int(self.K.shape[0])

    @property
    def dU(self) -> int:
        return int(self.K.shape[1])

    @property
    def dX(self) -> int:
        return int(self.K.shape[2])

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """u = K_t x + k_t + chol_pol_covar_t @ noise; noise: (dU,) standard normal or None. Returns (dU,)."""
        u = self.K[t] @ x + self.k[t]
        if noise is not None:
            u = u + self.chol_pol_covar[t] @ noise
        return u

    def with_noise_folded(self, noise: np.ndarray) -> LinearGaussianController:
        """Same controller with pre-drawn noise (T, dU) folded into k, so a trial replays exactly.

        k'_t = k_t + chol_pol_covar_t @ noise_t; the covariance is kept for bookkeeping.
        """
        noise = np.asarray(noise, dtype=np.float64)
        check_shape("noise", noise, (self.T, self.dU))
        k = self.k + np.einsum("tij,tj->ti", self.chol_pol_covar, noise)
        return LinearGaussianController(self.K, k, self.pol_covar, self.chol_pol_covar, self.inv_pol_covar)


@dataclass(frozen=True)
class LinearDynamics:
    """Fitted time-varying linear-Gaussian dynamics.

    p(x_{t+1} | x_t, u_t) = N(Fm_t [x_t; u_t] + fv_t, dyn_covar_t).

    Fm: (T, dX, dX+dU); fv: (T, dX); dyn_covar: (T, dX, dX); x0mu: (dX,); x0sigma: (dX, dX).
    The last step's entries are unused by the forward pass (there is no x_{T}).
    """

    Fm: np.ndarray
    fv: np.ndarray
    dyn_covar: np.ndarray
    x0mu: np.ndarray
    x0sigma: np.ndarray

    def __post_init__(self) -> None:
        Fm = _as_array("Fm", self.Fm, 3)
        T, dX, dXU = Fm.shape
        if dXU <= dX:
            raise ShapeError(f"Fm has shape {Fm.shape}: its last axis must be dX+dU > dX")
        arrays = {"Fm": Fm}
        for name, shape in (
            ("fv", (T, dX)),
            ("dyn_covar", (T, dX, dX)),
            ("x0mu", (dX,)),
            ("x0sigma", (dX, dX)),
        ):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            check_shape(name, arr, shape)
            arrays[name] = arr
        for name, arr in arrays.items():
            check_finite(name, arr)
            arr = np.array(arr, copy=True)
            _freeze(arr)
            object.__setattr__(self, name, arr)

    @property
    def T(self) -> int:
        return int(self.Fm.shape[0])

    @property
    def dX(self) -> int:
        return int(self.Fm.shape[1])

    @property
    def dU(self) -> int:
        return int(self.Fm.shape[2] - self.Fm.shape[1])


@dataclass(frozen=True)
class TrajectoryMarginals:
    """Gaussian marginals of the joint (x_t, u_t) under a controller and dynamics.

    mu: (T, dX+dU); sigma: (T, dX+dU, dX+dU).
    """

    mu: np.ndarray
    sigma: np.ndarray

    def __post_init__(self) -> None:
        mu = _as_array("mu", self.mu, 2)
        sigma = np.asarray(self.sigma, dtype=np.float64)
        check_shape("sigma", sigma, (mu.shape[0], mu.shape[1], mu.shape[1]))
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)


@dataclass(frozen=True)
class SampleBatch:
    """N sampled trajectories of one condition.

    X: (N, T, dX) states; U: (N, T, dU) actions;
    ee_jacobians: optional (N, T, dP, dQ) Jacobians of the stacked end-effector points
    (dP = 3 * number of points) with respect to the dQ joint positions, for costs that need them.
    Raises ShapeError on inconsistent shapes or NaN/Inf.
    """

    X: np.ndarray
    U: np.ndarray
    ee_jacobians: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        X = _as_array("X", self.X, 3)
        N, T, _ = X.shape
        U = _as_array("U", self.U, 3)
        if U.shape[:2] != (N, T):
            raise ShapeError(f"U has shape {U.shape}, expected ({N}, {T}, dU) to match X {X.shape}")
        check_finite("X", X)
        check_finite("U", U)
        arrays = {"X": X, "U": U}
        if self.ee_jacobians is not None:
            J = _as_array("ee_jacobians", self.ee_jacobians, 4)
            if J.shape[:2] != (N, T):
                raise ShapeError(f"ee_jacobians has shape {J.shape}, expected ({N}, {T}, dP, dQ)")
            check_finite("ee_jacobians", J)
            arrays["ee_jacobians"] = J
        for name, arr in arrays.items():
            arr = np.array(arr, copy=True)
            _freeze(arr)
            object.__setattr__(self, name, arr)

    @property
    def N(self) -> int:
        return int(self.X.shape[0])

    @property
    def T(self) -> int:
        return int(self.X.shape[1])

    @property
    def dX(self) -> int:
        return int(self.X.shape[2])

    @property
    def dU(self) -> int:
        return int(self.U.shape[2])

    def __len__(self) -> int:
        return self.N

    def select(self, indices: slice | list[int] | np.ndarray) -> SampleBatch:
        """Sub-batch of the given sample indices."""
        J = None if self.ee_jacobians is None else self.ee_jacobians[indices]
        return SampleBatch(self.X[indices], self.U[indices], J)

    @staticmethod
    def concatenate(batches: list[SampleBatch]) -> SampleBatch:
        """Stack batches along N; all must share T, dX, dU (and all or none carry Jacobians)."""
        if not batches:
            raise ShapeError("cannot concatenate an empty list of sample batches")
        has_j = {b.ee_jacobians is not None for b in batches}
        if len(has_j) != 1:
            raise ShapeError("cannot concatenate batches with and without ee_jacobians")
        J = np.concatenate([b.ee_jacobians for b in batches]) if has_j.pop() else None  # type: ignore[misc]
        return SampleBatch(np.concatenate([b.X for b in batches]), np.concatenate([b.U for b in batches]), J)


@dataclass(frozen=True)
class StateLayout:
    """Where each part of the state vector lives: x = [q, q̇, ee points − target, ee point velocities].

    dQ: number of actuated joints; n_points: number of end-effector points (3 coordinates each).
    dX = 2 dQ + 6 n_points; dP = 3 n_points.
    """

    dQ: int
    n_points: int

    def __post_init__(self) -> None:
        if self.dQ < 1 or self.n_points < 0:
            raise ShapeError(f"StateLayout needs dQ >= 1 and n_points >= 0, got {self.dQ}, {self.n_points}")

    @property
    def dP(self) -> int:
        return 3 * self.n_points

    @property
    def dX(self) -> int:
        return 2 * self.dQ + 2 * self.dP

    @property
    def q(self) -> slice:
        return slice(0, self.dQ)

    @property
    def qd(self) -> slice:
        return slice(self.dQ, 2 * self.dQ)

    @property
    def ee_points(self) -> slice:
        return slice(2 * self.dQ, 2 * self.dQ + self.dP)

    @property
    def ee_velocities(self) -> slice:
        return slice(2 * self.dQ + self.dP, self.dX)
