"""Initial controllers: LQR on the guessed double integrator and the PD hold, against independent oracles."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import StateLayout
from mbpl_core.local.init import InitConfig, initial_controller

LAYOUT = StateLayout(dQ=3, n_points=1)  # dX = 6 + 6 = 12
dU = 3


def _x0(rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=LAYOUT.dX)


def test_lqr_init_matches_per_joint_riccati_solution() -> None:
    """Joints decouple: each is a double integrator with Q = diag(s, s·s_vel)/var, R = 1/var."""
    config = InitConfig(stiffness=2.0, stiffness_vel=0.3, init_var=0.5)
    dt, T = 0.05, 400
    ctrl = initial_controller(config, LAYOUT, dU, T, dt, _x0(np.random.default_rng(0)))
    A = np.array([[1.0, dt], [0.0, 1.0]])
    B = np.array([[dt**2], [dt]])
    Q = np.diag([2.0, 2.0 * 0.3]) / 0.5
    R = np.array([[1.0]]) / 0.5
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    K_joint = -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)[0]
    for j in range(LAYOUT.dQ):
        np.testing.assert_allclose(ctrl.K[0, j, [j, LAYOUT.dQ + j]], K_joint, rtol=1e-6)
    off_diagonal = ctrl.K[0].copy()
    for j in range(LAYOUT.dQ):
        off_diagonal[j, [j, LAYOUT.dQ + j]] = 0.0
    np.testing.assert_allclose(off_diagonal, 0.0, atol=1e-12)
    variance = np.linalg.inv(R + B.T @ P @ B)[0, 0]
    np.testing.assert_allclose(ctrl.pol_covar[0], variance * np.eye(dU), rtol=1e-6)


def test_lqr_init_holds_x0_and_scales_covariance_with_init_var() -> None:
    rng = np.random.default_rng(1)
    x0 = _x0(rng)
    T, dt = 20, 0.02
    a = initial_controller(InitConfig(init_var=1.0), LAYOUT, dU, T, dt, x0)
    b = initial_controller(InitConfig(init_var=3.0), LAYOUT, dU, T, dt, x0)
    at_rest = x0.copy()
    at_rest[LAYOUT.qd] = 0.0
    for t in range(T):
        # Resting at the target is a fixed point of the double integrator: the optimal torque is zero.
        np.testing.assert_allclose(a.act(t, at_rest), 0.0, atol=1e-10)
        # The ee part of the state has no cost and no dynamics in the guess: no feedback on it.
        np.testing.assert_allclose(a.K[t][:, LAYOUT.ee_points], 0.0, atol=1e-12)
    np.testing.assert_allclose(b.K, a.K, atol=1e-12)
    np.testing.assert_allclose(b.pol_covar, 3.0 * a.pol_covar, rtol=1e-10)


def test_pd_init_is_a_pd_hold() -> None:
    rng = np.random.default_rng(2)
    x0 = _x0(rng)
    config = InitConfig(type="pd", pd_gains=[10.0, 20.0, 30.0], pd_damping=[1.0, 2.0, 3.0], init_var=0.2)
    ctrl = initial_controller(config, LAYOUT, dU, 10, 0.01, x0)
    x = _x0(rng)
    Kp, Kd = np.array([10.0, 20.0, 30.0]), np.array([1.0, 2.0, 3.0])
    expected = Kp * (x0[LAYOUT.q] - x[LAYOUT.q]) - Kd * x[LAYOUT.qd]
    for t in (0, 9):
        np.testing.assert_allclose(ctrl.act(t, x), expected, rtol=1e-12)
    np.testing.assert_allclose(ctrl.pol_covar, np.broadcast_to(0.2 * np.eye(dU), (10, dU, dU)))
    default_config = InitConfig(type="pd", stiffness=4.0, stiffness_vel=0.5)
    default = initial_controller(default_config, LAYOUT, dU, 10, 0.01, x0)
    np.testing.assert_allclose(np.diag(default.K[0][:, LAYOUT.q]), -4.0)
    np.testing.assert_allclose(np.diag(default.K[0][:, LAYOUT.qd]), -2.0)


def test_init_rejects_bad_arguments() -> None:
    x0 = _x0(np.random.default_rng(3))
    with pytest.raises(ConfigError, match="dU"):
        initial_controller(InitConfig(), LAYOUT, dU + 1, 10, 0.01, x0)
    with pytest.raises(ConfigError, match="pd_gains"):
        initial_controller(InitConfig(type="pd", pd_gains=[1.0]), LAYOUT, dU, 10, 0.01, x0)
    with pytest.raises(ConfigError, match="x0"):
        initial_controller(InitConfig(), LAYOUT, dU, 10, 0.01, x0[:-1])
    with pytest.raises(ConfigError, match="dt"):
        initial_controller(InitConfig(), LAYOUT, dU, 10, 0.0, x0)
    bad = x0.copy()
    bad[0] = np.nan
    with pytest.raises(ConfigError, match="x0"):
        initial_controller(InitConfig(), LAYOUT, dU, 10, 0.01, bad)


@pytest.mark.parametrize(
    "data",
    [{"type": "random"}, {"init_var": 0.0}, {"stiffness": -1.0}, {"pd_gains": [-1.0]}, {"init_vr": 1.0}],
)
def test_init_config_validation(data: dict) -> None:
    with pytest.raises(ConfigError):
        from_dict(InitConfig, data)


def test_init_config_from_yaml_dict() -> None:
    config = from_dict(InitConfig, {"type": "pd", "pd_gains": [1, 2, 3], "init_var": 0.1})
    assert config.type == "pd" and config.pd_gains == [1.0, 2.0, 3.0] and config.init_var == 0.1
