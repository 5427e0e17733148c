"""Deployment of a saved policy without training: the sim node and the sampler alone, over DDS.

The sampler loads a checkpoint (``policy_checkpoint``, numpy only) at start. Oracles: a policy trial
equals an in-process MujocoEnv rollout of the same NumpyPolicy and noise, on the training or the
held-out conditions (``condition_set`` on both nodes); the policy observes a subset of the state
(gps.observation), which must survive the checkpoint and the message; invalid PolicyParameters
messages (wrong dimensions, NaN) are rejected and counted while the last good policy keeps running;
``mbpl eval --graph`` reports the distances of in-process evaluation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")
torch = pytest.importorskip("torch")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from mbpl_msgs.msg import PolicyParameters, TrajectorySample  # noqa: E402
from mbpl_msgs.srv import RunTrial  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from mbpl_core.config import from_dict  # noqa: E402
from mbpl_core.guided.mdgps import (  # noqa: E402
    GaussianMLPPolicy,
    build_policy_targets,
    save_policy_checkpoint,
    train_policy,
)
from mbpl_core.local.init import InitConfig, initial_controller  # noqa: E402
from mbpl_core.noise import NoiseConfig  # noqa: E402
from mbpl_core.policy import GPSConfig, NumpyPolicy, PolicyParams, load_policy_checkpoint  # noqa: E402
from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.sampler_logic import trial_noise  # noqa: E402
from mbpl_sim.env import MujocoEnv  # noqa: E402
from mbpl_sim.evaluate import evaluate_in_sim  # noqa: E402
from mbpl_sim.experiment import ExperimentConfig, load_experiment  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30.0
POLICY_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)
OBSERVATION = [0, 1, 2, 3, 4, 5, 6, 7]  # q, qd and the tip offset: no tip velocity (dX = 10)


@pytest.fixture(scope="module")
def experiment_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """reacher2, T = 20, 2 training and 2 held-out targets, a policy that sees 8 of the 10 state entries."""
    path = tmp_path_factory.mktemp("deploy") / "reacher2_deploy.yaml"
    path.write_text(f"""name: reacher2_deploy
method: mdgps
robot:
  description: {REPO_ROOT / 'urdf/reacher2/reacher2.urdf'}
  joints: [joint1, joint2]
  ee: {{frame: ee_link, points: [[0.0, 0.0, 0.0]]}}
task:
  T: 20
  dt: 0.02
  substeps: 5
  initial_q: [0.0, 0.6]
  conditions: {{positions: [[0.35, 0.10, 0.10], [0.10, 0.35, 0.10]]}}
  held_out: {{positions: [[0.30, 0.25, 0.10], [0.20, 0.05, 0.10]]}}
gps: {{observation: {OBSERVATION}, hidden_sizes: [16], iterations: 150, batch_size: 40, device: cpu}}
pets: {{action_limits: [2.0, 1.5]}}
ros: {{lockstep: true}}
""")  # pets: as the shipped experiments have one: the robot side reads action_limits without torch
    return path


def _mimic_policy(experiment: ExperimentConfig) -> GaussianMLPPolicy:
    """A policy trained (S-step) to act like the initial LQR controller of each training condition."""
    env = MujocoEnv(experiment)
    config = from_dict(GPSConfig, experiment.gps, "gps")
    controllers = [initial_controller(InitConfig(), env.layout, env.dU, env.T, env.dt, env.x0(m))
                   for m in range(env.num_conditions)]
    batches = [env.sample(c, m, None) for m, c in enumerate(controllers)]
    policy = GaussianMLPPolicy.from_config(config, env.dX, env.dU)
    targets = build_policy_targets(controllers, batches, policy.obs_indices.numpy())
    train_policy(policy, targets.obs, targets.target_mu, targets.target_prec, config)
    return policy


@pytest.fixture(scope="module")
def checkpoint(experiment_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    experiment = load_experiment(experiment_path)
    policy = _mimic_policy(experiment)
    return save_policy_checkpoint(tmp_path_factory.mktemp("ckpt") / "policy", policy,
                                  from_dict(GPSConfig, experiment.gps, "gps"))


class Client:
    """RunTrial, samples and the sampler's diagnostics, from the test's node."""

    def __init__(self, node: object, wait_for: object) -> None:
        self.node, self.wait_for = node, wait_for
        self.samples: dict[int, TrajectorySample] = {}
        self.diagnostics: dict[str, str] = {}
        node.create_subscription(TrajectorySample, "mbpl/samples", self._on_sample, POLICY_QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.policies = node.create_publisher(PolicyParameters, "mbpl/policy", POLICY_QOS)
        self.run = node.create_client(RunTrial, "mbpl/run_trial")

    def _on_sample(self, msg: TrajectorySample) -> None:
        self.samples[int(msg.trial_id)] = msg

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("mbpl_sampler"):
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def counter(self, key: str) -> int:
        return int(self.diagnostics.get(key, -1))

    def policy_trial(self, condition: int, trial_id: int, seed: int) -> TrajectorySample:
        self.wait_for(self.node, self.run.service_is_ready, TIMEOUT, "mbpl/run_trial")
        request = RunTrial.Request(condition=condition, trial_id=trial_id, policy_kind="policy", seed=seed,
                                   add_noise=True)
        future = self.run.call_async(request)
        self.wait_for(self.node, future.done, TIMEOUT, f"the answer to trial {trial_id}")
        assert future.result().accepted, future.result().message
        self.wait_for(self.node, lambda: trial_id in self.samples, TIMEOUT, f"the sample of trial {trial_id}")
        return self.samples[trial_id]


def _start_graph(ros_processes: object, experiment_path: Path, condition_set: str, **sampler: object) -> None:
    common = {"config": str(experiment_path), "mode": "lockstep", "condition_set": condition_set}
    ros_processes.start("mbpl_ros.sim_node", "sim", common)  # type: ignore[attr-defined]
    ros_processes.start("mbpl_ros.sampler_node", "sampler",  # type: ignore[attr-defined]
                        common | {"diagnostics_period": 0.2, "state_timeout": 5.0} | sampler)


def _check_equals_rollout(msg: TrajectorySample, policy: NumpyPolicy, experiment: ExperimentConfig,
                          condition_set: str, condition: int, seed: int) -> None:
    env = MujocoEnv(experiment, condition_set=condition_set)
    noise = trial_noise(seed, env.T, env.dU, from_dict(NoiseConfig, experiment.algorithm.get("noise") or {}))
    oracle = env.sample(policy, condition, noise)
    batch, _ = conversions.msg_to_sample(msg)
    np.testing.assert_allclose(batch.X, oracle.X, rtol=0, atol=1e-9)
    np.testing.assert_allclose(batch.U, oracle.U, rtol=0, atol=1e-9)


@pytest.mark.parametrize("condition_set", ["train", "held_out"])
def test_checkpoint_policy_trial_equals_in_process_rollout(
    ros_processes, rclpy_node, wait_for, experiment_path: Path, checkpoint: Path, condition_set: str
) -> None:
    experiment = load_experiment(experiment_path)
    _start_graph(ros_processes, experiment_path, condition_set, policy_checkpoint=str(checkpoint))
    client = Client(rclpy_node, wait_for)
    msg = client.policy_trial(condition=1, trial_id=1, seed=5)
    assert msg.policy_kind == "policy" and msg.controller_id == 0 and not msg.aborted
    policy, _ = load_policy_checkpoint(checkpoint)
    np.testing.assert_array_equal(policy.params.obs_indices, OBSERVATION)
    _check_equals_rollout(msg, policy, experiment, condition_set, 1, 5)


def _with(params: PolicyParams, **changes: object) -> PolicyParams:
    fields = {name: getattr(params, name) for name in
              ("weights", "activation", "obs_mean", "obs_std", "obs_indices", "action_covar", "state_dim")}
    return PolicyParams(**(fields | changes))


def test_invalid_policies_are_rejected_and_the_last_good_one_stays(
    ros_processes, rclpy_node, wait_for, experiment_path: Path, checkpoint: Path
) -> None:
    experiment = load_experiment(experiment_path)
    _start_graph(ros_processes, experiment_path, "train", policy_checkpoint=str(checkpoint))
    client = Client(rclpy_node, wait_for)
    good, _ = load_policy_checkpoint(checkpoint)
    wrong_state = conversions.policy_params_to_msg(_with(good.params, state_dim=12), 3)
    with_nan = conversions.policy_params_to_msg(good.params, 4)
    with_nan.weights[7] = float("nan")
    wrong_action = conversions.policy_params_to_msg(good.params, 5)
    wrong_action.act_dim = 3
    for msg in (wrong_state, with_nan, wrong_action):
        client.policies.publish(msg)
    wait_for(rclpy_node, lambda: client.counter("policies_rejected") == 3, TIMEOUT, "three rejected policies")
    msg = client.policy_trial(condition=0, trial_id=1, seed=8)
    assert msg.controller_id == 0, "the checkpoint's policy (id 0) must still be the deployed one"
    _check_equals_rollout(msg, good, experiment, "train", 0, 8)

    # a valid policy from the topic replaces it, observation subset included
    rng = np.random.default_rng(3)
    other = _with(good.params, weights=tuple((W + 0.3 * rng.standard_normal(W.shape), b) for W, b in
                                             good.params.weights))
    client.policies.publish(conversions.policy_params_to_msg(other, 9))
    wait_for(rclpy_node, lambda: client.counter("policies_received") >= 5, TIMEOUT, "the fourth policy")
    msg = client.policy_trial(condition=0, trial_id=2, seed=8)
    assert msg.controller_id == 9
    _check_equals_rollout(msg, NumpyPolicy(other), experiment, "train", 0, 8)


def test_mbpl_eval_graph_matches_in_process_evaluation(tmp_path: Path, experiment_path: Path,
                                                       checkpoint: Path) -> None:
    run_dir = tmp_path / "eval"
    cmd = [sys.executable, "-m", "mbpl_ros.cli", "eval", str(experiment_path), "--policy", str(checkpoint),
           "--graph", "--conditions", "held_out", "--run-dir", str(run_dir)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # this session's isolated graph (tests/ros/conftest.py)
    done = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads((run_dir / "evaluation.json").read_text())
    policy, _ = load_policy_checkpoint(checkpoint)
    oracle = evaluate_in_sim(load_experiment(experiment_path), policy, "held_out")
    np.testing.assert_allclose(result["tip_distance"], oracle.tip_distance, rtol=0, atol=1e-9)
    assert "success:" in done.stdout
