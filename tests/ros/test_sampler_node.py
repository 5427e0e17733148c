"""The sampler node as a process over DDS, with the sim node (lockstep, realtime), MuJoCo in its own process
(``sim_in_process``) or the test as the robot.

Oracles: a lockstep trial equals an in-process MujocoEnv rollout of the same controller and noise;
invalid controllers are refused and counted while the last good one keeps running; a silent robot
aborts the trial and gets the safe (zero) command afterwards.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from mbpl_msgs.msg import LinearGaussianController as ControllerMsg  # noqa: E402
from mbpl_msgs.msg import PolicyParameters, TrajectorySample  # noqa: E402
from mbpl_msgs.srv import RunTrial  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from mbpl_core.containers import LinearGaussianController  # noqa: E402
from mbpl_core.policy import PolicyParams  # noqa: E402
from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.params import declare_parameters, schema_defaults  # noqa: E402
from mbpl_ros.sampler_logic import RobotSetup, SamplerParams, build_numpy_policy, trial_noise  # noqa: E402
from mbpl_ros.sampler_node import LATCHED_QOS  # noqa: E402
from mbpl_ros.sim_node import COMMAND_QOS, STATE_QOS  # noqa: E402
from mbpl_sim.env import MujocoEnv  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

STARTUP_TIMEOUT = 30.0
TRIAL_TIMEOUT = 20.0


class SamplerClient:
    """The trainer's and the ilqr node's side of the sampler: controllers, RunTrial, samples, diagnostics."""

    def __init__(self, node: object) -> None:
        self.node = node
        self.samples: dict[int, TrajectorySample] = {}
        self.diagnostics: list[dict[str, str]] = []
        self.commands: list[np.ndarray] = []
        node.create_subscription(TrajectorySample, "mbpl/samples", self._on_sample, LATCHED_QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        node.create_subscription(Float64MultiArray, "effort_controller/commands",
                                 lambda m: self.commands.append(np.array(m.data)), COMMAND_QOS)
        self.controllers = node.create_publisher(ControllerMsg, "mbpl/controllers", LATCHED_QOS)
        self.run = node.create_client(RunTrial, "mbpl/run_trial")

    def _on_sample(self, msg: TrajectorySample) -> None:
        self.samples[msg.trial_id] = msg

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("mbpl_sampler"):
                self.diagnostics.append({kv.key: kv.value for kv in status.values})

    def counter(self, key: str) -> int:
        return int(self.diagnostics[-1][key]) if self.diagnostics else -1

    def publish(self, controller: LinearGaussianController, condition: int, controller_id: int) -> None:
        self.controllers.publish(conversions.controller_to_msg(controller, condition, controller_id))

    def request(self, wait_for: object, **fields: object) -> RunTrial.Response:
        assert self.run.wait_for_service(timeout_sec=STARTUP_TIMEOUT), "mbpl/run_trial never appeared"
        future = self.run.call_async(RunTrial.Request(**fields))
        wait_for(self.node, future.done, TRIAL_TIMEOUT, f"the answer to RunTrial {fields}")
        return future.result()

    def sample(self, wait_for: object, trial_id: int) -> TrajectorySample:
        what = f"the sample of trial {trial_id}"
        wait_for(self.node, lambda: trial_id in self.samples, TRIAL_TIMEOUT, what)
        return self.samples[trial_id]


def _controller(T: int, dU: int, dX: int, seed: int) -> LinearGaussianController:
    rng = np.random.default_rng(seed)
    K, k = 0.5 * rng.standard_normal((T, dU, dX)), rng.standard_normal((T, dU))
    return LinearGaussianController.from_covariance(K, k, np.tile(0.1 * np.eye(dU), (T, 1, 1)))


def _params(experiment: Path, **overrides: object) -> dict[str, object]:
    return {"config": str(experiment), "mode": "lockstep", "diagnostics_period": 0.2} | overrides


@pytest.fixture(params=["sim_node", "sim_in_process"])
def lockstep_graph(request, ros_processes, experiment_file: Path):
    """A lockstep sampler with its simulation: the sim node over DDS, or MuJoCo in the sampler's process."""
    in_process = request.param == "sim_in_process"
    if not in_process:
        ros_processes.start("mbpl_ros.sim_node", "sim", {"config": str(experiment_file), "mode": "lockstep"})
    ros_processes.start("mbpl_ros.sampler_node", "sampler",
                        _params(experiment_file, state_timeout=5.0, sim_in_process=in_process))
    env = MujocoEnv(load_experiment(experiment_file))
    return env


def test_lockstep_trials_equal_in_process_rollouts_and_follow_the_newest_controller(
    lockstep_graph, ros_processes, rclpy_node, wait_for
) -> None:
    env = lockstep_graph
    client = SamplerClient(rclpy_node)
    states: list[JointState] = []
    rclpy_node.create_subscription(JointState, "joint_states", states.append, STATE_QOS)
    first, second = (_controller(env.T, env.dU, env.dX, seed) for seed in (1, 2))
    client.publish(first, 1, 7)
    wait_for(rclpy_node, lambda: client.counter("controllers_received") >= 1, STARTUP_TIMEOUT, "controller 7")
    answer = client.request(wait_for, condition=1, trial_id=1, policy_kind="lg", seed=42, add_noise=True,
                            controller_id=7)
    assert answer.accepted, answer.message
    samples = [client.sample(wait_for, 1)]
    client.publish(second, 1, 8)
    wait_for(rclpy_node, lambda: client.counter("controllers_received") >= 2, TRIAL_TIMEOUT, "controller 8")
    answer = client.request(wait_for, condition=1, trial_id=2, policy_kind="lg", seed=42, add_noise=True)
    assert answer.accepted, answer.message
    samples.append(client.sample(wait_for, 2))
    noise = trial_noise(42, env.T, env.dU, _noise_config(env))
    for msg, controller, cid in zip(samples, (first, second), (7, 8), strict=True):
        batch, meta = conversions.msg_to_sample(msg)
        assert not meta.aborted and meta.controller_id == cid and msg.seed == 42 and msg.add_noise
        oracle = env.sample(controller, 1, noise)
        np.testing.assert_allclose(batch.X, oracle.X, rtol=0, atol=1e-9)
        np.testing.assert_allclose(batch.U, oracle.U, rtol=0, atol=1e-9)
        np.testing.assert_allclose(batch.ee_jacobians, oracle.ee_jacobians, rtol=0, atol=1e-9)
        assert meta.end_time - meta.start_time == pytest.approx((env.T - 1) * env.dt), "sim time"
        assert meta.seed == 42 and meta.add_noise
    assert not np.allclose(samples[0].u, samples[1].u)
    last_x = conversions.msg_to_sample(samples[1])[0].X[0, -1]
    wait_for(rclpy_node, lambda: bool(states) and np.array_equal(states[-1].position, last_x[:env.dU]),
             TRIAL_TIMEOUT, "joint_states ending at the trial's last state (the robot side's topic)")
    sampler_proc = next(p for p, _ in ros_processes.procs if "mbpl_ros.sampler_node" in p.args)
    sampler_proc.send_signal(signal.SIGTERM)
    assert sampler_proc.wait(timeout=STARTUP_TIMEOUT) == 0, ros_processes.output(sampler_proc)
    assert "Traceback" not in ros_processes.output(sampler_proc)


def _noise_config(env: MujocoEnv):
    from mbpl_core.config import from_dict
    from mbpl_core.noise import NoiseConfig

    return from_dict(NoiseConfig, env.experiment.algorithm.get("noise") or {})


def test_invalid_controllers_are_rejected_counted_and_the_last_good_one_runs(
    lockstep_graph, rclpy_node, wait_for
) -> None:
    env = lockstep_graph
    client = SamplerClient(rclpy_node)
    good = _controller(env.T, env.dU, env.dX, 3)
    client.publish(good, 0, 1)
    wrong_dims = conversions.controller_to_msg(_controller(env.T, env.dU, env.dX + 1, 3), 0, 2)
    with_nan = conversions.controller_to_msg(good, 0, 3)
    with_nan.k_offsets[4] = float("nan")
    not_pd = conversions.controller_to_msg(good, 0, 4)
    not_pd.pol_covar = np.tile(-np.eye(env.dU), (env.T, 1, 1)).ravel().tolist()
    for msg in (wrong_dims, with_nan, not_pd):
        client.controllers.publish(msg)
    wait_for(rclpy_node, lambda: client.counter("controllers_rejected") == 3, STARTUP_TIMEOUT,
             "three rejected controllers in the diagnostics")
    assert client.counter("controllers_received") == 4
    for cid in (2, 3, 4):
        answer = client.request(wait_for, condition=0, trial_id=cid, policy_kind="lg", controller_id=cid)
        assert not answer.accepted and answer.message == f"controller {cid} for condition 0 not received yet"
    answer = client.request(wait_for, condition=0, trial_id=9, policy_kind="lg", seed=3, add_noise=True)
    assert answer.accepted, answer.message
    batch, meta = conversions.msg_to_sample(client.sample(wait_for, 9))
    assert meta.controller_id == 1
    oracle = env.sample(good, 0, trial_noise(3, env.T, env.dU, _noise_config(env)))
    np.testing.assert_allclose(batch.U, oracle.U, rtol=0, atol=1e-9)


def test_deployed_policy_trial_equals_in_process_rollout(lockstep_graph, rclpy_node, wait_for) -> None:
    env = lockstep_graph
    client = SamplerClient(rclpy_node)
    answer = client.request(wait_for, condition=0, trial_id=1, policy_kind="policy", seed=5, add_noise=True)
    assert not answer.accepted and answer.message == "no policy received yet"
    rng = np.random.default_rng(6)
    weights = PolicyParams.from_layers(
        weights=(0.3 * rng.standard_normal((16, env.dX)), 0.3 * rng.standard_normal((env.dU, 16))),
        biases=(rng.standard_normal(16), rng.standard_normal(env.dU)), obs_mean=rng.standard_normal(env.dX),
        obs_std=rng.uniform(0.5, 2.0, env.dX), action_covar=0.05 * np.eye(env.dU), activation="relu",
        state_dim=env.dX)
    policy_pub = rclpy_node.create_publisher(PolicyParameters, "mbpl/policy", LATCHED_QOS)
    wrong = PolicyParams.from_layers(weights=(np.ones((env.dU, env.dX + 1)),), biases=(np.zeros(env.dU),),
                                     obs_mean=np.zeros(env.dX + 1), obs_std=np.ones(env.dX + 1),
                                     action_covar=np.eye(env.dU))  # a policy for states of dX + 1
    policy_pub.publish(conversions.policy_params_to_msg(wrong, 3))
    policy_pub.publish(conversions.policy_params_to_msg(weights, 4))
    wait_for(rclpy_node, lambda: client.counter("policies_received") == 2, STARTUP_TIMEOUT, "two policies")
    assert client.counter("policies_rejected") == 1
    answer = client.request(wait_for, condition=0, trial_id=2, policy_kind="policy", seed=5, add_noise=True)
    assert answer.accepted, answer.message
    batch, meta = conversions.msg_to_sample(client.sample(wait_for, 2))
    assert meta.policy_kind == "policy" and meta.controller_id == 4, "a policy sample carries the policy id"
    setup = RobotSetup.from_experiment(env.experiment)
    oracle = env.sample(build_numpy_policy(weights, setup), 0, trial_noise(5, env.T, env.dU, setup.noise))
    np.testing.assert_allclose(batch.X, oracle.X, rtol=0, atol=1e-9)
    np.testing.assert_allclose(batch.U, oracle.U, rtol=0, atol=1e-9)


def test_silent_robot_aborts_the_realtime_trial_and_zero_effort_follows(
    ros_processes, rclpy_node, wait_for, experiment_file: Path
) -> None:
    env = MujocoEnv(load_experiment(experiment_file))
    # 1 s trials and a 0.3 s timeout: scheduling stalls on a loaded 2-core machine must not look stale
    params = _params(experiment_file, mode="realtime", rate_hz=20.0, state_timeout=0.3, max_state_age=0.3,
                     reset_service="")
    sampler = ros_processes.start("mbpl_ros.sampler_node", "sampler", params)
    client = SamplerClient(rclpy_node)
    states = rclpy_node.create_publisher(JointState, "joint_states", 10)
    q0 = env.conditions[0].initial_q

    silent = threading.Event()

    def robot() -> None:  # a driver streaming at 100 Hz whether or not the test is spinning
        while not silent.wait(0.01):
            states.publish(conversions.arrays_to_joint_state(env.joint_names, q0, np.zeros(env.dU)))

    threading.Thread(target=robot, daemon=True).start()
    T, dU, dX = env.T, env.dU, env.dX
    constant = LinearGaussianController.from_covariance(
        np.zeros((T, dU, dX)), np.full((T, dU), 0.5), np.tile(np.eye(dU), (T, 1, 1)))
    client.publish(constant, 0, 1)
    wait_for(rclpy_node, lambda: client.counter("controllers_received") >= 1, STARTUP_TIMEOUT, "controller 1")
    wait_for(rclpy_node, lambda: client.counter("states_received") > 0, STARTUP_TIMEOUT, "the robot's states")
    assert client.request(wait_for, condition=0, trial_id=1, policy_kind="lg", add_noise=False).accepted

    def trial_running() -> bool:
        return sum(np.all(u == 0.5) for u in client.commands) >= 2 or 1 in client.samples

    wait_for(rclpy_node, trial_running, TRIAL_TIMEOUT, "the trial's commands")
    assert 1 not in client.samples, f"{client.samples[1].abort_reason}\n{ros_processes.output(sampler)}"
    silent.set()  # the robot goes silent mid-trial
    msg = client.sample(wait_for, 1)
    assert msg.aborted and "stale state" in msg.abort_reason, msg.abort_reason
    assert 2 <= msg.t_steps < T
    n_before = len(client.commands)
    wait_for(rclpy_node, lambda: len(client.commands) >= n_before + 5, TRIAL_TIMEOUT, "the safe hold")
    assert all(np.all(u == 0.0) for u in client.commands[n_before:]), "zero effort after the abort"
    wait_for(rclpy_node, lambda: client.counter("trials_aborted") == 1, TRIAL_TIMEOUT, "the aborted count")


def test_realtime_sampler_runs_a_trial_against_the_realtime_sim(
    ros_processes, rclpy_node, wait_for, experiment_file: Path
) -> None:
    ros_processes.start("mbpl_ros.sim_node", "sim",
                        {"config": str(experiment_file), "mode": "realtime", "realtime_rate": 100.0})
    params = _params(experiment_file, mode="realtime", rate_hz=100.0, state_timeout=0.5, max_state_age=0.5)
    sampler = ros_processes.start("mbpl_ros.sampler_node", "sampler", params)
    env = MujocoEnv(load_experiment(experiment_file))
    client = SamplerClient(rclpy_node)
    client.publish(_controller(env.T, env.dU, env.dX, 4), 1, 5)
    wait_for(rclpy_node, lambda: client.counter("controllers_received") >= 1, STARTUP_TIMEOUT, "controller 5")
    answer = client.request(wait_for, condition=1, trial_id=3, policy_kind="lg", seed=1, add_noise=True)
    assert answer.accepted, answer.message
    batch, meta = conversions.msg_to_sample(client.sample(wait_for, 3))
    assert not meta.aborted and batch.T == env.T and meta.controller_id == 5
    target = env.target_points(1)
    np.testing.assert_allclose(batch.X[0, 0, :2], env.conditions[1].initial_q, atol=0.05)
    x_again = env.kinematics.state_vector(batch.X[0, 5, :2], batch.X[0, 5, 2:4], target)
    np.testing.assert_allclose(batch.X[0, 5], x_again, atol=1e-12)
    assert meta.end_time > meta.start_time
    sampler.send_signal(signal.SIGTERM)  # the control thread is publishing the safe hold meanwhile
    assert sampler.wait(timeout=STARTUP_TIMEOUT) == 0, ros_processes.output(sampler)
    assert "Traceback" not in ros_processes.output(sampler)


def test_declared_parameters_match_the_schema(rclpy_node) -> None:
    from rclpy.parameter import Parameter

    overrides = [Parameter("config", value="experiment.yaml"), Parameter("mode", value="realtime")]
    node = rclpy.create_node("sampler_schema_probe", context=rclpy_node.context,
                             parameter_overrides=overrides)
    try:
        params = declare_parameters(node, SamplerParams)
        assert params == SamplerParams(config="experiment.yaml", mode="realtime")
        fields = {f.name: f for f in dataclasses.fields(SamplerParams)}
        automatic = {"use_sim_time", "start_type_description_service"}  # declared by rclpy itself
        declared = set(node._parameters) - automatic
        assert declared == set(fields)
        for name, default in schema_defaults(SamplerParams).items():
            expected = {"config": "experiment.yaml", "mode": "realtime"}.get(name, default)
            assert node.get_parameter(name).value == expected
            assert node.describe_parameter(name).description == fields[name].metadata["description"]
            assert node.describe_parameter(name).read_only
    finally:
        node.destroy_node()
