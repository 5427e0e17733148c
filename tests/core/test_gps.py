"""MDGPS: S-step regression, targets, the C-step against policy linearisations, the step rule, determinism,
and the full loop on a damped point mass."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers_traj import (
    expected_total_cost_oracle,
    random_controller,
    random_dynamics,
    random_quadratic_cost,
    random_spd,
    step_rule_oracle,
)

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import (
    LinearDynamics,
    LinearGaussianController,
    SampleBatch,
    ShapeError,
    StateLayout,
)
from mbpl_core.costs import CostConfig, QuadraticCost, build_cost, quadratic_cost_model
from mbpl_core.guided.mdgps import (
    MDGPS,
    CStepRecord,
    GaussianMLPPolicy,
    GPSConfig,
    NumpyPolicy,
    build_policy_targets,
    evaluate_policy,
    mdgps_step_costs,
    mdgps_step_mult,
    mdgps_step_mults,
    perturbed_policy_targets,
    policy_to_params,
    precision_weighted_loss,
    train_policy,
)
from mbpl_core.local.lqr_flm import AlgorithmConfig, Policy
from mbpl_core.local.traj_opt import KLSearchError, KLStepConfig, kl_constrained_update, lqr_backward_pass

FAST = GPSConfig(hidden_sizes=(32, 32), iterations=400, learning_rate=3e-3, batch_size=64, device="cpu")


class PointMassEnv:
    """2-D damped point mass: v' = v + dt (u − c v), q' = q + dt v'; one ee point at (q, 0) − target.

    x = [q (2), q̇ (2), ee − target (3), ee velocity (3)]: dX = 10, dU = 2. Targets at the origin.
    """

    def __init__(self, starts: list[tuple[float, float]], T: int = 30, dt: float = 0.1, damping: float = 1.0):
        self.T, self.dt, self.damping = T, dt, damping
        self.layout = StateLayout(dQ=2, n_points=1)
        self.dX, self.dU = self.layout.dX, 2
        self.starts = [np.asarray(s, dtype=np.float64) for s in starts]
        self.num_conditions = len(starts)

    def _state(self, q: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.concatenate([q, v, q, [0.0], v, [0.0]])

    def x0(self, condition: int) -> np.ndarray:
        return self._state(self.starts[condition], np.zeros(2))

    def sample(self, policy: Policy, condition: int, noise: np.ndarray | None) -> SampleBatch:
        q, v = self.starts[condition].copy(), np.zeros(2)
        X, U = np.empty((self.T, self.dX)), np.empty((self.T, self.dU))
        for t in range(self.T):
            X[t] = self._state(q, v)
            U[t] = policy.act(t, X[t], None if noise is None else noise[t])
            v = v + self.dt * (U[t] - self.damping * v)
            q = q + self.dt * v
        return SampleBatch(X[None], U[None])


def _linear_controller(T: int, K: np.ndarray, k: np.ndarray, var: float) -> LinearGaussianController:
    dU = K.shape[0]
    return LinearGaussianController.from_covariance(
        np.broadcast_to(K, (T, *K.shape)),
        np.broadcast_to(k, (T, dU)),
        np.broadcast_to(var * np.eye(dU), (T, dU, dU)),
    )


def test_s_step_recovers_linear_controller() -> None:
    rng = np.random.default_rng(0)
    K, k = rng.normal(size=(2, 5)) * 0.5, np.array([0.3, -0.2])
    controller = _linear_controller(10, K, k, 0.1)
    batch = SampleBatch(rng.normal(size=(8, 10, 5)), np.zeros((8, 10, 2)))
    targets = build_policy_targets([controller], [batch], np.arange(5))
    policy = GaussianMLPPolicy.from_config(FAST, 5, 2)
    report = train_policy(policy, targets.obs, targets.target_mu, targets.target_prec, FAST)
    assert report.loss_after < 0.02 * report.loss_before
    err = policy.mean_batch(batch.X.reshape(-1, 5)) - targets.target_mu
    assert np.sqrt(np.mean(err**2)) < 0.1 * np.sqrt(np.mean(targets.target_mu**2))
    # Policy covariance = (mean target precision)⁻¹ = the controller's covariance here.
    np.testing.assert_allclose(policy.action_covar, 0.1 * np.eye(2), rtol=1e-10)


def test_precision_weighting_pulls_towards_confident_target() -> None:
    # Same input twice with targets 0 and 1 and precisions 9 and 1: the minimiser of
    # Σ λ_i (μ − μ_i)² is the precision-weighted mean (9·0 + 1·1)/10 = 0.1.
    obs = np.zeros((2, 1))
    mu = np.array([[0.0], [1.0]])
    prec = np.array([[[9.0]], [[1.0]]])
    config = GPSConfig(hidden_sizes=(8,), iterations=1500, learning_rate=1e-2, weight_decay=0.0, device="cpu")
    policy = GaussianMLPPolicy.from_config(config, 1, 1)
    train_policy(policy, obs, mu, prec, config)
    fitted = float(policy.mean_batch(np.zeros((1, 1)))[0, 0])
    assert abs(fitted - 0.1) < 0.02
    np.testing.assert_allclose(policy.action_covar, [[1.0 / 5.0]])


def test_targets_follow_the_controllers() -> None:
    rng = np.random.default_rng(1)
    c1 = _linear_controller(4, rng.normal(size=(2, 3)), rng.normal(size=2), 0.5)
    c2 = _linear_controller(4, rng.normal(size=(2, 3)), rng.normal(size=2), 2.0)
    b1 = SampleBatch(rng.normal(size=(2, 4, 3)), np.zeros((2, 4, 2)))
    b2 = SampleBatch(rng.normal(size=(3, 4, 3)), np.zeros((3, 4, 2)))
    targets = build_policy_targets([c1, c2], [b1, b2], np.array([0, 2]))
    assert targets.obs.shape == (20, 2) and targets.target_mu.shape == (20, 2)
    row = 8 + 1 * 4 + 3  # condition 2, sample 1, step 3
    np.testing.assert_allclose(targets.target_mu[row], c2.K[3] @ b2.X[1, 3] + c2.k[3])
    np.testing.assert_allclose(targets.obs[row], b2.X[1, 3, [0, 2]])
    np.testing.assert_allclose(targets.target_prec[row], np.eye(2) / 2.0)
    with pytest.raises(ShapeError):
        build_policy_targets([c1], [b1, b2], np.arange(3))


def test_perturbed_targets_stay_in_the_samples_span_and_follow_the_controller() -> None:
    rng = np.random.default_rng(9)
    T, N, dX = 3, 4, 5
    controller = _linear_controller(T, rng.normal(size=(2, dX)), rng.normal(size=2), 0.5)
    # Samples that vary along two directions only: the perturbations must not leave that plane.
    basis = rng.normal(size=(2, dX))
    X = rng.normal(size=(1, T, dX)) + np.einsum("ntb,bx->ntx", rng.normal(size=(N, T, 2)), basis)
    batch = SampleBatch(X, np.zeros((N, T, 2)))
    targets = perturbed_policy_targets([controller], [batch], np.arange(dX), 2000, 1.5,
                                       np.random.default_rng(0))
    assert targets.obs.shape == (2000 * N * T, dX)
    states = targets.obs.reshape(2000, N, T, dX)
    offsets = states - X[None]
    residual = offsets - offsets @ np.linalg.pinv(basis) @ basis
    np.testing.assert_allclose(residual, 0.0, atol=1e-10)
    # Labels are the controller's mean action at the new states, with its precision.
    mu = targets.target_mu.reshape(2000, N, T, 2)
    expected = np.einsum("tux,cntx->cntu", controller.K, states) + controller.k
    np.testing.assert_allclose(mu, expected, atol=1e-12)
    np.testing.assert_allclose(targets.target_prec[5], controller.inv_pol_covar[5 % T], atol=1e-12)
    # Offset covariance = scale² · (the samples' covariance at t), within Monte Carlo error.
    for t in range(T):
        S = np.cov(X[:, t].T, bias=True)
        emp = np.cov(offsets[:, :, t].reshape(-1, dX).T, bias=True)
        np.testing.assert_allclose(emp, 1.5**2 * S, atol=0.08 * np.abs(S).max() * 1.5**2)


def test_train_policy_rejects_bad_targets() -> None:
    policy = GaussianMLPPolicy.from_config(FAST, 3, 2)
    obs, mu, prec = np.zeros((4, 3)), np.zeros((4, 2)), np.broadcast_to(np.eye(2), (4, 2, 2)).copy()
    with pytest.raises(ShapeError, match="target_mu"):
        train_policy(policy, obs, np.zeros((4, 3)), prec, FAST)
    bad = mu.copy()
    bad[2, 1] = np.inf
    with pytest.raises(ShapeError, match="NaN or Inf"):
        train_policy(policy, obs, bad, prec, FAST)
    with pytest.raises(ShapeError, match="positive definite"):
        train_policy(policy, obs, mu, -prec, FAST)


def test_same_seed_same_weights() -> None:
    rng = np.random.default_rng(2)
    obs, mu = rng.normal(size=(100, 4)), rng.normal(size=(100, 2))
    prec = np.broadcast_to(np.eye(2), (100, 2, 2))
    config = GPSConfig(hidden_sizes=(16,), iterations=50, device="cpu", seed=7)
    weights = []
    for seed in (7, 7, 8):
        cfg = GPSConfig(hidden_sizes=(16,), iterations=50, device="cpu", seed=seed)
        policy = GaussianMLPPolicy.from_config(cfg, 4, 2)
        train_policy(policy, obs, mu, prec, config)
        weights.append(torch.cat([p.detach().flatten() for p in policy.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])


def _expansive_reference_problem(seed: int = 0, T: int = 40, dX: int = 6, dU: int = 2, gain: float = 3000.0
                                 ) -> tuple[QuadraticCost, LinearDynamics, LinearGaussianController]:
    """A C-step like the one that failed on peg insertion (KLSearchError "Q_uu not PD" even at η = 1e16).

    Reference gains of ~3000 (a poor policy linearisation) whose closed loop A = Fm_x + Fm_u K under the
    dynamics is strongly non-normal (‖A‖ ≫ ρ(A) = 0.5): x' = A x + Fm_u u' transiently amplifies ~10× a step.
    """
    rng = np.random.default_rng(seed)
    K = gain * rng.normal(size=(T, dU, dX))
    Fu = 0.1 * rng.normal(size=(T, dX, dU))
    Q, _ = np.linalg.qr(rng.normal(size=(dX, dX)))
    A = Q @ (0.5 * np.eye(dX) + 10.0 * np.triu(rng.normal(size=(dX, dX)), 1)) @ Q.T
    Fm = np.concatenate([A - Fu @ K, Fu], axis=2)
    dyn = LinearDynamics(Fm, rng.normal(size=(T, dX)), np.broadcast_to(1e-4 * np.eye(dX), (T, dX, dX)),
                         rng.normal(size=dX), 1e-2 * np.eye(dX))
    B = rng.normal(size=(T, dU, dU))
    covar = B @ np.swapaxes(B, 1, 2) / dU + 0.2 * np.eye(dU)
    ref = LinearGaussianController.from_covariance(K, gain * rng.normal(size=(T, dU)), covar)
    quad = QuadraticCost(np.broadcast_to(np.eye(dX + dU), (T, dX + dU, dX + dU)), np.zeros((T, dX + dU)),
                         np.zeros(T))
    return quad, dyn, ref


@pytest.mark.parametrize("eta", [1.0, 1e16])
def test_kl_step_with_zero_cost_returns_an_expansive_reference_exactly(eta: float) -> None:
    # Oracle: with no cost the Lagrangian is η·KL(p ‖ p_ref), minimised by p_ref itself at every η. In u,
    # −log p_ref puts KᵀPK ~ 1e7 into Q_xx; its rounding residue, carried back through the expansive closed
    # loop, made Q_uu indefinite at every η (the peg failure). The deviation form has nothing to cancel.
    quad, dyn, ref = _expansive_reference_problem()
    zero = QuadraticCost(np.zeros_like(quad.Cm), np.zeros_like(quad.cv), np.zeros_like(quad.cc))
    result = lqr_backward_pass(zero, dyn, eta=eta, reference=ref)
    np.testing.assert_array_equal(result.controller.K, ref.K)
    np.testing.assert_array_equal(result.controller.k, ref.k)
    np.testing.assert_allclose(result.controller.pol_covar, ref.pol_covar, rtol=1e-12)
    np.testing.assert_array_equal(result.Vxx, 0.0)


def _extended_precision_gains(quad: QuadraticCost, dyn: LinearDynamics, ref: LinearGaussianController,
                              eta: float, digits: int) -> np.ndarray:
    """Independent oracle: the u-coordinate backward pass of the η-Lagrangian in ``digits``-digit arithmetic.

    Per step, over z̃ = [x; 1; u]: Q = C̃/η + GᵀPG + FᵀVF with G = [−K_ref, −k_ref, I]; [K, k] = −Q_uu⁻¹ Q_ux̃.
    """
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(digits):
        T, dX, dU = dyn.T, dyn.dX, dyn.dU
        nx, n = dX + 1, dX + 1 + dU
        V = mpmath.zeros(nx, nx)
        gains = []
        for t in range(T - 1, -1, -1):
            C = np.zeros((n, n))
            idx = np.r_[0:dX, nx:n]
            C[np.ix_(idx, idx)] = quad.Cm[t]
            F = np.zeros((nx, n))
            F[:dX, :dX], F[:dX, dX], F[:dX, nx:] = dyn.Fm[t, :, :dX], dyn.fv[t], dyn.Fm[t, :, dX:]
            F[dX, dX] = 1.0
            G = mpmath.matrix(np.hstack([-ref.K[t], -ref.k[t][:, None], np.eye(dU)]).tolist())
            P = mpmath.matrix((0.5 * (ref.inv_pol_covar[t] + ref.inv_pol_covar[t].T)).tolist())
            Fmp = mpmath.matrix(F.tolist())
            Q = mpmath.matrix(C.tolist()) / eta + G.T * P * G + Fmp.T * V * Fmp
            gain = -(mpmath.inverse(Q[nx:, nx:]) * Q[nx:, :nx])
            V = Q[:nx, :nx] + Q[nx:, :nx].T * gain
            gains.append(np.array(gain.tolist(), dtype=np.float64))
    return np.array(gains[::-1])


def test_kl_step_at_huge_eta_matches_extended_precision() -> None:
    # The same problem with a cost: at η = 1e16 the exact controller still departs from the reference (cost/η
    # is amplified through the loop). 250-digit arithmetic in u-coordinates agrees with the float64 deviation
    # form.
    quad, dyn, ref = _expansive_reference_problem()
    exact = _extended_precision_gains(quad, dyn, ref, 1e16, digits=250)
    got = lqr_backward_pass(quad, dyn, eta=1e16, reference=ref).controller
    np.testing.assert_allclose(np.concatenate([got.K, got.k[:, :, None]], axis=2), exact, rtol=0,
                               atol=1e-6 * np.abs(exact).max())
    # So at η = 1e16 the KL is still far above a small ε; the deviation form stays sound far beyond, and the η
    # search meets ε once max_eta allows it (in u-coordinates Q_uu turns indefinite from η ≈ 1e20 on).
    config = KLStepConfig(max_eta=1e60, max_eta_iterations=100)
    result = kl_constrained_update(quad, dyn, ref, 5.0, 1e16, config)
    assert abs(result.kl - 5.0) <= 0.5 and result.eta > 1e16


def test_mdgps_step_rule_estimates() -> None:
    quad, dyn, ref = _expansive_reference_problem(T=10, gain=1.0)
    record = CStepRecord(ref, ref, dyn, quad, sample_cost=12.0)
    previous, predicted, actual = mdgps_step_costs(record, ref, dyn, quad, sample_cost=7.0, estimate="mc")
    assert (previous, actual) == (12.0, 7.0)
    laplace = mdgps_step_costs(record, ref, dyn, quad, estimate="laplace")
    # The record's reference and controller are the same controller under the same model: equal estimates.
    assert laplace[0] == laplace[1] == laplace[2] == predicted
    # pred_impr 5: achieved in full → 5 / (2·1e-4) clipped to 5; actual 20 → 5 / (2·15);
    # actual 40 → clipped to 0.1.
    assert mdgps_step_mult(1.0, 10.0, 5.0, 5.0, 0.01, 10.0) == 5.0
    assert mdgps_step_mult(1.0, 10.0, 5.0, 20.0, 0.01, 10.0) == pytest.approx(5.0 / 30.0)
    assert mdgps_step_mult(1.0, 10.0, 5.0, 40.0, 0.01, 10.0) == pytest.approx(0.1)
    assert mdgps_step_mult(1.0, 10.0, 5.0, np.inf, 0.01, 10.0) == pytest.approx(0.1)
    assert mdgps_step_mult(0.05, np.inf, 5.0, 3.0, 0.01, 10.0) == pytest.approx(0.01)


def _point_mass_setup() -> tuple[PointMassEnv, PointMassEnv, object, AlgorithmConfig]:
    train = PointMassEnv([(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)])
    held_out = PointMassEnv([(0.6, 0.6), (-0.7, 0.4), (0.3, -0.8)])
    cost = build_cost(from_dict(CostConfig, {"action_weight": 1e-2, "ee": {"l1": 0.1, "l2": 1.0}}),
                      train.layout, train.dU)
    algorithm = from_dict(AlgorithmConfig, {"samples_per_condition": 5, "kl": {"kl_step": 2.0},
                                            "init": {"type": "pd", "init_var": 0.1}})
    return train, held_out, cost, algorithm


@pytest.mark.parametrize("step_rule", ["global", "classic"])
def test_mdgps_learns_point_mass_reaching(step_rule: str) -> None:
    train, held_out, cost, algorithm = _point_mass_setup()
    gps_config = GPSConfig(hidden_sizes=(32, 32), iterations=300, learning_rate=3e-3, step_rule=step_rule,
                           device="cpu")
    mdgps = MDGPS(train, cost, algorithm, gps_config, np.random.default_rng(0), eval_env=held_out)
    untrained = evaluate_policy(held_out, mdgps.numpy_policy)
    reports = mdgps.run(5)
    assert np.mean(reports[-1].lg_cost) < 0.5 * np.mean(reports[0].lg_cost)
    trained = evaluate_policy(held_out, mdgps.numpy_policy)
    assert np.mean(trained) < 0.5 * np.mean(untrained)
    assert np.mean(trained) < 0.5 * np.mean([np.linalg.norm(s) for s in held_out.starts])
    assert reports[-1].policy_distance is not None
    np.testing.assert_allclose(reports[-1].policy_distance, trained)
    assert all(r.s_step.loss_after <= r.s_step.loss_before for r in reports)


def test_mdgps_takes_a_zero_step_when_the_kl_step_is_infeasible(monkeypatch: pytest.MonkeyPatch) -> None:
    # When no η up to max_eta holds KL(p ‖ π̄) to ε, the C-step's η → ∞ limit is π̄ itself; MDGPS uses it and
    # counts the condition in ``fallbacks`` instead of aborting the run.
    train, _, cost, algorithm = _point_mass_setup()
    mdgps = MDGPS(train, cost, algorithm, GPSConfig(hidden_sizes=(16,), iterations=50, device="cpu"),
                  np.random.default_rng(5))
    mdgps.run(1)
    import mbpl_core.local.traj_opt as traj_opt

    captured: list[LinearGaussianController] = []

    def infeasible(quad, dyn, ref, epsilon, eta0, config):  # type: ignore[no-untyped-def]
        captured.append(ref)
        raise KLSearchError("KL constraint cannot be met even at max_eta")

    monkeypatch.setattr(traj_opt, "kl_constrained_update", infeasible)
    report = mdgps.iteration()
    assert mdgps.fallbacks == [(1, m) for m in range(train.num_conditions)]
    for m, ref in enumerate(captured):
        assert mdgps.controllers[m] is ref
        assert report.kl[m] == 0.0
    assert np.all(np.isfinite(report.lg_cost))


def test_mdgps_reports_the_mean_over_samples_of_the_summed_cost() -> None:
    # A twin loop with the same seed draws the same noise: its first batches are the ones the loop sampled.
    train, _, cost, algorithm = _point_mass_setup()
    gps_config = GPSConfig(hidden_sizes=(8,), iterations=20, device="cpu")
    report = MDGPS(train, cost, algorithm, gps_config, np.random.default_rng(4)).iteration()
    twin = MDGPS(train, cost, algorithm, gps_config, np.random.default_rng(4))
    for m in range(train.num_conditions):
        batch = twin.lg.sample_condition(m)
        sums = [sum(float(v) for v in cost.evaluate(batch.X[n], batch.U[n], None).l) for n in range(batch.N)]
        assert report.lg_cost[m] == pytest.approx(sum(sums) / len(sums), rel=1e-12)


def test_mdgps_on_policy_sampling_runs() -> None:
    train, _, cost, algorithm = _point_mass_setup()
    gps_config = GPSConfig(hidden_sizes=(16,), iterations=100, sample_on_policy=True, device="cpu")
    mdgps = MDGPS(train, cost, algorithm, gps_config, np.random.default_rng(1))
    reports = mdgps.run(2)
    assert [r.sampled_on_policy for r in reports] == [False, True]
    assert reports[-1].policy_cost is None
    # The numpy copy is the trained torch policy, not a stale one.
    states = np.stack([train.x0(m) for m in range(train.num_conditions)])
    np.testing.assert_allclose(mdgps.numpy_policy.mean_batch(states), mdgps.policy.mean_batch(states),
                               rtol=1e-10, atol=1e-12)
    assert np.all(np.isfinite(NumpyPolicy(policy_to_params(mdgps.policy)).act(0, train.x0(0))))


def test_mdgps_same_seed_same_run() -> None:
    train, _, cost, algorithm = _point_mass_setup()
    gps_config = GPSConfig(hidden_sizes=(16,), iterations=50, device="cpu")
    runs = []
    for _ in range(2):
        mdgps = MDGPS(train, cost, algorithm, gps_config, np.random.default_rng(3))
        reports = mdgps.run(2)
        weights = torch.cat([p.detach().flatten() for p in mdgps.policy.parameters()])
        runs.append(([r.lg_cost for r in reports], weights, mdgps.controllers[0].K))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])


def test_mdgps_resumes_from_state_dict() -> None:
    train, _, cost, algorithm = _point_mass_setup()
    gps_config = GPSConfig(hidden_sizes=(16,), iterations=50, device="cpu")
    straight = MDGPS(train, cost, algorithm, gps_config, np.random.default_rng(4))
    expected = straight.run(3)
    first = MDGPS(train, cost, algorithm, gps_config, np.random.default_rng(4))
    first.run(1)
    resumed = MDGPS.from_state(train, cost, pickle.loads(pickle.dumps(first.state_dict())))
    rest = resumed.run(2)
    assert [r.lg_cost for r in rest] == [r.lg_cost for r in expected[1:]]
    assert resumed.iteration_count == 3 and len(resumed.reports) == 3
    x = train.x0(1)
    np.testing.assert_array_equal(resumed.numpy_policy.act(0, x), straight.numpy_policy.act(0, x))


@pytest.mark.sim
def test_mdgps_on_simulated_reacher_improves_held_out_reaching() -> None:
    experiment_module = pytest.importorskip("mbpl_sim.experiment")
    env_module = pytest.importorskip("mbpl_sim.env")
    exp = experiment_module.load_experiment(Path(__file__).resolve().parents[2] / "configs/reacher2_sim.yaml")
    train, held_out = env_module.MujocoEnv(exp), env_module.MujocoEnv(exp, "held_out")
    cost = build_cost(from_dict(CostConfig, exp.cost), train.layout, train.dU)
    algorithm = from_dict(AlgorithmConfig, exp.algorithm)
    mdgps = MDGPS(train, cost, algorithm, GPSConfig(iterations=500, device="cpu"), np.random.default_rng(0),
                  eval_env=held_out)
    untrained = np.mean(evaluate_policy(held_out, mdgps.numpy_policy))
    reports = mdgps.run(8)
    assert np.mean(reports[-1].policy_distance) < 0.6 * untrained
    assert np.mean(reports[-1].lg_cost) < np.mean(reports[0].lg_cost)


def test_average_last_returns_the_mean_of_the_last_iterates() -> None:
    # Oracle: θ_n is the n-step iterate (the same generator gives the same minibatches); the averaged S-step
    # must end at (θ_{S−2} + θ_{S−1} + θ_S) / 3, computed here from three separate plain runs.
    rng = np.random.default_rng(3)
    obs, mu = rng.normal(size=(60, 4)), rng.normal(size=(60, 2))
    prec = np.broadcast_to(np.eye(2), (60, 2, 2))
    base = GPSConfig(hidden_sizes=(8,), iterations=12, batch_size=16, learning_rate=1e-2, device="cpu")

    def trained(config: GPSConfig) -> torch.Tensor:
        policy = GaussianMLPPolicy.from_config(base, 4, 2)
        train_policy(policy, obs, mu, prec, config, torch.Generator().manual_seed(1))
        return torch.cat([p.detach().flatten() for p in policy.parameters()])

    iterates = [trained(GPSConfig(**{**base.__dict__, "iterations": n})) for n in (10, 11, 12)]
    averaged = trained(GPSConfig(**{**base.__dict__, "average_last": 3}))
    torch.testing.assert_close(averaged, sum(iterates) / 3, rtol=0, atol=1e-12)
    torch.testing.assert_close(trained(GPSConfig(**{**base.__dict__, "average_last": 1})), iterates[-1],
                               rtol=0, atol=0)


def test_policy_ema_blends_the_previous_and_the_trained_weights() -> None:
    # Until the second S-step both runs are identical (no average before a first fit); at the second, the
    # plain run's weights are θ_trained, and the EMA run must hold β θ_before + (1 − β) θ_trained.
    train, _, cost, algorithm = _point_mass_setup()
    beta = 0.7
    plain_cfg = GPSConfig(hidden_sizes=(16,), iterations=50, device="cpu", refit_normalization=False)
    runs = [MDGPS(train, cost, algorithm, GPSConfig(**{**plain_cfg.__dict__, "policy_ema": b}),
                  np.random.default_rng(6)) for b in (0.0, beta)]
    for mdgps in runs:
        mdgps.run(1)
    before = torch.cat([p.detach().flatten() for p in runs[1].policy.parameters()])
    for mdgps in runs:
        mdgps.run(1)
    plain, ema = (torch.cat([p.detach().flatten() for p in m.policy.parameters()]) for m in runs)
    assert not torch.equal(plain, before)
    torch.testing.assert_close(ema, beta * before + (1 - beta) * plain, rtol=0, atol=1e-12)
    x = train.x0(0)
    np.testing.assert_array_equal(runs[1].numpy_policy.act(0, x),
                                  NumpyPolicy(policy_to_params(runs[1].policy)).act(0, x))


@pytest.mark.parametrize("bad", [{"average_last": -1}, {"average_last": 51}, {"policy_ema": 1.0},
                                 {"policy_ema": -0.1}, {"policy_ema": float("nan")}])
def test_averaging_settings_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="gps"):
        GPSConfig(iterations=50, **bad)  # type: ignore[arg-type]


def test_select_best_deploys_the_lowest_training_cost_snapshot() -> None:
    # Oracle: the deployed policy's own noiseless training cost (recomputed here) is the minimum over the
    # iterations' reported training costs, reached first at the recorded iteration; resuming keeps it.
    train, held_out, cost, algorithm = _point_mass_setup()
    gps_config = GPSConfig(hidden_sizes=(16,), iterations=60, device="cpu", select_best=True)
    mdgps = MDGPS(train, cost, algorithm, gps_config, np.random.default_rng(8), eval_env=held_out)
    reports = mdgps.run(4)
    means = [float(np.mean(r.train_policy_cost)) for r in reports]  # type: ignore[arg-type]
    assert mdgps.best is not None
    score, iteration, deployed = mdgps.best
    assert iteration == int(np.argmin(means)) and score == min(means)
    recomputed = [float(quadratic_cost_model(cost, train.sample(deployed, m, None))[0].sum())
                  for m in range(train.num_conditions)]
    np.testing.assert_allclose(np.mean(recomputed), score, rtol=1e-12)
    resumed = MDGPS.from_state(train, cost, pickle.loads(pickle.dumps(mdgps.state_dict())))
    x = train.x0(2)
    np.testing.assert_array_equal(resumed.deployed_policy.act(0, x), deployed.act(0, x))
    plain = MDGPS(train, cost, algorithm, GPSConfig(hidden_sizes=(16,), iterations=60, device="cpu"),
                  np.random.default_rng(8))
    plain.run(1)
    assert plain.deployed_policy is plain.numpy_policy and plain.reports[0].train_policy_cost is None


def test_select_on_validation_deploys_the_lowest_validation_cost_snapshot() -> None:
    # Oracle as above, on validation positions that are neither trained on nor the held-out ones.
    train, held_out, cost, algorithm = _point_mass_setup()
    validation = PointMassEnv([(0.5, -0.5), (-0.4, -0.6), (-0.6, 0.5), (0.2, 0.7)])
    gps_config = GPSConfig(hidden_sizes=(16,), iterations=60, device="cpu", select_best=True,
                           select_on="validation")
    with pytest.raises(ValueError, match="select_env"):
        MDGPS(train, cost, algorithm, gps_config, np.random.default_rng(8))
    mdgps = MDGPS(train, cost, algorithm, gps_config, np.random.default_rng(8), eval_env=held_out,
                  select_env=validation)
    reports = mdgps.run(4)
    means = [float(np.mean(r.train_policy_cost)) for r in reports]  # type: ignore[arg-type]
    assert all(len(r.train_policy_cost) == validation.num_conditions for r in reports)  # type: ignore[arg-type]
    assert mdgps.best is not None
    score, iteration, deployed = mdgps.best
    assert iteration == int(np.argmin(means)) and score == min(means)
    recomputed = [float(quadratic_cost_model(cost, validation.sample(deployed, m, None))[0].sum())
                  for m in range(validation.num_conditions)]
    np.testing.assert_allclose(np.mean(recomputed), score, rtol=1e-12)
    resumed = MDGPS.from_state(train, cost, pickle.loads(pickle.dumps(mdgps.state_dict())), eval_env=held_out,
                               select_env=validation)
    resumed.run(1)
    assert len(resumed.reports[-1].train_policy_cost) == validation.num_conditions  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="select_on"):
        GPSConfig(select_on="held_out")  # type: ignore[arg-type]


def _full_precisions(rng: np.random.Generator, B: int, dU: int) -> np.ndarray:
    """B random symmetric positive-definite (dU, dU) precisions with large off-diagonal entries."""
    return np.stack([random_spd(rng, dU, 2.0, floor=0.05) for _ in range(B)])


def test_precision_weighted_loss_with_full_precisions_matches_an_explicit_loop() -> None:
    rng = np.random.default_rng(31)
    B, dU = 7, 3
    mu_pi, mu = rng.normal(size=(B, dU)), rng.normal(size=(B, dU))
    prec = _full_precisions(rng, B, dU)
    expected = 0.0
    for b in range(B):
        for i in range(dU):
            for j in range(dU):
                expected += (mu_pi[b, i] - mu[b, i]) * prec[b, i, j] * (mu_pi[b, j] - mu[b, j])
    expected /= B
    got = precision_weighted_loss(*(torch.as_tensor(a) for a in (mu_pi, mu, prec)))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    diagonal_only = np.mean(np.sum((mu_pi - mu) ** 2 * np.diagonal(prec, axis1=1, axis2=2), axis=1))
    assert abs(diagonal_only - expected) > 0.1 * abs(expected)  # the off-diagonal terms matter here


def test_s_step_with_full_precisions_fits_the_precision_weighted_mean_and_its_covariance() -> None:
    # One input, two targets with full precisions P1, P2: the minimiser of Σ_i (μ − μ_i)ᵀ P_i (μ − μ_i) is
    # (P1 + P2)⁻¹ (P1 μ1 + P2 μ2); the policy covariance is the inverse of the mean precision ((P1 + P2)/2)⁻¹.
    P1 = np.array([[4.0, 3.0], [3.0, 4.0]])
    P2 = np.array([[1.0, -0.8], [-0.8, 1.0]])
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 0.0])
    obs, mu, prec = np.zeros((2, 1)), np.stack([mu1, mu2]), np.stack([P1, P2])
    config = GPSConfig(hidden_sizes=(8,), iterations=1500, learning_rate=1e-2, weight_decay=0.0, device="cpu")
    policy = GaussianMLPPolicy.from_config(config, 1, 2)
    before = policy.mean_batch(np.zeros((1, 1)))[0]
    report = train_policy(policy, obs, mu, prec, config)
    loop = sum((before - m) @ P @ (before - m) for m, P in ((mu1, P1), (mu2, P2))) / 2
    assert report.loss_before == pytest.approx(loop, rel=1e-10)
    want = np.linalg.solve(P1 + P2, P1 @ mu1 + P2 @ mu2)
    np.testing.assert_allclose(policy.mean_batch(np.zeros((1, 1)))[0], want, atol=0.02)
    np.testing.assert_allclose(policy.action_covar, np.linalg.inv((P1 + P2) / 2), rtol=1e-10)


def test_targets_carry_full_controller_precisions() -> None:
    rng = np.random.default_rng(32)
    T_, dX_, dU_ = 4, 3, 3
    controller = random_controller(rng, T_, dX_, dU_)
    batch = SampleBatch(rng.normal(size=(2, T_, dX_)), np.zeros((2, T_, dU_)))
    targets = build_policy_targets([controller], [batch], np.arange(dX_))
    for n in range(2):
        for t in range(T_):
            want_prec = np.linalg.inv(controller.pol_covar[t])
            np.testing.assert_allclose(targets.target_prec[n * T_ + t], want_prec, rtol=1e-10)
            np.testing.assert_allclose(targets.target_mu[n * T_ + t],
                                       controller.K[t] @ batch.X[n, t] + controller.k[t], rtol=1e-12)


def _step_rule_models(seed: int) -> tuple:
    """Last iteration's record (reference π̄_old, the C-step's controller, the model it was solved on) and
    today's reference and model, all different: the controller is the plain LQR optimum of the old model
    (a predicted improvement), today's reference lies between the two, today's model is the old one
    perturbed."""
    rng = np.random.default_rng(seed)
    T_, dX_, dU_ = 6, 3, 2
    dyn, quad = random_dynamics(rng, T_, dX_, dU_), random_quadratic_cost(rng, T_, dX_, dU_)
    old_ref = random_controller(rng, T_, dX_, dU_)
    controller = lqr_backward_pass(quad, dyn).controller
    new_ref = LinearGaussianController.from_covariance(0.5 * (old_ref.K + controller.K),
                                                       0.5 * (old_ref.k + controller.k), old_ref.pol_covar)
    new_dyn = LinearDynamics(dyn.Fm + 0.05 * rng.normal(size=dyn.Fm.shape), dyn.fv, 2.0 * dyn.dyn_covar,
                             dyn.x0mu + 0.3, dyn.x0sigma)
    new_quad = QuadraticCost(1.2 * quad.Cm, quad.cv + 0.3 * rng.normal(size=quad.cv.shape), quad.cc)
    return CStepRecord(old_ref, controller, dyn, quad, sample_cost=40.0), new_ref, (new_dyn, new_quad)


def test_mdgps_step_costs_use_the_previous_model_for_previous_and_predicted() -> None:
    record, new_ref, (dyn, quad) = _step_rule_models(41)
    previous, predicted, actual = mdgps_step_costs(record, new_ref, dyn, quad, estimate="laplace")
    old_model = (record.dynamics, record.quad)
    assert previous == pytest.approx(expected_total_cost_oracle(record.reference, *old_model), rel=1e-9)
    assert predicted == pytest.approx(expected_total_cost_oracle(record.controller, *old_model), rel=1e-9)
    assert actual == pytest.approx(expected_total_cost_oracle(new_ref, dyn, quad), rel=1e-9)
    # Under today's model the prediction would be a different number: the test can tell the models apart.
    under_new = expected_total_cost_oracle(record.controller, dyn, quad)
    assert abs(under_new - predicted) > 0.1 * abs(predicted)
    mc = mdgps_step_costs(record, new_ref, dyn, quad, sample_cost=25.0, estimate="mc")
    assert mc[0] == 40.0 and mc[2] == 25.0 and mc[1] == pytest.approx(predicted, rel=1e-12)


@pytest.mark.parametrize("step_rule", ["classic", "global"])
def test_mdgps_step_mults_match_the_rule_written_out(step_rule: str) -> None:
    rows = [_step_rule_models(seed) for seed in (42, 43)]
    records = [r for r, _, _ in rows]
    refs = [ref for _, ref, _ in rows]
    models = [model for _, _, model in rows]
    costs = np.array([[expected_total_cost_oracle(r.reference, r.dynamics, r.quad),
                       expected_total_cost_oracle(r.controller, r.dynamics, r.quad),
                       expected_total_cost_oracle(ref, dyn, quad)]
                      for r, ref, (dyn, quad) in zip(records, refs, models, strict=True)])
    if step_rule == "global":
        costs = np.broadcast_to(costs.mean(axis=0), costs.shape)
    kl = KLStepConfig(min_step_mult=0.05, max_step_mult=8.0)
    config = GPSConfig(step_rule=step_rule, step_estimate="laplace", device="cpu")
    got = mdgps_step_mults([0.7, 2.0], records, refs, models, [0.0, 0.0], config, kl)
    want = [step_rule_oracle(s, *c, 0.05, 8.0) for s, c in zip([0.7, 2.0], costs, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-9)
