"""The sampler's model-based sources (plain Python): plan validation, the lockstep/realtime plan rules,
random efforts; and the model/planner logic: idempotent persisted fits, versioned plans."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mbpl_core.containers import SampleBatch, ShapeError
from mbpl_core.costs import ActionCost, StateCost
from mbpl_core.models import EnsembleConfig
from mbpl_core.planning import PlannerConfig
from mbpl_core.planning.distill import DistillConfig
from mbpl_core.planning.mpc import MPCController
from mbpl_core.planning.pets import EliteModel, PETSConfig
from mbpl_ros.model_logic import PlannerService, fit_model, model_condition, model_path
from mbpl_ros.plan_source import (
    PlanAbortError,
    PlanData,
    PlanInbox,
    PlanRequestData,
    PlanSource,
    RandomEfforts,
)

LIMITS = np.array([2.0, 1.0])


def plan(trial: int, t: int, h: int = 5, value: float = 0.5) -> PlanData:
    actions = value * np.ones((h, 2)) + np.arange(h)[:, None] * 0.01
    return PlanData(trial, t, actions)


def test_inbox_rejects_plans_that_do_not_fit_and_keeps_the_newest() -> None:
    inbox = PlanInbox(2, LIMITS)
    with pytest.raises(ShapeError, match="not a running MPC trial"):
        inbox.offer(plan(7, 0))
    inbox.open(7)
    with pytest.raises(ShapeError, match="dU = 2"):
        inbox.offer(PlanData(7, 0, np.zeros((5, 3))))
    over = plan(7, 0)
    over.actions[3, 1] = -1.5  # one entry, one joint, negative: over the 1.0 limit
    with pytest.raises(ShapeError, match="step 3, joint 1"):
        inbox.offer(over)
    inbox.offer(plan(7, 2))
    inbox.offer(plan(7, 1))  # late, older: does not replace the newer plan
    assert inbox.latest(7).t == 2
    inbox.close(7)
    assert inbox.latest(7) is None
    with pytest.raises(ShapeError):
        inbox.offer(plan(7, 3))


def _source(inbox: PlanInbox, lockstep: bool, sent: list[PlanRequestData], timeout: float = 0.2,
            max_age: int = 2) -> PlanSource:
    return PlanSource(inbox, sent.append, trial_id=7, condition=1, seed=3, model_version=4, lockstep=lockstep,
                      plan_timeout=timeout, max_plan_age=max_age, run_token="tok")


def test_lockstep_waits_for_the_plan_of_the_step_and_aborts_without_one() -> None:
    inbox, sent = PlanInbox(2, LIMITS), []
    source = _source(inbox, True, sent)
    x = np.arange(4.0)
    answer = threading.Timer(0.02, lambda: inbox.offer(plan(7, 0, value=0.3)))
    answer.start()
    u = source.act(0, x)
    np.testing.assert_array_equal(u, [0.3, 0.3])
    request = sent[0]
    assert (request.trial_id, request.condition, request.t, request.seed, request.model_version,
            request.run_token) == (7, 1, 0, 3, 4, "tok")
    np.testing.assert_array_equal(request.x, x)
    # step 1: the plan of step 0 is not the plan of step 1 -> wait, then abort
    with pytest.raises(PlanAbortError, match="no plan for step 1"):
        source.act(1, x)


def test_realtime_executes_the_matching_step_of_an_older_plan_and_aborts_when_stale() -> None:
    inbox, sent = PlanInbox(2, LIMITS), []
    source = _source(inbox, False, sent, max_age=2)
    x = np.zeros(4)
    np.testing.assert_array_equal(source.act(0, x), [0.0, 0.0])  # awaiting the first plan: no effort
    inbox.offer(plan(7, 1))
    for t in (1, 2, 3):  # ages 0, 1, 2: actions[t - 1] of the plan from step 1
        np.testing.assert_allclose(source.act(t, x), plan(7, 1).actions[t - 1])
    assert source.plan_ages == [-1, 0, 1, 2]
    with pytest.raises(PlanAbortError, match="stale plan at step 4"):
        source.act(4, x)
    assert len(sent) == 5  # every step asked for a plan


def test_realtime_aborts_when_no_plan_ever_comes() -> None:
    source = _source(PlanInbox(2, LIMITS), False, [], max_age=1)
    source.act(0, np.zeros(4))
    source.act(1, np.zeros(4))
    with pytest.raises(PlanAbortError, match="none yet"):
        source.act(2, np.zeros(4))


def test_random_efforts_are_replayable_and_inside_the_limits() -> None:
    a, b, c = (RandomEfforts(s, 50, LIMITS) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.U, b.U)
    assert not np.array_equal(a.U, c.U)
    assert np.all(np.abs(a.U) <= LIMITS) and np.all(a.U.std(axis=0) > 0.3 * LIMITS)
    np.testing.assert_array_equal(a.act(3, np.zeros(4)), a.U[3])


# ------------------------------------------------------------------------------------ model and planner
def small_config() -> PETSConfig:
    return PETSConfig(model=EnsembleConfig(members=2, elites=2, hidden=(16,), max_epochs=5, device="cpu"),
                      planner=PlannerConfig(horizon=4, population=20, elites=4, iterations=2, particles=2),
                      distill=DistillConfig(enabled=False))


def batch(rng: np.random.Generator, n: int = 3, T: int = 10) -> SampleBatch:
    return SampleBatch(rng.normal(size=(n, T, 4)), rng.normal(size=(n, T, 2)))


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_the_samplers_random_source_explores_within_pets_action_limits() -> None:
    """arm7_reach's pets.action_limits (10 N m shoulders, 3 N m wrists) bound the random trials the
    sampler runs for method pets, inside the URDF's effort limits; reacher2 without the key uses its effort
    limits (other methods: tests/sim/test_learner_action_limits.py)."""
    from mbpl_ros.sampler_logic import RobotSetup
    from mbpl_sim.experiment import load_experiment

    repo = Path(__file__).resolve().parents[2]
    arm7 = RobotSetup.from_experiment(replace(load_experiment(repo / "configs" / "arm7_reach.yaml"),
                                              method="pets"))
    assert np.array_equal(arm7.random_limits, [10.0] * 4 + [3.0] * 3)
    assert np.all(arm7.random_limits < arm7.effort_limits)
    reacher = RobotSetup.from_experiment(load_experiment(repo / "configs" / "reacher2_sim.yaml"))
    assert np.array_equal(reacher.random_limits, reacher.effort_limits)


def test_fits_are_idempotent_persisted_and_resume(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "model"
    state = model_condition(folder, 4, 2, small_config())
    first, computed = fit_model(state, 0, batch(rng), folder)
    assert computed and first.version == 1 and first.transitions == 3 * 9
    assert model_path(folder, 1).is_file()
    again, computed = fit_model(state, 0, batch(rng), folder)  # a retried request: nothing added
    assert not computed and again == first and len(state.state.X) == 3
    # a restarted node: the data set and the stored results come back from disk
    resumed = model_condition(folder, 4, 2, small_config())
    assert resumed.last_iteration == 0 and len(resumed.state.X) == 3
    second, computed = fit_model(resumed, 1, batch(rng, n=2), folder)
    assert computed and second.version == 2 and second.transitions == 5 * 9


def test_planner_plans_over_the_requested_version_reproducibly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "model"
    state = model_condition(folder, 4, 2, small_config())
    fit_model(state, 0, batch(rng), folder)
    service = PlannerService(folder, ActionCost(np.ones(2)), 4, LIMITS, 10, small_config())
    x = np.array([0.1, -0.2, 0.3, 0.0])
    plans = [service.plan(PlanRequestData(trial, 0, 0, 9, 1, x)).actions for trial in (1, 2)]
    np.testing.assert_array_equal(plans[0], plans[1])  # same seed, state and model: same plan
    assert plans[0].shape == (4, 2) and np.all(np.abs(plans[0]) <= LIMITS)
    with pytest.raises(ShapeError, match="version 2 not found"):
        service.plan(PlanRequestData(3, 0, 0, 9, 2, x))
    with pytest.raises(ShapeError, match="shape"):
        service.plan(PlanRequestData(3, 0, 0, 9, 1, np.zeros(5)))
    with pytest.raises(ShapeError, match="outside"):
        service.plan(PlanRequestData(3, 0, 10, 9, 1, x))


def test_plan_age_summary_reports_how_stale_the_executed_plans_were() -> None:
    from mbpl_ros.sampler_logic import plan_age_summary

    assert plan_age_summary([-1, -1, 0, 1, 3, 0]) == "plan age (steps) median 0.5, max 3, 2 waiting"
    assert plan_age_summary([0] * 5) == "plan age (steps) median 0, max 0, 0 waiting"
    assert plan_age_summary([-1, -1]) == "no plan executed, 2 steps waiting"


def test_realtime_never_reads_past_a_plans_last_action() -> None:
    """A plan of h = 3 actions from step 0 covers steps 0..2: with max_plan_age = 10 (longer than the
    plan) step 3 has no fresh action -> zero effort while t <= max_plan_age, and past it an abort."""
    inbox, sent = PlanInbox(2, LIMITS), []
    source = _source(inbox, False, sent, max_age=10)
    x = np.zeros(4)
    source.act(0, x)
    short = plan(7, 0, h=3)
    inbox.offer(short)
    for t in (1, 2):
        np.testing.assert_array_equal(source.act(t, x), short.actions[t])
    np.testing.assert_array_equal(source.act(3, x), [0.0, 0.0])
    assert source.plan_ages == [-1, 1, 2, -1]
    late = _source(PlanInbox(2, LIMITS), False, [], max_age=2)
    late.act(0, x)
    late.inbox.offer(plan(7, 0, h=2))
    late.act(1, x)
    np.testing.assert_array_equal(late.act(2, x), [0.0, 0.0])  # age 2 = h: not an action of the plan
    with pytest.raises(PlanAbortError, match="stale plan at step 3"):
        late.act(3, x)


def _state_cost_config() -> tuple[PETSConfig, StateCost]:
    """A deterministic planner (model means) and a cost whose optimum is not zero effort, so plans depend
    on the planner's random draws and its warm start."""
    config = small_config()
    planner = PlannerConfig(method="random", horizon=4, population=20, elites=4, particles=2,
                            sample_model=False)
    cost = StateCost(np.ones(4), np.array([2.0, -1.0, 0.5, 0.0]))
    return dataclasses.replace(config, planner=planner), cost


def test_planner_seeds_each_trial_from_its_request_and_keeps_the_warm_start(tmp_path: Path) -> None:
    """Oracle: one MPCController over the same model version seeded with the request's seed, planning the
    trial's steps in order. Another seed gives another plan; step 1 of a trial continues that controller
    (generator advanced, warm start kept) rather than starting afresh."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "model"
    config, cost = _state_cost_config()
    fit_model(model_condition(folder, 4, 2, config), 0, batch(rng), folder)
    service = PlannerService(folder, cost, 4, LIMITS, 10, config)
    x0, x1 = np.array([0.1, -0.2, 0.3, 0.0]), np.array([0.2, -0.1, 0.2, 0.1])

    def controller(seed: int) -> MPCController:
        return MPCController(EliteModel(service.model(1)), cost, LIMITS, 10,
                             dataclasses.replace(config.planner, seed=seed))

    oracle = controller(9)
    expected = [oracle.plan(x0, 0).actions, oracle.plan(x1, 1).actions]
    got = [service.plan(PlanRequestData(5, 0, t, 9, 1, x)).actions for t, x in ((0, x0), (1, x1))]
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert not np.array_equal(got[1], controller(9).plan(x1, 1).actions), "a fresh controller differs"
    other = service.plan(PlanRequestData(6, 0, 0, 10, 1, x0)).actions
    np.testing.assert_array_equal(other, controller(10).plan(x0, 0).actions)
    assert not np.array_equal(other, got[0])


def test_realtime_waits_first_plan_wait_steps_for_the_first_plan_then_max_plan_age() -> None:
    inbox = PlanInbox(2, LIMITS)
    source = PlanSource(inbox, [].append, trial_id=7, condition=1, seed=3, model_version=4, lockstep=False,
                        plan_timeout=1.0, max_plan_age=2, run_token="tok", first_plan_wait=4)
    x = np.zeros(4)
    for t in range(5):  # zero effort up to first_plan_wait, though past max_plan_age
        np.testing.assert_array_equal(source.act(t, x), [0.0, 0.0])
    inbox.offer(plan(7, 4))
    for t in (5, 6):
        np.testing.assert_allclose(source.act(t, x), plan(7, 4).actions[t - 4])
    with pytest.raises(PlanAbortError, match="newest from step 4; max_plan_age = 2"):
        source.act(7, x)  # once a plan came, later ones must be within max_plan_age
    late = PlanSource(PlanInbox(2, LIMITS), [].append, trial_id=8, condition=1, seed=3, model_version=4,
                      lockstep=False, plan_timeout=1.0, max_plan_age=2, first_plan_wait=4)
    for t in range(5):
        late.act(t, x)
    with pytest.raises(PlanAbortError, match="none yet; first_plan_wait = 4"):
        late.act(5, x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_inbox_rejects_plans_with_non_finite_actions(bad: float) -> None:
    """NaN compares false against the limit, so the limit check alone would let it through."""
    inbox = PlanInbox(2, LIMITS)
    inbox.open(7)
    broken = plan(7, 0)
    broken.actions[2, 1] = bad
    with pytest.raises(ShapeError, match="non-finite"):
        inbox.offer(broken)
    assert inbox.latest(7) is None
