"""Sampler trial logic without ROS: in-process MujocoEnv stands in for the robot and the sim node.

Oracles: a lockstep trial equals ``MujocoEnv.sample`` of the same controller and noise; the deadline
loop keeps an exact grid on a fake clock; invalid inputs are refused with the reason and counted.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from mbpl_core.config import ConfigError
from mbpl_core.containers import LinearGaussianController, ShapeError
from mbpl_core.noise import NoiseConfig, generate_noise
from mbpl_core.policy import PolicyParams
from mbpl_ros.rt_loop import DeadlineLoop, LoopStats, TickInfo

pytest.importorskip("mujoco")
from mbpl_ros.sampler_logic import (  # noqa: E402
    JointReading,
    RobotSetup,
    SafeHold,
    Sampler,
    SamplerParams,
    StateInbox,
    TrialRequest,
    TrialResult,
    trial_noise,
)
from mbpl_sim.env import MujocoEnv  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

WAIT = 20.0


class EnvIO:
    """SamplerIO over an in-process MujocoEnv: a command steps it and the new state comes back at once.

    ``answer`` decides whether the k-th command (0-based, counted from the last reset) gets a state back,
    so tests can make the "robot" go silent or send an invalid state.
    """

    def __init__(self, env: MujocoEnv, answer=None) -> None:
        self.env = env
        self.sampler: Sampler | None = None
        self.answer = answer or (lambda k: "state")
        self.commands: list[np.ndarray] = []
        self.results: list[TrialResult] = []
        self.logs: list[tuple[str, str]] = []
        self.got_result = threading.Event()
        self._since_reset = 0

    def emit(self) -> None:
        assert self.sampler is not None
        self.sampler.on_state(self.env.joint_positions(), self.env.joint_velocities(), self.env.time)

    def publish_command(self, u: np.ndarray) -> None:
        self.commands.append(np.array(u))
        what = self.answer(self._since_reset)
        self._since_reset += 1
        if what == "state":
            self.env.step(u)
            self.emit()
        elif what == "nan":
            self.sampler.on_bad_state("JointState.position contains NaN or Inf (first at index (0,))")

    def publish_sample(self, result: TrialResult) -> None:
        self.results.append(result)
        self.got_result.set()

    def reset(self, condition: int, timeout: float) -> None:
        self.env.reset(condition)
        self._since_reset = 0
        self.emit()

    def log(self, level: str, text: str) -> None:
        self.logs.append((level, text))

    def wait_results(self, n: int) -> list[TrialResult]:
        deadline = WAIT
        while len(self.results) < n:
            self.got_result.clear()
            if len(self.results) >= n:
                break
            assert self.got_result.wait(deadline), f"timed out waiting for {n} trial results"
        return self.results


@pytest.fixture(scope="module")
def experiment(experiment_file: Path):
    return load_experiment(experiment_file)


@pytest.fixture(scope="module")
def setup(experiment) -> RobotSetup:
    return RobotSetup.from_experiment(experiment)


def _controller(setup: RobotSetup, seed: int, gain: float = 0.5,
                var: float = 0.1) -> LinearGaussianController:
    rng = np.random.default_rng(seed)
    T, dU, dX = setup.T, setup.dU, setup.dX
    K = gain * rng.standard_normal((T, dU, dX))
    k = rng.standard_normal((T, dU))
    return LinearGaussianController.from_covariance(K, k, np.tile(var * np.eye(dU), (T, 1, 1)))


def _params(experiment_file: Path, **overrides: object) -> SamplerParams:
    return SamplerParams(**({"config": str(experiment_file), "state_timeout": 2.0} | overrides))


def _start(experiment, experiment_file: Path, setup: RobotSetup, answer=None, **overrides: object):
    io = EnvIO(MujocoEnv(experiment), answer)
    sampler = Sampler(_params(experiment_file, **overrides), setup, io)
    io.sampler = sampler
    sampler.start()
    return sampler, io


@pytest.mark.sim
def test_lockstep_trial_equals_in_process_rollout(experiment, experiment_file, setup) -> None:
    sampler, io = _start(experiment, experiment_file, setup)
    try:
        first, second = _controller(setup, 1), _controller(setup, 2)
        assert sampler.offer_controller(1, 11, first)
        assert sampler.request_trial(TrialRequest(1, trial_id=5, seed=42, controller_id=11))[0]
        # arrives while trial 5 may run: trial 5 keeps its snapshot, trial 6 asks for the new one
        assert sampler.offer_controller(1, 12, second)
        assert sampler.request_trial(TrialRequest(1, trial_id=6, seed=42, controller_id=0))[0]
        a, b = io.wait_results(2)
    finally:
        sampler.stop()
    oracle_env = MujocoEnv(experiment)
    noise = generate_noise(setup.T, setup.dU, np.random.default_rng(42), setup.noise)
    for result, controller, cid in ((a, first, 11), (b, second, 12)):
        assert not result.aborted, result.abort_reason
        assert result.controller_id == cid and result.steps == setup.T
        oracle = oracle_env.sample(controller, 1, noise)
        np.testing.assert_allclose(result.X, oracle.X[0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(result.U, oracle.U[0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(result.ee_jacobians, oracle.ee_jacobians[0], rtol=0, atol=1e-9)
    assert not np.allclose(a.U, b.U), "a different controller must change the next trial"
    assert len(io.commands) == 2 * (setup.T - 1), "lockstep publishes u_0 .. u_{T-2} per trial"


@pytest.mark.sim
def test_policy_trial_equals_in_process_rollout(experiment, experiment_file, setup) -> None:
    rng = np.random.default_rng(3)
    dX, dU, H = setup.dX, setup.dU, 8
    weights = PolicyParams.from_layers(
        weights=(0.3 * rng.standard_normal((H, dX)), 0.3 * rng.standard_normal((dU, H))),
        biases=(rng.standard_normal(H), rng.standard_normal(dU)), activation="tanh",
        obs_mean=rng.standard_normal(dX), obs_std=rng.uniform(0.5, 2.0, dX), action_covar=0.05 * np.eye(dU),
        state_dim=dX)
    sampler, io = _start(experiment, experiment_file, setup)
    try:
        assert sampler.request_trial(TrialRequest(0, 1, "policy")) == (False, "no policy received yet")
        assert sampler.offer_policy(9, weights)
        assert sampler.request_trial(TrialRequest(0, 1, "policy", seed=5))[0]
        (result,) = io.wait_results(1)
        policy = sampler._policy[1]
    finally:
        sampler.stop()
    noise = trial_noise(5, setup.T, dU, setup.noise)
    oracle = MujocoEnv(experiment).sample(policy, 0, noise)
    assert result.controller_id == 9 and not result.aborted
    np.testing.assert_allclose(result.X, oracle.X[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.U, oracle.U[0], rtol=0, atol=1e-9)


@pytest.mark.sim
def test_invalid_controllers_are_rejected_counted_and_the_last_good_one_stays(
    experiment, experiment_file, setup
) -> None:
    io = EnvIO(MujocoEnv(experiment))
    sampler = Sampler(_params(experiment_file, max_gain=10.0), setup, io)
    good = _controller(setup, 1)
    assert sampler.offer_controller(0, 1, good)
    T, dU, dX = setup.T, setup.dU, setup.dX
    wrong_dims = LinearGaussianController.from_covariance(
        np.zeros((T, dU, dX + 1)), np.zeros((T, dU)), np.tile(np.eye(dU), (T, 1, 1)))
    too_short = LinearGaussianController.from_covariance(good.K[:-1], good.k[:-1], good.pol_covar[:-1])
    huge = LinearGaussianController.from_covariance(100.0 * good.K + 1.0, good.k, good.pol_covar)
    offers = [
        (0, 2, wrong_dims, "expected (T, dU, dX)"),
        (0, 3, too_short, "K has"),
        (0, 4, huge, "gain bound"),
        (5, 5, good, "condition out of range"),
        (0, 6, ShapeError("pol_covar[3] is not positive definite"), "positive definite"),
    ]
    for n, (condition, cid, controller, reason) in enumerate(offers, start=1):
        assert not sampler.offer_controller(condition, cid, controller)
        assert sampler.counters.controllers_rejected == n
        assert reason in sampler.counters.last_reject_reason, sampler.counters.last_reject_reason
    assert sampler.request_trial(TrialRequest(0, 1, controller_id=4)) == (
        False, "controller 4 for condition 0 not received yet")
    accepted, _ = sampler.request_trial(TrialRequest(0, 2, controller_id=0))
    assert accepted and sampler._queue[-1].source is good and sampler._queue[-1].controller_id == 1
    assert sampler.diagnostics()[2]["controllers_rejected"] == "5"


@pytest.mark.sim
def test_trial_requests_are_validated(experiment, experiment_file, setup) -> None:
    sampler = Sampler(_params(experiment_file, max_queued_trials=1), setup, EnvIO(MujocoEnv(experiment)))
    sampler.offer_controller(1, 3, _controller(setup, 0))
    assert sampler.request_trial(TrialRequest(1, 1, "neural"))[1].startswith("policy_kind must be one of")
    assert sampler.request_trial(TrialRequest(2, 1)) == (False, "condition 2 out of range [0, 2)")
    refusal = (False, "a controller for condition 0 not received yet")
    assert sampler.request_trial(TrialRequest(0, 1)) == refusal
    assert sampler.request_trial(TrialRequest(1, 1))[0]
    assert sampler.request_trial(TrialRequest(1, 1)) == (True, "trial 1 is already queued")
    assert sampler.request_trial(TrialRequest(1, 2))[0], "idle sampler: one queued beyond the next"
    assert sampler.request_trial(TrialRequest(1, 3)) == (False, "busy: 2 trials queued")
    assert sampler.counters.trials_refused == 4 and len(sampler._queue) == 2


@pytest.mark.sim
def test_stale_state_aborts_the_lockstep_trial(experiment, experiment_file, setup) -> None:
    silent_after = 6
    sampler, io = _start(experiment, experiment_file, setup,
                         answer=lambda k: "state" if k < silent_after else "none", state_timeout=0.2)
    try:
        sampler.offer_controller(0, 1, _controller(setup, 0))
        sampler.request_trial(TrialRequest(0, 1, seed=1))
        (result,) = io.wait_results(1)
    finally:
        sampler.stop()
    assert result.aborted and "stale state" in result.abort_reason, result.abort_reason
    assert result.steps == silent_after + 1 and np.all(np.isfinite(result.X))
    assert sampler.counters.trials_aborted == 1 and len(io.commands) == silent_after + 1


@pytest.mark.sim
def test_invalid_state_aborts_the_trial_and_is_counted(experiment, experiment_file, setup) -> None:
    sampler, io = _start(experiment, experiment_file, setup, answer=lambda k: "state" if k < 3 else "nan")
    try:
        sampler.offer_controller(0, 1, _controller(setup, 0))
        sampler.request_trial(TrialRequest(0, 1, seed=1))
        (result,) = io.wait_results(1)
    finally:
        sampler.stop()
    assert result.aborted and "NaN" in result.abort_reason and result.steps == 4
    assert sampler.counters.states_rejected == 1 and sampler.counters.messages_rejected == 1


# The realtime stale-state, bad-state and between-trials checks run on a fake clock in test_hardening.py
# (every tick driven by the test, nothing depending on the machine's timing).


def test_safe_hold_is_zero_by_default_and_a_clipped_pd_hold_otherwise() -> None:
    limits = np.array([1.0, 1.0])
    reading = JointReading(np.array([0.1, 0.2]), np.array([1.0, -1.0]), 0.0, 0, 1)
    assert np.all(SafeHold(0.0, 0.0, limits).command(reading, fresh=True) == 0.0)
    hold = SafeHold(10.0, 0.5, limits)
    np.testing.assert_array_equal(hold.command(reading, fresh=True), [-0.5, 0.5])  # latched: only damping
    moved = JointReading(np.array([0.15, 0.0]), np.zeros(2), 0.0, 0, 2)
    np.testing.assert_allclose(hold.command(moved, fresh=True), [-0.5, 1.0])  # 10·(0.2-0) clipped to 1
    assert np.all(hold.command(moved, fresh=False) == 0.0), "no hold on a stale state"
    bad = JointReading(np.zeros(0), np.zeros(0), 0.0, 0, 3, fault="NaN")
    assert np.all(hold.command(bad, fresh=True) == 0.0)


def test_state_inbox_waits_for_a_newer_reading() -> None:
    inbox = StateInbox()
    assert inbox.wait_newer(0, timeout=0.01) is None
    first = inbox.put(np.zeros(2), np.zeros(2), 0.5)
    assert inbox.wait_newer(0, timeout=0.01) is first and inbox.wait_newer(first.seq, timeout=0.01) is None
    # the reading may arrive before or while the caller waits: either way wait_newer returns it
    threading.Thread(target=inbox.put, args=(np.ones(2), np.zeros(2), 0.6)).start()
    newer = inbox.wait_newer(first.seq, timeout=WAIT)
    assert newer is not None and newer.seq == 2 and newer.stamp == 0.6


def test_trial_noise_is_the_seeded_generator_noise() -> None:
    config = NoiseConfig(smooth_sigma=1.5)
    np.testing.assert_array_equal(trial_noise(7, 30, 3, config),
                                  generate_noise(30, 3, np.random.default_rng(7), config))
    assert not np.array_equal(trial_noise(7, 30, 3, config), trial_noise(8, 30, 3, config))


@pytest.mark.parametrize(
    "overrides, message",
    [({"config": ""}, "'config'"), ({"mode": "fast"}, "mode must be one of"),
     ({"state_timeout": 0.0}, "state_timeout"), ({"rate_hz": -1.0}, "rate_hz"),
     ({"controller": "a b"}, "controller name"), ({"controller_history": 0}, "controller_history"),
     ({"gil_switch_interval": 0.0}, "gil_switch_interval"), ({"condition_set": "test"}, "condition_set"),
     ({"realtime_priority": 100}, "realtime_priority")],
)
def test_sampler_params_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SamplerParams(**({"config": "x.yaml"} | overrides))


class FakeClock:
    """Monotonic ns clock that only moves when the loop sleeps or a tick spends time."""

    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now

    def sleep_until(self, deadline: int, stop: threading.Event) -> None:
        self.now = max(self.now, deadline)


def test_deadline_loop_keeps_an_absolute_grid_and_counts_skipped_deadlines() -> None:
    clock, period = FakeClock(), 1_000_000
    t0 = clock.now
    starts: list[TickInfo] = []
    cost = {3: 3_500_000}  # tick 3 overruns by 2.5 periods

    def tick(info: TickInfo) -> None:
        starts.append(info)
        clock.now += cost.get(info.index, 200_000)

    loop = DeadlineLoop(1e-3, tick, clock=clock, sleep_until=clock.sleep_until)
    loop.run(max_ticks=8)
    deadlines = [s.deadline_ns - t0 for s in starts]
    # 1..4 on time; tick 4 starts 2.5 periods late: deadlines 5 and 6 are skipped, the grid is kept
    assert deadlines == [period * i for i in (1, 2, 3, 4, 7, 8, 9, 10)]
    assert [s.start_ns - s.deadline_ns for s in starts] == [0, 0, 0, 0, 500_000, 0, 0, 0]
    assert loop.stats.deadline_misses == 2 and loop.stats.ticks == 8
    summary = loop.stats.summary()
    assert summary["compute_p50_us"] == pytest.approx(200.0)


def test_deadline_loop_stops_on_a_tick_error() -> None:
    clock = FakeClock()

    def tick(info: TickInfo) -> None:
        if info.index == 2:
            raise RuntimeError("boom")

    loop = DeadlineLoop(1e-3, tick, clock=clock, sleep_until=clock.sleep_until)
    loop.run(max_ticks=10)
    assert isinstance(loop.error, RuntimeError) and loop.stats.ticks == 2


def test_deadline_loop_reports_the_scheduling_its_thread_really_has() -> None:
    import os

    seen: list[int] = []
    done = threading.Event()

    def tick(info: TickInfo) -> None:
        seen.append(os.sched_getscheduler(0))  # the loop thread's own policy
        if len(seen) >= 3:
            done.set()

    loop = DeadlineLoop(1e-3, tick, priority=10)
    loop.start()
    try:
        assert done.wait(5.0)
    finally:
        loop.stop()
    if loop.scheduling == "SCHED_FIFO 10":
        assert set(seen) == {os.SCHED_FIFO}
    else:  # no permission here: the loop says so and runs at normal priority
        assert loop.scheduling.startswith("normal (SCHED_FIFO 10 refused") and os.SCHED_FIFO not in seen
    assert os.sched_getscheduler(0) != os.SCHED_FIFO  # the caller's thread is left alone
    with pytest.raises(ValueError, match="priority"):
        DeadlineLoop(1e-3, tick, priority=100)


def test_loop_stats_rate_and_jitter_of_a_known_schedule() -> None:
    stats = LoopStats(period_ns=1_000_000)
    for i, jitter in enumerate([0, 100_000, 0, -100_000, 0]):
        start = 1_000_000 * i + jitter
        stats.record(TickInfo(i, 1_000_000 * i, start), start + 50_000)
    summary = stats.summary()
    assert summary["achieved_rate_hz"] == pytest.approx(1000.0)
    assert summary["period_jitter_p50_us"] == pytest.approx(100.0)  # |Δ − period| = 100, 100, 100, 100 µs
    assert summary["compute_p99_us"] == pytest.approx(50.0)
