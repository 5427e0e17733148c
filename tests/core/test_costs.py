"""Costs: exact derivatives against finite differences, ramps, sums, the quadratic model, config building."""

from __future__ import annotations

import numpy as np
import pytest

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import SampleBatch, ShapeError, StateLayout
from mbpl_core.costs import (
    ActionCost,
    Cost,
    CostConfig,
    CostExpansion,
    EndEffectorCost,
    StateCost,
    SumCost,
    build_cost,
    quadratic_cost_model,
    ramp_multiplier,
)

T = 5
LAYOUT = StateLayout(dQ=2, n_points=2)  # dX = 4 + 12 = 16, dP = 6
dU = 2


def _trajectory(rng: np.random.Generator, layout: StateLayout = LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(T, layout.dX)), rng.normal(size=(T, dU))


def _finite_difference_check(cost: Cost, X: np.ndarray, U: np.ndarray, J: np.ndarray | None = None) -> None:
    """Gradients against central differences of l; Hessians against central differences of the gradients.

    The cost is separable in time, so perturbing component i at every step at once probes all t together.
    """
    exp = cost.evaluate(X, U, J)
    h = 1e-6
    for name, Z, grad in (("x", X, "lx"), ("u", U, "lu")):
        for i in range(Z.shape[1]):
            dZ = np.zeros_like(Z)
            dZ[:, i] = h
            args_p = (X + dZ, U) if name == "x" else (X, U + dZ)
            args_m = (X - dZ, U) if name == "x" else (X, U - dZ)
            ep, em = cost.evaluate(*args_p, J), cost.evaluate(*args_m, J)
            fd_grad = (ep.l - em.l) / (2 * h)
            np.testing.assert_allclose(fd_grad, getattr(exp, grad)[:, i], atol=1e-6, rtol=1e-6)
            d_lx, d_lu = (ep.lx - em.lx) / (2 * h), (ep.lu - em.lu) / (2 * h)
            if name == "x":
                np.testing.assert_allclose(d_lx, exp.lxx[:, :, i], atol=1e-5, rtol=1e-5)
                np.testing.assert_allclose(d_lu, exp.lux[:, :, i], atol=1e-5, rtol=1e-5)
            else:
                np.testing.assert_allclose(d_lx, exp.lux[:, i, :], atol=1e-5, rtol=1e-5)
                np.testing.assert_allclose(d_lu, exp.luu[:, :, i], atol=1e-5, rtol=1e-5)


def _ee_cost(**kwargs: object) -> EndEffectorCost:
    params: dict[str, object] = {
        "wp": np.array([1.0, 2.0, 0.5, 1.0, 0.0, 3.0]), "l1": 0.3, "l2": 2.0, "alpha": 1e-2
    }
    params.update(kwargs)
    return EndEffectorCost(LAYOUT, **params)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "cost",
    [
        ActionCost(np.array([0.5, 2.0])),
        StateCost(np.linspace(0.1, 2.0, LAYOUT.dX), np.arange(LAYOUT.dX) / 10.0, "linear", 3.0),
        _ee_cost(),
        _ee_cost(ramp="quadratic", final_multiplier=10.0),
        SumCost(((1e-2, ActionCost(np.ones(dU))), (2.0, _ee_cost()))),
    ],
    ids=["action", "state", "ee", "ee-ramp", "sum"],
)
def test_cost_derivatives_match_finite_differences(cost: Cost) -> None:
    X, U = _trajectory(np.random.default_rng(0))
    X[:, LAYOUT.ee_points] *= 0.05  # near the target, where the log term bends most
    _finite_difference_check(cost, X, U)


def _planar_two_link(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tip point (x, y, 0) of a planar arm with link lengths 0.6, 0.4, and its Jacobian (3, 2)."""
    l1, l2 = 0.6, 0.4
    c1, s1 = np.cos(q[0]), np.sin(q[0])
    c12, s12 = np.cos(q[0] + q[1]), np.sin(q[0] + q[1])
    point = np.array([l1 * c1 + l2 * c12, l1 * s1 + l2 * s12, 0.0])
    J = np.array([[-l1 * s1 - l2 * s12, -l2 * s12], [l1 * c1 + l2 * c12, l2 * c12], [0.0, 0.0]])
    return point, J


def test_ee_cost_through_jacobians_matches_finite_differences_in_joint_space() -> None:
    layout = StateLayout(dQ=2, n_points=1)
    target = np.array([0.3, 0.5, 0.0])
    cost = EndEffectorCost(layout, np.array([1.0, 2.0, 1.0]), 0.3, 2.0, 1e-3, use_jacobians=True)
    plain = EndEffectorCost(layout, np.array([1.0, 2.0, 1.0]), 0.3, 2.0, 1e-3)
    rng = np.random.default_rng(1)
    Q = rng.uniform(-1.5, 1.5, size=(T, 2))

    def state(Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.zeros((T, layout.dX))
        J = np.zeros((T, 3, 2))
        for t in range(T):
            point, J[t] = _planar_two_link(Q[t])
            X[t, layout.q] = Q[t]
            X[t, layout.ee_points] = point - target
        return X, J

    X, J = state(Q)
    U = np.zeros((T, dU))
    exp = cost.evaluate(X, U, J)
    ref = plain.evaluate(X, U)
    h = 1e-6
    for i in range(2):
        dQ = np.zeros_like(Q)
        dQ[:, i] = h
        fd = (cost.evaluate(*state(Q + dQ)[:1], U, J).l - cost.evaluate(*state(Q - dQ)[:1], U, J).l) / (2 * h)
        np.testing.assert_allclose(exp.lx[:, i], fd, atol=1e-6, rtol=1e-6)
    # Gauss–Newton curvature: Jᵀ (∂²l/∂d²) J with ∂²l/∂d² from the plain cost's (FD-checked) Hessian.
    ldd = ref.lxx[:, layout.ee_points, layout.ee_points]
    gauss_newton = np.einsum("tpi,tpq,tqj->tij", J, ldd, J)
    np.testing.assert_allclose(exp.lxx[:, layout.q, layout.q], gauss_newton, atol=1e-12)
    np.testing.assert_allclose(exp.l, ref.l)
    assert np.all(exp.lx[:, layout.ee_points] == 0) and np.all(exp.lxx[:, layout.ee_points] == 0)
    with pytest.raises(ShapeError, match="ee_jacobians"):
        cost.evaluate(X, U, None)


def test_ee_penalty_hessian_is_positive_semidefinite() -> None:
    X, U = _trajectory(np.random.default_rng(2))
    lxx = _ee_cost().evaluate(X, U).lxx
    assert np.all(np.linalg.eigvalsh(lxx) >= -1e-10)


def test_ramps() -> None:
    t = np.arange(1, T + 1) / T
    np.testing.assert_allclose(ramp_multiplier("constant", T), np.ones(T))
    np.testing.assert_allclose(ramp_multiplier("linear", T), t)
    np.testing.assert_allclose(ramp_multiplier("quadratic", T), t**2)
    np.testing.assert_allclose(ramp_multiplier("final_only", T, 4.0), [0, 0, 0, 0, 4.0])
    np.testing.assert_allclose(ramp_multiplier("linear", T, 10.0)[:-1], t[:-1])
    assert ramp_multiplier("linear", T, 10.0)[-1] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="ramp"):
        ramp_multiplier("cubic", T)
    # A ramped cost is the constant cost scaled step by step.
    X, U = _trajectory(np.random.default_rng(3))
    flat = _ee_cost().evaluate(X, U)
    ramped = _ee_cost(ramp="quadratic", final_multiplier=7.0).evaluate(X, U)
    r = ramp_multiplier("quadratic", T, 7.0)
    np.testing.assert_allclose(ramped.l, r * flat.l)
    np.testing.assert_allclose(ramped.lxx, r[:, None, None] * flat.lxx)


def test_sum_cost_and_expansion_algebra() -> None:
    X, U = _trajectory(np.random.default_rng(4))
    a, b = ActionCost(np.array([1.0, 3.0])), _ee_cost()
    ea, eb = a.evaluate(X, U), b.evaluate(X, U)
    total = SumCost(((2.0, a), (0.5, b))).evaluate(X, U)
    expected = 2.0 * ea + eb * 0.5
    for name in ("l", "lx", "lu", "lxx", "luu", "lux"):
        np.testing.assert_allclose(getattr(total, name), getattr(expected, name))
    with pytest.raises(ShapeError):
        ea + CostExpansion.zeros(T, 3, dU)


def test_quadratic_model_reproduces_quadratic_costs_exactly() -> None:
    rng = np.random.default_rng(5)
    state = StateCost(rng.uniform(0, 2, LAYOUT.dX), rng.normal(size=LAYOUT.dX), "linear", 5.0)
    cost = SumCost(((1.0, ActionCost(np.array([0.3, 1.2]))), (2.0, state)))
    batch = SampleBatch(rng.normal(size=(4, T, LAYOUT.dX)), rng.normal(size=(4, T, dU)))
    sample_costs, quad = quadratic_cost_model(cost, batch)
    for n in range(batch.N):
        np.testing.assert_allclose(sample_costs[n], cost.evaluate(batch.X[n], batch.U[n]).l)
    X, U = _trajectory(rng)
    np.testing.assert_allclose(quad.value(X, U), cost.evaluate(X, U).l, rtol=1e-10, atol=1e-10)


def test_quadratic_model_is_the_taylor_expansion_for_one_sample() -> None:
    rng = np.random.default_rng(6)
    cost = _ee_cost()
    batch = SampleBatch(rng.normal(size=(1, T, LAYOUT.dX)), rng.normal(size=(1, T, dU)))
    _, quad = quadratic_cost_model(cost, batch)
    X0, U0 = batch.X[0], batch.U[0]
    exp = cost.evaluate(X0, U0)
    np.testing.assert_allclose(quad.value(X0, U0), exp.l, rtol=1e-10)
    dX = rng.normal(size=X0.shape) * 1e-3
    # Second-order model: error of the prediction is third order in the step.
    err = np.abs(quad.value(X0 + dX, U0) - cost.evaluate(X0 + dX, U0).l)
    assert np.max(err) < 1e-6


def test_nan_inputs_raise() -> None:
    X, U = _trajectory(np.random.default_rng(7))
    X[2, 5] = np.nan
    with pytest.raises(ShapeError, match="X"):
        _ee_cost().evaluate(X, U)
    with pytest.raises(ValueError):
        ActionCost(np.array([1.0, -1.0]))


def test_build_cost_from_config() -> None:
    config = from_dict(CostConfig, {
        "action_weight": [0.1, 0.2],
        "ee": {"wp": [1, 1, 1, 2, 2, 2], "ramp": "final_only", "use_jacobians": False},
        "state": {"weight": 0.5, "weights": [1.0] * LAYOUT.dX},
    })
    cost = build_cost(config, LAYOUT, dU)
    X, U = _trajectory(np.random.default_rng(8))
    expected = (ActionCost(np.array([0.1, 0.2])).evaluate(X, U)
                + EndEffectorCost(LAYOUT, np.array([1, 1, 1, 2, 2, 2.0]), ramp="final_only",
                                  final_multiplier=10.0).evaluate(X, U)
                + 0.5 * StateCost(np.ones(LAYOUT.dX), np.zeros(LAYOUT.dX)).evaluate(X, U))
    np.testing.assert_allclose(cost.evaluate(X, U).l, expected.l)
    default = build_cost(CostConfig(), LAYOUT, dU).evaluate(X, U)
    np.testing.assert_allclose(default.l, 0.5e-3 * np.sum(U**2, axis=1))


@pytest.mark.parametrize(
    "data, layout, match",
    [
        ({"action_weight": [1.0, 2.0, 3.0]}, LAYOUT, "action_weight"),
        ({"ee": {"wp": [1.0]}}, LAYOUT, "wp"),
        ({"ee": {}}, StateLayout(2, 0), "no end-effector"),
        ({"state": {"target": [0.0]}}, LAYOUT, "target"),
    ],
)
def test_build_cost_rejects_mismatched_lengths(data: dict, layout: StateLayout, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_cost(from_dict(CostConfig, data), layout, dU)


@pytest.mark.parametrize(
    "data",
    [{"ee": {"ramp": "cubic"}}, {"ee": {"alpha": 0.0}}, {"state": {"weights": [-1.0]}},
     {"action_weight": -1.0}, {"ee": {"l1": "big"}}, {"unknown": 1}],
)
def test_cost_config_validation(data: dict) -> None:
    with pytest.raises(ConfigError):
        from_dict(CostConfig, data)


# ---------------------------------------------------------------- batched, derivative-free values

_BATCHED_COSTS = [
    ActionCost(np.array([0.5, 2.0])),
    *(StateCost(np.linspace(0.1, 2.0, LAYOUT.dX), np.arange(LAYOUT.dX) / 10.0, ramp, 3.0)
      for ramp in ("constant", "linear", "quadratic", "final_only")),
    _ee_cost(),
    _ee_cost(ramp="quadratic", final_multiplier=10.0),
    _ee_cost(ramp="linear", final_multiplier=5.0, use_jacobians=True),
    SumCost(((1e-2, ActionCost(np.ones(dU))), (2.0, _ee_cost(ramp="linear", final_multiplier=7.0)),
             (0.5, StateCost(np.ones(LAYOUT.dX), np.zeros(LAYOUT.dX), "final_only", 4.0)))),
]
_BATCHED_IDS = ["action", "state-const", "state-lin", "state-quad", "state-final", "ee", "ee-ramp",
                "ee-jac", "sum"]


def _per_trajectory_values(cost: Cost, X: np.ndarray, U: np.ndarray) -> np.ndarray:
    """evaluate(X_n, U_n).l for each of N trajectories: (N, T). Jacobians only where the cost needs them."""
    J = np.ones((X.shape[1], LAYOUT.dP, LAYOUT.dQ))
    return np.stack([cost.evaluate(X[n], U[n], J).l for n in range(X.shape[0])])


@pytest.mark.parametrize("cost", _BATCHED_COSTS, ids=_BATCHED_IDS)
def test_batched_value_equals_per_trajectory_cost(cost: Cost) -> None:
    import torch

    rng = np.random.default_rng(3)
    X, U = rng.normal(size=(6, 12, LAYOUT.dX)), rng.normal(size=(6, 12, dU))
    expected = _per_trajectory_values(cost, X, U)
    from_numpy = cost.value_batched(X, U)
    assert isinstance(from_numpy, np.ndarray) and from_numpy.shape == (6, 12)
    np.testing.assert_allclose(from_numpy, expected, rtol=1e-12, atol=0)
    from_torch = cost.value_batched(torch.from_numpy(X), torch.from_numpy(U))
    assert from_torch.dtype == torch.float64
    np.testing.assert_allclose(from_torch.numpy(), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cost", _BATCHED_COSTS, ids=_BATCHED_IDS)
def test_batched_value_of_a_window_uses_the_episode_steps(cost: Cost) -> None:
    """A window t0..t0+H−1 costs what those steps cost in the full T-step episode (ramps and the final
    multiplier at the episode's own steps); steps past T−1 cost 0."""
    rng = np.random.default_rng(4)
    T, H = 12, 5
    X, U = rng.normal(size=(3, T + H, LAYOUT.dX)), rng.normal(size=(3, T + H, dU))
    full = _per_trajectory_values(cost, X[:, :T], U[:, :T])
    for t0 in (0, 3, T - H, T - 2, T - 1):
        window = cost.value_batched(X[:, t0:t0 + H], U[:, t0:t0 + H], t0, T)
        inside = min(H, T - t0)
        np.testing.assert_allclose(window[:, :inside], full[:, t0:t0 + inside], rtol=1e-12, atol=0)
        assert np.all(window[:, inside:] == 0.0)


def test_batched_value_broadcasts_batch_dimensions() -> None:
    """X: (B, N, J, H, dX) with U: (1, N, 1, H, dU), as a planner's particles share their candidate's U."""
    import torch

    cost = _BATCHED_COSTS[-1]
    rng = np.random.default_rng(5)
    X = torch.from_numpy(rng.normal(size=(2, 4, 3, 7, LAYOUT.dX)))
    U = torch.from_numpy(rng.normal(size=(1, 4, 1, 7, dU)))
    l = cost.value_batched(X, U, 2, 8)
    assert l.shape == (2, 4, 3, 7)
    explicit = cost.value_batched(X, U.expand(2, 4, 3, 7, dU).contiguous(), 2, 8)
    assert torch.equal(l, explicit)
    l32 = cost.value_batched(X.float(), U.float(), 2, 8)
    assert l32.dtype == torch.float32
    np.testing.assert_allclose(l32.double().numpy(), l.numpy(), rtol=1e-5)


def test_batched_value_rejects_bad_shapes_and_steps() -> None:
    rng = np.random.default_rng(6)
    X, U = rng.normal(size=(2, 5, LAYOUT.dX)), rng.normal(size=(2, 5, dU))
    with pytest.raises(ShapeError):
        _ee_cost().value_batched(X[..., :-1], U)
    with pytest.raises(ShapeError):
        ActionCost(np.ones(dU + 1)).value_batched(X, U)
    with pytest.raises(ValueError):
        ActionCost(np.ones(dU)).value_batched(X, U, t0=-1)
