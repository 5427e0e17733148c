"""The in-process LQR-FLM loop on a damped 2-D point mass."""

from __future__ import annotations

import dataclasses
import pickle
import time

import numpy as np
import pytest

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.costs import CostConfig, StateCostConfig, build_cost
from mbpl_core.local.lqr_flm import LQRFLM, AlgorithmConfig, Environment, IterationReport

ITERATIONS = 8


def _cost(env):  # noqa: ANN001, ANN202
    state = StateCostConfig(weights=[1.0, 1.0, 0.1, 0.1], final_multiplier=10.0)
    return build_cost(CostConfig(action_weight=1e-3, state=state), env.layout, env.dU)


def _without_timings(report: IterationReport) -> tuple:
    return tuple(v for k, v in dataclasses.asdict(report).items() if not k.endswith("_s"))


def test_point_mass_environment_satisfies_the_protocol(point_mass_env) -> None:  # noqa: ANN001
    # isinstance on a runtime Protocol only sees attribute names; check what LQRFLM relies on instead.
    env = point_mass_env
    assert isinstance(env, Environment)
    assert env.layout.dX == env.dX and (env.dX, env.dU) == (4, 2) and env.num_conditions == 2
    x0 = env.x0(1)
    np.testing.assert_array_equal(x0, [-0.8, 0.6, 0.0, 0.0])
    alg = LQRFLM(env, _cost(env), AlgorithmConfig())
    batch = env.sample(alg.controllers[1], 1, np.zeros((env.T, env.dU)))
    assert batch.X.shape == (1, env.T, env.dX) and batch.U.shape == (1, env.T, env.dU)
    np.testing.assert_array_equal(batch.X[0, 0], x0)
    np.testing.assert_allclose(batch.X[0, 1], env.A @ x0 + env.B @ batch.U[0, 0], rtol=1e-12)


def test_loop_drives_cost_down_and_reaches_the_target(point_mass_env) -> None:  # noqa: ANN001
    config = AlgorithmConfig(iterations=ITERATIONS)
    alg = LQRFLM(point_mass_env, _cost(point_mass_env), config)
    start = time.perf_counter()
    reports = alg.run()
    wall = time.perf_counter() - start
    assert [r.iteration for r in reports] == list(range(ITERATIONS))
    first, last = np.array(reports[0].mean_cost), np.array(reports[-1].mean_cost)
    assert np.all(last < 0.5 * first)
    for m in range(point_mass_env.num_conditions):
        final = point_mass_env.sample(alg.controllers[m], m, None).X[0, -1]
        start = point_mass_env.x0(m)
        assert np.linalg.norm(final[:2]) < 0.1 * np.linalg.norm(start[:2])
    phases = 0.0
    for r in reports:
        # The KL step met its constraint ε = kl_step · step_mult · T (within the η search's tolerance).
        for kl, mult in zip(r.kl, r.step_mult, strict=True):
            epsilon = config.kl.kl_step * mult * point_mass_env.T
            assert 0.0 < kl <= (1.0 + config.kl.kl_tolerance) * epsilon
        assert min(r.sampling_s, r.dynamics_s, r.cost_s, r.lqr_s) > 0
        phases += r.sampling_s + r.dynamics_s + r.cost_s + r.lqr_s
    assert phases <= wall  # the phase clocks partition (part of) the run, nothing is counted twice


def test_reported_cost_is_the_mean_over_samples_of_the_summed_cost(point_mass_env) -> None:  # noqa: ANN001
    # A twin loop with the same seed draws the same noise: its first batches are the ones the loop sampled.
    config = AlgorithmConfig(seed=5, samples_per_condition=3)
    cost = _cost(point_mass_env)
    report = LQRFLM(point_mass_env, cost, config).iteration()
    twin = LQRFLM(point_mass_env, cost, config)
    for m in range(point_mass_env.num_conditions):
        batch = twin.sample_condition(m)
        costs = [sum(float(cost.evaluate(batch.X[n], batch.U[n], None).l[t]) for t in range(batch.T))
                 for n in range(batch.N)]
        assert report.mean_cost[m] == pytest.approx(sum(costs) / len(costs), rel=1e-12)


def test_same_seed_gives_identical_reports_and_controllers(point_mass_env) -> None:  # noqa: ANN001
    runs = []
    for _ in range(2):
        alg = LQRFLM(point_mass_env, _cost(point_mass_env), AlgorithmConfig(seed=3))
        runs.append((alg.run(3), alg.controllers))
    (ra, ca), (rb, cb) = runs
    assert [_without_timings(r) for r in ra] == [_without_timings(r) for r in rb]
    for a, b in zip(ca, cb, strict=True):
        np.testing.assert_array_equal(a.K, b.K)
        np.testing.assert_array_equal(a.k, b.k)
        np.testing.assert_array_equal(a.pol_covar, b.pol_covar)
    other = LQRFLM(point_mass_env, _cost(point_mass_env), AlgorithmConfig(seed=4))
    assert _without_timings(other.run(1)[0]) != _without_timings(ra[0])


def test_checkpoint_round_trip_continues_the_same_run(point_mass_env) -> None:  # noqa: ANN001
    cost = _cost(point_mass_env)
    alg = LQRFLM(point_mass_env, cost, AlgorithmConfig(seed=5))
    alg.run(2)
    state = pickle.loads(pickle.dumps(alg.state_dict()))
    continued = alg.run(2)
    restored = LQRFLM.from_state(point_mass_env, cost, state)
    assert restored.iteration_count == 2
    resumed = restored.run(2)
    assert [_without_timings(r) for r in resumed] == [_without_timings(r) for r in continued]
    for a, b in zip(alg.controllers, restored.controllers, strict=True):
        np.testing.assert_array_equal(a.K, b.K)


def test_callback_sees_every_report(point_mass_env) -> None:  # noqa: ANN001
    seen: list[int] = []
    alg = LQRFLM(point_mass_env, _cost(point_mass_env))
    alg.run(2, callback=lambda r: seen.append(r.iteration))
    assert seen == [0, 1]


def test_algorithm_config_from_yaml_and_validation() -> None:
    section = {
        "iterations": 4,
        "samples_per_condition": 3,
        "seed": 1,
        "kl": {"kl_step": 0.5},
        "dynamics": {"prior_strength": 2.0, "max_samples": 10},
        "init": {"type": "pd"},
        "noise": {"smooth": False},
    }
    config = from_dict(AlgorithmConfig, section)
    assert config.kl.kl_step == 0.5 and config.dynamics.max_samples == 10
    assert config.init.type == "pd" and not config.noise.smooth
    with pytest.raises(ConfigError, match="samples_per_condition"):
        AlgorithmConfig(samples_per_condition=0)
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(AlgorithmConfig, {"dynamic": {}})


def test_wrong_initial_controllers_are_rejected(point_mass_env) -> None:  # noqa: ANN001
    alg = LQRFLM(point_mass_env, _cost(point_mass_env))
    with pytest.raises(ValueError, match="initial controllers"):
        LQRFLM(point_mass_env, _cost(point_mass_env), initial_controllers=alg.controllers[:1])
