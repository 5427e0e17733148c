"""The step check (mbpl_core.local.step_check): a C-step whose noiseless trial regresses is shrunk, then
rejected, on constructed cases whose answer is known: a cost that jumps past a step size the model cannot
see (the peg's rim), the optimizer's state after acceptance and rejection, and the LQR-FLM loop's
invariant that the current controller's noiseless cost never rises beyond the tolerance."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers_traj import random_controller, random_dynamics, random_quadratic_cost

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import LinearGaussianController, SampleBatch
from mbpl_core.costs import quadratic_cost_model
from mbpl_core.local.lqr_flm import LQRFLM, AlgorithmConfig
from mbpl_core.local.step_check import StepCheckConfig, check_step, checked_update, regressed
from mbpl_core.local.traj_opt import ConditionOptimizer, KLStepConfig, lqr_forward_pass, trajectory_kl

CONFIG = StepCheckConfig(enabled=True, regression_tolerance=0.1, max_backtracks=2, backtrack_factor=0.25)


def _wall(limit: float, baseline: float = 10.0):  # noqa: ANN202
    """Noiseless cost of a step of size ``mult``: improves by 1 % per unit, doubles past ``limit``."""
    return lambda mult: baseline * (2.0 if mult > limit else 1.0 - 0.01 * mult)


def test_regressed_is_relative_to_the_baseline_and_rejects_non_finite() -> None:
    assert not regressed(10.99, 10.0, 0.1) and regressed(11.01, 10.0, 0.1)
    assert not regressed(-9.01, -10.0, 0.1) and regressed(-8.99, -10.0, 0.1)  # |baseline| for negative costs
    assert regressed(float("nan"), 10.0, 0.1) and regressed(float("inf"), 10.0, 0.1)


def test_a_step_past_the_wall_backtracks_to_the_first_size_that_does_not_regress() -> None:
    proposed: list[float] = []

    def propose(mult: float) -> float:
        proposed.append(mult)
        return mult  # the candidate is its step size; the wall decides its cost

    result = check_step(propose, _wall(0.5), 10.0, 3.0, CONFIG)
    assert proposed == [3.0, 0.75, 0.1875]
    assert result.accepted and result.candidate == 0.1875 and result.step_mult == 0.1875
    assert result.costs == (20.0, 20.0, 10.0 * (1 - 0.01 * 0.1875)) and result.trials == 3


def test_a_step_that_does_not_regress_is_taken_at_its_size_with_one_trial() -> None:
    result = check_step(lambda m: m, _wall(5.0), 10.0, 3.0, CONFIG)
    assert result.accepted and result.candidate == 3.0 and result.step_mult == 3.0 and result.trials == 1


def test_when_every_candidate_regresses_none_is_taken_and_the_step_stays_shrunk() -> None:
    result = check_step(lambda m: m, _wall(0.0), 10.0, 3.0, CONFIG)
    assert not result.accepted and result.candidate is None
    assert result.trials == 1 + CONFIG.max_backtracks
    assert result.step_mult == pytest.approx(3.0 * 0.25 ** 3)


def test_backtracking_stops_at_the_smallest_step_multiplier() -> None:
    proposed: list[float] = []
    result = check_step(lambda m: proposed.append(m) or m, _wall(0.0), 10.0, 0.2, CONFIG, min_step_mult=0.1)
    assert proposed == [0.2, 0.1] and result.step_mult == 0.1 and not result.accepted


def test_config_validation() -> None:
    assert from_dict(AlgorithmConfig, {"step_check": {"enabled": True}}).step_check.enabled
    assert not AlgorithmConfig().step_check.enabled  # off by default: no extra trials
    for bad in ({"backtrack_factor": 1.0}, {"backtrack_factor": 0.0}, {"max_backtracks": -1},
                {"regression_tolerance": -0.1}):
        with pytest.raises(ConfigError):
            from_dict(StepCheckConfig, bad)


def _optimizer(seed: int = 3) -> tuple[ConditionOptimizer, object, object]:
    rng = np.random.default_rng(seed)
    T, dX, dU = 6, 3, 2
    quad, dyn = random_quadratic_cost(rng, T, dX, dU), random_dynamics(rng, T, dX, dU)
    opt = ConditionOptimizer(random_controller(rng, T, dX, dU), KLStepConfig(max_step_mult=3.0))
    opt.step_mult = 2.0
    return opt, dyn, quad


def test_checked_update_takes_the_backtracked_solve_exactly() -> None:
    opt, dyn, quad = _optimizer()
    reference = opt.controller
    # The wall: candidates further than 2 nats from the reference "jam" on the system.
    def evaluate(c: LinearGaussianController) -> float:
        return 20.0 if trajectory_kl(lqr_forward_pass(c, dyn), c, reference) > 2.0 else 9.0

    oracle, oracle_info = opt.solve(dyn, quad, None, 2.0 * 0.25 ** 2)  # ε = 0.75 nats < 2 < 3 nats
    controller, info, result = checked_update(opt, dyn, quad, None, evaluate, 10.0, CONFIG)
    assert result.accepted and result.trials == 3 and result.step_mult == pytest.approx(0.125)
    assert np.array_equal(controller.K, oracle.K) and np.array_equal(controller.k, oracle.k)
    assert opt.controller is controller and opt.step_mult == pytest.approx(0.125)
    assert info.kl == oracle_info.kl and not info.rejected and opt.iteration == 1


def test_checked_update_keeps_the_controller_when_every_candidate_regresses() -> None:
    opt, dyn, quad = _optimizer()
    before, reference = opt.controller, random_controller(np.random.default_rng(9), 6, 3, 2)
    controller, info, result = checked_update(opt, dyn, quad, reference, lambda c: 20.0, 10.0, CONFIG)
    assert not result.accepted and controller is before and opt.controller is before
    assert info.rejected and info.step_mult == opt.step_mult == pytest.approx(2.0 * 0.25 ** 3)
    assert info.kl == pytest.approx(trajectory_kl(lqr_forward_pass(before, dyn), before, reference))
    assert opt.iteration == 1


class StickyWallEnv:
    """The core's point mass with a wall the local linear model cannot represent.

    Target: the origin. Whenever the position enters the band 0.2 < y < 0.3 with |x| > 0.08 (the "rim"),
    the velocity is zeroed and the mass stays where it is for the rest of the trial (a jam). A straight
    path from the start (0.4, 0.8) crosses the band off the opening; only a path that lines up first
    passes.
    """

    def __init__(self, env) -> None:  # noqa: ANN001
        self.base = env
        self.T, self.dt, self.dX, self.dU = env.T, env.dt, env.dX, env.dU
        self.layout, self.num_conditions = env.layout, env.num_conditions

    def x0(self, condition: int) -> np.ndarray:
        return self.base.x0(condition)

    def sample(self, policy: object, condition: int, noise: np.ndarray | None) -> SampleBatch:
        T = self.T
        X, U = np.zeros((1, T, self.dX)), np.zeros((1, T, self.dU))
        x, stuck = self.x0(condition), False
        for t in range(T):
            u = policy.act(t, x, None if noise is None else noise[t])  # type: ignore[attr-defined]
            X[0, t], U[0, t] = x, u
            if stuck:
                continue
            x = self.base.A @ x + self.base.B @ u
            if 0.2 < x[1] < 0.3 and abs(x[0]) > 0.08:
                x[2:], stuck = 0.0, True
        return SampleBatch(X, U)


@pytest.fixture
def wall_env(point_mass_env):  # noqa: ANN001, ANN201
    point_mass = type(point_mass_env)  # conftest's PointMassEnv (not importable by name beside tests/sim)
    return StickyWallEnv(point_mass([np.array([0.4, 0.8, 0.0, 0.0])], T=40))


def _quadratic_cost(env):  # noqa: ANN001, ANN202
    from mbpl_core.costs import CostConfig, StateCostConfig, build_cost

    state = StateCostConfig(weights=[1.0, 1.0, 0.1, 0.1], final_multiplier=10.0)
    return build_cost(CostConfig(action_weight=1e-3, state=state), env.layout, env.dU)


def _noiseless_costs(env, cost, controllers: list[LinearGaussianController]) -> list[float]:  # noqa: ANN001
    return [float(np.sum(quadratic_cost_model(cost, env.sample(c, 0, None))[0])) for c in controllers]


def _run(env, cost, config: AlgorithmConfig, iterations: int) -> tuple[LQRFLM, list[float], list[float]]:  # noqa: ANN001
    """The loop; the current controller's noiseless cost and final distance at each iteration."""
    alg = LQRFLM(env, cost, config)
    controllers = [alg.controllers[0]]
    for _ in range(iterations):
        alg.iteration()
        controllers.append(alg.controllers[0])
    finals = [float(np.linalg.norm(env.sample(c, 0, None).X[0, -1, :2])) for c in controllers]
    return alg, _noiseless_costs(env, cost, controllers), finals


def test_lqr_flm_with_the_check_stays_through_the_opening_once_it_passed(wall_env) -> None:  # noqa: ANN001
    cost = _quadratic_cost(wall_env)
    config = from_dict(AlgorithmConfig, {"seed": 1, "samples_per_condition": 5, "init": {"init_var": 0.5},
                                         "kl": {"max_step_mult": 10.0}, "step_check": {"enabled": True}})
    alg, costs, finals = _run(wall_env, cost, config, 12)
    # Oracle: the cached baseline is the current controller's noiseless cost, measured independently.
    assert alg.noiseless_costs[0] == pytest.approx(costs[-1], rel=1e-12)
    for before, after in zip(costs, costs[1:], strict=False):
        assert not regressed(after, before, config.step_check.regression_tolerance), (before, after)
    passed = [d < 0.05 for d in finals]
    first = passed.index(True)
    assert all(passed[first:]), finals  # once through the opening, every later controller is
    assert alg.check_trials >= 12 + 1  # one per iteration, one for the initial controller, backtracks
    # Control: the same seed without the check passes the opening and then jams on the wall again
    # (the model cannot see it): what the check exists to stop.
    _, plain_costs, plain_finals = _run(wall_env, cost, from_dict(AlgorithmConfig, _plain(config)), 12)
    plain_passed = [d < 0.05 for d in plain_finals]
    assert True in plain_passed and not all(plain_passed[plain_passed.index(True):]), plain_finals
    assert any(regressed(b, a, 0.1) for a, b in zip(plain_costs, plain_costs[1:], strict=False))


def _plain(config: AlgorithmConfig) -> dict:
    from mbpl_core.config import to_dict

    out = to_dict(config)
    out["step_check"]["enabled"] = False
    return out


def test_mdgps_c_step_goes_through_the_check(wall_env) -> None:  # noqa: ANN001
    """MDGPS (C-step against the policy linearisation) keeps the invariant too; unchecked, this seed's LG
    controller gets closer (0.13) and then jams again at iteration 5 (noiseless cost 4.08 → 6.25)."""
    from mbpl_core.guided.mdgps import MDGPS
    from mbpl_core.policy import GPSConfig

    cost = _quadratic_cost(wall_env)
    config = from_dict(AlgorithmConfig, {"seed": 2, "samples_per_condition": 5, "init": {"init_var": 0.5},
                                         "kl": {"max_step_mult": 10.0}, "step_check": {"enabled": True}})
    alg = MDGPS(wall_env, cost, config, GPSConfig(hidden_sizes=(32,), iterations=300, device="cpu", seed=2))
    controllers = [alg.controllers[0]]
    for _ in range(6):
        alg.iteration()
        controllers.append(alg.controllers[0])
    costs = _noiseless_costs(wall_env, cost, controllers)
    for before, after in zip(costs, costs[1:], strict=False):
        assert not regressed(after, before, config.step_check.regression_tolerance), costs
    assert alg.lg.noiseless_costs[0] == pytest.approx(costs[-1], rel=1e-12)
    assert sum(r.check_trials for r in alg.reports) == alg.lg.check_trials >= 6 + 1
    assert any(any(r.rejected) for r in alg.reports)  # the jam of the unchecked run was refused


def test_backtracks_come_from_the_backtrack_proposal_after_the_first_candidate() -> None:
    calls: list[tuple[str, float]] = []

    def propose(mult: float) -> float:
        calls.append(("centre", mult))
        return mult

    def backtrack(mult: float) -> float:
        calls.append(("current", mult))
        return mult

    result = check_step(propose, _wall(0.5), 10.0, 3.0, CONFIG, backtrack=backtrack)
    assert calls == [("centre", 3.0), ("current", 0.75), ("current", 0.1875)]
    assert result.accepted and result.candidate == 0.1875


def test_an_mdgps_step_backtracks_around_the_current_controller_not_the_policy_centre() -> None:
    """Candidates more than 2 nats from the current controller (whose cost is the baseline) regress, and the
    reference (the policy linearisation π̄) is far from it: shrinking ε around π̄ could never pass.
    Oracle: the accepted controller is the KL step around the current controller solved independently."""
    opt, dyn, quad = _optimizer()
    current = opt.controller
    reference = random_controller(np.random.default_rng(9), 6, 3, 2)
    assert trajectory_kl(lqr_forward_pass(reference, dyn), reference, current) > 20.0

    def evaluate(c: LinearGaussianController) -> float:
        return 20.0 if trajectory_kl(lqr_forward_pass(c, dyn), c, current) > 2.0 else 9.0

    oracle, _ = opt.solve(dyn, quad, None, 2.0 * 0.25 ** 2)  # around the current controller: 0.75 nats
    controller, info, result = checked_update(opt, dyn, quad, reference, evaluate, 10.0, CONFIG)
    assert result.accepted and result.trials == 3 and result.costs == (20.0, 20.0, 9.0)
    assert np.array_equal(controller.K, oracle.K) and np.array_equal(controller.k, oracle.k)
    assert opt.controller is controller and not info.rejected


def test_mdgps_global_rule_keeps_one_step_mult_when_the_check_rejects_a_condition(point_mass_env) -> None:  # noqa: ANN001
    """step_rule "global": the check's backtracked multiplier holds for that C-step only, so every
    condition enters each C-step at the same multiplier. Condition 0's system is made to reject every
    new controller (its noiseless cost is 1e9 unless the controller is the current one)."""
    from mbpl_core.guided.mdgps import MDGPS
    from mbpl_core.policy import GPSConfig

    cost = _quadratic_cost(point_mass_env)
    config = from_dict(AlgorithmConfig, {"seed": 0, "samples_per_condition": 3,
                                         "step_check": {"enabled": True}})
    alg = MDGPS(point_mass_env, cost, config, GPSConfig(hidden_sizes=(16,), iterations=50, device="cpu"))
    real = alg.lg.noiseless_cost

    def noiseless_cost(condition: int, controller: LinearGaussianController) -> float:
        value = real(condition, controller)
        return value if condition or controller is alg.lg.optimizers[0].controller else 1e9

    alg.lg.noiseless_cost = noiseless_cost  # type: ignore[method-assign]
    for _ in range(4):
        report = alg.iteration()
        mults = [opt.step_mult for opt in alg.lg.optimizers]
        assert mults[0] == mults[1], (report.iteration, mults)
    assert all(r.rejected[0] for r in alg.reports) and not any(r.rejected[1] for r in alg.reports)
    assert alg.reports[-1].step_mult[0] < alg.reports[-1].step_mult[1]  # the shrink was taken that step


def test_lqr_flm_reports_count_the_check_trials_run_on_the_system(wall_env) -> None:  # noqa: ANN001
    """Oracle: the noiseless trials the environment saw in each iteration (every one is the check's)."""
    cost = _quadratic_cost(wall_env)
    config = from_dict(AlgorithmConfig, {"seed": 1, "samples_per_condition": 3, "init": {"init_var": 0.5},
                                         "kl": {"max_step_mult": 10.0}, "step_check": {"enabled": True}})
    alg = LQRFLM(wall_env, cost, config)
    seen = {"noiseless": 0}
    sample = wall_env.sample

    def counting_sample(policy: object, condition: int, noise: np.ndarray | None) -> SampleBatch:
        seen["noiseless"] += noise is None
        return sample(policy, condition, noise)

    wall_env.sample = counting_sample
    for _ in range(4):
        before = seen["noiseless"]
        report = alg.iteration()
        assert report.check_trials == seen["noiseless"] - before >= 1
    assert sum(r.check_trials for r in alg.reports) == alg.check_trials == seen["noiseless"]
