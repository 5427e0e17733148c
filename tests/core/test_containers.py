"""Containers: the controller's action and folded noise, covariance forms, batches and the state layout,
each against the formula written out (full, non-diagonal covariances so transposes show)."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers_traj import random_spd

from mbpl_core.containers import LinearGaussianController, SampleBatch, ShapeError, StateLayout

T, dX, dU = 5, 4, 3


def _controller(rng: np.random.Generator) -> LinearGaussianController:
    covar = np.stack([random_spd(rng, dU) for _ in range(T)])
    K, k = rng.normal(size=(T, dU, dX)), rng.normal(size=(T, dU))
    return LinearGaussianController.from_covariance(K, k, covar)


def test_from_covariance_gives_lower_cholesky_and_inverse() -> None:
    ctrl = _controller(np.random.default_rng(0))
    for t in range(T):
        L = ctrl.chol_pol_covar[t]
        np.testing.assert_array_equal(L, np.tril(L))
        np.testing.assert_allclose(L @ L.T, ctrl.pol_covar[t], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ctrl.inv_pol_covar[t] @ ctrl.pol_covar[t], np.eye(dU), atol=1e-12)
    bad = ctrl.pol_covar.copy()
    bad[2] = -np.eye(dU)
    with pytest.raises(ShapeError, match=r"pol_covar\[2\]"):
        LinearGaussianController.from_covariance(ctrl.K, ctrl.k, bad)


def test_act_is_gain_times_state_plus_offset_plus_cholesky_noise() -> None:
    rng = np.random.default_rng(1)
    ctrl = _controller(rng)
    for t in range(T):
        x, noise = rng.normal(size=dX), rng.normal(size=dU)
        want = [sum(ctrl.K[t, i, j] * x[j] for j in range(dX)) + ctrl.k[t, i] for i in range(dU)]
        np.testing.assert_allclose(ctrl.act(t, x), want, rtol=1e-12)
        noisy = [want[i] + sum(ctrl.chol_pol_covar[t, i, j] * noise[j] for j in range(dU)) for i in range(dU)]
        np.testing.assert_allclose(ctrl.act(t, x, noise), noisy, rtol=1e-12)


def test_folded_noise_replays_the_noisy_actions() -> None:
    rng = np.random.default_rng(2)
    ctrl = _controller(rng)
    noise = rng.normal(size=(T, dU))
    folded = ctrl.with_noise_folded(noise)
    for t in range(T):
        x = rng.normal(size=dX)
        np.testing.assert_allclose(folded.act(t, x), ctrl.act(t, x, noise[t]), rtol=1e-12)
    np.testing.assert_array_equal(folded.pol_covar, ctrl.pol_covar)
    with pytest.raises(ShapeError, match="noise"):
        ctrl.with_noise_folded(noise[:-1])


def test_sample_batch_select_and_concatenate_keep_rows_together() -> None:
    rng = np.random.default_rng(3)
    a = SampleBatch(rng.normal(size=(2, T, dX)), rng.normal(size=(2, T, dU)))
    b = SampleBatch(rng.normal(size=(3, T, dX)), rng.normal(size=(3, T, dU)))
    both = SampleBatch.concatenate([a, b])
    assert (both.N, both.T, both.dX, both.dU) == (5, T, dX, dU)
    np.testing.assert_array_equal(both.select([3]).X[0], b.X[1])
    np.testing.assert_array_equal(both.select([3]).U[0], b.U[1])
    np.testing.assert_array_equal(both.select(slice(0, 2)).X, a.X)


def test_state_layout_slices_partition_the_state() -> None:
    layout = StateLayout(dQ=3, n_points=2)
    assert (layout.dP, layout.dX) == (6, 18)
    parts = [layout.q, layout.qd, layout.ee_points, layout.ee_velocities]
    covered = np.concatenate([np.arange(layout.dX)[s] for s in parts])
    np.testing.assert_array_equal(covered, np.arange(layout.dX))
    assert [s.stop - s.start for s in parts] == [3, 3, 6, 6]
