"""Fuzzing the robot side over DDS (issue 8, short version): sim node + sampler as processes, a seeded
stream of malformed controllers, policies, joint states and RunTrial requests from an outside node, and a
safety monitor on the effort topic.

Asserted: no process exits; every bad input is rejected and counted on /diagnostics (exactly: bursts
are sent once the previous ones are counted); no command on the effort topic is non-finite, of the
wrong length or beyond the effort limits; the valid trials run between the attacks each produce
exactly one sample, and the run token keeps foreign controllers out of the store (the trainer's
controller is still served). The long version with node kills and a whole learning run is
tests/e2e/test_fault_campaign.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from fuzz_messages import Robot, bad_inputs, good_controller, good_policy  # noqa: E402
from mbpl_msgs.msg import LinearGaussianController as ControllerMsg  # noqa: E402
from mbpl_msgs.msg import PolicyParameters, TrajectorySample  # noqa: E402
from mbpl_msgs.srv import RunTrial  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.safety_monitor import CommandMonitor  # noqa: E402
from mbpl_ros.sampler_node import CONTROLLERS_QOS, LATCHED_QOS  # noqa: E402
from mbpl_ros.sim_node import COMMAND_QOS, STATE_QOS  # noqa: E402
from mbpl_sim.env import MujocoEnv  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

SEED = int(os.environ.get("MBPL_FUZZ_SEED", "8"))
PER_CLASS = int(os.environ.get("MBPL_FUZZ_PER_CLASS", "6"))
TOKEN = "fuzz-run-token-0123456789abcdef"
TIMEOUT = 30.0


class Attacker:
    """An outside node: publishes on the sampler's topics and calls its service; reads /diagnostics."""

    def __init__(self, node: object, robot: Robot, limits: np.ndarray) -> None:
        self.node, self.robot = node, robot
        self.controllers = node.create_publisher(ControllerMsg, "mbpl/controllers", CONTROLLERS_QOS)
        self.policies = node.create_publisher(PolicyParameters, "mbpl/policy", LATCHED_QOS)
        self.states = node.create_publisher(JointState, "joint_states", STATE_QOS)
        self.run = node.create_client(RunTrial, "mbpl/run_trial")
        self.samples: dict[int, list[TrajectorySample]] = {}
        self.diag: dict[str, str] = {}
        self.monitor = CommandMonitor(limits)
        node.create_subscription(TrajectorySample, "mbpl/samples", self._on_sample, LATCHED_QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        node.create_subscription(Float64MultiArray, "effort_controller/commands",
                                 lambda m: self.monitor.check(m.data), COMMAND_QOS)

    def _on_sample(self, msg: TrajectorySample) -> None:
        self.samples.setdefault(int(msg.trial_id), []).append(msg)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("mbpl_sampler"):
                self.diag = {kv.key: kv.value for kv in status.values}

    def count(self, key: str) -> int:
        return int(self.diag.get(key, -1))

    def call(self, wait_for: object, request: RunTrial.Request) -> RunTrial.Response:
        assert self.run.wait_for_service(timeout_sec=TIMEOUT)
        future = self.run.call_async(request)
        wait_for(self.node, future.done, TIMEOUT, f"the answer to {request}")
        return future.result()


def test_fuzzed_inputs_are_rejected_and_counted_and_no_command_is_unsafe(
    ros_processes, rclpy_node, wait_for, experiment_file: Path
) -> None:
    env = MujocoEnv(load_experiment(experiment_file))
    ros_processes.start("mbpl_ros.sim_node", "sim", {"config": str(experiment_file), "mode": "lockstep"})
    ros_processes.start("mbpl_ros.sampler_node", "sampler",
                        {"config": str(experiment_file), "mode": "lockstep", "diagnostics_period": 0.1,
                         "state_timeout": 5.0, "run_token": TOKEN})
    robot = Robot(env.T, env.dU, env.dX, tuple(env.joint_names), env.num_conditions, TOKEN)
    attacker = Attacker(rclpy_node, robot, env.effort_limits)
    rng = np.random.default_rng(SEED)
    good = [good_controller(robot, rng) for _ in range(env.num_conditions)]
    for m, c in enumerate(good):
        attacker.controllers.publish(conversions.controller_to_msg(c, m, 1 + m, run_token=TOKEN))
    attacker.policies.publish(conversions.policy_params_to_msg(good_policy(robot, rng), 1, run_token=TOKEN))
    wait_for(rclpy_node, lambda: attacker.count("controllers_received") == env.num_conditions
             and attacker.count("policies_received") == 1, TIMEOUT, "the good controllers and policy")
    sent = {"controllers": env.num_conditions, "policies": 1}
    rejected = {"controllers": 0, "policies": 0, "states": 0, "trials": 0}
    trial_ids: list[int] = []

    def valid_trial(kind: str = "lg") -> None:
        tid = 1 + len(trial_ids)
        answer = attacker.call(wait_for, RunTrial.Request(
            condition=tid % env.num_conditions, trial_id=tid, policy_kind=kind, seed=tid, add_noise=True,
            controller_id=1 + tid % env.num_conditions if kind == "lg" else 0, run_token=TOKEN))
        assert answer.accepted, answer.message
        trial_ids.append(tid)
        wait_for(rclpy_node, lambda: tid in attacker.samples, TIMEOUT, f"the sample of trial {tid}")

    classes = bad_inputs(robot)
    n = 0
    for kind, publisher, key in (("controller", attacker.controllers, "controllers"),
                                 ("policy", attacker.policies, "policies")):
        for make in classes[kind].values():
            for _ in range(PER_CLASS):
                n += 1
                publisher.publish(make(rng, 10_000 + n))
            sent[key] += PER_CLASS
            rejected[key] += PER_CLASS
            wait_for(rclpy_node, lambda k=key: attacker.count(f"{k}_received") == sent[k], TIMEOUT,
                     f"the sampler to count every {kind}")
            valid_trial("lg" if kind == "controller" else "policy")
    for make in classes["state"].values():
        for _ in range(PER_CLASS):  # keep-last-1 topic: one at a time, each counted before the next
            n += 1
            attacker.states.publish(make(rng, n))
            rejected["states"] += 1
            wait_for(rclpy_node, lambda: attacker.count("states_rejected") == rejected["states"], TIMEOUT,
                     "the bad joint state to be counted")
        valid_trial()
    for make in classes["trial"].values():
        for _ in range(PER_CLASS):
            n += 1
            answer = attacker.call(wait_for, make(rng, n))
            assert not answer.accepted, answer.message
            rejected["trials"] += 1
        valid_trial()
    foreign = PER_CLASS * 2 + PER_CLASS * len([c for c in classes["trial"] if "token" in c])

    def counted() -> bool:
        return (attacker.count("controllers_rejected") == rejected["controllers"]
                and attacker.count("policies_rejected") == rejected["policies"]
                and attacker.count("states_rejected") == rejected["states"]
                and attacker.count("trials_refused") == rejected["trials"]
                and attacker.count("tokens_rejected") == foreign
                and attacker.count("trials_completed") + attacker.count("trials_aborted") == len(trial_ids))

    wait_for(rclpy_node, counted, TIMEOUT, f"the counts {rejected}, {foreign} foreign tokens, "
             f"{len(trial_ids)} trials; last seen {attacker.diag}")
    ros_processes.check_alive()
    assert attacker.count("trials_aborted") == 0, attacker.diag.get("last_abort_reason")
    assert {t: len(s) for t, s in attacker.samples.items()} == dict.fromkeys(trial_ids, 1), "lost/duplicated"
    monitor = attacker.monitor  # commands and samples travel on different topics: wait for the commands
    wait_for(rclpy_node, lambda: monitor.commands_seen >= len(trial_ids) * (env.T - 1), TIMEOUT,
             "every command of the valid trials on the effort topic")
    assert monitor.unsafe_commands == 0, monitor.last_unsafe
    print(f"\nfuzz: {n} bad inputs in {sum(len(c) for c in classes.values())} classes, all rejected; "
          f"{len(trial_ids)} valid trials; {monitor.commands_seen} commands, 0 unsafe")
