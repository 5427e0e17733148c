"""The trainer's loop for sac, mbpo and bptt (:mod:`mbpl_ros.learner_trainer`) without ROS processes.

The graph in one process: the trials run in the MuJoCo env with what the sampler would run — the policy
decoded from its PolicyParameters message and built by the sampler's own ``build_numpy_policy``, the
sampler's noise (``trial_noise`` from the request's seed) for exploring trials, its ``RandomEfforts`` for
random ones — and travel as TrajectorySample bytes.

Oracles: the step accounting of ``mbpl train`` (env_steps = every step of every trial; the first
learning_starts steps random; SAC's update count = gradient_steps per step past learning_starts); the
replay buffer holds exactly the recorded transitions, in SB3's scaled actions; every policy trial ran
the exploring policy published for it, with noise; every trial is in the bags once; a trainer crashed
mid-run and started again loses no recorded trial, runs only the missing ones, and ends with the same
history as the uninterrupted run (the learner is re-derived from the bags deterministically).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("mbpl_msgs.msg")
pytest.importorskip("stable_baselines3")

from mbpl_msgs.msg import TrajectorySample  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

from mbpl_core.costs import build_cost  # noqa: E402
from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.learner_trainer import (  # noqa: E402
    LEARNERS,
    LearnerLoopSettings,
    LearnerTrainerLoop,
    policy_id,
)
from mbpl_ros.node_params import load_settings  # noqa: E402
from mbpl_ros.plan_source import RandomEfforts  # noqa: E402
from mbpl_ros.recording import SampleStore  # noqa: E402
from mbpl_ros.sampler_logic import RobotSetup, build_numpy_policy, trial_noise  # noqa: E402
from mbpl_ros.trainer_logic import TrialRequest, TrialResult, load_state  # noqa: E402
from mbpl_sim.env import MujocoEnv  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

T, M = 20, 2  # the test experiment (tests/ros/conftest.py)
TINY = {
    "sac": {"iterations": 3, "steps_per_iteration": 2 * T, "learning_starts": T, "gradient_steps": 2,
            "agent": {"hidden_sizes": [16, 16], "batch_size": 16, "buffer_size": 1000}},
    "mbpo": {"iterations": 3, "steps_per_iteration": 2 * T, "initial_random_steps": 2 * T,
             "model_train_every": T, "rollout_every": 10, "rollout_batch_size": 20, "updates_per_step": 2,
             "rollout_schedule": [1, 2, 1, 3], "model": {"members": 3, "elites": 2, "hidden": [16],
                                                          "max_epochs": 3, "device": "cpu"},
             "agent": {"hidden_sizes": [16, 16], "batch_size": 16, "buffer_size": 1000}},
    "bptt": {"iterations": 2, "gradient_steps": 5, "batch_size": 8, "hidden_sizes": [16], "horizon": 3,
             "model": {"members": 2, "elites": 2, "hidden": [16], "max_epochs": 3, "device": "cpu"}},
}


class CrashError(RuntimeError):
    """Stands in for SIGKILL of the trainer."""


class InProcessGraph:
    """Sampler + sim in one process (module docstring); counts trials, may crash at the n-th one."""

    def __init__(self, experiment, crash_at: int | None = None) -> None:
        self.env = MujocoEnv(experiment)
        self.setup = RobotSetup.from_experiment(experiment)
        self.crash_at, self.trials, self.published = crash_at, 0, 0
        self.policy: tuple[int, object] | None = None
        self.requests: list[TrialRequest] = []

    def publish_policy(self, params, pid: int) -> None:
        self.published += 1
        msg = conversions.policy_params_to_msg(params, pid)
        self.policy = (pid, build_numpy_policy(conversions.msg_to_policy_params(msg), self.setup))

    def run_trial(self, request: TrialRequest) -> TrialResult | None:
        self.trials += 1
        if self.trials == self.crash_at:
            raise CrashError(f"crash at trial {self.trials}")
        self.requests.append(request)
        noise = trial_noise(request.seed, T, self.env.dU, self.setup.noise) if request.add_noise else None
        if request.policy_kind == "random":
            source, ran = RandomEfforts(request.seed, T, self.setup.effort_limits), 0
        else:
            assert self.policy is not None
            ran, source = self.policy
        batch = self.env.sample(source, request.condition, noise)
        meta = conversions.SampleMetadata(request.condition, request.trial_id, ran, request.policy_kind,
                                          seed=request.seed, add_noise=request.add_noise)
        return self.decode(serialize_message(conversions.sample_to_msg(batch, meta)))

    def decode(self, raw: bytes) -> TrialResult:
        batch, meta = conversions.msg_to_sample(deserialize_message(raw, TrajectorySample))
        return TrialResult(raw, batch, meta)


def _experiment(experiment_file: Path, tmp_path: Path, method: str):
    import yaml

    raw = yaml.safe_load(experiment_file.read_text())
    raw.update(method=method, **{method: TINY[method]})
    raw["task"]["held_out"] = {"positions": [[0.2, 0.2, 0.1]]}
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_experiment(path), path


def _loop(run_dir: Path, experiment, path: Path, graph: InProcessGraph) -> LearnerTrainerLoop:
    from mbpl_core.policy import NumpyPolicy
    from mbpl_sim.training import tip_distances

    settings = load_settings(str(path), str(run_dir))
    cost = build_cost(settings.cost, experiment.layout, experiment.robot.dQ)
    learner = LEARNERS[experiment.method](experiment, cost, MujocoEnv(experiment))
    held_out_env = MujocoEnv(experiment, condition_set="held_out")
    loop_settings = LearnerLoopSettings(M, learner.num_iterations, seed=4)
    return LearnerTrainerLoop(run_dir, loop_settings, graph, cost, experiment.layout, learner, 0.02,
                              lambda p: tip_distances(held_out_env, [NumpyPolicy(p)]), log=lambda _: None)


def test_sac_takes_every_step_as_sb3_would_and_records_every_trial_once(experiment_file, tmp_path) -> None:
    experiment, path = _experiment(experiment_file, tmp_path, "sac")
    graph = InProcessGraph(experiment)
    loop = _loop(tmp_path / "run", experiment, path, graph)
    history = loop.run().history
    c = TINY["sac"]
    per_iteration = c["steps_per_iteration"]
    assert [r["env_steps"] for r in history] == [per_iteration * (i + 1) for i in range(c["iterations"])]
    for r in history:
        assert len(r["mean_cost"]) == M and len(r["eval_final_distance"]) == M
        assert len(r["policy_held_out_tip_distance"]) == 1 and "policy_success_rate" in r
    episodes = c["iterations"] * per_iteration // T
    training = [q for q in graph.requests if q.trial_id % 100 == 0 and q.trial_id // 100 % 1000 != 999]
    assert len(training) == episodes
    kinds = [q.policy_kind for q in training]
    random_episodes = math.ceil(c["learning_starts"] / T)
    assert kinds == ["random"] * random_episodes + ["policy"] * (episodes - random_episodes)
    assert all(q.add_noise == (q.policy_kind == "policy") for q in training)
    assert [q.condition for q in training] == [e % M for e in range(episodes)]
    sac = loop.learner.sac
    assert sac.num_timesteps == episodes * T
    assert sac._n_updates == (episodes * T - c["learning_starts"]) * c["gradient_steps"]
    # the replay buffer holds the T - 1 transitions of every recorded trial, in order, actions scaled
    store = SampleStore(tmp_path / "run")
    assert store.count() == episodes
    raws = [store.samples(i, m)[k] for i in range(c["iterations"]) for e in range(per_iteration // T)
            for m, k in [((i * (per_iteration // T) + e) % M, e // M)]]
    buffer, limits = sac.replay_buffer, np.asarray(graph.setup.effort_limits)
    assert buffer.pos == episodes * (T - 1)
    for n, raw in enumerate(raws):
        batch = graph.decode(raw).batch
        rows = slice(n * (T - 1), (n + 1) * (T - 1))
        np.testing.assert_array_equal(buffer.observations[rows, 0], batch.X[0, :-1])
        np.testing.assert_array_equal(buffer.next_observations[rows, 0], batch.X[0, 1:])
        np.testing.assert_allclose(buffer.actions[rows, 0], batch.U[0, :-1] / limits, atol=1e-6)
        rewards = -loop.cost.value_batched(np.array(batch.X), np.array(batch.U), t0=0, T=T)[0, :-1]
        np.testing.assert_allclose(buffer.rewards[rows, 0], rewards, rtol=1e-6)
    # each policy trial ran the exploring policy published for it (the sampler's id in the sample)
    for i in range(c["iterations"]):
        for m in range(M):
            for raw in store.samples(i, m).values():
                meta = graph.decode(raw).meta
                assert meta.policy_kind == "random" or meta.controller_id // 10_000 == i + 1
    assert policy_id(0, 0) >= 1


@pytest.mark.parametrize(("method", "crash_at"), [("sac", 4), ("mbpo", 6), ("bptt", 6)])
def test_a_crashed_trainer_resumes_without_losing_real_data(experiment_file, tmp_path, method: str,
                                                            crash_at: int) -> None:
    experiment, path = _experiment(experiment_file, tmp_path, method)
    reference = _loop(tmp_path / "ref", experiment, path, InProcessGraph(experiment)).run()

    run_dir = tmp_path / "crashed"
    with pytest.raises(CrashError):
        _loop(run_dir, experiment, path, InProcessGraph(experiment, crash_at)).run()
    store = SampleStore(run_dir)
    iterations = len(reference.history)
    before = {(i, m): store.samples(i, m) for i in range(iterations) for m in range(M)}
    recorded = sum(map(len, before.values()))
    completed = load_state(run_dir, M).completed_iterations
    assert recorded > 0
    resumed = InProcessGraph(experiment)
    state = _loop(run_dir, experiment, path, resumed).run()

    total = SampleStore(tmp_path / "ref").count()
    assert SampleStore(run_dir).count() == total
    for (i, m), raws in before.items():  # every trial recorded before the crash is kept unchanged
        after = SampleStore(run_dir).samples(i, m)
        assert all(after[k] == raw for k, raw in raws.items())
    # only the missing trials run again (plus the unfinished iterations' noiseless evaluations)
    assert resumed.trials == total - recorded + (iterations - completed) * M
    for got, want in zip(state.history, reference.history, strict=True):
        for key in ("mean_cost", "eval_final_distance", "env_steps", "policy_held_out_tip_distance"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-9, err_msg=key)
    assert load_state(run_dir, M).session == 2
