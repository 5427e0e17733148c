"""Squashed policies (SAC's tanh actor, the BPTT policy) over the PolicyParameters message and the sampler.

Oracles: the message round trip is exact (numpy == message == numpy, arrays equal, actions to 1e-12);
an SB3 SAC actor sent through the message acts as SB3's own torch actor (float64 twin to 1e-10, SB3's
float32 predict to 1e-6 of the effort range); every malformed squash field is a ShapeError naming it; the
sampler bounds a squashed policy by |bias| + scale ⊙ tanh(·) (sound over random reachable states), rejects
one beyond ``max_action_ratio`` × the effort limits with a logged, counted reason, and clips the commands of
an accepted one that exceeds the limits (clipping stays the last line, as for every other source).
"""

from __future__ import annotations

import array

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("mbpl_msgs.msg")
gym = pytest.importorskip("gymnasium")
pytest.importorskip("stable_baselines3")

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from stable_baselines3.sac.policies import SACPolicy  # noqa: E402

from mbpl_core.containers import ShapeError  # noqa: E402
from mbpl_core.learners.sac import actor_to_params, torch_actor_action  # noqa: E402
from mbpl_core.policy import NumpyPolicy, PolicyParams  # noqa: E402
from mbpl_ros import conversions as cv  # noqa: E402
from mbpl_ros.action_bounds import policy_action_bound  # noqa: E402
from mbpl_ros.sampler_logic import (  # noqa: E402
    JointReading,
    QueuedTrial,
    RobotSetup,
    Sampler,
    SamplerParams,
    TrialRecorder,
    TrialRequest,
    build_numpy_policy,
)
from mbpl_sim.experiment import load_experiment  # noqa: E402

DX, DU = 6, 3
LOW, HIGH = np.array([-4.0, -1.0, 0.5]), np.array([4.0, 3.0, 2.5])  # asymmetric: the bias matters


def _sb3_policy(seed: int = 0) -> SACPolicy:
    import torch

    torch.manual_seed(seed)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (DX,), np.float64)
    policy = SACPolicy(obs_space, gym.spaces.Box(LOW, HIGH, dtype=np.float64), lambda _: 3e-4,
                       net_arch=[32, 16])
    with torch.no_grad():  # large enough weights that some outputs saturate
        for p in policy.actor.parameters():
            p.mul_(3.0)
    return policy


def _through_the_wire(params: PolicyParams) -> PolicyParams:
    """params → message → CDR bytes → message → params, as the sampler node receives them."""
    msg = cv.policy_params_to_msg(params, policy_id=5, run_token="tok")
    raw = serialize_message(msg)
    return cv.msg_to_policy_params(deserialize_message(raw, type(msg)))


def test_squashed_round_trip_is_exact() -> None:
    policy = _sb3_policy()
    params = actor_to_params(policy.actor, policy.action_space, action_covar=np.diag([0.1, 0.2, 0.3]))
    msg = cv.policy_params_to_msg(params, 3)
    assert msg.squash == "tanh" and len(msg.action_scale) == DU and len(msg.action_bias) == DU
    back = _through_the_wire(params)
    assert back.squash == "tanh"
    for name in ("action_scale", "action_bias", "obs_mean", "obs_std", "action_covar", "obs_indices"):
        np.testing.assert_array_equal(getattr(back, name), getattr(params, name))
    for (W, b), (W2, b2) in zip(params.weights, back.weights, strict=True):
        np.testing.assert_array_equal(W2, W)
        np.testing.assert_array_equal(b2, b)
    X = np.random.default_rng(1).normal(0.0, 2.0, size=(64, DX))
    np.testing.assert_allclose(NumpyPolicy(back).mean_batch(X), NumpyPolicy(params).mean_batch(X),
                               atol=1e-12, rtol=0)
    # an unsquashed policy travels with an empty squash and empty scale / bias, and comes back unsquashed
    plain = PolicyParams(params.weights, params.activation, params.obs_mean, params.obs_std,
                         params.obs_indices, params.action_covar, params.state_dim)
    msg = cv.policy_params_to_msg(plain, 4)
    assert msg.squash == "" and len(msg.action_scale) == 0 and len(msg.action_bias) == 0
    assert _through_the_wire(plain).squash == "none"


def test_an_sb3_actor_through_the_message_acts_as_the_torch_actor() -> None:
    policy = _sb3_policy(seed=2)
    deployed = NumpyPolicy(_through_the_wire(actor_to_params(policy.actor, policy.action_space)))
    X = np.random.default_rng(3).normal(0.0, 2.0, size=(128, DX))
    ours = np.stack([deployed.act(0, x) for x in X])
    np.testing.assert_allclose(ours, torch_actor_action(policy.actor, policy, X), atol=1e-10, rtol=0)
    sb3, _ = policy.predict(X.astype(np.float32), deterministic=True)
    np.testing.assert_allclose(ours, sb3, atol=1e-6 * np.max(HIGH - LOW), rtol=0)
    saturated = np.abs(ours - 0.5 * (LOW + HIGH)) > 0.99 * 0.5 * (HIGH - LOW)
    assert saturated.any() and not saturated.all()


def _squashed_msg():  # noqa: ANN202 - the generated message type
    policy = _sb3_policy()
    return cv.policy_params_to_msg(actor_to_params(policy.actor, policy.action_space), 1)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: setattr(m, "squash", "sigmoid"), "squash 'sigmoid' is not one of"),
        (lambda m: setattr(m, "action_scale", array.array("d", [1.0, 1.0])), "action_scale has 2 values"),
        (lambda m: setattr(m, "action_bias", array.array("d", [])), "action_bias has 0 values"),
        (lambda m: m.action_scale.__setitem__(1, float("nan")), "action_scale contains NaN"),
        (lambda m: m.action_bias.__setitem__(0, float("inf")), "action_bias contains"),
        (lambda m: m.action_scale.__setitem__(2, 0.0), "action_scale must be > 0"),
        (lambda m: m.action_scale.__setitem__(0, -1.0), "action_scale must be > 0"),
        (lambda m: setattr(m, "squash", ""), "need squash 'tanh'"),
    ],
)
def test_malformed_squash_fields_are_rejected(mutate, reason: str) -> None:
    msg = _squashed_msg()
    mutate(msg)
    with pytest.raises(ShapeError, match=reason):
        cv.msg_to_policy_params(msg)


# ------------------------------------------------------------------------------------- the sampler
@pytest.fixture(scope="module")
def setup(experiment_file) -> RobotSetup:
    return RobotSetup.from_experiment(load_experiment(experiment_file))


class _IO:
    def __init__(self) -> None:
        self.logs: list[tuple[str, str]] = []

    def log(self, level: str, text: str) -> None:
        self.logs.append((level, text))


def _robot_policy(setup: RobotSetup, scale: np.ndarray, bias: np.ndarray) -> PolicyParams:
    rng = np.random.default_rng(4)
    dX, dU, H = setup.dX, setup.dU, 16
    return PolicyParams.from_layers(
        weights=(0.5 * rng.standard_normal((H, dX)), 2.0 * rng.standard_normal((dU, H))),
        biases=(np.zeros(H), 0.5 * np.ones(dU)), activation="relu", obs_mean=np.zeros(dX),
        obs_std=np.ones(dX), action_covar=1e-8 * np.eye(dU), state_dim=dX, squash="tanh",
        action_scale=scale, action_bias=bias)


def test_the_sampler_bounds_rejects_and_clips_squashed_policies(experiment_file, setup) -> None:
    limits = np.asarray(setup.effort_limits, dtype=np.float64)
    io = _IO()
    sampler = Sampler(SamplerParams(config=str(experiment_file), max_action_ratio=2.0), setup, io)
    box = sampler.limits.box
    states = box.low + (box.high - box.low) * np.random.default_rng(5).uniform(size=(2000, setup.dX))
    fits = _robot_policy(setup, 0.9 * limits, 0.05 * limits)
    bound, _ = policy_action_bound(fits, box)
    worst = np.max(np.abs(NumpyPolicy(fits).mean_batch(states)), axis=0)
    assert np.all(worst <= bound + 1e-12) and np.all(bound <= 0.95 * limits + 1e-12)
    assert sampler.offer_policy(1, fits)
    # scale + |bias| = 1.5 × the limits: within max_action_ratio (2), accepted; its commands are clipped
    over = _robot_policy(setup, 1.2 * limits, 0.3 * limits)
    assert sampler.offer_policy(2, over)
    deployed = build_numpy_policy(over, setup, sampler.limits)
    request = TrialRequest(0, 1, add_noise=False, controller_id=2, policy_kind="policy")
    recorder = TrialRecorder(setup, QueuedTrial(request, 2, deployed))
    rng, clipped = np.random.default_rng(6), 0
    for t in range(setup.T):
        q = rng.uniform(-2.0, 2.0, setup.dU)
        u = recorder.step(JointReading(q, np.zeros(setup.dU), 0.01 * t, t, t), 0.01 * t)
        x = recorder.X[t]
        np.testing.assert_array_equal(u, np.clip(deployed.act(t, x), -limits, limits))
        assert np.all(np.abs(u) <= limits)
        clipped += int(np.any(np.abs(deployed.act(t, x)) > limits))
    assert clipped, "the test policy must ask for more than the limits somewhere"
    # beyond the ratio: rejected, counted, the reason logged, the last good policy stays
    rejected = sampler.counters.policies_rejected
    assert not sampler.offer_policy(3, _robot_policy(setup, 2.5 * limits, 0.1 * limits))
    assert "largest action" in sampler.counters.last_reject_reason
    assert any("policy 3" in text for _, text in io.logs)
    assert sampler.counters.policies_rejected == rejected + 1
    assert sampler._policy[0] == 2
    # a conversion error of a malformed message is a counted rejection too, never an exception
    assert not sampler.offer_policy(4, ShapeError("PolicyParameters.action_scale must be > 0"))
    assert "action_scale" in sampler.counters.last_reject_reason
