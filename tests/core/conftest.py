"""Shared fixtures for the core tests: small pure-numpy environments and random linear systems."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from mbpl_core.containers import SampleBatch, StateLayout


@dataclass
class LinearSystem:
    """x_{t+1} = A_t x_t + B_t u_t + c_t. A: (T, dX, dX), B: (T, dX, dU), c: (T, dX)."""

    A: np.ndarray
    B: np.ndarray
    c: np.ndarray

    @property
    def T(self) -> int:
        return int(self.A.shape[0])

    def rollout(self, x0: np.ndarray, U: np.ndarray, process_noise: np.ndarray | None = None) -> np.ndarray:
        """States X: (N, T, dX) from x0: (N, dX) and U: (N, T, dU); process_noise: (N, T, dX) or None."""
        N, T = U.shape[:2]
        X = np.zeros((N, T, self.A.shape[1]))
        X[:, 0] = x0
        for t in range(T - 1):
            X[:, t + 1] = X[:, t] @ self.A[t].T + U[:, t] @ self.B[t].T + self.c[t]
            if process_noise is not None:
                X[:, t + 1] += process_noise[:, t]
        return X


def make_random_stable_system(rng: np.random.Generator, T: int, dX: int, dU: int) -> LinearSystem:
    """Time-varying system whose A_t have spectral norm 0.95 (so rollouts stay bounded)."""
    A = rng.standard_normal((T, dX, dX))
    A *= 0.95 / np.linalg.norm(A, ord=2, axis=(1, 2))[:, None, None]
    B = rng.standard_normal((T, dX, dU)) / np.sqrt(dX)
    c = 0.1 * rng.standard_normal((T, dX))
    return LinearSystem(A, B, c)


@pytest.fixture
def random_stable_system() -> Callable[..., LinearSystem]:
    """Factory: random_stable_system(rng, T, dX, dU) -> LinearSystem."""
    return make_random_stable_system


class PointMassEnv:
    """Damped 2-D point mass, x = [p (2), v (2)], u = force (2); deterministic Euler steps.

    p' = p + dt v,  v' = v + dt (u / mass − damping v). Conditions are initial positions at rest;
    the state layout is (dQ = 2, no end-effector points), so dX = 4 and dU = 2.
    """

    def __init__(
        self, x0s: list[np.ndarray], T: int = 30, dt: float = 0.05, mass: float = 1.0, damping: float = 0.5
    ) -> None:
        self.T, self.dt, self.dX, self.dU = T, dt, 4, 2
        self.layout = StateLayout(dQ=2, n_points=0)
        self.num_conditions = len(x0s)
        self._x0s = [np.asarray(x, dtype=np.float64) for x in x0s]
        I2 = np.eye(2)
        self.A = np.block([[I2, dt * I2], [np.zeros((2, 2)), (1.0 - dt * damping) * I2]])
        self.B = np.vstack([np.zeros((2, 2)), dt / mass * I2])

    def x0(self, condition: int) -> np.ndarray:
        return self._x0s[condition].copy()

    def sample(self, policy: object, condition: int, noise: np.ndarray | None) -> SampleBatch:
        X = np.zeros((1, self.T, self.dX))
        U = np.zeros((1, self.T, self.dU))
        x = self.x0(condition)
        for t in range(self.T):
            u = policy.act(t, x, None if noise is None else noise[t])  # type: ignore[attr-defined]
            X[0, t], U[0, t] = x, u
            x = self.A @ x + self.B @ u
        return SampleBatch(X, U)


@pytest.fixture
def point_mass_env() -> PointMassEnv:
    """Two conditions starting at rest away from the origin (the target)."""
    return PointMassEnv([np.array([1.0, -0.5, 0.0, 0.0]), np.array([-0.8, 0.6, 0.0, 0.0])])
