"""Hardening of the robot side without ROS processes (issue 8): each defect of the fault campaign gets a test.

Oracles: a message whose shape fields overflow numpy's product is a ShapeError (a rejection), never
another exception; an aborted sample with no step decodes to its metadata; a controller a request
names survives any number of others; the bound of an action over the reachable state box is exact for
LG controllers (checked against the box's corners) and sound for MLPs (checked against random states);
a stale reading engages zero effort in the very tick that finds it; foreign run tokens are refused.

The realtime tests drive :meth:`Sampler.tick` on a fake clock (no control thread): every step and
every command is determined, nothing depends on the machine's timing.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("mbpl_msgs.msg")

from builtin_interfaces.msg import Time  # noqa: E402
from mbpl_msgs.msg import LinearDynamics as LinearDynamicsMsg  # noqa: E402
from mbpl_msgs.msg import LinearGaussianController as ControllerMsg  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402

from mbpl_core.containers import LinearGaussianController, ShapeError  # noqa: E402
from mbpl_core.policy import NumpyPolicy, PolicyParams  # noqa: E402
from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.action_bounds import lg_action_bound, policy_action_bound  # noqa: E402
from mbpl_ros.rt_loop import TickInfo  # noqa: E402
from mbpl_ros.sampler_logic import (  # noqa: E402
    ControllerStore,
    RobotSetup,
    Sampler,
    SamplerParams,
    TrialRequest,
    TrialResult,
    build_numpy_policy,
)
from mbpl_ros.sampler_node import _empty_sample  # noqa: E402
from mbpl_ros.trainer_transport import decode_sample  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

WAIT = 20.0
PERIOD_NS = 10_000_000  # 100 Hz


@pytest.fixture(scope="module")
def setup(experiment_file: Path) -> RobotSetup:
    return RobotSetup.from_experiment(load_experiment(experiment_file))


def _params(experiment_file: Path, **overrides: object) -> SamplerParams:
    return SamplerParams(**({"config": str(experiment_file), "state_timeout": 5.0} | overrides))


def _constant(setup: RobotSetup, value: float = 0.5, var: float = 1.0) -> LinearGaussianController:
    T, dU, dX = setup.T, setup.dU, setup.dX
    return LinearGaussianController.from_covariance(
        np.zeros((T, dU, dX)), np.full((T, dU), value), np.tile(var * np.eye(dU), (T, 1, 1)))


class RecordingIO:
    """SamplerIO that records commands and samples (no robot: the test feeds states itself)."""

    def __init__(self) -> None:
        self.commands: list[np.ndarray] = []
        self.results: list[TrialResult] = []
        self.got_result = threading.Event()
        self.logs: list[tuple[str, str]] = []

    def publish_command(self, u: np.ndarray) -> None:
        self.commands.append(np.array(u))

    def publish_sample(self, result: TrialResult) -> None:
        self.results.append(result)
        self.got_result.set()

    def reset(self, condition: int, timeout: float) -> None:
        raise AssertionError("no reset service on hardware")

    def log(self, level: str, text: str) -> None:
        self.logs.append((level, text))


class FakeClock:
    def __init__(self) -> None:
        self.now = 10 * 1_000_000_000

    def __call__(self) -> int:
        return self.now


class RealtimeRig:
    """A realtime sampler on a fake clock whose control ticks the test calls one by one."""

    def __init__(self, experiment_file: Path, setup: RobotSetup, **overrides: object) -> None:
        self.clock, self.io = FakeClock(), RecordingIO()
        params = _params(experiment_file, mode="realtime", rate_hz=100.0, reset_service="", **overrides)
        self.sampler = Sampler(params, setup, self.io, clock=self.clock)
        self.q0 = np.array([-0.5, 1.6])
        self.index = 0
        self.sampler.start(control_loop=False)

    def state(self, q: np.ndarray | None = None) -> None:
        self.sampler.on_state(self.q0 if q is None else q, np.zeros(2), self.clock.now * 1e-9)

    def start_trial(self, controller_id: int = 1, trial_id: int = 1) -> None:
        accepted, message = self.sampler.request_trial(
            TrialRequest(0, trial_id, add_noise=False, controller_id=controller_id))
        assert accepted, message
        # the worker waits for a state newer than the one it saw when it took the trial: offer states
        # until it has one (an event, not a delay)
        while not self.sampler.trial_running.wait(0.01):
            self.state()

    def tick(self, fresh_state: bool = False) -> np.ndarray:
        """Advance one period (optionally with a new reading first); the command of that tick."""
        self.clock.now += PERIOD_NS
        if fresh_state:
            self.state()
        before = len(self.io.commands)
        self.sampler.tick(TickInfo(self.index, self.clock.now, self.clock.now))
        self.index += 1
        assert len(self.io.commands) == before + 1, "every tick publishes exactly one command"
        return self.io.commands[-1]

    def result(self) -> TrialResult:
        assert self.io.got_result.wait(WAIT), "the trial's sample was never published"
        return self.io.results[-1]

    def stop(self) -> None:
        self.sampler.stop()


# ------------------------------------------------------------------ 1. overflowing shape fields
@pytest.mark.parametrize("dims", [(2**22, 2**21, 2**21), (2**32 - 1, 2**32 - 1, 2**32 - 1), (1, 2**31, 2)])
def test_shape_fields_whose_product_overflows_are_a_shape_error(dims: tuple[int, int, int]) -> None:
    T, dU, dX = dims
    if dims == (2**22, 2**21, 2**21):
        assert np.prod(np.array(dims, dtype=np.int64)) == 0, "the campaign's message: numpy's product wraps"
    controller = ControllerMsg(t_steps=T, du=dU, dx=dX)
    with pytest.raises(ShapeError, match="values, expected"):
        conversions.msg_to_controller(controller)
    with pytest.raises(ShapeError, match="expected"):
        conversions.msg_to_dynamics(LinearDynamicsMsg(t_steps=T, du=dU, dx=dX))
    with pytest.raises(ShapeError, match=r"expected \(T, dU, dX\)"):
        conversions.msg_to_controller(controller, expected=(20, 2, 10))


def test_any_failure_to_build_a_controller_or_policy_is_a_rejection(experiment_file, setup) -> None:
    sampler = Sampler(_params(experiment_file), setup, RecordingIO())
    assert not sampler.offer_controller(0, 1, ValueError("cannot reshape array of size 0"))
    assert not sampler.offer_controller(0, 2, "not a controller")  # type: ignore[arg-type]
    assert not sampler.offer_policy(3, object())  # type: ignore[arg-type]
    assert sampler.counters.controllers_rejected == 2 and sampler.counters.policies_rejected == 1


# ------------------------------------------------------------- 2. an abort before the first step
def test_an_aborted_sample_with_no_step_decodes_to_its_metadata() -> None:
    meta = conversions.SampleMetadata(condition=1, trial_id=77, controller_id=5, aborted=True,
                                      abort_reason="stale state: no joint_states within 1 s")
    raw = serialize_message(_empty_sample(meta, Time(sec=3)))
    result = decode_sample(raw)
    assert result.batch is None and result.raw == raw
    assert result.meta.aborted and result.meta.trial_id == 77 and "stale state" in result.meta.abort_reason


# ---------------------------------------------------------------- 3. foreign controllers evicting
def test_a_requested_controller_is_never_evicted(experiment_file, setup) -> None:
    sampler = Sampler(_params(experiment_file, controller_history=8), setup, RecordingIO())
    mine = _constant(setup)
    assert sampler.offer_controller(0, 1001, mine)
    assert sampler.request_trial(TrialRequest(0, 1, controller_id=1001))[0]
    for n in range(20):  # well-formed strangers (same token: a misbehaving node of this run)
        assert sampler.offer_controller(0, 5000 + n, _constant(setup, 0.1))
    accepted, message = sampler.request_trial(TrialRequest(0, 2, controller_id=1001))
    assert accepted, message
    assert sampler._queue[-1].source is mine


def test_a_controller_asked_for_before_it_arrives_is_kept_too() -> None:
    store = ControllerStore(num_conditions=1, history=2)
    c = object()
    store.add(0, 7, c)  # type: ignore[arg-type]
    for cid in range(10, 20):
        store.add(0, cid, object(), keep=frozenset({7}))  # type: ignore[arg-type]
    assert store.get(0, 7) == (7, c) and store.get(0, 19) is not None and store.get(0, 10) is None


# ---------------------------------------------------------------------------- 4. bounds
def test_the_gain_bound_catches_signed_single_entry_and_single_step_violations(
    experiment_file, setup
) -> None:
    bound = 10.0
    sampler = Sampler(_params(experiment_file, max_gain=bound, max_action_ratio=1e12), setup, RecordingIO())
    T, dU, dX = setup.T, setup.dU, setup.dX
    cid = itertools.count(1)
    for t, i, j, value in [(0, 0, 0, 1.05 * bound), (T - 1, dU - 1, dX - 1, -1.05 * bound),
                           (T // 2, 1, 3, -1.05 * bound), (T // 2, 0, dX // 2, 1.05 * bound)]:
        K = np.zeros((T, dU, dX))
        K[t, i, j] = value
        c = LinearGaussianController.from_covariance(K, np.zeros((T, dU)), np.tile(np.eye(dU), (T, 1, 1)))
        assert not sampler.offer_controller(0, next(cid), c), f"|K[{t},{i},{j}]| = {abs(value)} accepted"
        assert "gain bound" in sampler.counters.last_reject_reason
    K = np.full((T, dU, dX), -bound)  # on the bound is allowed
    assert sampler.offer_controller(
        0, next(cid),
        LinearGaussianController.from_covariance(K, np.zeros((T, dU)), np.tile(np.eye(dU), (T, 1, 1))))


def test_huge_offsets_or_covariance_are_rejected_and_ordinary_controllers_pass(
    experiment_file, setup
) -> None:
    sampler = Sampler(_params(experiment_file), setup, RecordingIO())
    assert sampler.offer_controller(0, 1, _constant(setup, 1.0, 0.1))
    offsets = _constant(setup, 0.0, 0.1)
    k = offsets.k.copy()
    k[7, 1] = 1e300
    big_k = LinearGaussianController.from_covariance(offsets.K, k, offsets.pol_covar)
    assert not sampler.offer_controller(0, 2, big_k)
    assert "largest action" in sampler.counters.last_reject_reason
    assert not sampler.offer_controller(0, 3, _constant(setup, 0.0, 1e300))
    assert "exploration std" in sampler.counters.last_reject_reason
    assert sampler.counters.controllers_rejected == 2


def test_the_lg_bound_is_the_maximum_over_the_corners_of_the_box(setup, experiment_file) -> None:
    box = Sampler(_params(experiment_file), setup, RecordingIO()).limits.box
    rng = np.random.default_rng(0)
    T, dU, dX = 3, setup.dU, setup.dX
    c = LinearGaussianController.from_covariance(
        rng.standard_normal((T, dU, dX)), rng.standard_normal((T, dU)), np.tile(np.eye(dU), (T, 1, 1)))
    action, _ = lg_action_bound(c, box)
    # |K x + k| is convex in x: its maximum over a box is at a corner, which is the sign pattern of K's row
    for t, i in itertools.product(range(T), range(dU)):
        for sign in (1.0, -1.0):
            corner = box.centre + box.radius * np.sign(sign * c.K[t, i])
            assert abs(c.K[t, i] @ corner + c.k[t, i]) <= action[i] + 1e-9
    corners = [box.centre + box.radius * np.sign(s * c.K[t, i]) for t in range(T) for i in range(dU)
               for s in (1, -1)]
    best = np.max([np.abs(c.K[t] @ x + c.k[t]) for x in corners for t in range(T)], axis=0)
    np.testing.assert_allclose(action, best, rtol=1e-12)


def _policy(setup: RobotSetup, first_layer_scale: float, activation: str = "relu",
            seed: int = 0) -> PolicyParams:
    rng = np.random.default_rng(seed)
    dX, dU, H = setup.dX, setup.dU, 16
    return PolicyParams.from_layers(
        weights=(first_layer_scale * rng.standard_normal((H, dX)), 0.3 * rng.standard_normal((dU, H))),
        biases=(np.zeros(H), np.zeros(dU)), activation=activation, obs_mean=np.zeros(dX), obs_std=np.ones(dX),
        action_covar=0.05 * np.eye(dU), state_dim=dX)


def test_policy_bound_is_sound_and_rejects_what_is_only_finite_at_the_origin(experiment_file, setup) -> None:
    sampler = Sampler(_params(experiment_file), setup, RecordingIO())
    box = sampler.limits.box
    rng = np.random.default_rng(1)
    states = box.low + (box.high - box.low) * rng.uniform(size=(2000, setup.dX))
    for activation in ("relu", "tanh"):
        params = _policy(setup, 0.3, activation)
        bound, _ = policy_action_bound(params, box)
        policy = NumpyPolicy(params)
        worst = np.max(np.abs([policy.act(0, x, None) for x in states]), axis=0)
        assert np.all(worst <= bound + 1e-9), (activation, worst, bound)
        assert sampler.offer_policy(1, params)
    huge = _policy(setup, 1e200)  # zero biases: act(0) = 0, finite; anywhere else ~1e200
    assert not sampler.offer_policy(2, huge)
    assert "gain bound" in sampler.counters.last_reject_reason
    box_only = Sampler(_params(experiment_file, max_policy_gain=1e300), setup, RecordingIO())
    assert not box_only.offer_policy(2, huge), "the box bound alone catches it too"
    assert "largest action" in box_only.counters.last_reject_reason
    steep_tanh = _policy(setup, 1e8, "tanh")  # bounded output but a bang-bang gain of ~1e8
    assert not sampler.offer_policy(3, steep_tanh)
    assert "gain" in sampler.counters.last_reject_reason
    assert sampler._policy[0] == 1


def _sized_policy(dX: int, dU: int, obs: int, first_bias: float = 0.0,
                  last_scale: float = 0.3) -> PolicyParams:
    """A small relu MLP over the first ``obs`` entries of states of dX, with dU actions."""
    rng = np.random.default_rng(3)
    H = 8
    return PolicyParams.from_layers(
        weights=(0.1 * rng.standard_normal((H, obs)), last_scale * rng.standard_normal((dU, H))),
        biases=(np.full(H, first_bias), np.zeros(dU)), activation="relu", obs_indices=np.arange(obs),
        obs_mean=np.zeros(obs), obs_std=np.ones(obs), action_covar=0.05 * np.eye(dU), state_dim=dX)


@pytest.mark.parametrize("shift", [(1, 0), (-1, 0), (0, 1), (0, -1)], ids=["dX+1", "dX-1", "dU+1", "dU-1"])
def test_a_policy_for_another_state_or_action_size_is_rejected_naming_the_size(
        experiment_file, setup, shift: tuple[int, int]) -> None:
    """Oracle: the robot's own (dX, dU) is accepted; one more or one fewer of either is rejected, counted,
    and the reason names the robot's size -- over the sampler and without limits (build_numpy_policy)."""
    dX, dU = setup.dX + shift[0], setup.dU + shift[1]
    obs = min(dX, setup.dX) - 1  # observed entries exist in both state sizes, so only the size is wrong
    sampler = Sampler(_params(experiment_file), setup, RecordingIO())
    assert sampler.offer_policy(1, _sized_policy(setup.dX, setup.dU, obs))
    wrong = _sized_policy(dX, dU, obs)
    assert not sampler.offer_policy(2, wrong)
    assert sampler.counters.policies_rejected == 1 and sampler._policy[0] == 1
    name, size = ("dX", setup.dX) if shift[0] else ("dU", setup.dU)
    assert f"the robot has {name} = {size}" in sampler.counters.last_reject_reason
    with pytest.raises(ShapeError, match=f"the robot has {name} = {size}"):
        build_numpy_policy(wrong, setup)


def test_a_policy_whose_action_at_the_origin_overflows_is_not_built(setup) -> None:
    """Finite weights whose product overflows at x = 0 (relu(1e200) · 1e200 = inf): no NumpyPolicy comes
    out of build_numpy_policy even without limits, while the same policy with sane weights is built."""
    obs = setup.dX
    sane = build_numpy_policy(_sized_policy(setup.dX, setup.dU, obs, first_bias=1.0), setup)
    assert np.all(np.isfinite(sane.act(0, np.zeros(setup.dX), None)))
    overflowing = _sized_policy(setup.dX, setup.dU, obs, first_bias=1e200, last_scale=1e200)
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.all(np.isfinite(NumpyPolicy(overflowing).mean_batch(np.zeros((1, setup.dX))))), \
            "the construction must overflow at the origin"
        with pytest.raises(ShapeError, match="finite"):
            build_numpy_policy(overflowing, setup)


# ------------------------------------------------------------------------- 5. stale readings
def test_a_reading_older_than_max_state_age_holds_zero_at_once_and_aborts(experiment_file, setup) -> None:
    rig = RealtimeRig(experiment_file, setup, max_state_age=0.05)  # 5 periods
    try:
        assert rig.sampler.offer_controller(0, 1, _constant(setup))
        rig.start_trial()
        steps = [rig.tick(fresh_state=True) for _ in range(3)]
        reused = [rig.tick() for _ in range(5)]  # the driver fell silent: 10 .. 50 ms old, still allowed
        stale = rig.tick()  # 60 ms old
        after = [rig.tick() for _ in range(5)]
        result = rig.result()
    finally:
        rig.stop()
    assert all(np.all(u == 0.5) for u in steps + reused)
    assert np.all(stale == 0.0) and all(np.all(u == 0.0) for u in after), "zero effort from the stale tick on"
    assert result.aborted and "stale state" in result.abort_reason and "60.0 ms old" in result.abort_reason
    assert result.steps == 8, "no step recorded from a reading beyond max_state_age"
    assert rig.sampler.counters.stale_states == 1


def test_the_default_max_state_age_is_a_few_periods_not_state_timeout(experiment_file, setup) -> None:
    sampler = Sampler(_params(experiment_file, mode="realtime", rate_hz=100.0, reset_service="",
                              state_timeout=1.0), setup, RecordingIO())
    assert sampler.max_state_age_s == pytest.approx(0.05)


def test_zero_effort_between_trials_on_a_bad_state_and_with_an_invalid_controller(
    experiment_file, setup
) -> None:
    rig = RealtimeRig(experiment_file, setup)
    sampler = rig.sampler
    try:
        rig.state()
        idle = [rig.tick(fresh_state=True) for _ in range(3)]  # no trial yet
        invalid = _constant(setup, 1e300)
        assert not sampler.offer_controller(0, 9, invalid)
        assert not sampler.request_trial(TrialRequest(0, 1, controller_id=9))[0]
        refused = [rig.tick(fresh_state=True) for _ in range(3)]
        assert sampler.offer_controller(0, 1, _constant(setup))
        rig.start_trial(trial_id=2)
        full = [rig.tick(fresh_state=True) for _ in range(setup.T)]
        done = rig.result()
        between = [rig.tick(fresh_state=True) for _ in range(3)]
        rig.io.got_result.clear()
        rig.start_trial(trial_id=3)
        running = [rig.tick(fresh_state=True) for _ in range(2)]
        sampler.on_bad_state("JointState.position contains NaN or Inf")
        faulted = rig.tick()
        aborted = rig.result()
        after = [rig.tick(fresh_state=True) for _ in range(3)]
    finally:
        rig.stop()
    zero = idle + refused + between + [faulted] + after
    assert all(np.all(u == 0.0) for u in zero), "zero effort whenever no valid trial step runs"
    assert all(np.all(u == 0.5) for u in full + running)
    assert not done.aborted and done.steps == setup.T
    assert aborted.aborted and "invalid joint state" in aborted.abort_reason and aborted.steps == 2


# ------------------------------------------------------------------------------ 6. run tokens
def test_foreign_run_tokens_are_refused_and_counted(experiment_file, setup) -> None:
    sampler = Sampler(_params(experiment_file, run_token="s3cret"), setup, RecordingIO())
    good = _constant(setup)
    assert not sampler.offer_controller(0, 1, good)  # no token
    assert not sampler.offer_controller(0, 1, good, run_token="other")
    assert not sampler.offer_policy(1, _policy(setup, 0.3), run_token="")
    assert sampler.counters.tokens_rejected == 3 and sampler.counters.messages_rejected == 3
    assert sampler.offer_controller(0, 1, good, run_token="s3cret")
    assert sampler.request_trial(TrialRequest(0, 1, controller_id=1)) == (
        False, "unknown run_token (not from this run)")
    assert sampler.request_trial(TrialRequest(0, 1, controller_id=1, run_token="s3cret"))[0]
    assert sampler.counters.tokens_rejected == 4 and sampler.diagnostics()[2]["tokens_rejected"] == "4"


# ------------------------------------------------------------------------------ safety monitor
def test_the_command_monitor_flags_wrong_length_non_finite_and_over_limit_efforts() -> None:
    from mbpl_ros.safety_monitor import CommandMonitor

    monitor = CommandMonitor(np.array([4.0, 3.0]))
    assert monitor.check([4.0, -3.0]) == "" and monitor.check([0.0, 0.0]) == ""
    assert "2 efforts" not in monitor.check([1.0, 1.0])
    assert "1 efforts, expected 2" in monitor.check([1.0])
    assert "non-finite" in monitor.check([np.nan, 0.0])
    assert "beyond the limits" in monitor.check([0.0, -3.0000001])
    assert monitor.commands_seen == 6 and monitor.unsafe_commands == 3 and monitor.nonzero_commands == 3


def test_the_state_box_holds_every_state_the_robot_reaches(experiment_file, setup) -> None:
    """Oracle: x = state_vector(q, qd, target) for random q in the joint ranges, |qd| within the velocity
    limits and every target lies in the box (the action bounds are only as good as the box)."""
    box = Sampler(_params(experiment_file), setup, RecordingIO()).limits.box
    model, kin = setup.kinematics.model, setup.kinematics
    ranges = np.array([model.jnt_range[model.joint(n).id] for n in setup.joint_names])
    rng = np.random.default_rng(5)
    for _ in range(500):
        q = rng.uniform(ranges[:, 0], ranges[:, 1])
        qd = rng.uniform(-1.0, 1.0, setup.dU) * setup.velocity_limits
        for target in setup.targets:
            x = kin.state_vector(q, qd, target)
            assert np.all(x >= box.low - 1e-12) and np.all(x <= box.high + 1e-12)


def test_the_security_check_finds_the_plugins_only_where_they_are(tmp_path: Path) -> None:
    from mbpl_ros.dds_security import PLUGINS, find_fastdds, security_plugins

    with_all = tmp_path / "with.so"
    with_all.write_bytes(b"\x00".join([b"ELF", *PLUGINS.values(), b"end"]))
    without = tmp_path / "without.so"
    without.write_bytes(b"ELF\x00builtin.PKI\x00AES-GCM\x00")
    assert all(security_plugins(with_all).values())
    assert not any(security_plugins(without).values())
    installed = find_fastdds()
    if installed is not None:  # the wheels' library: built without them (DESIGN.md, measured)
        assert security_plugins(installed) == dict.fromkeys(PLUGINS, False)
