"""GPS mode of the trainer without ROS: GPSHooks in TrainerLoop over an in-process graph (MujocoEnv).

Oracles, in both S-step orders: the S-step equals an independent train_policy run on
build_policy_targets of the same controllers (the sampled ones before the C-step, the new ones after
it) and samples; the KL references are the newest policy's linearisations at the samples; a policy
trial "through the graph" equals an in-process rollout of the same NumpyPolicy; a run that crashes
after an S-step and is resumed ends with exactly the policy of an uninterrupted run, without training
that S-step again; a step that fails against a reference is retaken as LQR-FLM.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("rclpy")

from mbpl_msgs.msg import TrajectorySample  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

from mbpl_core.config import ConfigError, from_dict  # noqa: E402
from mbpl_core.containers import LinearDynamics, LinearGaussianController, SampleBatch  # noqa: E402
from mbpl_core.costs import CostConfig, build_cost  # noqa: E402
from mbpl_core.guided.mdgps import GaussianMLPPolicy, build_policy_targets, policy_to_params, train_policy  # noqa: E402
from mbpl_core.local.lqr_flm import AlgorithmConfig  # noqa: E402
from mbpl_core.noise import generate_noise  # noqa: E402
from mbpl_core.policy import GPSConfig, NumpyPolicy, PolicyParams, linearize_policy_jacobian  # noqa: E402
from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.gps_hooks import GPSHooks, build_gps_hooks, policy_id, tip_distances  # noqa: E402
from mbpl_ros.step_logic import fit, fitting_conditions, lqr_conditions, lqr_step  # noqa: E402
from mbpl_ros.trainer_logic import (  # noqa: E402
    ControllerUpdate,
    LoopSettings,
    StepFailedError,
    TrainerLoop,
    TrialFailedError,
    TrialRequest,
    TrialResult,
    controller_id,
)
from mbpl_sim.env import MujocoEnv  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

pytestmark = pytest.mark.sim

ALGO = from_dict(AlgorithmConfig, {"samples_per_condition": 3, "init": {"init_var": 0.03},
                                   "dynamics": {"max_clusters": 4, "min_samples_per_cluster": 20}})
COST = from_dict(CostConfig, {"action_weight": 5e-3, "ee": {}})
GPS = GPSConfig(hidden_sizes=(16,), iterations=60, batch_size=32, device="cpu", seed=4,
                s_step_order="after_c_step")
ORDERS = ["before_c_step", "after_c_step"]


class CrashError(RuntimeError):
    """Stands in for kill -9 of the trainer."""


class InProcessGraph:
    """Sampler (MujocoEnv, LG controllers and the deployed policy), fitting and iLQR in one process."""

    def __init__(self, env: MujocoEnv, run_dir: Path) -> None:
        self.env, M = env, env.num_conditions
        self.cost = build_cost(COST, env.layout, env.dU)
        self.fitting = fitting_conditions(run_dir / "fitting", M, ALGO.dynamics)
        self.lqr = lqr_conditions(run_dir / "ilqr", [env.x0(m) for m in range(M)], env.layout, env.dU, env.T,
                                  env.dt, ALGO.init, ALGO.kl)
        self.controllers = {controller_id(0 if c.last_iteration is None else c.last_iteration + 1, m):
                            c.state.controller for m, c in enumerate(self.lqr)}
        self.policy: tuple[int, NumpyPolicy] | None = None
        self.published: list[int] = []
        self.references: list[tuple[int, int, LinearGaussianController | None]] = []
        self.steps: list[tuple[int, int, LinearDynamics, float | None]] = []
        self.policy_trials: list[TrialRequest] = []
        self.crash_in_policy_trial = False

    def publish_policy(self, params: PolicyParams, pid: int) -> None:
        # through the message, as the sampler receives it
        msg = deserialize_message(serialize_message(conversions.policy_params_to_msg(params, pid)),
                                  conversions.PolicyParametersMsg)
        self.policy = (pid, NumpyPolicy(conversions.msg_to_policy_params(msg)))
        self.published.append(pid)

    def run_trial(self, request: TrialRequest) -> TrialResult | None:
        if request.policy_kind == "policy":
            if self.crash_in_policy_trial:
                raise CrashError("trainer killed during the policy evaluation")
            assert self.policy is not None
            self.policy_trials.append(request)
            run_id, policy = self.policy
        else:
            run_id, policy = request.controller_id, self.controllers[request.controller_id]
        noise = None
        if request.add_noise:
            noise = generate_noise(self.env.T, self.env.dU, np.random.default_rng(request.seed), ALGO.noise)
        batch = self.env.sample(policy, request.condition, noise)
        meta = conversions.SampleMetadata(request.condition, request.trial_id, run_id, request.policy_kind)
        return self.decode(serialize_message(conversions.sample_to_msg(batch, meta)))

    def controller(self, cid: int, timeout: float) -> LinearGaussianController | None:
        return self.controllers.get(cid)

    def decode(self, raw: bytes) -> TrialResult:
        batch, meta = conversions.msg_to_sample(deserialize_message(raw, TrajectorySample))
        return TrialResult(raw, batch, meta)

    def fit_dynamics(self, condition: int, iteration: int, samples: list[TrialResult]) -> LinearDynamics:
        return fit(self.fitting[condition], iteration, _batch(samples))[0]

    def decode_dynamics(self, dynamics: LinearDynamics) -> LinearDynamics:
        return dynamics

    def update_controller(self, condition: int, iteration: int, dynamics: LinearDynamics,
                          samples: list[TrialResult], reference: LinearGaussianController | None,
                          step_mult: float | None = None) -> ControllerUpdate:
        self.references.append((iteration, condition, reference))
        self.steps.append((iteration, condition, dynamics, step_mult))
        (controller, info), _ = lqr_step(self.lqr[condition], iteration, dynamics, _batch(samples), self.cost,
                                         reference, step_mult)
        cid = controller_id(iteration + 1, condition)
        self.controllers[cid] = controller
        return ControllerUpdate(cid, info.eta, info.kl, info.epsilon, info.step_mult, info.expected_cost,
                                controller)


def _batch(samples: list[TrialResult]) -> SampleBatch:
    return SampleBatch.concatenate([s.batch for s in samples])


@pytest.fixture(scope="module")
def env(experiment_file: Path) -> MujocoEnv:
    return MujocoEnv(load_experiment(experiment_file))


def _run(run_dir: Path, env: MujocoEnv, graph: InProcessGraph, iterations: int = 2,
         log: list[str] | None = None, config: GPSConfig = GPS) -> tuple[TrainerLoop, GPSHooks]:
    sink = log if log is not None else []
    # the training set doubles as the "held-out" one: in-process and graph evaluation must then agree
    hooks = GPSHooks(run_dir, config, env.num_conditions, env.layout, env.dU, graph, threshold=0.02,
                     held_out_env=env, max_attempts=2, log=sink.append, cost=graph.cost, kl=ALGO.kl)
    settings = LoopSettings(env.num_conditions, iterations, ALGO.samples_per_condition, seed=3)
    loop = TrainerLoop(run_dir, settings, graph, graph.cost, env.layout, hooks, log=sink.append)
    loop.run()
    return loop, hooks


def _params_equal(a: PolicyParams, b: PolicyParams) -> None:
    for (Wa, ba), (Wb, bb) in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(Wa, Wb)
        np.testing.assert_array_equal(ba, bb)
    for name in ("obs_mean", "obs_std", "action_covar"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("order", ORDERS)
def test_mdgps_iterations_train_publish_linearise_and_evaluate(tmp_path: Path, env: MujocoEnv,
                                                               order: str) -> None:
    import torch

    config = replace(GPS, s_step_order=order)
    graph = InProcessGraph(env, tmp_path)
    loop, hooks = _run(tmp_path, env, graph, config=config)
    M, before = env.num_conditions, order == "before_c_step"
    assert graph.published == [policy_id(0), policy_id(1)] == [1, 2]
    store = loop.store
    batches0 = [_batch([graph.decode(raw) for raw in store.samples(0, m).values()]) for m in range(M)]
    # S-step oracle: the untrained policy trained independently on the targets of the same controllers
    regressed = [graph.controllers[controller_id(0 if before else 1, m)] for m in range(M)]
    oracle = GaussianMLPPolicy.from_config(config, env.dX, env.dU)
    targets = build_policy_targets(regressed, batches0, oracle.obs_indices.numpy())
    train_policy(oracle, targets.obs, targets.target_mu, targets.target_prec, config,
                 torch.Generator().manual_seed(config.seed))
    hooks.load_s_step(0)
    _params_equal(policy_to_params(hooks.policy), policy_to_params(oracle))

    # the references: the S-step-0 policy linearised at iteration 0's samples (before) / 1's (after)
    i = 0 if before else 1
    batches = [_batch([graph.decode(raw) for raw in store.samples(i, m).values()]) for m in range(M)]
    refs = [r for it, _, r in graph.references if it == i]
    for batch, ref in zip(batches, refs, strict=True):
        want = linearize_policy_jacobian(NumpyPolicy(policy_to_params(oracle)), batch.X)
        assert ref is not None
        np.testing.assert_allclose(ref.K, want.K, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ref.pol_covar, want.pol_covar, rtol=1e-12, atol=1e-12)

    history = loop.state.history
    assert [r["policy_id"] for r in history] == [1, 2]
    assert history[0]["reference_used"] == [before] * M and history[1]["reference_used"] == [True] * M
    assert all(r["s_step"]["loss_after"] < r["s_step"]["loss_before"] for r in history)
    for r in history:  # a policy trial through the graph = an in-process rollout of the same policy
        np.testing.assert_allclose(r["policy_tip_distance"], r["policy_held_out_tip_distance"], atol=1e-12)
        assert r["policy_success"] == [d < 0.02 for d in r["policy_tip_distance"]]
    assert {(q.policy_kind, q.add_noise, q.controller_id) for q in graph.policy_trials} == {
        ("policy", False, 1), ("policy", False, 2)}
    hooks.load_s_step(1)
    final = NumpyPolicy(policy_to_params(hooks.policy))
    rollouts = [env.sample(final, m, None) for m in range(M)]
    np.testing.assert_allclose(history[-1]["policy_tip_distance"], tip_distances(env.layout, rollouts),
                               atol=1e-12)
    from mbpl_core.policy import load_policy_checkpoint

    saved, _ = load_policy_checkpoint(tmp_path / "policy")
    _params_equal(saved.params, policy_to_params(hooks.policy))


@pytest.mark.parametrize("order", ORDERS)
def test_a_run_killed_after_an_s_step_resumes_to_the_same_policy(tmp_path: Path, env: MujocoEnv,
                                                                 order: str) -> None:
    # the augmentation rng and the averaging across S-steps resume too
    config = replace(GPS, s_step_order=order, augment_copies=2, policy_ema=0.5, average_last=10)
    _, reference = _run(tmp_path / "ref", env, InProcessGraph(env, tmp_path / "ref"), config=config)

    run_dir = tmp_path / "crashed"
    graph = InProcessGraph(env, run_dir)
    graph.crash_in_policy_trial = True  # dies after S-step 0 is saved, before iteration 0 is checkpointed
    with pytest.raises(CrashError):
        _run(run_dir, env, graph, config=config)
    hooks = GPSHooks(run_dir, config, env.num_conditions, env.layout, env.dU, graph, 0.02, cost=graph.cost,
                     kl=ALGO.kl)
    assert hooks.latest_s_step() == 0
    log: list[str] = []
    resumed = InProcessGraph(env, run_dir)
    loop, hooks = _run(run_dir, env, resumed, log=log, config=config)
    assert any("S-step of iteration 0 already done" for line in log)
    assert resumed.published == [1, 1, 2]  # the saved policy is re-sent at start for a restarted sampler
    _params_equal(policy_to_params(hooks.policy), policy_to_params(reference.policy))
    assert [r["policy_id"] for r in loop.state.history] == [1, 2]


def test_a_failed_step_against_the_reference_is_retaken_as_lqr_flm(tmp_path: Path, env: MujocoEnv) -> None:
    graph = InProcessGraph(env, tmp_path)
    original = graph.update_controller

    def refuse_references(condition: int, iteration: int, dynamics: LinearDynamics,
                          samples: list[TrialResult], reference: LinearGaussianController | None,
                          step_mult: float | None = None) -> ControllerUpdate:
        if reference is not None and condition == 0:
            raise StepFailedError("update_controller(0, 1) failed: no eta meets the KL bound")
        return original(condition, iteration, dynamics, samples, reference, step_mult)

    graph.update_controller = refuse_references  # type: ignore[method-assign]
    loop, _ = _run(tmp_path, env, graph)
    assert loop.state.history[1]["reference_fallback"] == [True] + [False] * (env.num_conditions - 1)
    assert [r is None for i, m, r in graph.references if (i, m) == (1, 0)] == [True]


def test_policy_trials_wait_for_the_published_policy(tmp_path: Path, env: MujocoEnv) -> None:
    graph = InProcessGraph(env, tmp_path)
    hooks = GPSHooks(tmp_path, GPS, env.num_conditions, env.layout, env.dU, graph, 0.02, max_attempts=3,
                     log=lambda _: None, cost=graph.cost, kl=ALGO.kl)
    graph.publish_policy(policy_to_params(hooks.policy), 1)
    stale = iter([True, True])

    def late_delivery(request: TrialRequest) -> TrialResult | None:
        if next(stale, False):  # the sampler still runs policy 1 for the first two attempts
            return InProcessGraph.run_trial(graph, request)
        graph.policy = (2, graph.policy[1])  # type: ignore[index]
        return InProcessGraph.run_trial(graph, request)

    graph.run_trial = late_delivery  # type: ignore[method-assign]
    results = hooks.evaluate_in_graph(0, 2)
    assert [r.meta.controller_id for r in results] == [2] * env.num_conditions
    first = [q.trial_id for q in graph.policy_trials[:3]]
    assert first == sorted(set(first))  # each attempt is a new trial
    graph.policy = (1, graph.policy[1])  # type: ignore[index]
    graph.run_trial = lambda request: InProcessGraph.run_trial(graph, request)  # type: ignore[method-assign]
    with pytest.raises(TrialFailedError, match="ran policy 1, expected policy 5"):
        hooks.evaluate_in_graph(0, 5)


def test_configuration(tmp_path: Path, experiment_file: Path, env: MujocoEnv) -> None:
    experiment = load_experiment(experiment_file)
    graph = InProcessGraph(env, tmp_path)
    def build(exp):  # noqa: ANN001, ANN202
        return build_gps_hooks(exp, tmp_path, graph, graph.cost, ALGO.kl)

    assert build(experiment) is None  # lqr_flm: no hooks
    hooks = build(replace(experiment, method="mdgps", gps={"hidden_sizes": [8]}))
    assert isinstance(hooks, GPSHooks) and hooks.held_out_env is None and hooks.num_conditions == 2
    with pytest.raises(ConfigError, match="sample_on_policy"):
        build(replace(experiment, method="mdgps", gps={"sample_on_policy": True}))
    with pytest.raises(ConfigError, match="gps"):
        build(replace(experiment, method="mdgps", gps={"hidden_size": [8]}))
    with pytest.raises(ValueError):
        policy_id(-1)


def _iteration_batches(loop: TrainerLoop, graph: InProcessGraph, i: int) -> list[SampleBatch]:
    return [_batch([graph.decode(raw) for raw in loop.store.samples(i, m).values()])
            for m in range(graph.env.num_conditions)]


def test_the_step_multipliers_follow_the_mdgps_rule(tmp_path: Path, env: MujocoEnv) -> None:
    """Oracle: GPS's rule written out on the run's own data (global rule, sampled-cost estimate)."""
    from mbpl_core.costs import quadratic_cost_model
    from mbpl_core.local.traj_opt import total_expected_cost

    config = replace(GPS, s_step_order="before_c_step", step_rule="global", step_estimate="mc")
    graph = InProcessGraph(env, tmp_path)
    loop, _ = _run(tmp_path, env, graph, iterations=3, config=config)
    M, kl, history = env.num_conditions, ALGO.kl, loop.state.history
    sent = {(i, m): (dyn, s) for i, m, dyn, s in graph.steps}
    assert [sent[(0, m)][1] for m in range(M)] == [1.0] * M  # nothing to compare with yet
    for i in (1, 2):
        old, new = _iteration_batches(loop, graph, i - 1), _iteration_batches(loop, graph, i)
        previous, predicted, actual = [], [], []
        for m in range(M):
            costs_old, quad_old = quadratic_cost_model(graph.cost, old[m])
            previous.append(np.mean(costs_old.sum(axis=1)))
            controller = graph.controllers[controller_id(i, m)]  # what the C-step of i - 1 produced
            predicted.append(total_expected_cost(controller, sent[(i - 1, m)][0], quad_old))
            actual.append(np.mean(quadratic_cost_model(graph.cost, new[m])[0].sum(axis=1)))
        prev, pred, act = np.mean(previous), np.mean(predicted), np.mean(actual)
        mult = np.clip((prev - pred) / (2.0 * max(1e-4, (prev - pred) - (prev - act))), 0.1, 5.0)
        for m in range(M):
            want = np.clip(history[i - 1]["step_mult"][m] * mult, kl.min_step_mult, kl.max_step_mult)
            assert sent[(i, m)][1] == pytest.approx(want, rel=1e-12)
            # the iLQR side took the step with it: epsilon = kl_step * step_mult * T
            assert history[i]["step_mult"][m] == pytest.approx(want, rel=1e-12)
            assert history[i]["epsilon"][m] == pytest.approx(kl.kl_step * want * env.T, rel=1e-12)


def test_select_best_deploys_the_snapshot_of_lowest_training_cost(tmp_path: Path, env: MujocoEnv) -> None:
    from mbpl_core.costs import quadratic_cost_model
    from mbpl_core.policy import load_policy_checkpoint

    graph = InProcessGraph(env, tmp_path)
    loop, hooks = _run(tmp_path, env, graph, iterations=3, config=replace(GPS, select_best=True))
    history = loop.state.history
    snapshots = []
    for i, record in enumerate(history):  # the training cost: noiseless rollouts of S-step i's policy
        hooks.load_s_step(i)
        snapshots.append(policy_to_params(hooks.policy))
        rollouts = [env.sample(NumpyPolicy(snapshots[i]), m, None) for m in range(env.num_conditions)]
        want = [float(quadratic_cost_model(graph.cost, b)[0].sum()) for b in rollouts]
        np.testing.assert_allclose(record["policy_train_cost"], want, rtol=1e-12)
    scores = [np.mean(r["policy_train_cost"]) for r in history]
    for i in range(len(history)):
        assert history[i]["deployed_policy_iteration"] == int(np.argmin(scores[: i + 1]))
    best = int(np.argmin(scores))
    saved, _ = load_policy_checkpoint(tmp_path / "policy")
    _params_equal(saved.params, snapshots[best])
    # the training set doubles as the held-out one here: the deployed figures are those of its iteration
    np.testing.assert_allclose(history[-1]["deployed_policy_held_out_tip_distance"],
                               history[best]["policy_held_out_tip_distance"], atol=1e-12)
    # a later, worse S-step (its checkpoint written as the newest) leaves the best one deployed
    from mbpl_core.policy import save_numpy_policy

    worst = int(np.argmax(scores))
    save_numpy_policy(tmp_path / "policy", snapshots[worst], hooks.config)
    fields = hooks.deploy(len(history), max(scores) + 1.0, {})
    saved, _ = load_policy_checkpoint(tmp_path / "policy")
    _params_equal(saved.params, snapshots[best])
    assert fields["deployed_policy_iteration"] == best
    np.testing.assert_allclose(fields["deployed_policy_held_out_tip_distance"],
                               history[best]["policy_held_out_tip_distance"], atol=1e-12)


def test_select_on_validation_scores_the_validation_rollouts(tmp_path: Path, env: MujocoEnv) -> None:
    from mbpl_core.costs import quadratic_cost_model

    config = replace(GPS, select_best=True, select_on="validation")
    graph = InProcessGraph(env, tmp_path)
    with pytest.raises(ConfigError, match="validation"):
        GPSHooks(tmp_path, config, env.num_conditions, env.layout, env.dU, graph, 0.02, cost=graph.cost,
                 kl=ALGO.kl)
    sink: list[str] = []
    # the training set stands in for the validation set: its rollouts are known independently
    hooks = GPSHooks(tmp_path, config, env.num_conditions, env.layout, env.dU, graph, 0.02,
                     log=sink.append, cost=graph.cost, kl=ALGO.kl, validation_env=env)
    settings = LoopSettings(env.num_conditions, 3, ALGO.samples_per_condition, seed=3)
    loop = TrainerLoop(tmp_path, settings, graph, graph.cost, env.layout, hooks, log=sink.append)
    history = loop.run().history
    for i, record in enumerate(history):
        hooks.load_s_step(i)
        policy = NumpyPolicy(policy_to_params(hooks.policy))
        want = [float(quadratic_cost_model(graph.cost, env.sample(policy, m, None))[0].sum())
                for m in range(env.num_conditions)]
        np.testing.assert_allclose(record["policy_validation_cost"], want, rtol=1e-12)
        assert len(record["policy_validation_success"]) == env.num_conditions
    scores = [np.mean(r["policy_validation_cost"]) for r in history]
    assert history[-1]["deployed_policy_iteration"] == int(np.argmin(scores))
