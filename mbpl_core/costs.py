"""Costs and their second-order expansions along trajectories.

Every cost maps one trajectory X: (T, dX), U: (T, dU) (and optionally the end-effector Jacobians
ee_jacobians: (T, dP, dQ)) to a :class:`CostExpansion` — the per-step value l_t and its exact first and
second derivatives with respect to x_t and u_t. :func:`quadratic_cost_model` averages those expansions
over a batch of samples into the absolute-coordinate :class:`QuadraticCost` used by the LQR step.

Time weighting follows the GPS code's ``get_ramp_multiplier``: a ramp r: (T,) ("constant", "linear",
"quadratic", "final_only") whose last entry is multiplied by a final-step multiplier.

Batched, derivative-free path (for planners): ``cost.value_batched(X, U, t0, T)`` gives the per-step
value l_t at the absolute steps t0..t0+H−1 of a T-step episode for any batch of trajectory pieces
X: (..., H, dX), U: (..., H, dU) (torch tensors, or numpy arrays through torch), equal to
``evaluate(X_n, U_n).l`` of each full trajectory. See :meth:`Cost.value_batched`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np

from mbpl_core.config import ConfigError
from mbpl_core.containers import SampleBatch, ShapeError, StateLayout, check_finite, check_shape

if TYPE_CHECKING:
    import torch

ArrayT = TypeVar("ArrayT", "torch.Tensor", np.ndarray)

Ramp = Literal["constant", "linear", "quadratic", "final_only"]
RAMPS: tuple[str, ...] = ("constant", "linear", "quadratic", "final_only")


def ramp_multiplier(ramp: str, T: int, final_multiplier: float = 1.0) -> np.ndarray:
    """Time weights r: (T,) as GPS's get_ramp_multiplier.

    constant: r_t = 1; linear: r_t = (t+1)/T; quadratic: r_t = ((t+1)/T)²; final_only: r_t = [t = T−1].
    Then r_{T−1} *= final_multiplier.
    """
    if T < 1:
        raise ValueError(f"ramp_multiplier needs T >= 1, got {T}")
    steps = (np.arange(T, dtype=np.float64) + 1.0) / T
    if ramp == "constant":
        r = np.ones(T)
    elif ramp == "linear":
        r = steps
    elif ramp == "quadratic":
        r = steps**2
    elif ramp == "final_only":
        r = np.zeros(T)
        r[-1] = 1.0
    else:
        raise ValueError(f"unknown ramp {ramp!r}; expected one of {list(RAMPS)}")
    r[-1] *= final_multiplier
    return r


@dataclass(frozen=True, eq=False)
class CostExpansion:
    """Per-step cost value and derivatives along one trajectory.

    l: (T,); lx: (T, dX); lu: (T, dU); lxx: (T, dX, dX); luu: (T, dU, dU); lux: (T, dU, dX)
    (lux_t = ∂²l_t / ∂u_t ∂x_t). Supports ``a + b``, ``w * a`` and :meth:`time_scaled`.
    """

    l: np.ndarray
    lx: np.ndarray
    lu: np.ndarray
    lxx: np.ndarray
    luu: np.ndarray
    lux: np.ndarray

    def __post_init__(self) -> None:
        l = np.asarray(self.l, dtype=np.float64)
        if l.ndim != 1:
            raise ShapeError(f"l must have shape (T,), got {l.shape}")
        lx = np.asarray(self.lx, dtype=np.float64)
        lu = np.asarray(self.lu, dtype=np.float64)
        if lx.ndim != 2 or lu.ndim != 2:
            raise ShapeError(f"lx and lu must be (T, dX) and (T, dU), got {lx.shape}, {lu.shape}")
        T, dX, dU = l.shape[0], lx.shape[1], lu.shape[1]
        shapes = {
            "lx": (T, dX), "lu": (T, dU), "lxx": (T, dX, dX), "luu": (T, dU, dU), "lux": (T, dU, dX)
        }
        object.__setattr__(self, "l", l)
        for name, shape in shapes.items():
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            check_shape(name, arr, shape)
            object.__setattr__(self, name, arr)

    @property
    def T(self) -> int:
        return int(self.l.shape[0])

    @property
    def dX(self) -> int:
        return int(self.lx.shape[1])

    @property
    def dU(self) -> int:
        return int(self.lu.shape[1])

    @staticmethod
    def zeros(T: int, dX: int, dU: int) -> CostExpansion:
        """The expansion of the zero cost."""
        return CostExpansion(
            np.zeros(T), np.zeros((T, dX)), np.zeros((T, dU)),
            np.zeros((T, dX, dX)), np.zeros((T, dU, dU)), np.zeros((T, dU, dX)),
        )

    def _fields(self) -> tuple[np.ndarray, ...]:
        return (self.l, self.lx, self.lu, self.lxx, self.luu, self.lux)

    def __add__(self, other: CostExpansion) -> CostExpansion:
        if not isinstance(other, CostExpansion):
            return NotImplemented
        if (self.T, self.dX, self.dU) != (other.T, other.dX, other.dU):
            raise ShapeError(
                f"cannot add expansions of (T, dX, dU) = {(self.T, self.dX, self.dU)} "
                f"and {(other.T, other.dX, other.dU)}"
            )
        return CostExpansion(*(a + b for a, b in zip(self._fields(), other._fields(), strict=True)))

    def __mul__(self, weight: float) -> CostExpansion:
        if not isinstance(weight, (int, float, np.floating)):
            return NotImplemented
        return CostExpansion(*(weight * a for a in self._fields()))

    __rmul__ = __mul__

    def time_scaled(self, r: np.ndarray) -> CostExpansion:
        """Every term of step t multiplied by r_t; r: (T,)."""
        r = np.asarray(r, dtype=np.float64)
        check_shape("r", r, (self.T,))
        return CostExpansion(
            r * self.l, r[:, None] * self.lx, r[:, None] * self.lu,
            r[:, None, None] * self.lxx, r[:, None, None] * self.luu, r[:, None, None] * self.lux,
        )


def _check_trajectory(X: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    U = np.asarray(U, dtype=np.float64)
    if X.ndim != 2 or U.ndim != 2 or X.shape[0] != U.shape[0]:
        raise ShapeError(f"X and U must be (T, dX) and (T, dU) with the same T, got {X.shape}, {U.shape}")
    check_finite("X", X)
    check_finite("U", U)
    return X, U


class Cost(ABC):
    """A per-step cost l_t(x_t, u_t) with exact first and second derivatives."""

    @abstractmethod
    def evaluate(
        self, X: np.ndarray, U: np.ndarray, ee_jacobians: np.ndarray | None = None
    ) -> CostExpansion:
        """Expansion along X: (T, dX), U: (T, dU); ee_jacobians: (T, dP, dQ) or None."""

    def value_batched(self, X: ArrayT, U: ArrayT, t0: int = 0, T: int | None = None) -> ArrayT:
        """Per-step cost l_t, derivative-free, for a batch of trajectory pieces.

        X: (..., H, dX), U: (..., H, dU) (batch dimensions broadcast against each other); row h is the
        absolute step t = t0 + h of a T-step episode (T = t0 + H when None), so ramps and the final-step
        multiplier apply at the episode's steps. Steps t ≥ T are not part of the episode and cost 0.
        Returns l: (broadcast batch, H), in X's dtype and on its device; numpy in → float64 numpy out
        (computed through torch). For a full trajectory (t0 = 0, T = H) this equals evaluate(X, U).l;
        EndEffectorCost(use_jacobians=True) gives the same value (its Jacobians only change derivatives).
        """
        import torch

        if t0 < 0 or (T is not None and T < 1):
            raise ValueError(f"value_batched needs t0 >= 0 and T >= 1, got t0={t0}, T={T}")
        if isinstance(X, np.ndarray):
            l = self._value_torch(torch.from_numpy(np.asarray(X, dtype=np.float64)),
                                  torch.from_numpy(np.asarray(U, dtype=np.float64)), t0, T)
            return l.numpy()
        return self._value_torch(X, torch.as_tensor(U, dtype=X.dtype, device=X.device), t0, T)

    def _value_torch(self, X: torch.Tensor, U: torch.Tensor, t0: int, T: int | None) -> torch.Tensor:
        """l: (..., H) for X: (..., H, dX), U: (..., H, dU) torch tensors; see :meth:`value_batched`."""
        raise NotImplementedError(f"{type(self).__name__} has no batched evaluation")


def _episode_weights(ramp: str, final_multiplier: float, t0: int, H: int, T: int | None,
                     like: torch.Tensor) -> torch.Tensor:
    """r_t for t = t0..t0+H−1: the ramp of a T-step episode (T = t0 + H if None), 0 for t ≥ T. (H,)."""
    import torch

    T = t0 + H if T is None else T
    r = np.zeros(H)
    inside = max(0, min(H, T - t0))
    if inside > 0:
        r[:inside] = ramp_multiplier(ramp, T, final_multiplier)[t0:t0 + inside]
    return torch.as_tensor(r, dtype=like.dtype, device=like.device)


@dataclass(frozen=True, eq=False)
class ActionCost(Cost):
    """l_t = 0.5 Σ_i w_i u_{t,i}²; weights w: (dU,) non-negative."""

    weights: np.ndarray

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"ActionCost weights must be a finite non-negative vector, got {w}")
        object.__setattr__(self, "weights", w)

    def evaluate(
        self, X: np.ndarray, U: np.ndarray, ee_jacobians: np.ndarray | None = None
    ) -> CostExpansion:
        """lu_t = w ⊙ u_t, luu_t = diag(w); all x-terms zero."""
        X, U = _check_trajectory(X, U)
        T, dX = X.shape
        check_shape("U[0]", U[0], self.weights.shape)
        exp = CostExpansion.zeros(T, dX, U.shape[1])
        l = 0.5 * np.sum(self.weights * U**2, axis=1)
        luu = np.broadcast_to(np.diag(self.weights), exp.luu.shape)
        return CostExpansion(l, exp.lx, self.weights * U, exp.lxx, luu, exp.lux)

    def _value_torch(self, X: torch.Tensor, U: torch.Tensor, t0: int, T: int | None) -> torch.Tensor:
        """0.5 Σ_i w_i u_{t,i}² on every step of the episode, 0 past it: (..., H)."""
        _check_last_dim("U", U, self.weights.shape[0])
        import torch

        w = _as_torch(self.weights, U)
        inside = _episode_weights("constant", 1.0, t0, U.shape[-2], T, U)
        return inside * (0.5 * torch.sum(w * U**2, dim=-1))


@dataclass(frozen=True, eq=False)
class StateCost(Cost):
    """l_t = r_t · 0.5 Σ_i w_i (x_{t,i} − target_i)²; weights, target: (dX,); r from ramp/final_multiplier."""

    weights: np.ndarray
    target: np.ndarray
    ramp: str = "constant"
    final_multiplier: float = 1.0

    def __post_init__(self) -> None:
        w = np.asarray(self.weights, dtype=np.float64)
        tgt = np.asarray(self.target, dtype=np.float64)
        if w.ndim != 1 or tgt.shape != w.shape:
            raise ValueError(
                f"StateCost weights and target must be (dX,) vectors, got {w.shape}, {tgt.shape}"
            )
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(tgt))) or np.any(w < 0):
            raise ValueError("StateCost weights must be finite and non-negative and target finite")
        if self.ramp not in RAMPS:
            raise ValueError(f"unknown ramp {self.ramp!r}; expected one of {list(RAMPS)}")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "target", tgt)

    def evaluate(
        self, X: np.ndarray, U: np.ndarray, ee_jacobians: np.ndarray | None = None
    ) -> CostExpansion:
        """lx_t = r_t w ⊙ (x_t − target), lxx_t = r_t diag(w)."""
        X, U = _check_trajectory(X, U)
        T, dX = X.shape
        check_shape("X[0]", X[0], self.weights.shape)
        r = ramp_multiplier(self.ramp, T, self.final_multiplier)
        diff = X - self.target
        exp = CostExpansion.zeros(T, dX, U.shape[1])
        lxx = r[:, None, None] * np.diag(self.weights)
        l = 0.5 * r * np.sum(self.weights * diff**2, axis=1)
        return CostExpansion(l, r[:, None] * self.weights * diff, exp.lu, lxx, exp.luu, exp.lux)

    def _value_torch(self, X: torch.Tensor, U: torch.Tensor, t0: int, T: int | None) -> torch.Tensor:
        """r_t · 0.5 Σ_i w_i (x_{t,i} − target_i)²: (..., H)."""
        _check_last_dim("X", X, self.weights.shape[0])
        import torch

        r = _episode_weights(self.ramp, self.final_multiplier, t0, X.shape[-2], T, X)
        diff = X - _as_torch(self.target, X)
        return 0.5 * r * torch.sum(_as_torch(self.weights, X) * diff**2, dim=-1)


def l1l2_penalty(d: np.ndarray, wp: np.ndarray, l1: float, l2: float, alpha: float) -> tuple[
    np.ndarray, np.ndarray, np.ndarray
]:
    """GPS's l2 + log-like ("l1-l2") penalty and its exact derivatives.

    With s = Σ_i wp_i d_i² and ρ = sqrt(alpha + s):  l(d) = 0.5 l2 s + l1 ρ,
    ∂l/∂d = (l2 + l1/ρ) wp ⊙ d,   ∂²l/∂d² = (l2 + l1/ρ) diag(wp) − l1 (wp⊙d)(wp⊙d)ᵀ / ρ³ (PSD).
    d: (T, dP); wp: (dP,). Returns l (T,), ld (T, dP), ldd (T, dP, dP).
    """
    wd = wp * d
    s = np.sum(wd * d, axis=1)
    rho = np.sqrt(alpha + s)
    l = 0.5 * l2 * s + l1 * rho
    scale = l2 + l1 / rho
    ld = scale[:, None] * wd
    ldd = scale[:, None, None] * np.diag(wp) - (l1 / rho**3)[:, None, None] * wd[:, :, None] * wd[:, None, :]
    return l, ld, ldd


@dataclass(frozen=True, eq=False)
class EndEffectorCost(Cost):
    """Points cost on the ee slice d_t = x_t[layout.ee_points] (already points − target).

    l_t = r_t [0.5 l2 |d_t|²_wp + l1 sqrt(alpha + |d_t|²_wp)] (see :func:`l1l2_penalty`).
    use_jacobians=False: derivatives sit on the ee_points slots of x.
    use_jacobians=True (GPS CostFK): with J_t = ee_jacobians[t]: (dP, dQ), the Gauss–Newton mapping
    lx_q = J_tᵀ ∂l/∂d, lxx_qq = J_tᵀ (∂²l/∂d²) J_t onto the joint-position slots (FK curvature dropped).
    """

    layout: StateLayout
    wp: np.ndarray
    l1: float = 0.1
    l2: float = 10.0
    alpha: float = 1e-5
    ramp: str = "constant"
    final_multiplier: float = 1.0
    use_jacobians: bool = False

    def __post_init__(self) -> None:
        wp = np.asarray(self.wp, dtype=np.float64)
        if wp.shape != (self.layout.dP,) or not np.all(np.isfinite(wp)) or np.any(wp < 0):
            raise ValueError(f"EndEffectorCost wp must be finite non-negative of shape ({self.layout.dP},)")
        if self.alpha <= 0 or self.l1 < 0 or self.l2 < 0:
            raise ValueError(f"EndEffectorCost needs alpha > 0, l1 >= 0, l2 >= 0 (got {self.alpha}, "
                             f"{self.l1}, {self.l2})")
        if self.ramp not in RAMPS:
            raise ValueError(f"unknown ramp {self.ramp!r}; expected one of {list(RAMPS)}")
        object.__setattr__(self, "wp", wp)

    def evaluate(
        self, X: np.ndarray, U: np.ndarray, ee_jacobians: np.ndarray | None = None
    ) -> CostExpansion:
        """Expansion of the ee points cost; ee_jacobians: (T, dP, dQ), required when use_jacobians."""
        X, U = _check_trajectory(X, U)
        T, dX = X.shape
        lay = self.layout
        if dX != lay.dX:
            raise ShapeError(f"X has dX = {dX}, but the state layout has dX = {lay.dX}")
        r = ramp_multiplier(self.ramp, T, self.final_multiplier)
        l, ld, ldd = l1l2_penalty(X[:, lay.ee_points], self.wp, self.l1, self.l2, self.alpha)
        exp = CostExpansion.zeros(T, dX, U.shape[1])
        lx, lxx = exp.lx, exp.lxx
        if self.use_jacobians:
            if ee_jacobians is None:
                raise ShapeError("EndEffectorCost(use_jacobians=True) needs ee_jacobians (T, dP, dQ)")
            J = np.asarray(ee_jacobians, dtype=np.float64)
            check_shape("ee_jacobians", J, (T, lay.dP, lay.dQ))
            check_finite("ee_jacobians", J)
            Jt = np.swapaxes(J, 1, 2)
            lx[:, lay.q] = (Jt @ ld[:, :, None])[:, :, 0]
            lxx[:, lay.q, lay.q] = Jt @ ldd @ J
        else:
            lx[:, lay.ee_points] = ld
            lxx[:, lay.ee_points, lay.ee_points] = ldd
        return CostExpansion(l, lx, exp.lu, lxx, exp.luu, exp.lux).time_scaled(r)

    def _value_torch(self, X: torch.Tensor, U: torch.Tensor, t0: int, T: int | None) -> torch.Tensor:
        """r_t [0.5 l2 s_t + l1 sqrt(alpha + s_t)], s_t = Σ_i wp_i d_{t,i}²: (..., H), for either
        use_jacobians setting (the Jacobians only change the derivatives)."""
        _check_last_dim("X", X, self.layout.dX)
        import torch

        r = _episode_weights(self.ramp, self.final_multiplier, t0, X.shape[-2], T, X)
        d = X[..., self.layout.ee_points]
        s = torch.sum(_as_torch(self.wp, X) * d * d, dim=-1)
        return r * (0.5 * self.l2 * s + self.l1 * torch.sqrt(self.alpha + s))


@dataclass(frozen=True, eq=False)
class SumCost(Cost):
    """l_t = Σ_j weight_j · cost_j(x_t, u_t); terms: sequence of (weight, cost) pairs."""

    terms: tuple[tuple[float, Cost], ...]

    def __post_init__(self) -> None:
        terms = tuple((float(w), c) for w, c in self.terms)
        if not terms:
            raise ValueError("SumCost needs at least one (weight, cost) term")
        for w, c in terms:
            if not np.isfinite(w) or not isinstance(c, Cost):
                raise ValueError(f"SumCost term ({w}, {c!r}) needs a finite weight and a Cost")
        object.__setattr__(self, "terms", terms)

    def evaluate(
        self, X: np.ndarray, U: np.ndarray, ee_jacobians: np.ndarray | None = None
    ) -> CostExpansion:
        """Weighted sum of the terms' expansions."""
        total: CostExpansion | None = None
        for w, cost in self.terms:
            e = w * cost.evaluate(X, U, ee_jacobians)
            total = e if total is None else total + e
        assert total is not None
        return total

    def _value_torch(self, X: torch.Tensor, U: torch.Tensor, t0: int, T: int | None) -> torch.Tensor:
        """Σ_j weight_j l^j_t: (..., H)."""
        total: torch.Tensor | None = None
        for w, cost in self.terms:
            l = w * cost._value_torch(X, U, t0, T)
            total = l if total is None else total + l
        assert total is not None
        return total


def _as_torch(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.as_tensor(values, dtype=like.dtype, device=like.device)


def _check_last_dim(name: str, arr: torch.Tensor, size: int) -> None:
    if arr.ndim < 2 or arr.shape[-1] != size:
        raise ShapeError(f"{name} must have shape (..., H, {size}), got {tuple(arr.shape)}")


@dataclass(frozen=True, eq=False)
class QuadraticCost:
    """Quadratic cost model in absolute coordinates: c_t(xu) = 0.5 xuᵀ Cm_t xu + xuᵀ cv_t + cc_t.

    Cm: (T, dX+dU, dX+dU) symmetric; cv: (T, dX+dU); cc: (T,). Raises ShapeError on bad shapes or NaN/Inf.
    """

    Cm: np.ndarray
    cv: np.ndarray
    cc: np.ndarray

    def __post_init__(self) -> None:
        Cm = np.asarray(self.Cm, dtype=np.float64)
        if Cm.ndim != 3 or Cm.shape[1] != Cm.shape[2]:
            raise ShapeError(f"Cm must have shape (T, dX+dU, dX+dU), got {Cm.shape}")
        T, dXU, _ = Cm.shape
        cv = np.asarray(self.cv, dtype=np.float64)
        cc = np.asarray(self.cc, dtype=np.float64)
        check_shape("cv", cv, (T, dXU))
        check_shape("cc", cc, (T,))
        for name, arr in (("Cm", Cm), ("cv", cv), ("cc", cc)):
            check_finite(name, arr)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def T(self) -> int:
        return int(self.Cm.shape[0])

    def value(self, X: np.ndarray, U: np.ndarray) -> np.ndarray:
        """c_t at X: (T, dX), U: (T, dU). Returns (T,)."""
        xu = np.concatenate([X, U], axis=1)
        return 0.5 * np.einsum("ti,tij,tj->t", xu, self.Cm, xu) + np.sum(xu * self.cv, axis=1) + self.cc


def _expansion_to_absolute(exp: CostExpansion, X: np.ndarray, U: np.ndarray) -> tuple[
    np.ndarray, np.ndarray, np.ndarray
]:
    """Taylor model around (x̄, ū) in absolute coordinates.

    With H = [[lxx, luxᵀ], [lux, luu]], g = [lx; lu], z̄ = [x̄; ū]:
    Cm = H, cv = g − H z̄, cc = l − gᵀ z̄ + 0.5 z̄ᵀ H z̄.
    """
    H = np.concatenate(
        [
            np.concatenate([exp.lxx, np.swapaxes(exp.lux, 1, 2)], axis=2),
            np.concatenate([exp.lux, exp.luu], axis=2),
        ],
        axis=1,
    )
    H = 0.5 * (H + np.swapaxes(H, 1, 2))
    g = np.concatenate([exp.lx, exp.lu], axis=1)
    z = np.concatenate([X, U], axis=1)
    Hz = np.einsum("tij,tj->ti", H, z)
    cv = g - Hz
    cc = exp.l - np.sum(g * z, axis=1) + 0.5 * np.sum(z * Hz, axis=1)
    return H, cv, cc


def quadratic_cost_model(cost: Cost, batch: SampleBatch) -> tuple[np.ndarray, QuadraticCost]:
    """Sample costs and the sample-averaged second-order cost model (GPS's Cm, cv, cc).

    Each sample n is expanded around its own (X_n, U_n), re-expressed in absolute coordinates
    (see :func:`_expansion_to_absolute`) and the N models are averaged.
    Returns sample_costs: (N, T) and QuadraticCost with Cm: (T, dX+dU, dX+dU), cv: (T, dX+dU), cc: (T,).
    Raises ShapeError if the cost is NaN/Inf anywhere.
    """
    N, T, dX, dU = batch.N, batch.T, batch.dX, batch.dU
    costs = np.empty((N, T))
    Cm = np.zeros((T, dX + dU, dX + dU))
    cv = np.zeros((T, dX + dU))
    cc = np.zeros(T)
    for n in range(N):
        J = None if batch.ee_jacobians is None else batch.ee_jacobians[n]
        exp = cost.evaluate(batch.X[n], batch.U[n], J)
        for name, arr in zip(("l", "lx", "lu", "lxx", "luu", "lux"), exp._fields(), strict=True):
            check_finite(f"cost expansion {name} of sample {n}", arr)
        H, v, c = _expansion_to_absolute(exp, batch.X[n], batch.U[n])
        costs[n] = exp.l
        Cm += H
        cv += v
        cc += c
    return costs, QuadraticCost(Cm / N, cv / N, cc / N)


# ---------------------------------------------------------------- configuration


def _check_vector(name: str, values: Sequence[float] | None, nonneg: bool = True) -> None:
    if values is None:
        return
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)) or (nonneg and np.any(arr < 0)):
        qualifier = "non-negative " if nonneg else ""
        raise ConfigError(f"{name} must be a non-empty list of finite {qualifier}numbers, got {values!r}")


def _check_ramp(name: str, ramp: str, final_multiplier: float) -> None:
    if ramp not in RAMPS:
        raise ConfigError(f"{name}.ramp: {ramp!r} is not one of {list(RAMPS)}")
    if not np.isfinite(final_multiplier) or final_multiplier < 0:
        raise ConfigError(f"{name}.final_multiplier must be finite and >= 0, got {final_multiplier}")


@dataclass(frozen=True)
class EndEffectorCostConfig:
    """YAML ``cost.ee``: GPS l2 + log penalty on the ee points slice (see :class:`EndEffectorCost`)."""

    weight: float = 1.0
    wp: list[float] | None = None
    l1: float = 0.1
    l2: float = 10.0
    alpha: float = 1e-5
    ramp: str = "constant"
    final_multiplier: float = 10.0
    use_jacobians: bool = False

    def __post_init__(self) -> None:
        if not np.isfinite(self.weight) or self.weight < 0:
            raise ConfigError(f"cost.ee.weight must be finite and >= 0, got {self.weight}")
        _check_vector("cost.ee.wp", self.wp)
        if not (np.isfinite(self.l1) and self.l1 >= 0 and np.isfinite(self.l2) and self.l2 >= 0):
            raise ConfigError(f"cost.ee.l1 and l2 must be finite and >= 0, got {self.l1}, {self.l2}")
        if not np.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"cost.ee.alpha must be finite and > 0, got {self.alpha}")
        _check_ramp("cost.ee", self.ramp, self.final_multiplier)


@dataclass(frozen=True)
class StateCostConfig:
    """YAML ``cost.state``: weighted quadratic distance of x to a target (see :class:`StateCost`)."""

    weight: float = 1.0
    weights: list[float] | None = None
    target: list[float] | None = None
    ramp: str = "constant"
    final_multiplier: float = 1.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.weight) or self.weight < 0:
            raise ConfigError(f"cost.state.weight must be finite and >= 0, got {self.weight}")
        _check_vector("cost.state.weights", self.weights)
        _check_vector("cost.state.target", self.target, nonneg=False)
        _check_ramp("cost.state", self.ramp, self.final_multiplier)


@dataclass(frozen=True)
class CostConfig:
    """YAML ``cost``: action cost, plus optional end-effector and state costs."""

    action_weight: float | list[float] = 1e-3
    ee: EndEffectorCostConfig | None = None
    state: StateCostConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.action_weight, (int, float)):
            _check_vector("cost.action_weight", [float(self.action_weight)])
        else:
            _check_vector("cost.action_weight", self.action_weight)


def _sized(name: str, values: Sequence[float] | float | None, size: int, default: float) -> np.ndarray:
    if values is None:
        return np.full(size, default)
    if isinstance(values, (int, float)):
        return np.full(size, float(values))
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (size,):
        raise ConfigError(f"{name} has {arr.size} entries, expected {size}")
    return arr


def build_cost(config: CostConfig, layout: StateLayout, dU: int) -> SumCost:
    """The SumCost described by ``config`` for a robot with state layout ``layout`` and dU actions.

    Raises ConfigError if a list's length does not match dU, dP or dX, or if the ee cost is asked for
    on a layout without end-effector points.
    """
    terms: list[tuple[float, Cost]] = [
        (1.0, ActionCost(_sized("cost.action_weight", config.action_weight, dU, 0.0)))
    ]
    if config.ee is not None:
        ee = config.ee
        if layout.n_points == 0:
            raise ConfigError("cost.ee is set but the state layout has no end-effector points")
        wp = _sized("cost.ee.wp", ee.wp, layout.dP, 1.0)
        cost = EndEffectorCost(layout, wp, ee.l1, ee.l2, ee.alpha, ee.ramp, ee.final_multiplier,
                               ee.use_jacobians)
        terms.append((ee.weight, cost))
    if config.state is not None:
        st = config.state
        weights = _sized("cost.state.weights", st.weights, layout.dX, 1.0)
        target = _sized("cost.state.target", st.target, layout.dX, 0.0)
        terms.append((st.weight, StateCost(weights, target, st.ramp, st.final_multiplier)))
    return SumCost(tuple(terms))
