"""Fitting and iLQR nodes as processes over DDS: results match the in-process core, repeats are idempotent,
a restarted node resumes from its persisted state, bad requests are refused with a reason.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim]

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")

from mbpl_msgs.msg import LinearGaussianController as ControllerMsg  # noqa: E402
from mbpl_msgs.srv import FitDynamics, UpdateController  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from mbpl_core.config import ConfigError  # noqa: E402
from mbpl_core.containers import LinearGaussianController, SampleBatch  # noqa: E402
from mbpl_core.costs import build_cost, quadratic_cost_model  # noqa: E402
from mbpl_core.local.dynamics import DynamicsFitter  # noqa: E402
from mbpl_core.local.init import initial_controller  # noqa: E402
from mbpl_core.local.traj_opt import ConditionOptimizer  # noqa: E402
from mbpl_core.noise import generate_noise  # noqa: E402
from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.fitting_node import latched_qos  # noqa: E402
from mbpl_ros.node_params import FittingNodeParams, IlqrNodeParams, TrainerNodeParams, load_settings  # noqa: E402
from mbpl_ros.params import declare_parameters, schema_defaults  # noqa: E402
from mbpl_sim.env import MujocoEnv  # noqa: E402

TIMEOUT = 60.0
EXTRA = """cost: {action_weight: 0.005, ee: {l2: 10.0}}
algorithm:
  samples_per_condition: 3
  init: {init_var: 0.03}
  dynamics: {max_clusters: 4, min_samples_per_cluster: 20}
"""


@pytest.fixture(scope="module")
def experiment(experiment_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("exp") / "reacher2_nodes.yaml"
    path.write_text(experiment_file.read_text() + EXTRA)
    return path


def _call(node: object, wait_for: object, client: object, request: object) -> object:
    """The service's first answer within TIMEOUT. The request is sent again every 3 s while none came
    (as the trainer does), the earlier ones left pending: a request sent right after discovery (the
    server's answer route may not be matched yet) or right after a server restart (the client may still
    see the dead server's endpoint) can be lost, and a slow answer is still taken. Every request these
    tests send can be answered twice without harm."""
    wait_for(node, lambda: client.service_is_ready(), TIMEOUT, f"service {client.srv_name}")
    futures = []
    for _ in range(int(TIMEOUT / 3)):
        futures.append(client.call_async(request))
        try:
            wait_for(node, lambda: any(f.done() for f in futures), 3.0, f"the answer of {client.srv_name}")
        except pytest.fail.Exception:
            continue
        answer = next(f for f in futures if f.done()).result()
        for f in futures:
            if not f.done():
                client.remove_pending_request(f)
        return answer
    pytest.fail(f"no answer from {client.srv_name} in {TIMEOUT:g} s")


def _samples(env: MujocoEnv, ctrl: LinearGaussianController, m: int,
             n: int) -> tuple[SampleBatch, list[object]]:
    rng = np.random.default_rng(m)
    runs = [env.sample(ctrl, m, generate_noise(env.T, env.dU, rng)) for _ in range(n)]
    batch = SampleBatch.concatenate(runs)
    msgs = [conversions.sample_to_msg(batch.select([k]), conversions.SampleMetadata(m, k, 1 + m))
            for k in range(n)]
    return batch, msgs


def test_fit_and_lqr_step_over_dds_match_the_core_and_survive_a_restart(
    ros_processes, rclpy_node, wait_for, experiment: Path, tmp_path: Path
) -> None:
    params = {"config": str(experiment), "run_dir": str(tmp_path / "run")}
    fitting = ros_processes.start("mbpl_ros.fitting_node", "fitting", params)
    ros_processes.start("mbpl_ros.ilqr_node", "ilqr", params)
    controllers: dict[int, object] = {}
    rclpy_node.create_subscription(
        ControllerMsg, "mbpl/controllers", lambda msg: controllers.__setitem__(msg.controller_id, msg),
        latched_qos(2))
    fit_client = rclpy_node.create_client(FitDynamics, "mbpl/fit_dynamics")
    lqr_client = rclpy_node.create_client(UpdateController, "mbpl/update_controller")
    wait_for(rclpy_node, lambda: {1, 2} <= set(controllers), TIMEOUT, "the initial controllers 1 and 2")

    settings = load_settings(str(experiment), "")
    env = MujocoEnv(settings.experiment)
    init = initial_controller(settings.algorithm.init, env.layout, env.dU, env.T, env.dt, env.x0(1))
    np.testing.assert_allclose(conversions.msg_to_controller(controllers[2]).K, init.K)

    batch, msgs = _samples(env, init, 1, 3)
    fit_req = FitDynamics.Request(condition=1, iteration=0, samples=msgs)
    first = _call(rclpy_node, wait_for, fit_client, fit_req)
    assert first.success, first.message
    dyn = conversions.msg_to_dynamics(first.dynamics)
    want = DynamicsFitter(settings.algorithm.dynamics).update(batch)
    np.testing.assert_allclose(dyn.Fm, want.Fm, rtol=1e-6, atol=1e-8)

    fitting.send_signal(signal.SIGKILL)  # a restarted fitting node answers the repeat from its pickle
    fitting.wait()
    ros_processes.procs = [(p, log) for p, log in ros_processes.procs if p is not fitting]
    ros_processes.start("mbpl_ros.fitting_node", "fitting", params)
    again = _call(rclpy_node, wait_for, fit_client, fit_req)
    assert again.success and "stored" in again.message
    np.testing.assert_array_equal(np.asarray(again.dynamics.fm), np.asarray(first.dynamics.fm))

    lqr_req = UpdateController.Request(condition=1, iteration=0, dynamics=first.dynamics, samples=msgs)
    step = _call(rclpy_node, wait_for, lqr_client, lqr_req)
    assert step.success, step.message
    assert step.controller.controller_id == 1002
    optimizer = ConditionOptimizer(init, settings.algorithm.kl)
    _, quad = quadratic_cost_model(build_cost(settings.cost, env.layout, env.dU), batch)
    new, info = optimizer.update(dyn, quad)
    np.testing.assert_allclose(conversions.msg_to_controller(step.controller).K, new.K, rtol=1e-6, atol=1e-8)
    assert step.kl == pytest.approx(info.kl, rel=1e-6) and step.epsilon == pytest.approx(info.epsilon)
    wait_for(rclpy_node, lambda: 1002 in controllers, TIMEOUT, "controller 1002 on mbpl/controllers")
    repeat = _call(rclpy_node, wait_for, lqr_client, lqr_req)
    assert repeat.success and repeat.eta == step.eta and "stored" in repeat.message

    # MDGPS: the trainer decides the step multiplier; the node takes the step with it (no own rule)
    init0 = initial_controller(settings.algorithm.init, env.layout, env.dU, env.T, env.dt, env.x0(0))
    batch0, msgs0 = _samples(env, init0, 0, 3)
    dyn0 = DynamicsFitter(settings.algorithm.dynamics).update(batch0)
    dyn0_msg = conversions.dynamics_to_msg(dyn0, 0, 0)
    given = UpdateController.Request(condition=0, iteration=0, dynamics=dyn0_msg, samples=msgs0,
                                     step_mult=-1.0)
    refused = _call(rclpy_node, wait_for, lqr_client, given)
    assert not refused.success and "step_mult" in refused.message
    given.step_mult = 0.4
    scaled = _call(rclpy_node, wait_for, lqr_client, given)
    assert scaled.success, scaled.message
    optimizer = ConditionOptimizer(init0, settings.algorithm.kl)
    optimizer.step_mult = 0.4
    _, quad0 = quadratic_cost_model(build_cost(settings.cost, env.layout, env.dU), batch0)
    new0, info0 = optimizer.update(dyn0, quad0, adapt_step=False)
    assert scaled.step_mult == pytest.approx(0.4) and scaled.epsilon == pytest.approx(info0.epsilon)
    assert scaled.epsilon == pytest.approx(settings.algorithm.kl.kl_step * 0.4 * env.T)
    np.testing.assert_allclose(conversions.msg_to_controller(scaled.controller).K, new0.K, rtol=1e-6,
                               atol=1e-8)


def test_bad_requests_are_refused_with_a_reason(
    ros_processes, rclpy_node, wait_for, experiment: Path, tmp_path: Path
) -> None:
    params = {"config": str(experiment), "run_dir": str(tmp_path / "run")}
    ros_processes.start("mbpl_ros.fitting_node", "fitting", params)
    client = rclpy_node.create_client(FitDynamics, "mbpl/fit_dynamics")
    empty = _call(rclpy_node, wait_for, client, FitDynamics.Request(condition=0, iteration=0, samples=[]))
    assert not empty.success and "no samples" in empty.message
    bad = conversions.sample_to_msg(SampleBatch(np.ones((1, 5, 3)), np.ones((1, 5, 1))),
                                    conversions.SampleMetadata(0, 1))
    bad.x = bad.x[:-1]
    short = _call(rclpy_node, wait_for, client, FitDynamics.Request(condition=0, iteration=0, samples=[bad]))
    assert not short.success and "TrajectorySample.x" in short.message
    far = _call(rclpy_node, wait_for, client, FitDynamics.Request(condition=7, iteration=0, samples=[bad]))
    assert not far.success and "condition 7 out of range" in far.message


@pytest.mark.parametrize("schema", [FittingNodeParams, IlqrNodeParams, TrainerNodeParams])
def test_declared_parameters_match_the_schema(rclpy_node, experiment: Path, schema: type) -> None:
    overrides = [Parameter("config", value=str(experiment)), Parameter("run_dir", value="/tmp/x")]
    node = rclpy.create_node("schema_check", context=rclpy_node.context, parameter_overrides=overrides)
    params = declare_parameters(node, schema)
    assert set(schema_defaults(schema)) <= set(node._parameters)
    for name in schema_defaults(schema):
        assert node.describe_parameter(name).description, f"{name} has no description"
    assert params == schema(config=str(experiment), run_dir="/tmp/x")
    node.destroy_node()
    bad = rclpy.create_node("schema_bad", context=rclpy_node.context)
    with pytest.raises(ConfigError, match="'config'"):
        declare_parameters(bad, schema)
    bad.destroy_node()
