"""The trainer's logic without ROS: ids and seeds, the checkpoint, resuming, and the iteration loop.

:class:`TrainerLoop` runs LQR-FLM iterations against a :class:`Transport` (the trainer node implements
it over DDS in :mod:`mbpl_ros.trainer_transport`; tests implement it in process). One iteration:

1. for every condition m, samples_per_condition trials of the controller ``controller_id(i, m)``, all
   handed to the transport at once (:func:`run_trials`: several robots run them in parallel); each
   sample is written to its own small bag as it arrives, by a writer thread off the trials' path
   (:class:`BagWriter`), and the batch is closed into one bag per (i, m) when complete
   (:class:`mbpl_ros.recording.SampleStore`). A failed trial is asked again (next attempt: new id and
   seed) in the next round, up to max_attempts;
2. ``hooks.before_c_step(i, batches)`` — GPS mode linearises the policy at the samples here;
3. every condition's dynamics fitted; ``hooks.step_mults(i, batches, dynamics)`` gives each
   condition's step multiplier (GPS mode: MDGPS's step rule; None: the iLQR node's LQR-FLM rule); then
   per condition one KL-constrained LQR step (reference from ``hooks.reference_for``, None in
   LQR-FLM); the iLQR side publishes ``controller_id(i + 1, m)``.
   A step that fails against a reference (e.g. no η meets the KL bound around the policy
   linearisation) is taken again as an LQR-FLM step around the condition's own controller;
4. ``hooks.after_c_step(i, batches, updates)`` — GPS mode's S-step on the new controllers;
5. optionally one noiseless trial per condition of the new controllers (final ee distance);
6. ``hooks.after_iteration`` may add fields to the history record (GPS: policy evaluation); then the
   checkpoint ``trainer_state.json`` records the finished iteration (written atomically).

Resuming (:meth:`TrainerLoop.run` on an existing run folder) starts at the first unfinished iteration
and keeps every sample of it that is already in the bags: no sample is lost or taken twice. Fitting
and LQR services are idempotent per (condition, iteration), so repeating them after a crash is safe.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mbpl_core.config import ConfigError
from mbpl_core.containers import LinearDynamics, LinearGaussianController, SampleBatch, StateLayout
from mbpl_core.costs import Cost
from mbpl_ros.console import progress_message
from mbpl_ros.conversions import SampleMetadata
from mbpl_ros.recording import SampleStore
from mbpl_sim.history import write_history, write_json_atomic  # noqa: F401 - re-exported: one writer

MAX_CONDITIONS = 1000
MAX_SAMPLES = 1000
MAX_ATTEMPTS = 100
STATE_FILE = "trainer_state.json"


# ------------------------------------------------------------------------------------------- ids, seeds
def controller_id(iteration: int, condition: int) -> int:
    """Id of the LG controller that iteration ``iteration`` samples on ``condition``: 1 + 1000 i + m.

    Iteration 0 runs the initial controllers (ids 1 + m); the LQR step of iteration i publishes
    ``controller_id(i + 1, m)``. Never 0, so 0 can mean "none".
    """
    if not 0 <= condition < MAX_CONDITIONS or iteration < 0:
        raise ValueError(f"controller_id needs iteration >= 0 and 0 <= condition < {MAX_CONDITIONS}, "
                         f"got ({iteration}, {condition})")
    return 1 + iteration * MAX_CONDITIONS + condition


def trial_id(session: int, iteration: int, condition: int, index: int, attempt: int) -> int:
    """Unique trial id: the digits of (session, iteration, condition, sample index, attempt).

    The session (one per trainer start) keeps ids unique across restarts, so a late sample of a
    trial asked for by a dead trainer can never be taken for a new one.
    """
    if not (0 <= condition < MAX_CONDITIONS and 0 <= index < MAX_SAMPLES and 0 <= attempt < MAX_ATTEMPTS):
        raise ValueError(f"trial_id: condition, index, attempt out of range: {condition}, {index}, {attempt}")
    if session < 0 or not 0 <= iteration < 10_000:
        raise ValueError(f"trial_id: session >= 0 and 0 <= iteration < 10000 needed, got {session}, "
                         f"{iteration}")
    digits = ((session * 10_000 + iteration) * MAX_CONDITIONS + condition) * MAX_SAMPLES + index
    return digits * MAX_ATTEMPTS + attempt


def trial_seed(base_seed: int, iteration: int, condition: int, index: int, attempt: int) -> int:
    """Noise seed (uint64) of one trial, independent of the session: a resumed run draws the same noise."""
    sequence = np.random.SeedSequence([base_seed, iteration, condition, index, attempt])
    return int(sequence.generate_state(1, np.uint64)[0])


# ----------------------------------------------------------------------------------------------- state
@dataclass(frozen=True)
class TrainerState:
    """The checkpoint ``<run_dir>/trainer_state.json``.

    completed_iterations: iterations fully done; controller_ids: (M,) ids the next iteration samples;
    history: one dict per finished iteration (see :class:`IterationRecord`); session: trainer starts.
    """

    num_conditions: int
    completed_iterations: int = 0
    controller_ids: tuple[int, ...] = ()
    history: tuple[dict[str, Any], ...] = ()
    session: int = 0

    @staticmethod
    def fresh(num_conditions: int) -> TrainerState:
        ids = tuple(controller_id(0, m) for m in range(num_conditions))
        return TrainerState(num_conditions=num_conditions, controller_ids=ids)


def load_state(run_dir: str | Path, num_conditions: int) -> TrainerState:
    """The checkpoint of ``run_dir``, or a fresh state; ConfigError if it was for another condition count."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return TrainerState.fresh(num_conditions)
    data = json.loads(path.read_text())
    state = TrainerState(
        num_conditions=int(data["num_conditions"]),
        completed_iterations=int(data["completed_iterations"]),
        controller_ids=tuple(int(i) for i in data["controller_ids"]),
        history=tuple(data["history"]),
        session=int(data["session"]),
    )
    if state.num_conditions != num_conditions or len(state.controller_ids) != num_conditions:
        raise ConfigError(f"{path} is for {state.num_conditions} conditions, the experiment has "
                          f"{num_conditions}: use another run_dir")
    return state


def save_state(run_dir: str | Path, state: TrainerState) -> None:
    write_json_atomic(Path(run_dir) / STATE_FILE, asdict(state))


# ------------------------------------------------------------------------------------------- transport
@dataclass(frozen=True)
class TrialRequest:
    """One RunTrial: condition, trial_id, controller_id the trainer expects, noise seed, add_noise."""

    condition: int
    trial_id: int
    controller_id: int
    seed: int
    add_noise: bool = True
    policy_kind: str = "lg"


@dataclass(frozen=True)
class TrialResult:
    """A finished trial: the sample's CDR bytes (what the bag stores), its arrays and metadata.

    batch is None only for an aborted trial (which may hold no step at all); never recorded.
    """

    raw: bytes
    batch: SampleBatch | None
    meta: SampleMetadata


@dataclass(frozen=True)
class ControllerUpdate:
    """What the LQR step returned for one condition: the new controller's id and the step's figures.

    controller: the new LG controller itself (K (T, dU, dX), k (T, dU), pol_covar (T, dU, dU)) when the
    transport has it (the S-step regresses onto it); reference_fallback: the step was retaken as
    LQR-FLM because the one against the given reference failed.
    """

    controller_id: int
    eta: float
    kl: float
    epsilon: float
    step_mult: float
    expected_cost: float
    controller: LinearGaussianController | None = None
    reference_fallback: bool = False


class NotRun:
    """The answer to a trial of a batch that no robot was left to run (it never ran: ask again, same
    attempt)."""

    def __repr__(self) -> str:
        return "NOT_RUN"


NOT_RUN = NotRun()
OnResult = Callable[[int, Any], None]


def run_trials(transport: Any, requests: Sequence[TrialRequest], on_result: OnResult | None = None,
               ) -> list[Any]:
    """Every request through ``transport.run_trials`` where it has one, else one after the other; the
    result of request j at j (a TrialResult, None for no sample, :data:`NOT_RUN`), and
    ``on_result(j, result)`` as each one is final (one call at a time)."""
    batch = getattr(transport, "run_trials", None)
    if batch is not None:
        return list(batch(requests, on_result))
    return run_one_by_one(transport.run_trial, requests, on_result)


def run_one_by_one(run: Callable[[TrialRequest], Any], requests: Sequence[TrialRequest],
                   on_result: OnResult | None = None) -> list[Any]:
    """``run(request)`` for each request in turn; ``on_result(j, result)`` after each."""
    out: list[Any] = []
    for j, request in enumerate(requests):
        out.append(run(request))
        if on_result is not None:
            on_result(j, out[-1])
    return out


class BagWriter:
    """Writes samples to their bags (``SampleStore.record_trial``) and closes complete batches into their
    batch bag (``SampleStore.close_batch``, from what it wrote rather than read back) on a thread of its
    own, so the next trial starts while one is written; :meth:`close` waits for every queued job and
    re-raises the first error. ``busy_s``: seconds spent writing."""

    def __init__(self, store: SampleStore) -> None:
        self.store, self.busy_s = store, 0.0
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._written: dict[tuple[int, int], dict[int, tuple[int, bytes]]] = {}
        self._thread = threading.Thread(target=self._write, name="bag-writer", daemon=True)
        self._thread.start()

    def put(self, iteration: int, condition: int, index: int, raw: bytes) -> None:
        stamp = time.time_ns()
        self._queue.put(lambda: self._record(iteration, condition, index, raw, stamp))

    def close_batch(self, iteration: int, condition: int, count: int) -> None:
        """Once the samples put before are written: the batch bag of (iteration, condition)."""
        self._queue.put(lambda: self.store.close_batch(iteration, condition, count,
                                                       written=self._written.pop((iteration, condition), {})))

    def _record(self, iteration: int, condition: int, index: int, raw: bytes, stamp: int) -> None:
        if self.store.record_trial(iteration, condition, index, raw, stamp):
            self._written.setdefault((iteration, condition), {})[index] = (stamp, raw)

    def _write(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                start = time.perf_counter()
                try:
                    job()
                except BaseException as err:  # noqa: BLE001 - re-raised by close() in the loop's thread
                    self._error = err
                self.busy_s += time.perf_counter() - start

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class StepFailedError(RuntimeError):
    """A fitting or LQR service answered success = false (its message says why)."""


class Transport(Protocol):
    """How the loop reaches the sampler, fitting and iLQR nodes (DDS in the node, in-process in tests).

    A transport may also offer ``run_trials(requests, on_result)`` (several robots in parallel, as
    :class:`mbpl_ros.trainer_transport.GraphTransport`); :func:`run_trials` falls back to run_trial.
    """

    def run_trial(self, request: TrialRequest) -> TrialResult | None:
        """Run one trial and wait for its sample; None if it aborted or never arrived (it is re-run)."""

    def decode(self, raw: bytes) -> TrialResult:
        """A recorded sample (CDR bytes from a bag) as a TrialResult."""

    def fit_dynamics(self, condition: int, iteration: int, samples: Sequence[TrialResult]) -> Any:
        """Fitted dynamics of one condition (opaque to the loop; passed on to update_controller)."""

    def decode_dynamics(self, dynamics: Any) -> LinearDynamics:
        """What fit_dynamics returned, as arrays (for hooks that model the step, e.g. MDGPS's step rule)."""

    def update_controller(self, condition: int, iteration: int, dynamics: Any, samples: Sequence[TrialResult],
                          reference: LinearGaussianController | None,
                          step_mult: float | None = None) -> ControllerUpdate:
        """One KL-constrained LQR step (step_mult None: the iLQR side's own step rule); the new controller
        is published to the sampler."""


class Hooks:
    """Extension points for GPS mode; the defaults are LQR-FLM (no policy, no reference)."""

    def on_start(self, state: TrainerState) -> None:
        """Called once with the loaded checkpoint (session, completed iterations) before any iteration."""

    def before_c_step(self, iteration: int, batches: Sequence[SampleBatch]) -> None:
        """Called with every condition's batch before the LQR steps (MDGPS: policy linearisation)."""

    def reference_for(self, iteration: int, condition: int) -> LinearGaussianController | None:
        """The KL reference of a condition's LQR step; None keeps it to the current controller (LQR-FLM)."""
        return None

    def step_mults(self, iteration: int, batches: Sequence[SampleBatch],
                   dynamics: Callable[[], Sequence[LinearDynamics]]) -> Sequence[float | None]:
        """Each condition's step multiplier for this iteration's LQR steps; None leaves it to the iLQR
        node's LQR-FLM rule. ``dynamics()`` decodes the conditions' fitted dynamics (MDGPS's rule)."""
        return [None] * len(batches)

    def after_c_step(self, iteration: int, batches: Sequence[SampleBatch],
                     updates: Sequence[ControllerUpdate]) -> None:
        """Called after every condition's LQR step with its result (MDGPS: the S-step)."""

    def after_iteration(self, iteration: int, record: dict[str, Any]) -> dict[str, Any]:
        """Extra history fields of a finished iteration (MDGPS: policy evaluation); before the checkpoint."""
        return {}


# -------------------------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class LoopSettings:
    """iterations, samples_per_condition, base seed, attempts per trial, noiseless evaluation on/off."""

    num_conditions: int
    iterations: int
    samples_per_condition: int
    seed: int = 0
    max_attempts: int = 5
    evaluate: bool = True

    def __post_init__(self) -> None:
        n = self.samples_per_condition
        if self.num_conditions < 1 or self.iterations < 0 or not 1 <= n < MAX_SAMPLES - 1:
            raise ValueError(f"invalid loop settings {self}")
        if not 1 <= self.max_attempts < MAX_ATTEMPTS:
            raise ValueError(f"max_attempts must be in [1, {MAX_ATTEMPTS}), got {self.max_attempts}")


class TrialFailedError(RuntimeError):
    """A trial produced no usable sample in max_attempts attempts."""


def run_policy_trial(transport: Any, request: Callable[[int], TrialRequest], policy_id: int,
                     max_attempts: int, what: str) -> TrialResult:
    """A trial of the published policy ``policy_id``: ``request(attempt)`` until one ran that policy.

    The sampler runs whatever policy it holds (``policy_kind "policy"``), so a trial asked for before the
    new policy arrived runs the previous one: such a trial, an aborted one or a missing one is discarded
    and asked for again after a short wait (0.1 s doubling, at most 2 s). TrialFailedError naming ``what``
    after max_attempts.
    """
    ran = "no sample"
    for attempt in range(max_attempts):
        result = transport.run_trial(request(attempt))
        if result is not None and not result.meta.aborted and result.meta.controller_id == policy_id:
            return result
        if result is not None:
            ran = (f"aborted: {result.meta.abort_reason}" if result.meta.aborted
                   else f"ran policy {result.meta.controller_id}")
        time.sleep(min(2.0, 0.1 * 2**attempt))  # give the policy message time to arrive
    raise TrialFailedError(f"{what} failed ({ran}, expected policy {policy_id})")


def sample_costs(cost: Cost, batch: SampleBatch) -> np.ndarray:
    """Total cost Σ_t c(x_t, u_t) of each sample of a batch: (N,)."""
    out = np.empty(batch.N)
    for n in range(batch.N):
        J = None if batch.ee_jacobians is None else batch.ee_jacobians[n]
        out[n] = float(np.sum(cost.evaluate(batch.X[n], batch.U[n], J).l))
    return out


def final_distances(layout: StateLayout, batch: SampleBatch) -> np.ndarray:
    """Mean distance of the ee points to their targets at the last step, per sample: (N,)."""
    diff = batch.X[:, -1, layout.ee_points].reshape(batch.N, layout.n_points, 3)
    return np.mean(np.linalg.norm(diff, axis=-1), axis=-1)


@dataclass
class _Clock:
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("sampling", "recording", "recording_background", "fitting", "lqr", "evaluation"), 0.0))

    def add(self, key: str, start: float) -> None:
        self.seconds[key] += time.perf_counter() - start


class TrainerLoop:
    """LQR-FLM iterations over a :class:`Transport`, resumable from ``run_dir`` (module docstring)."""

    def __init__(self, run_dir: str | Path, settings: LoopSettings, transport: Transport, cost: Cost,
                 layout: StateLayout, hooks: Hooks | None = None, log: Any = print) -> None:
        self.run_dir = Path(run_dir)
        self.settings, self.transport, self.cost, self.layout = settings, transport, cost, layout
        self.hooks = Hooks() if hooks is None else hooks
        self.log = log
        self.store = SampleStore(self.run_dir)
        self.state = load_state(self.run_dir, settings.num_conditions)
        self.state = replace(self.state, session=self.state.session + 1)
        save_state(self.run_dir, self.state)
        self.hooks.on_start(self.state)

    def run(self) -> TrainerState:
        """Run the remaining iterations; returns the final state (history has one record per iteration)."""
        if self.state.completed_iterations:
            done, session = self.state.completed_iterations, self.state.session
            self.log(f"resuming at iteration {done} (session {session})")
        while self.state.completed_iterations < self.settings.iterations:
            self.iteration(self.state.completed_iterations)
        return self.state

    def iteration(self, i: int) -> dict[str, Any]:
        """One iteration (module docstring); checkpoints and returns its history record."""
        start, clock = time.perf_counter(), _Clock()
        results = self._sample(i, clock)
        batches = [SampleBatch.concatenate([r.batch for r in rs]) for rs in results]
        self.hooks.before_c_step(i, batches)
        M = self.settings.num_conditions
        dynamics = [self._fit(i, m, results[m], clock) for m in range(M)]
        step_mults = self.hooks.step_mults(i, batches,
                                           lambda: [self.transport.decode_dynamics(d) for d in dynamics])
        updates = [self._c_step(i, m, results[m], dynamics[m], step_mults[m], clock) for m in range(M)]
        self.hooks.after_c_step(i, batches, updates)
        new_ids = tuple(u.controller_id for u in updates)
        evaluation = self._evaluate(i, new_ids, clock) if self.settings.evaluate else None
        record = self._record(i, batches, updates, evaluation, clock, time.perf_counter() - start)
        record.update(self.hooks.after_iteration(i, record))
        self.state = replace(self.state, completed_iterations=i + 1, controller_ids=new_ids,
                             history=self.state.history + (record,))
        save_state(self.run_dir, self.state)
        self.log(_summary_line(record))
        self.log(progress_message(i, self.settings.iterations, float(np.mean(record["mean_cost"])),
                                  record.get("eval_final_distance", record["mean_final_distance"]),
                                  time.perf_counter() - start, record.get("policy_tip_distance")))
        return record

    def _sample(self, i: int, clock: _Clock) -> list[list[TrialResult]]:
        """All samples of iteration i per condition (index order): recorded ones from the bags, the missing
        ones run now, every condition's at once (module docstring)."""
        start = time.perf_counter()
        n, M = self.settings.samples_per_condition, self.settings.num_conditions
        recorded = {m: self.store.samples(i, m) for m in range(M)}
        for m, have in recorded.items():
            if have:
                self.log(f"iteration {i} condition {m}: {len(have)} of {n} samples already recorded")
        missing = [(m, index) for m in range(M) for index in range(n) if index not in recorded[m]]
        writer = BagWriter(self.store)

        def request(key: tuple[int, int], attempt: int) -> TrialRequest:
            m, index = key
            return TrialRequest(condition=m, trial_id=trial_id(self.state.session, i, m, index, attempt),
                                controller_id=self.state.controller_ids[m],
                                seed=trial_seed(self.settings.seed, i, m, index, attempt))

        def keep(key: tuple[int, int], result: TrialResult) -> None:
            m, index = key
            recorded[m][index] = result.raw
            writer.put(i, m, index, result.raw)
            if len(recorded[m]) == n:  # the batch is complete: its bag is written off the critical path
                writer.close_batch(i, m, n)

        try:
            self._run_all(missing, request, keep,
                          lambda key: f"iteration {i}, condition {key[0]}, sample {key[1]}")
        except BaseException:
            with contextlib.suppress(Exception):  # what was queued is written; the first error stands
                writer.close()
            raise
        trials_done = time.perf_counter()
        writer.close()
        clock.seconds["recording_background"] += writer.busy_s
        clock.seconds["sampling"] += trials_done - start
        for m in range(M):
            self.store.close_batch(i, m, n)
        clock.add("recording", trials_done)  # the writer's last bag and the batches: on the critical path
        return [[self.transport.decode(recorded[m][index]) for index in range(n)] for m in range(M)]

    def _run_all(self, keys: Sequence[Any], request: Callable[[Any, int], TrialRequest],
                 keep: Callable[[Any, TrialResult], None], what: Callable[[Any], str]) -> None:
        """Run a trial for every key (``request(key, attempt)``), all at once; ``keep(key, result)`` as
        each succeeds; failed ones again with the next attempt; TrialFailedError after max_attempts."""
        attempts = dict.fromkeys(keys, 0)
        todo = list(keys)
        while todo:
            requests = [request(key, attempts[key]) for key in todo]

            def on_result(j: int, result: Any, todo: list[Any] = todo) -> None:
                if isinstance(result, TrialResult) and not result.meta.aborted:
                    keep(todo[j], result)

            results = run_trials(self.transport, requests, on_result)
            failed = []
            for key, req, result in zip(todo, requests, results, strict=True):
                if isinstance(result, TrialResult) and not result.meta.aborted:
                    continue
                if result is NOT_RUN:  # no robot was left for it: it never ran, same attempt again
                    self.log(f"trial {req.trial_id} ({what(key)}) not run: no robot was free for it; "
                             "asking again")
                    failed.append(key)
                    continue
                reason = "no sample" if result is None else f"aborted: {result.meta.abort_reason}"
                self.log(f"trial {req.trial_id} ({what(key)}) {reason}; re-running")
                attempts[key] += 1
                if attempts[key] >= self.settings.max_attempts:
                    raise TrialFailedError(f"{what(key)}: no sample in {self.settings.max_attempts} "
                                           "attempts")
                failed.append(key)
            todo = failed

    def _fit(self, i: int, m: int, samples: list[TrialResult], clock: _Clock) -> Any:
        start = time.perf_counter()
        dynamics = self.transport.fit_dynamics(m, i, samples)
        clock.add("fitting", start)
        return dynamics

    def _c_step(self, i: int, m: int, samples: list[TrialResult], dynamics: Any, step_mult: float | None,
                clock: _Clock) -> ControllerUpdate:
        start = time.perf_counter()
        reference = self.hooks.reference_for(i, m)
        try:
            update = self.transport.update_controller(m, i, dynamics, samples, reference, step_mult)
        except StepFailedError as err:
            if reference is None:
                raise
            # The failed step left the iLQR node's state untouched, so the same iteration can be
            # asked again; MDGPS in one process takes the same way out (mbpl_core.guided.mdgps.MDGPS._c_step).
            self.log(f"iteration {i} condition {m}: step against the reference failed ({err}); "
                     "taking an LQR-FLM step instead")
            update = replace(self.transport.update_controller(m, i, dynamics, samples, None, step_mult),
                             reference_fallback=True)
        clock.add("lqr", start)
        return update

    def _evaluate(self, i: int, ids: Sequence[int], clock: _Clock) -> list[TrialResult]:
        """One noiseless trial per condition of the controllers just computed (not part of the bags)."""
        start = time.perf_counter()
        out: dict[int, TrialResult] = {}

        def request(m: int, attempt: int) -> TrialRequest:
            return TrialRequest(m, trial_id(self.state.session, i, m, MAX_SAMPLES - 1, attempt), ids[m],
                                seed=0, add_noise=False)

        self._run_all(list(range(len(ids))), request, out.__setitem__,
                      lambda m: f"iteration {i}: evaluation trial of condition {m}")
        clock.add("evaluation", start)
        return [out[m] for m in range(len(ids))]

    def _record(self, i: int, batches: Sequence[SampleBatch], updates: Sequence[ControllerUpdate],
                evaluation: Sequence[TrialResult] | None, clock: _Clock, wall_s: float) -> dict[str, Any]:
        record: dict[str, Any] = {
            "iteration": i,
            "mean_cost": [float(np.mean(sample_costs(self.cost, b))) for b in batches],
            "mean_final_distance": [float(np.mean(final_distances(self.layout, b))) for b in batches],
            "controller_ids": [u.controller_id for u in updates],
            "reference_fallback": [bool(u.reference_fallback) for u in updates],
            **{key: [float(getattr(u, key)) for u in updates]
               for key in ("eta", "kl", "epsilon", "step_mult", "expected_cost")},
            "seconds": {**clock.seconds, "total": wall_s},
        }
        if evaluation is not None:
            record["eval_cost"] = [float(sample_costs(self.cost, r.batch)[0]) for r in evaluation]
            record["eval_final_distance"] = [float(final_distances(self.layout, r.batch)[0])
                                             for r in evaluation]
        return record


def _summary_line(record: dict[str, Any]) -> str:
    dist = record.get("eval_final_distance", record["mean_final_distance"])
    return (f"iteration {record['iteration']}: mean cost {np.mean(record['mean_cost']):.4g} "
            f"(per condition {[round(c, 3) for c in record['mean_cost']]}), final distance (m) "
            f"{[round(d, 4) for d in dist]}, step_mult {[round(s, 3) for s in record['step_mult']]}, "
            f"{record['seconds']['total']:.2f} s")


def run_summary(history: Sequence[dict[str, Any]]) -> str:
    """One line: iterations, mean cost first → last, final ee distance per condition (cm) at the end."""
    if not history:
        return "no iteration finished"
    first, last = history[0], history[-1]
    key = "eval_final_distance" if "eval_final_distance" in last else "mean_final_distance"
    dist = ", ".join(f"{100.0 * d:.2f}" for d in last[key])
    line = (f"{len(history)} iterations; mean cost {np.mean(first['mean_cost']):.4g} → "
            f"{np.mean(last['mean_cost']):.4g}; final ee distance (cm) per condition: [{dist}]")
    deployed = f"deployed policy (iteration {last.get('deployed_policy_iteration')})"
    for prefix, name in (("policy", "policy on training conditions"),
                         ("policy_held_out", "policy on held-out conditions"),
                         ("deployed_policy_held_out", f"{deployed} on held-out conditions")):
        if f"{prefix}_tip_distance" in last:  # GPS mode (mbpl_ros.gps_hooks)
            success, tips = last[f"{prefix}_success"], last[f"{prefix}_tip_distance"]
            line += (f"; {name}: {sum(success)}/{len(success)} succeed, median tip "
                     f"distance {100.0 * float(np.median(tips)):.2f} cm")
    return line
