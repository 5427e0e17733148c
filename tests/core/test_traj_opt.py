"""LQR backward/forward passes, trajectory KL, η search and the per-condition optimizer, against oracles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from _helpers_traj import (
    block_qp_value_and_gains,
    expected_total_cost_oracle,
    gaussian_kl,
    joint_trajectory_gaussian,
    random_controller,
    random_dynamics,
    random_quadratic_cost,
    step_rule_oracle,
)

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import LinearDynamics, LinearGaussianController, ShapeError
from mbpl_core.costs import QuadraticCost
from mbpl_core.local.traj_opt import (
    ConditionOptimizer,
    KLSearchError,
    KLStepConfig,
    NotPositiveDefiniteError,
    _next_eta,
    adapt_step_mult,
    augmented_cost,
    expected_cost,
    kl_constrained_update,
    lqr_backward_pass,
    lqr_forward_pass,
    reference_log_density_terms,
    trajectory_kl,
)

T, dX, dU = 6, 3, 2


@pytest.fixture
def problem() -> tuple[QuadraticCost, LinearDynamics, LinearGaussianController]:
    rng = np.random.default_rng(7)
    quad = random_quadratic_cost(rng, T, dX, dU)
    return quad, random_dynamics(rng, T, dX, dU), random_controller(rng, T, dX, dU)


def _lagrangian(controller: LinearGaussianController, quad: QuadraticCost, dyn: LinearDynamics,
                reference: LinearGaussianController, eta: float) -> float:
    marg = lqr_forward_pass(controller, dyn)
    return float(np.sum(expected_cost(marg, quad))) + eta * trajectory_kl(marg, controller, reference)


def test_plain_lqr_matches_block_quadratic_programme(problem) -> None:
    quad, dyn, _ = problem
    sol = lqr_backward_pass(quad, dyn)
    for t0 in range(T):
        K, k, Vxx, Vx = block_qp_value_and_gains(quad, dyn, t0)
        np.testing.assert_allclose(sol.controller.K[t0], K, atol=1e-8, rtol=1e-8)
        np.testing.assert_allclose(sol.controller.k[t0], k, atol=1e-8, rtol=1e-8)
        np.testing.assert_allclose(sol.Vxx[t0], Vxx, atol=1e-8, rtol=1e-8)
        np.testing.assert_allclose(sol.Vx[t0], Vx, atol=1e-8, rtol=1e-8)


def test_max_entropy_covariance_is_inverse_q_uu(problem) -> None:
    quad, dyn, _ = problem
    sol = lqr_backward_pass(quad, dyn)
    for t in range(T - 1):
        # Q_uu from the oracle's value function at t+1.
        _, _, Vxx_next, _ = block_qp_value_and_gains(quad, dyn, t + 1)
        B = dyn.Fm[t][:, dX:]
        Quu = quad.Cm[t][dX:, dX:] + B.T @ Vxx_next @ B
        np.testing.assert_allclose(sol.controller.pol_covar[t], np.linalg.inv(Quu), atol=1e-9, rtol=1e-8)
    np.testing.assert_allclose(sol.controller.inv_pol_covar[-1], quad.Cm[-1][dX:, dX:], atol=1e-12)


def test_long_horizon_gains_converge_to_discrete_riccati() -> None:
    rng = np.random.default_rng(3)
    n, m, horizon = 4, 2, 400
    A = np.eye(n) + 0.1 * rng.normal(size=(n, n))
    B = rng.normal(size=(n, m))
    Q = np.diag(rng.uniform(0.5, 2.0, n))
    R = np.diag(rng.uniform(0.5, 2.0, m))
    Fm = np.broadcast_to(np.hstack([A, B]), (horizon, n, n + m))
    dyn = LinearDynamics(Fm, np.zeros((horizon, n)), np.broadcast_to(np.eye(n), (horizon, n, n)),
                         np.zeros(n), np.eye(n))
    Cm = np.broadcast_to(scipy.linalg.block_diag(Q, R), (horizon, n + m, n + m))
    quad = QuadraticCost(Cm, np.zeros((horizon, n + m)), np.zeros(horizon))
    sol = lqr_backward_pass(quad, dyn)
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    K_are = -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    # Vxx_0 = Q + Aᵀ P' (A + B K) includes step 0's own cost, which is exactly the ARE fixed point.
    np.testing.assert_allclose(sol.Vxx[0], P, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(sol.controller.K[0], K_are, rtol=1e-7, atol=1e-7)


def test_non_pd_q_uu_raises_with_the_time_step(problem) -> None:
    quad, dyn, _ = problem
    Cm = quad.Cm.copy()
    Cm[T - 2, dX:, dX:] = -10.0 * np.eye(dU)
    with pytest.raises(NotPositiveDefiniteError) as info:
        lqr_backward_pass(QuadraticCost(Cm, quad.cv, quad.cc), dyn)
    assert info.value.t == T - 2
    assert isinstance(info.value, ValueError)
    assert info.value.detail == "is not positive definite"
    # A value function that overflows (a huge final state cost) is "not finite", not "not PD", one step back.
    Cm = quad.Cm.copy()
    Cm[T - 1, :dX, :dX] = 1e308 * np.eye(dX)
    with pytest.raises(NotPositiveDefiniteError) as info, np.errstate(all="ignore"):
        lqr_backward_pass(QuadraticCost(Cm, quad.cv, quad.cc), dyn)
    assert (info.value.t, info.value.detail) == (T - 2, "is not finite")


def test_forward_pass_matches_joint_gaussian(problem) -> None:
    _, dyn, ctrl = problem
    marg = lqr_forward_pass(ctrl, dyn)
    mean, cov = joint_trajectory_gaussian(ctrl, dyn)
    d = dX + dU
    for t in range(T):
        np.testing.assert_allclose(marg.mu[t], mean[t * d:(t + 1) * d], atol=1e-10)
        np.testing.assert_allclose(marg.sigma[t], cov[t * d:(t + 1) * d, t * d:(t + 1) * d], atol=1e-10)


def test_expected_cost_matches_monte_carlo(problem) -> None:
    quad, dyn, ctrl = problem
    marg = lqr_forward_pass(ctrl, dyn)
    rng = np.random.default_rng(11)
    n = 20000
    for t in (0, T - 1):
        z = rng.multivariate_normal(marg.mu[t], marg.sigma[t], size=n)
        c = 0.5 * np.einsum("ni,ij,nj->n", z, quad.Cm[t], z) + z @ quad.cv[t] + quad.cc[t]
        exact = expected_cost(marg, quad)[t]
        assert abs(np.mean(c) - exact) < 5 * np.std(c) / np.sqrt(n)


def test_kl_of_controller_with_itself_is_zero_and_positive_otherwise(problem) -> None:
    _, dyn, ctrl = problem
    marg = lqr_forward_pass(ctrl, dyn)
    assert trajectory_kl(marg, ctrl, ctrl) == pytest.approx(0.0, abs=1e-12)
    other = random_controller(np.random.default_rng(1), T, dX, dU)
    assert trajectory_kl(marg, ctrl, other) > 0.0


def test_trajectory_kl_equals_kl_of_joint_trajectory_gaussians(problem) -> None:
    _, dyn, ctrl = problem
    other = random_controller(np.random.default_rng(5), T, dX, dU)
    mean_new, cov_new = joint_trajectory_gaussian(ctrl, dyn)
    mean_ref, cov_ref = joint_trajectory_gaussian(other, dyn)
    exact = gaussian_kl(mean_new, cov_new, mean_ref, cov_ref)
    assert trajectory_kl(lqr_forward_pass(ctrl, dyn), ctrl, other) == pytest.approx(exact, rel=1e-7)


def test_trajectory_kl_matches_monte_carlo(problem) -> None:
    _, dyn, ctrl = problem
    other = random_controller(np.random.default_rng(5), T, dX, dU)
    marg = lqr_forward_pass(ctrl, dyn)
    rng = np.random.default_rng(2)
    n, total, var = 4000, 0.0, 0.0
    for t in range(T):
        x = rng.multivariate_normal(marg.mu[t, :dX], marg.sigma[t, :dX, :dX], size=n)
        u = x @ ctrl.K[t].T + ctrl.k[t] + rng.normal(size=(n, dU)) @ ctrl.chol_pol_covar[t].T

        def logpdf(c: LinearGaussianController, t: int = t, x: np.ndarray = x,
                   u: np.ndarray = u) -> np.ndarray:
            r = u - x @ c.K[t].T - c.k[t]
            _, logdet = np.linalg.slogdet(c.pol_covar[t])
            return -0.5 * (np.einsum("ni,ij,nj->n", r, c.inv_pol_covar[t], r) + logdet)

        ratio = logpdf(ctrl) - logpdf(other)
        total += np.mean(ratio)
        var += np.var(ratio) / n
    assert abs(total - trajectory_kl(marg, ctrl, other)) < 5 * np.sqrt(var)


def test_eta_step_is_plain_lqr_on_the_augmented_cost(problem) -> None:
    """cost/η − log p_ref written out as a quadratic (M, v of the reference) gives the same controller."""
    quad, dyn, ref = problem
    eta = 0.7
    P = ref.inv_pol_covar
    M = np.zeros((T, dX + dU, dX + dU))
    v = np.zeros((T, dX + dU))
    for t in range(T):
        # −log N(u; Kx + k, Σ) = 0.5 (u − Kx − k)ᵀ P (u − Kx − k) + const, with G = [−K, I].
        G = np.hstack([-ref.K[t], np.eye(dU)])
        M[t] = G.T @ P[t] @ G
        v[t] = -G.T @ P[t] @ ref.k[t]
    augmented = QuadraticCost(quad.Cm / eta + M, quad.cv / eta + v, quad.cc / eta)
    plain = lqr_backward_pass(augmented, dyn)
    step = lqr_backward_pass(quad, dyn, eta=eta, reference=ref)
    for name in ("K", "k", "pol_covar"):
        expected = getattr(plain.controller, name)
        np.testing.assert_allclose(getattr(step.controller, name), expected, atol=1e-10)
    np.testing.assert_allclose(step.Vxx, plain.Vxx, atol=1e-9)


def test_large_eta_recovers_the_reference(problem) -> None:
    quad, dyn, ref = problem
    ctrl = lqr_backward_pass(quad, dyn, eta=1e12, reference=ref).controller
    np.testing.assert_allclose(ctrl.K, ref.K, atol=1e-8)
    np.testing.assert_allclose(ctrl.k, ref.k, atol=1e-8)
    np.testing.assert_allclose(ctrl.pol_covar, ref.pol_covar, atol=1e-8)


@pytest.mark.parametrize("eta", [0.1, 3.0])
def test_backward_pass_minimises_the_kl_lagrangian(problem, eta: float) -> None:
    """E[c] + η KL(p ‖ p_ref) is minimised by the η-step controller: random perturbations never do better."""
    quad, dyn, ref = problem
    best = lqr_backward_pass(quad, dyn, eta=eta, reference=ref).controller
    best_value = _lagrangian(best, quad, dyn, ref, eta)
    rng = np.random.default_rng(4)
    for scale in (1e-3, 1e-1):
        for _ in range(5):
            factor = np.eye(dU) + scale * rng.normal(size=(T, dU, dU))
            covar = factor @ best.pol_covar @ np.swapaxes(factor, 1, 2)
            other = LinearGaussianController.from_covariance(
                best.K + scale * rng.normal(size=best.K.shape),
                best.k + scale * rng.normal(size=best.k.shape),
                covar,
            )
            assert _lagrangian(other, quad, dyn, ref, eta) >= best_value - 1e-10


def test_eta_search_lands_within_tolerance_of_epsilon(problem) -> None:
    quad, dyn, ref = problem
    config = KLStepConfig()
    for epsilon in (0.05, 0.5, 2.0):
        result = kl_constrained_update(quad, dyn, ref, epsilon, 1.0, config)
        assert abs(result.kl - epsilon) <= 0.1 * epsilon
        recomputed = trajectory_kl(lqr_forward_pass(result.controller, dyn), result.controller, ref)
        assert recomputed == pytest.approx(result.kl, rel=1e-12)
        assert 1 <= result.iterations <= config.max_eta_iterations
        assert result.epsilon == epsilon


def test_eta_search_accepts_small_kl_at_min_eta(problem) -> None:
    quad, dyn, ref = problem
    config = KLStepConfig(min_eta=1e-3)
    result = kl_constrained_update(quad, dyn, ref, 1e9, 1.0, config)
    assert result.eta == config.min_eta
    # Accepted by the min_eta rule, not by the tolerance: the KL is far below ε. It is the KL of the returned
    # controller, which is the backward pass at min_eta.
    assert result.kl < (1.0 - config.kl_tolerance) * 1e9
    at_min = lqr_backward_pass(quad, dyn, eta=config.min_eta, reference=ref).controller
    np.testing.assert_allclose(result.controller.K, at_min.K, rtol=1e-12)
    assert result.kl == pytest.approx(trajectory_kl(lqr_forward_pass(at_min, dyn), at_min, ref), rel=1e-12)


def test_eta_search_raises_eta_past_non_pd_q_uu(problem) -> None:
    quad, dyn, ref = problem
    Cm = quad.Cm.copy()
    Cm[:, dX:, dX:] -= 3.0 * np.eye(dU)  # concave in u: only a large enough η keeps Q_uu PD
    concave = QuadraticCost(Cm, quad.cv, quad.cc)
    with pytest.raises(NotPositiveDefiniteError):
        lqr_backward_pass(concave, dyn, eta=1.0, reference=None)
    result = kl_constrained_update(concave, dyn, ref, 0.5, 1e-4, KLStepConfig())
    assert np.all(np.linalg.eigvalsh(result.controller.pol_covar) > 0)
    assert result.kl <= 0.55


def test_eta_search_fails_clearly_when_max_eta_is_too_small(problem) -> None:
    quad, dyn, ref = problem
    config = KLStepConfig(min_eta=1e-8, max_eta=1e-4)
    with pytest.raises(KLSearchError, match="max_eta"):
        kl_constrained_update(quad, dyn, ref, 1e-6, 1.0, config)


def test_nan_cost_and_bad_covariances_raise(problem) -> None:
    quad, dyn, ref = problem
    Cm = quad.Cm.copy()
    Cm[2, 0, 0] = np.nan
    with pytest.raises(ShapeError, match="Cm"):
        QuadraticCost(Cm, quad.cv, quad.cc)
    bad_covar = dyn.dyn_covar.copy()
    bad_covar[1] = -np.eye(dX)
    bad_dyn = LinearDynamics(dyn.Fm, dyn.fv, bad_covar, dyn.x0mu, dyn.x0sigma)
    with pytest.raises(ShapeError, match=r"dyn_covar\[1\]"):
        kl_constrained_update(quad, bad_dyn, ref, 0.5, 1.0, KLStepConfig())
    covar = ref.pol_covar.copy()
    covar[0] = -covar[0]
    with pytest.raises(ShapeError, match="positive definite"):
        LinearGaussianController.from_covariance(ref.K, ref.k, covar)
    with pytest.raises(ValueError, match="epsilon"):
        kl_constrained_update(quad, dyn, ref, float("nan"), 1.0, KLStepConfig())


def test_adapt_step_mult_direction_and_bounds() -> None:
    # Model predicted the improvement exactly → grow (×5 at most).
    assert adapt_step_mult(1.0, 10.0, 8.0, 8.0, 0.01, 10.0) == pytest.approx(5.0)
    # Actual cost went up although the model promised a decrease → shrink.
    assert adapt_step_mult(1.0, 10.0, 8.0, 12.0, 0.01, 10.0) < 1.0
    # Half of the predicted improvement realised → the rule's fixed point: mult = 1.
    assert adapt_step_mult(1.0, 10.0, 8.0, 9.0, 0.01, 10.0) == pytest.approx(1.0)
    mult = 1.0
    for _ in range(10):
        mult = adapt_step_mult(mult, 10.0, 8.0, 8.0, 0.01, 10.0)
    assert mult == 10.0
    for _ in range(10):
        mult = adapt_step_mult(mult, 10.0, 8.0, 20.0, 0.01, 10.0)
    assert mult == 0.01
    with pytest.raises(ValueError, match="actual"):
        adapt_step_mult(1.0, 10.0, 8.0, float("nan"), 0.01, 10.0)


def test_condition_optimizer_improves_adapts_and_pickles(problem) -> None:
    quad, dyn, ref = problem
    opt = ConditionOptimizer(ref, KLStepConfig(kl_step=0.05))
    with pytest.raises(RuntimeError):
        opt.step_adjustment(dyn, quad)
    start = float(np.sum(expected_cost(lqr_forward_pass(ref, dyn), quad)))
    costs = []
    for _ in range(3):
        _, info = opt.update(dyn, quad)
        assert abs(info.kl - info.epsilon) <= 0.1 * info.epsilon or info.kl < info.epsilon
        assert info.epsilon == pytest.approx(0.05 * info.step_mult * T)
        costs.append(info.expected_cost)
    assert start > costs[0] > costs[1] > costs[2]
    # Same model every time: the predicted improvement is exact, so step_mult grows and stays bounded.
    previous, predicted, actual = opt.step_adjustment(dyn, quad)
    assert predicted == pytest.approx(actual)
    assert opt.step_mult == opt.config.max_step_mult  # 1 → 5 → 25, clipped to 10
    assert opt.iteration == 3
    clone = pickle.loads(pickle.dumps(opt))
    np.testing.assert_array_equal(clone.controller.K, opt.controller.K)
    assert (clone.step_mult, clone.eta, clone.iteration) == (opt.step_mult, opt.eta, opt.iteration)


def test_condition_optimizer_external_step_mult_and_reference(problem) -> None:
    quad, dyn, ref = problem
    config = KLStepConfig(kl_step=0.1)
    opt = ConditionOptimizer(ref, config)
    opt.step_mult = 100.0
    assert opt.step_mult == config.max_step_mult
    opt.step_mult = 0.5
    with pytest.raises(ValueError):
        opt.step_mult = float("nan")
    policy_lin = random_controller(np.random.default_rng(9), T, dX, dU)
    ctrl, info = opt.update(dyn, quad, reference=policy_lin, adapt_step=False)
    assert info.step_mult == 0.5
    kl_to_policy = trajectory_kl(lqr_forward_pass(ctrl, dyn), ctrl, policy_lin)
    assert kl_to_policy == pytest.approx(info.kl, rel=1e-12)


def test_kl_step_config_validation() -> None:
    assert from_dict(KLStepConfig, {"kl_step": 0.5, "max_eta_iterations": 20}).kl_step == 0.5
    with pytest.raises(ConfigError):
        KLStepConfig(min_eta=1.0, max_eta=0.1)
    with pytest.raises(ConfigError):
        KLStepConfig(kl_tolerance=0.0)
    with pytest.raises(ConfigError):
        from_dict(KLStepConfig, {"kl_stepp": 1.0})


def test_condition_optimizer_takes_the_flagged_zero_step_when_infeasible(problem) -> None:
    quad, dyn, ref = problem
    strict_config = KLStepConfig(kl_step=1e-8, max_eta=1e-4, zero_step_when_infeasible=False)
    strict = ConditionOptimizer(ref, strict_config)
    with pytest.raises(KLSearchError):
        strict.update(dyn, quad)
    opt = ConditionOptimizer(ref, KLStepConfig(kl_step=1e-8, max_eta=1e-4))
    controller, info = opt.update(dyn, quad)
    assert info.fallback and info.kl == 0.0 and info.eta == opt.config.max_eta
    np.testing.assert_array_equal(controller.K, ref.K)
    np.testing.assert_array_equal(controller.k, ref.k)
    assert info.expected_cost == pytest.approx(float(np.sum(expected_cost(lqr_forward_pass(ref, dyn), quad))))
    _, regular = ConditionOptimizer(ref, KLStepConfig(kl_step=0.05)).update(dyn, quad)
    assert not regular.fallback


def test_step_rule_compares_the_previous_model_with_the_new_one() -> None:
    """Different previous and new models and costs: previous and predicted under the previous model, actual
    under the new one, each against the Gaussian expected cost of the joint trajectory; the multiplier the
    next update uses is the rule computed by hand from those three numbers."""
    rng = np.random.default_rng(21)
    quad1, dyn1 = random_quadratic_cost(rng, T, dX, dU), random_dynamics(rng, T, dX, dU)
    quad2, dyn2 = random_quadratic_cost(rng, T, dX, dU), random_dynamics(rng, T, dX, dU, noise=0.05)
    start = random_controller(rng, T, dX, dU)
    config = KLStepConfig(kl_step=0.2, min_step_mult=0.01, max_step_mult=10.0)
    opt = ConditionOptimizer(start, config)
    first, _ = opt.update(dyn1, quad1)
    previous, predicted, actual = opt.step_adjustment(dyn2, quad2)
    assert previous == pytest.approx(expected_total_cost_oracle(start, dyn1, quad1), rel=1e-9)
    assert predicted == pytest.approx(expected_total_cost_oracle(first, dyn1, quad1), rel=1e-9)
    assert actual == pytest.approx(expected_total_cost_oracle(first, dyn2, quad2), rel=1e-9)
    # The models differ enough that swapping them is visible in every one of the three numbers.
    assert abs(expected_total_cost_oracle(first, dyn2, quad2) - predicted) > 0.1 * abs(predicted)
    assert abs(expected_total_cost_oracle(start, dyn2, quad2) - previous) > 0.1 * abs(previous)
    want = step_rule_oracle(1.0, previous, predicted, actual, 0.01, 10.0)
    _, info = opt.update(dyn2, quad2)
    assert info.step_mult == pytest.approx(want, rel=1e-12)
    assert info.epsilon == pytest.approx(0.2 * want * T, rel=1e-12)
    new_cost = expected_total_cost_oracle(opt.controller, dyn2, quad2)
    assert info.expected_cost == pytest.approx(new_cost, rel=1e-9)


@pytest.mark.parametrize(("previous", "predicted", "actual"), [
    (10.0, 7.0, 8.0), (10.0, 7.0, 9.5), (4.0, 3.0, 3.9), (-2.0, -3.0, -2.4), (10.0, 9.0, 9.0)])
def test_adapt_step_mult_matches_the_rule_written_out(previous: float, predicted: float,
                                                     actual: float) -> None:
    for step_mult in (0.3, 1.0, 4.0):
        got = adapt_step_mult(step_mult, previous, predicted, actual, 0.05, 8.0)
        assert got == pytest.approx(step_rule_oracle(step_mult, previous, predicted, actual, 0.05, 8.0))


def test_reference_log_density_terms_are_the_gaussian_log_density(problem) -> None:
    """0.5 zᵀMz + zᵀv differs from −log N(u; Kx + k, Σ) by the same constant at every z = [x; u]."""
    quad, _, ref = problem
    M, v = reference_log_density_terms(ref)
    np.testing.assert_allclose(M, np.swapaxes(M, 1, 2), atol=1e-12)
    rng = np.random.default_rng(5)
    for t in (0, T - 1):
        gaps = []
        for _ in range(3):
            x, u = rng.normal(size=dX), rng.normal(size=dU)
            z = np.concatenate([x, u])
            neg_log = -scipy.stats.multivariate_normal(ref.K[t] @ x + ref.k[t], ref.pol_covar[t]).logpdf(u)
            gaps.append(neg_log - (0.5 * z @ M[t] @ z + z @ v[t]))
        np.testing.assert_allclose(gaps, gaps[0], atol=1e-10)
    fCm, fcv = augmented_cost(quad, 0.5, ref)
    np.testing.assert_allclose(fCm, 2.0 * quad.Cm + M, atol=1e-12)  # quad.Cm is symmetric here
    np.testing.assert_allclose(fcv, 2.0 * quad.cv + v, atol=1e-12)


def test_eta_search_steps_expand_tenfold_then_bisect_in_log_space() -> None:
    config = KLStepConfig(min_eta=1e-6, max_eta=1e16)
    # KL too large at η = 1 with nothing above it tried yet: ×10.
    assert _next_eta(1.0, 1.0, 1e16, True, config) == pytest.approx(10.0)
    # Bracketed in [1, 100]: the geometric midpoint.
    assert _next_eta(100.0, 1.0, 100.0, False, config) == pytest.approx(10.0)
    assert _next_eta(1.0, 1.0, 100.0, True, config) == pytest.approx(10.0)
    # KL too small at η = 1 with nothing below tried: ÷10, and never below min_eta.
    assert _next_eta(1.0, 1e-6, 1.0, False, config) == pytest.approx(0.1)
    assert _next_eta(5e-6, 1e-6, 5e-6, False, config) == config.min_eta  # lands on it exactly


def test_eta_search_accepts_the_first_eta_within_the_tolerance(problem) -> None:
    quad, dyn, ref = problem
    eta0 = 2.0
    controller = lqr_backward_pass(quad, dyn, eta=eta0, reference=ref).controller
    kl0 = trajectory_kl(lqr_forward_pass(controller, dyn), controller, ref)
    # ε chosen so that the KL at η0 is 40 % off: inside a 50 % tolerance, outside 25 %.
    config = KLStepConfig(kl_tolerance=0.5)
    result = kl_constrained_update(quad, dyn, ref, kl0 / 1.4, eta0, config)
    assert (result.iterations, result.eta) == (1, eta0)
    assert result.kl == pytest.approx(kl0, rel=1e-12)
