"""Message <-> array conversions: random round trips are exact; malformed messages are rejected."""

from __future__ import annotations

import array

import numpy as np
import pytest

from mbpl_core.containers import LinearDynamics, LinearGaussianController, SampleBatch, ShapeError
from mbpl_core.policy import NumpyPolicy, PolicyParams
from mbpl_ros import conversions as cv

pytest.importorskip("mbpl_msgs.msg")


def _spd(rng: np.random.Generator, T: int, d: int) -> np.ndarray:
    A = rng.standard_normal((T, d, d))
    return A @ np.swapaxes(A, 1, 2) + d * np.eye(d)


def _controller(rng: np.random.Generator, T: int = 7, dU: int = 3, dX: int = 5) -> LinearGaussianController:
    return LinearGaussianController.from_covariance(
        rng.standard_normal((T, dU, dX)), rng.standard_normal((T, dU)), _spd(rng, T, dU)
    )


def _params(rng: np.random.Generator, sizes: tuple[int, ...] = (4, 8, 6, 2)) -> PolicyParams:
    """A tanh MLP that observes 4 of the 9 entries of x (so obs_indices and state_dim must travel)."""
    return PolicyParams.from_layers(
        weights=tuple(rng.standard_normal((o, i)) for i, o in zip(sizes[:-1], sizes[1:], strict=True)),
        biases=tuple(rng.standard_normal(o) for o in sizes[1:]),
        obs_mean=rng.standard_normal(sizes[0]),
        obs_std=rng.uniform(0.5, 2.0, sizes[0]),
        action_covar=_spd(rng, 1, sizes[-1])[0],
        activation="tanh",
        obs_indices=np.array([7, 0, 3, 5]),
        state_dim=9,
    )


def test_controller_round_trip_is_exact() -> None:
    rng = np.random.default_rng(0)
    ctrl = _controller(rng)
    msg = cv.controller_to_msg(ctrl, condition=2, controller_id=41, stamp=cv.seconds_to_time(1.5))
    back = cv.msg_to_controller(msg)
    assert (msg.condition, msg.controller_id, msg.t_steps, msg.du, msg.dx) == (2, 41, 7, 3, 5)
    for name in ("K", "k", "pol_covar"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ctrl, name))
    np.testing.assert_allclose(back.chol_pol_covar, ctrl.chol_pol_covar, rtol=1e-12, atol=1e-12)
    eye = np.broadcast_to(np.eye(3), (7, 3, 3))
    np.testing.assert_allclose(back.inv_pol_covar @ back.pol_covar, eye, atol=1e-10)


def test_controller_row_major_layout() -> None:
    """The flat k_gains index of K[t, i, j] is (t * dU + i) * dX + j, independent of numpy's internals."""
    rng = np.random.default_rng(1)
    ctrl = _controller(rng, T=3, dU=2, dX=4)
    msg = cv.controller_to_msg(ctrl, 0, 0)
    assert msg.k_gains[(2 * 2 + 1) * 4 + 3] == ctrl.K[2, 1, 3]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: setattr(m, "k_gains", m.k_gains[:-1]), "k_gains has"),
        (lambda m: setattr(m, "t_steps", 0), "dimensions must be >= 1"),
        (lambda m: m.k_offsets.__setitem__(3, float("nan")), "NaN or Inf"),
        (lambda m: m.k_gains.__setitem__(0, float("inf")), "NaN or Inf"),
        (lambda m: m.pol_covar.__setitem__(1, m.pol_covar[1] + 1.0), "not symmetric"),
        (lambda m: setattr(m, "pol_covar", array.array("d", (-np.eye(3)[None].repeat(7, 0)).ravel())),
         "pol_covar[0] is not positive definite"),
    ],
)
def test_malformed_controller_is_rejected_with_reason(mutate, reason: str) -> None:
    msg = cv.controller_to_msg(_controller(np.random.default_rng(2)), 0, 0)
    mutate(msg)
    with pytest.raises(ShapeError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        cv.msg_to_controller(msg)


def test_dynamics_round_trip_and_rejection() -> None:
    rng = np.random.default_rng(3)
    T, dX, dU = 6, 4, 2
    dyn = LinearDynamics(
        rng.standard_normal((T, dX, dX + dU)), rng.standard_normal((T, dX)), _spd(rng, T, dX),
        rng.standard_normal(dX), _spd(rng, 1, dX)[0],
    )  # fmt: skip
    msg = cv.dynamics_to_msg(dyn, condition=1, iteration=9)
    back = cv.msg_to_dynamics(msg)
    for name in ("Fm", "fv", "dyn_covar", "x0mu", "x0sigma"):
        np.testing.assert_array_equal(getattr(back, name), getattr(dyn, name))
    assert (msg.condition, msg.iteration) == (1, 9)
    msg.fv = msg.fv[:-2]
    with pytest.raises(ShapeError, match="fv has"):
        cv.msg_to_dynamics(msg)


@pytest.mark.parametrize("with_jacobians", [False, True])
def test_sample_round_trip(with_jacobians: bool) -> None:
    rng = np.random.default_rng(4)
    T, dX, dU, dP, dQ = 5, 6, 2, 3, 2
    J = rng.standard_normal((1, T, dP, dQ)) if with_jacobians else None
    batch = SampleBatch(rng.standard_normal((1, T, dX)), rng.standard_normal((1, T, dU)), J)
    meta = cv.SampleMetadata(3, 17, 5, "policy", True, "joint limit", 1.25, 2.5, 4, 2**40 + 3, True)
    back_batch, back_meta = cv.msg_to_sample(cv.sample_to_msg(batch, meta))
    assert back_meta == meta
    np.testing.assert_array_equal(back_batch.X, batch.X)
    np.testing.assert_array_equal(back_batch.U, batch.U)
    if with_jacobians:
        np.testing.assert_array_equal(back_batch.ee_jacobians, J)
    else:
        assert back_batch.ee_jacobians is None


def test_malformed_sample_is_rejected() -> None:
    rng = np.random.default_rng(5)
    batch = SampleBatch(rng.standard_normal((1, 4, 3)), rng.standard_normal((1, 4, 1)))
    msg = cv.sample_to_msg(batch, cv.SampleMetadata(0, 1))
    msg.policy_kind = "mlp"
    with pytest.raises(ShapeError, match="policy_kind"):
        cv.msg_to_sample(msg)
    msg.policy_kind = "lg"
    msg.u[2] = float("nan")
    with pytest.raises(ShapeError, match="TrajectorySample.u contains NaN"):
        cv.msg_to_sample(msg)
    with pytest.raises(ShapeError, match="N=2"):
        cv.sample_to_msg(SampleBatch.concatenate([batch, batch]), cv.SampleMetadata(0, 1))


def test_policy_params_round_trip_and_forward_pass_agree() -> None:
    rng = np.random.default_rng(6)
    params = _params(rng)
    msg = cv.policy_params_to_msg(params, policy_id=12)
    back = cv.msg_to_policy_params(msg)
    assert list(msg.layer_sizes) == [4, 8, 6, 2] and back.activation == "tanh"
    assert back.state_dim == 9
    for (W, b), (W_back, b_back) in zip(params.weights, back.weights, strict=True):
        np.testing.assert_array_equal(W_back, W)
        np.testing.assert_array_equal(b_back, b)
    for name in ("obs_mean", "obs_std", "action_covar", "obs_indices"):
        np.testing.assert_array_equal(getattr(back, name), getattr(params, name))
    X = rng.standard_normal((5, 9))
    h = (X[:, [7, 0, 3, 5]] - params.obs_mean) / params.obs_std  # the forward pass written out
    for i, (W, b) in enumerate(params.weights):
        h = h @ W.T + b
        h = np.tanh(h) if i < len(params.weights) - 1 else h
    np.testing.assert_allclose(NumpyPolicy(back).mean_batch(X), h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: setattr(m, "weights", m.weights[:-1]), "weights has"),
        (lambda m: setattr(m, "obs_dim", 5), "disagree with obs_dim"),
        (lambda m: setattr(m, "activation", "swish2"), "activation"),
        (lambda m: m.obs_std.__setitem__(0, 0.0), "obs_std must be > 0"),
        (lambda m: setattr(m, "action_covar", array.array("d", [1, 2, 2, 1])), "not positive definite"),
        (lambda m: setattr(m, "obs_indices", array.array("I", [7, 0, 3])), "obs_indices has 3 entries"),
        (lambda m: setattr(m, "obs_indices", array.array("I", [7, 0, 0, 5])), "must be unique"),
        (lambda m: setattr(m, "state_dim", 6), "obs_indices must lie in"),
    ],
)
def test_malformed_policy_params_are_rejected(mutate, reason: str) -> None:
    msg = cv.policy_params_to_msg(_params(np.random.default_rng(7)), 1)
    mutate(msg)
    with pytest.raises(ShapeError, match=reason):
        cv.msg_to_policy_params(msg)


def test_joint_state_reordered_and_missing_joint_named() -> None:
    names = ["a", "b", "c"]
    q_in, qd_in = np.array([3.0, 9.0, 1.0, 2.0]), np.array([30.0, 90, 10, 20])
    msg = cv.arrays_to_joint_state(["c", "x", "a", "b"], q_in, qd_in)
    order = cv.JointOrder(names)
    q, qd = order.extract(msg)
    np.testing.assert_array_equal(q, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(qd, [10.0, 20.0, 30.0])
    q2, _ = order.extract(msg)  # cached index path gives the same answer
    np.testing.assert_array_equal(q2, q)
    with pytest.raises(ShapeError, match=r"lacks joint\(s\) \['d'\]"):
        cv.joint_state_to_arrays(msg, ["a", "d"])
    msg.velocity = msg.velocity[:2]
    with pytest.raises(ShapeError, match="2 velocities"):
        order.extract(msg)


def test_efforts_round_trip_and_rejection() -> None:
    u = np.array([0.5, -1.25, 3.0])
    np.testing.assert_array_equal(cv.msg_to_efforts(cv.efforts_to_msg(u), 3), u)
    with pytest.raises(ShapeError, match="has 3 values, expected 2"):
        cv.msg_to_efforts(cv.efforts_to_msg(u), 2)
    with pytest.raises(ShapeError, match="NaN"):
        cv.msg_to_efforts(cv.efforts_to_msg(np.array([0.0, np.nan, 1.0])), 3)


def test_time_round_trip() -> None:
    for seconds in (0.0, 0.002, 12.345678901, 1e5 + 0.5):
        assert abs(cv.time_to_seconds(cv.seconds_to_time(seconds)) - seconds) <= 1e-9 * max(1.0, seconds)
    with pytest.raises(ShapeError):
        cv.seconds_to_time(float("nan"))
