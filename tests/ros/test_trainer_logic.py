"""TrainerLoop without ROS: an in-process transport over MujocoEnv and the fitting/LQR step logic.

Oracles: a run that crashes mid-iteration and is resumed from its run folder ends with exactly the
controllers and costs of an uninterrupted run (seeds do not depend on the trainer session, and the
fitting/LQR state is persisted), and its bags hold exactly iterations × conditions × samples samples,
the ones recorded before the crash kept byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco")
pytest.importorskip("rclpy")

from mbpl_msgs.msg import TrajectorySample  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402

from mbpl_core.config import from_dict  # noqa: E402
from mbpl_core.containers import LinearDynamics, LinearGaussianController, SampleBatch  # noqa: E402
from mbpl_core.costs import CostConfig, build_cost  # noqa: E402
from mbpl_core.local.lqr_flm import AlgorithmConfig  # noqa: E402
from mbpl_core.noise import generate_noise  # noqa: E402
from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.recording import SampleStore  # noqa: E402
from mbpl_ros.step_logic import (  # noqa: E402
    PersistentCondition,
    StaleRequestError,
    fit,
    fitting_conditions,
    lqr_conditions,
    lqr_step,
)
from mbpl_ros.trainer_logic import (  # noqa: E402
    ControllerUpdate,
    LoopSettings,
    TrainerLoop,
    TrialRequest,
    TrialResult,
    controller_id,
    load_state,
    run_summary,
    trial_id,
    trial_seed,
    write_history,
)
from mbpl_sim.env import MujocoEnv  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

pytestmark = pytest.mark.sim

ALGO = from_dict(AlgorithmConfig, {"samples_per_condition": 3, "init": {"init_var": 0.03},
                                   "dynamics": {"max_clusters": 4, "min_samples_per_cluster": 20}})
COST = from_dict(CostConfig, {"action_weight": 5e-3, "ee": {}})


class CrashError(RuntimeError):
    """Stands in for kill -9 of the trainer."""


class InProcessTransport:
    """The graph in one process: MujocoEnv as sampler, persisted fitting/LQR state as the two nodes."""

    def __init__(self, env: MujocoEnv, run_dir: Path, crash_at: tuple[str, int] | None = None) -> None:
        self.env, self.crash_at, self.calls = env, crash_at, {"trial": 0, "fit": 0, "lqr": 0}
        M = env.num_conditions
        self.cost = build_cost(COST, env.layout, env.dU)
        self.fitting = fitting_conditions(run_dir / "fitting", M, ALGO.dynamics)
        x0s = [env.x0(m) for m in range(M)]
        self.lqr = lqr_conditions(run_dir / "ilqr", x0s, env.layout, env.dU, env.T, env.dt, ALGO.init,
                                  ALGO.kl)
        self.controllers = {}
        for m, cond in enumerate(self.lqr):
            i = cond.last_iteration
            self.controllers[controller_id(0 if i is None else i + 1, m)] = cond.state.controller

    def _count(self, what: str) -> None:
        self.calls[what] += 1
        if self.crash_at == (what, self.calls[what]):
            raise CrashError(f"crash at {what} call {self.calls[what]}")

    def run_trial(self, request: TrialRequest) -> TrialResult | None:
        self._count("trial")
        controller = self.controllers[request.controller_id]
        noise = None
        if request.add_noise:
            noise = generate_noise(self.env.T, self.env.dU, np.random.default_rng(request.seed), ALGO.noise)
        batch = self.env.sample(controller, request.condition, noise)
        meta = conversions.SampleMetadata(request.condition, request.trial_id, request.controller_id)
        return self.decode(serialize_message(conversions.sample_to_msg(batch, meta)))

    def decode(self, raw: bytes) -> TrialResult:
        batch, meta = conversions.msg_to_sample(deserialize_message(raw, TrajectorySample))
        return TrialResult(raw, batch, meta)

    def fit_dynamics(self, condition: int, iteration: int, samples: list[TrialResult]) -> LinearDynamics:
        self._count("fit")
        return fit(self.fitting[condition], iteration, _batch(samples))[0]

    def decode_dynamics(self, dynamics: LinearDynamics) -> LinearDynamics:
        return dynamics

    def update_controller(self, condition: int, iteration: int, dynamics: LinearDynamics,
                          samples: list[TrialResult], reference: LinearGaussianController | None,
                          step_mult: float | None = None) -> ControllerUpdate:
        self._count("lqr")
        (controller, info), _ = lqr_step(self.lqr[condition], iteration, dynamics, _batch(samples), self.cost,
                                         reference, step_mult)
        cid = controller_id(iteration + 1, condition)
        self.controllers[cid] = controller
        return ControllerUpdate(cid, info.eta, info.kl, info.epsilon, info.step_mult, info.expected_cost)


def _batch(samples: list[TrialResult]) -> SampleBatch:
    return SampleBatch.concatenate([s.batch for s in samples])


def _loop(run_dir: Path, env: MujocoEnv, transport: InProcessTransport, iterations: int = 2) -> TrainerLoop:
    settings = LoopSettings(env.num_conditions, iterations, ALGO.samples_per_condition, seed=3)
    return TrainerLoop(run_dir, settings, transport, transport.cost, env.layout, log=lambda _: None)


@pytest.fixture(scope="module")
def env(experiment_file: Path) -> MujocoEnv:
    return MujocoEnv(load_experiment(experiment_file))


def test_ids_are_unique_and_seeds_do_not_depend_on_the_session() -> None:
    ids = {trial_id(s, i, m, n, a) for s in range(2) for i in range(3) for m in range(3) for n in range(4)
           for a in range(2)}
    assert len(ids) == 2 * 3 * 3 * 4 * 2
    assert controller_id(0, 0) == 1 and controller_id(2, 3) == 2004
    assert len({controller_id(i, m) for i in range(5) for m in range(5)}) == 25
    seeds = {trial_seed(0, i, m, n, 0) for i in range(3) for m in range(3) for n in range(4)}
    assert len(seeds) == 36 and trial_seed(0, 1, 2, 3, 0) == trial_seed(0, 1, 2, 3, 0)
    with pytest.raises(ValueError):
        trial_id(0, 0, 1000, 0, 0)


@pytest.mark.parametrize("crash_at", [("trial", 4), ("fit", 2), ("lqr", 3), ("trial", 14)])
def test_a_crashed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, env: MujocoEnv,
                                                           crash_at: tuple[str, int]) -> None:
    reference = _loop(tmp_path / "ref", env, InProcessTransport(env, tmp_path / "ref")).run()

    run_dir = tmp_path / "crashed"
    with pytest.raises(CrashError):
        _loop(run_dir, env, InProcessTransport(env, run_dir, crash_at)).run()
    store = SampleStore(run_dir)
    before = {(i, m): store.samples(i, m) for i in range(2) for m in range(env.num_conditions)}
    completed = load_state(run_dir, env.num_conditions).completed_iterations
    resumed_transport = InProcessTransport(env, run_dir)  # a fresh graph reloads the persisted state
    state = _loop(run_dir, env, resumed_transport).run()

    M, N = env.num_conditions, ALGO.samples_per_condition
    assert SampleStore(run_dir).count() == 2 * M * N
    for (i, m), raws in before.items():  # every sample recorded before the crash survives unchanged
        after = SampleStore(run_dir).samples(i, m)
        assert all(after[k] == raw for k, raw in raws.items())
    recorded = sum(map(len, before.values()))
    # only the missing samples are taken again (plus the unfinished iterations' noiseless evaluations)
    assert resumed_transport.calls["trial"] == 2 * M * N - recorded + (2 - completed) * M
    assert state.controller_ids == reference.controller_ids
    for got, want in zip(state.history, reference.history, strict=True):
        np.testing.assert_allclose(got["mean_cost"], want["mean_cost"], rtol=1e-9)
        np.testing.assert_allclose(got["eval_final_distance"], want["eval_final_distance"], rtol=1e-9)
    assert load_state(run_dir, M).session == 2


def test_aborted_trials_are_rerun_and_history_is_written(tmp_path: Path, env: MujocoEnv) -> None:
    transport = InProcessTransport(env, tmp_path)
    original = transport.run_trial
    aborted = []

    def flaky(request: TrialRequest) -> TrialResult | None:
        if len(aborted) < 2 and request.add_noise:
            aborted.append(request.trial_id)
            return None if len(aborted) == 1 else _aborted(original(request))
        return original(request)

    transport.run_trial = flaky  # type: ignore[method-assign]
    state = _loop(tmp_path, env, transport, iterations=1).run()
    assert SampleStore(tmp_path).count() == env.num_conditions * ALGO.samples_per_condition
    json_path, png = write_history(tmp_path, state.history)
    assert json.loads(json_path.read_text())[0]["iteration"] == 0
    assert run_summary(state.history).startswith("1 iterations; mean cost")
    assert png.stat().st_size > 1000


def _aborted(result: TrialResult) -> TrialResult:
    from dataclasses import replace

    return replace(result, meta=replace(result.meta, aborted=True, abort_reason="test"))


def test_persistent_condition_is_idempotent_atomic_and_reloads(tmp_path: Path) -> None:
    def make() -> list[int]:
        return []

    def append(value: int) -> object:
        def compute(state: list[int]) -> int:
            state.append(value)
            return sum(state)
        return compute

    cond = PersistentCondition(tmp_path, 0, make, keep=2)
    assert cond.run(0, append(5)) == (5, True)
    assert cond.run(0, append(100)) == (5, False)  # a repeat returns the stored result, state untouched

    def failing(state: list[int]) -> int:
        state.append(1000)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        cond.run(1, failing)
    assert cond.state == [5] and cond.last_iteration == 0  # a failed step leaves no trace
    assert cond.run(1, append(7)) == (12, True)
    assert cond.run(2, append(1)) == (13, True)
    reloaded = PersistentCondition(tmp_path, 0, make, keep=2)
    assert reloaded.state == [5, 7, 1] and sorted(reloaded.results) == [1, 2]
    assert reloaded.run(1, append(99)) == (12, False)
    with pytest.raises(StaleRequestError, match="iteration 0 is older"):
        reloaded.run(0, append(99))


def test_checkpoint_round_trips_and_refuses_another_experiment(tmp_path: Path) -> None:
    from mbpl_core.config import ConfigError
    from mbpl_ros.trainer_logic import TrainerState, save_state

    assert load_state(tmp_path, 2) == TrainerState.fresh(2)
    state = TrainerState(2, 1, (1001, 1002), ({"iteration": 0, "mean_cost": [1.0, 2.0]},), 3)
    save_state(tmp_path, state)
    assert load_state(tmp_path, 2) == state
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ConfigError, match="use another run_dir"):
        load_state(tmp_path, 3)
