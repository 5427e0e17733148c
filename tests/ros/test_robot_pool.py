"""Several robots: the graph description (namespaces, remaps, --only parts), the trainer's robot pool
(:class:`mbpl_ros.trainer_transport._RobotPool`) and the loop over it, without ROS processes.

Oracles: every request of a batch is answered exactly once (``on_result`` once per request, the result at
its index) whatever robot ran it and in whatever order they finished; a lost trial (no sample) is handed
to another robot unchanged (same trial id, seed, condition: so the same sample in lockstep) and counted,
and that robot takes no more of the batch; an aborted sample is the trial's answer (the robot stays); a
trial that never ran is answered NOT_RUN (same attempt again), one lost everywhere None (next attempt);
pinned conditions run on their robots only.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from mbpl_core.config import ConfigError
from mbpl_ros.bringup import graph_from_experiment, robot_namespaces
from mbpl_ros.node_params import TrainerNodeParams
from mbpl_ros.trainer_logic import TrialRequest
from mbpl_ros.trainer_transport import _RobotPool, may_run

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "reacher2_sim.yaml"


def _raw(**ros: Any) -> dict[str, Any]:
    raw = yaml.safe_load(CONFIG.read_text())
    raw["ros"] = {**(raw.get("ros") or {}), **ros}
    return raw


# ---------------------------------------------------------------------------------------- description
def test_two_robots_give_two_namespaced_pairs_with_the_runs_topics_global() -> None:
    specs = graph_from_experiment(CONFIG, _raw(robots=2), run_token="t" * 32)
    labels = [s.label for s in specs]
    assert labels == ["robot0/sim", "robot1/sim", "robot0/sampler", "robot1/sampler", "fitting", "ilqr",
                      "trainer"]
    sampler = next(s for s in specs if s.label == "robot1/sampler")
    cmd = sampler.command(Path("p.yaml"))
    assert cmd[cmd.index("__ns:=/robot1") - 1] == "-r"
    assert "mbpl/controllers:=/mbpl/controllers" in cmd and "mbpl/policy:=/mbpl/policy" in cmd
    assert "/clock:=clock" in next(s for s in specs if s.label == "robot0/sim").command(Path("p.yaml"))
    assert all(s.optional for s in specs if s.namespace) and not any(s.optional for s in specs
                                                                       if not s.namespace)
    trainer = next(s for s in specs if s.name == "trainer")
    assert trainer.parameters["robots"] == "robot0 robot1" and trainer.required
    # one robot: the graph of before, no namespace, no remap, nothing optional
    one = graph_from_experiment(CONFIG, _raw(), run_token="t" * 32)
    assert [s.label for s in one] == ["sim", "sampler", "fitting", "ilqr", "trainer"]
    assert not any(s.remaps or s.optional for s in one) and "robots" not in one[-1].parameters


def test_only_robot_and_only_learner_split_the_graph() -> None:
    raw = _raw(robots=["left", "right"], robot_conditions={"left": [0, 1]})
    robot = graph_from_experiment(CONFIG, raw, run_token="t" * 32, only="robot")
    learner = graph_from_experiment(CONFIG, raw, run_token="t" * 32, only="learner")
    whole = graph_from_experiment(CONFIG, raw, run_token="t" * 32)
    assert {s.label for s in robot} == {"left/sim", "right/sim", "left/sampler", "right/sampler"}
    assert sorted(s.label for s in robot + learner) == sorted(s.label for s in whole)
    trainer = next(s for s in learner if s.name == "trainer")
    assert trainer.parameters["robot_conditions"] == "left:0,1"
    params = TrainerNodeParams(config=str(CONFIG), robots=trainer.parameters["robots"],
                               robot_conditions=trainer.parameters["robot_conditions"])
    assert params.robot_pool() == (("left", "right"), {"left": frozenset({0, 1})})


@pytest.mark.parametrize("robots", [0, -1, True, "two", [], ["a", "a"], ["a b"], [3], 65])
def test_bad_robots_are_a_configuration_error(robots: Any) -> None:
    with pytest.raises(ConfigError, match="ros.robots"):
        robot_namespaces(robots)


def test_robot_settings_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="robot_conditions: unknown robot"):
        graph_from_experiment(CONFIG, _raw(robots=2, robot_conditions={"robot7": [0]}))
    with pytest.raises(ConfigError, match="robot_conditions.robot0"):
        graph_from_experiment(CONFIG, _raw(robots=2, robot_conditions={"robot0": []}))
    raw = _raw(robots=2)
    raw["method"] = "pets"
    with pytest.raises(ConfigError, match="several robots sample in parallel"):
        graph_from_experiment(CONFIG, raw)
    for bad in ("robot0:0 robot0:1", "robot9:1", "robot0:x", "robot0:-1"):
        with pytest.raises(ConfigError, match="robot_conditions"):
            TrainerNodeParams(config=str(CONFIG), robots="robot0 robot1", robot_conditions=bad)


def test_pinned_conditions_run_on_their_robots_only() -> None:
    pinned = {"a": frozenset({0, 1}), "b": frozenset({1})}
    assert may_run("a", 0, pinned) and not may_run("b", 0, pinned) and not may_run("c", 0, pinned)
    assert may_run("a", 1, pinned) and may_run("b", 1, pinned)
    assert all(may_run(r, 2, pinned) for r in "abc")  # named nowhere: any robot


# --------------------------------------------------------------------------------------------- pool
class FakeRobots:
    """The transport the pool drives: ``_run_on`` per robot, a log of who ran what, and scripted failures:
    ``lose`` / ``abort`` name, per robot, trial ids it loses (no sample) or aborts, or ``-n`` for its n-th
    trial whatever it is (robots take trials in an order that depends on timing)."""

    def __init__(self, robots: tuple[str, ...], lose: dict[str, set[int]] | None = None,
                 abort: dict[str, set[int]] | None = None,
                 pinned: dict[str, frozenset[int]] | None = None) -> None:
        self.robots, self.lose, self.abort = robots, lose or {}, abort or {}
        self.pinned = pinned or {}
        self.requeued = 0
        self.ran: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.warnings: list[str] = []

    def get_logger(self) -> Any:
        return SimpleNamespace(warning=self.warnings.append)

    def may_run(self, robot: int, condition: int) -> bool:
        return may_run(self.robots[robot], condition, self.pinned)

    def _run_on(self, robot: int, request: TrialRequest, give_up_if_absent: bool) -> Any:
        ns = self.robots[robot]
        time.sleep(0.002 * (1 + robot))  # robots of different speeds: completion order is not request order
        with self.lock:
            self.ran.append((ns, request.trial_id))
            nth = -sum(1 for r, _ in self.ran if r == ns)
        if {request.trial_id, nth} & self.lose.get(ns, set()):
            return None
        aborted = bool({request.trial_id, nth} & self.abort.get(ns, set()))
        meta = SimpleNamespace(aborted=aborted, abort_reason="stale state" if aborted else "",
                               condition=request.condition)
        return SimpleNamespace(raw=f"{request.trial_id}:{request.seed}".encode(), meta=meta, robot=ns)


def _requests(n: int, conditions: int = 3) -> list[TrialRequest]:
    return [TrialRequest(condition=j % conditions, trial_id=100 + j, controller_id=1, seed=7 * j)
            for j in range(n)]


def _run(transport: FakeRobots, requests: list[TrialRequest]) -> tuple[list[Any], list[int]]:
    calls: list[int] = []
    results = _RobotPool(transport, requests, lambda j, r: calls.append(j)).run()  # type: ignore[arg-type]
    return results, calls


def test_every_request_is_answered_once_at_its_index_by_some_robot() -> None:
    transport = FakeRobots(("a", "b", "c"))
    requests = _requests(20)
    results, calls = _run(transport, requests)
    assert sorted(calls) == list(range(20))
    assert [r.raw for r in results] == [f"{q.trial_id}:{q.seed}".encode() for q in requests]
    assert sorted(t for _, t in transport.ran) == [q.trial_id for q in requests]  # each ran once
    assert {ns for ns, _ in transport.ran} == {"a", "b", "c"} and transport.requeued == 0


def test_a_lost_trial_goes_to_another_robot_unchanged_and_its_robot_leaves_the_batch() -> None:
    transport = FakeRobots(("a", "b", "c"), lose={"a": {-2}, "b": {-3}})
    requests = _requests(40)  # enough that a runs >= 2 and b >= 3 whatever the threads' timing
    results, calls = _run(transport, requests)
    assert sorted(calls) == list(range(40)) and transport.requeued == 2
    assert all(not r.meta.aborted for r in results)
    by_robot = {ns: [t for r, t in transport.ran if r == ns] for ns in "abc"}
    lost_a, lost_b = by_robot["a"][1], by_robot["b"][2]
    assert by_robot["a"] == by_robot["a"][:2] and by_robot["b"] == by_robot["b"][:3]  # then no more
    for trial, robot in ((lost_a, "a"), (lost_b, "b")):
        j = trial - 100
        assert results[j].robot != robot                                   # another robot ran it ...
        assert results[j].raw == f"{trial}:{requests[j].seed}".encode()    # ... the same request
        assert [t for _, t in transport.ran].count(trial) == 2
    assert len(transport.ran) == 42 and len(transport.warnings) == 2
    assert "queued again for another robot" in transport.warnings[0]


def test_an_aborted_sample_is_the_trials_answer_and_its_robot_stays() -> None:
    """In lockstep the same request aborts the same way on any robot: answered as it is (the loop runs
    the next attempt), not handed around, and the robot goes on with the batch."""
    transport = FakeRobots(("a", "b"), abort={"a": {-1}})
    results, calls = _run(transport, _requests(20))
    aborted = [r for r in results if r.meta.aborted]
    assert len(aborted) == 1 and aborted[0].robot == "a" and transport.requeued == 0
    assert sorted(calls) == list(range(20)) and len(transport.ran) == 20
    assert sum(1 for ns, _ in transport.ran if ns == "a") > 1   # a took more trials after its abort


def test_trials_no_robot_was_left_for_come_back_not_run_and_lost_ones_none() -> None:
    from mbpl_ros.trainer_logic import NOT_RUN

    transport = FakeRobots(("a", "b"), lose={"a": {-1}, "b": {-1}})
    results, calls = _run(transport, _requests(6))
    assert sorted(calls) == list(range(6)) and len(transport.ran) == 2   # each lost one: nobody is left
    tried = {t - 100 for _, t in transport.ran}
    assert all(results[j] is None for j in tried)                          # lost everywhere: a failed attempt
    assert all(results[j] is NOT_RUN for j in range(6) if j not in tried)  # never ran: ask again as it is


def test_pinned_conditions_are_respected_by_the_pool() -> None:
    transport = FakeRobots(("a", "b"), pinned={"a": frozenset({0}), "b": frozenset({1})})
    requests = _requests(12)
    results, _ = _run(transport, requests)
    for request, result in zip(requests, results, strict=True):
        if request.condition == 0:
            assert result.robot == "a"
        elif request.condition == 1:
            assert result.robot == "b"
    # a pinned robot that loses its trial: nobody else may run that condition
    from mbpl_ros.trainer_logic import NOT_RUN

    transport = FakeRobots(("a", "b"), lose={"a": {100}}, pinned={"a": frozenset({0})})
    results, _ = _run(transport, _requests(6))
    assert results[0] is None and results[3] is NOT_RUN and results[1] is not None


# ------------------------------------------------------------------------------------ resuming a run
def test_relaunching_a_run_with_other_settings_is_refused_and_the_run_keeps_its_own(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run folder whose trainer checkpointed is resumed only with the settings it was started with:
    anything but ``ros:`` (how the graph runs: robots, hosts) and the run lengths is a configuration error
    before any node starts, and the run's config.yaml is left as it was."""
    from mbpl_ros.cli import effective_config, main, settings_diff

    run_dir = tmp_path / "run"
    path, raw = effective_config(CONFIG, ["algorithm.iterations=2"], run_dir)
    (run_dir / "trainer_state.json").write_text("{}")
    before = path.read_text()
    code = main(["launch", str(CONFIG), "--run-dir", str(run_dir), "--set", "cost.ee.l2=5.0",
                 "--set", "algorithm.seed=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "started with other settings (algorithm.seed, cost.ee.l2 differ)" in err
    assert path.read_text() == before
    longer = yaml.safe_load(before)
    longer["algorithm"]["iterations"] = 20
    longer["ros"] = {**longer.get("ros", {}), "robots": 2}
    assert settings_diff(raw, longer) == []                        # extend the run, add a robot: fine
    del longer["algorithm"]["iterations"]                          # set on one side only: still a length
    assert settings_diff(raw, longer) == [] and settings_diff(longer, raw) == []
    longer["gps"] = {**longer.get("gps", {}), "iterations": 5}     # the S-step's Adam steps: not a length
    longer["cost"]["ee"]["alpha"] = 1.0
    longer["ros"]["lockstep"] = False                               # how samples are taken: part of the run
    longer["ros"]["nodes"] = {"trainer": {"evaluate": False}}
    assert settings_diff(raw, longer) == ["cost.ee.alpha", "gps.iterations", "ros.lockstep", "ros.nodes"]


def test_the_loop_asks_a_not_run_trial_again_as_it_was_and_a_failed_one_with_the_next_attempt() -> None:
    """TrainerLoop._run_all over a transport with run_trials: NOT_RUN → the same request again (it never
    ran, so its id and seed stay: the sample is the one the trial would have given); None or aborted →
    the next attempt (new id and seed); TrialFailedError after max_attempts failed attempts."""
    from mbpl_ros.trainer_logic import NOT_RUN, LoopSettings, TrainerLoop, TrialFailedError, TrialResult

    answers = iter([[NOT_RUN, None, "ok"], [NOT_RUN, "aborted"], ["ok", "ok"]])
    asked: list[list[tuple[int, int]]] = []

    class Batches:
        def run_trials(self, requests: list[TrialRequest], on_result: Any) -> list[Any]:
            asked.append([(r.trial_id, r.seed) for r in requests])
            out = []
            for j, answer in enumerate(next(answers)):
                if isinstance(answer, str):
                    meta = SimpleNamespace(aborted=answer == "aborted", abort_reason="stale")
                    answer = TrialResult(b"", None, meta)  # type: ignore[arg-type]
                out.append(answer)
                on_result(j, answer)
            return out

    loop = TrainerLoop.__new__(TrainerLoop)
    loop.transport, loop.log = Batches(), lambda _: None
    loop.settings = LoopSettings(num_conditions=3, iterations=1, samples_per_condition=1, max_attempts=3)
    kept: dict[int, Any] = {}
    def request(key: int, attempt: int) -> TrialRequest:
        return TrialRequest(key, 10 * key + attempt, 1, 100 * key + attempt)

    loop._run_all([0, 1, 2], request, kept.__setitem__, str)
    assert asked == [[(0, 0), (10, 100), (20, 200)], [(0, 0), (11, 101)], [(0, 0), (12, 102)]]
    assert sorted(kept) == [0, 1, 2]
    answers = iter([[None], [None], [None]])
    with pytest.raises(TrialFailedError, match="no sample in 3 attempts"):
        loop._run_all([0], lambda key, attempt: TrialRequest(key, attempt, 1, attempt), kept.__setitem__, str)
