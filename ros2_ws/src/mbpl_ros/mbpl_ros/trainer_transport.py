"""The trainer's link to the graph: RunTrial + samples, FitDynamics, UpdateController, with retries.

* ``run_trial``: RunTrial until accepted (a refusal — e.g. "controller 7 for condition 2 not received
  yet" — is retried with backoff 0.05 s → 1 s for up to ``refused_wait`` s; after ``republish_after`` s
  of "not received yet" the trainer republishes that controller as the iLQR node sent it, so a sampler
  that lost it recovers at once), then wait up to ``trial_timeout`` s for the sample with that trial_id
  on ``mbpl/samples`` (subscribed raw, so the CDR bytes that go into the bags are exactly those on the
  wire), sending the request again every ``requery_after`` s meanwhile (a trial lost with a killed
  sampler is queued again on its successor). With one robot the next trial of a batch is put (one try)
  while one runs, so the sampler starts it without a round trip in between. An aborted sample (maybe
  with no step: t_steps = 0) is returned as such and re-run by the loop; a sample that does not decode
  is logged and counts as missing;
* ``fit_dynamics`` / ``update_controller``: asked again after ``service_timeout`` s without an answer
  (a restarted server may have lost the request); safe because both services are idempotent. An
  answer with success = false raises :class:`~mbpl_ros.trainer_logic.StepFailedError`;
* ``publish_policy`` (GPS mode): the trained policy on ``mbpl/policy`` (PolicyParameters; reliable,
  transient-local depth 10, so a sampler that starts or restarts later still gets the newest);
* ``controller`` (GPS mode): an LG controller by id as the iLQR node published it on ``mbpl/controllers``
  (subscribed transient-local, so the initial ones published before the trainer started arrive too).

Several robots (parameter ``robots``: namespaces): each has its own ``<ns>/mbpl/run_trial`` and
``<ns>/mbpl/samples``; :meth:`GraphTransport.run_trials` hands a batch of independent trials to the robots
(a thread per robot takes the next trial it may run: ``robot_conditions`` pins conditions to robots), so
they sample in parallel. A robot whose sampler is gone (its service absent or silent for ``requery_after``
s when asked or re-asked) or that does not deliver a trial within ``trial_timeout`` takes no more trials
of the batch, and its trial is queued again for another robot (same request, so the same sample in
lockstep; counted in ``requeued`` and logged); a late sample of it from the first robot is taken if it
comes first and is not aborted, and only one is ever returned. An aborted sample is the trial's answer
(the loop runs the next attempt). With one robot (no namespace) the names are the relative ones above.

Every request and publication carries the run's ``run_token``; controllers on ``mbpl/controllers``
with another token are ignored. Every subscription callback is total (a bad message is logged, never
raised). Every wait checks for SIGINT/SIGTERM and leaves with ExternalShutdownException.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from mbpl_msgs.msg import LinearGaussianController as ControllerMsg
from mbpl_msgs.msg import PolicyParameters, TrajectorySample
from mbpl_msgs.srv import FitDynamics, FitModel, RunTrial, UpdateController
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message

from mbpl_core.containers import LinearDynamics, LinearGaussianController, ShapeError
from mbpl_core.policy import PolicyParams
from mbpl_ros import conversions
from mbpl_ros.node_params import TrainerNodeParams
from mbpl_ros.pets_trainer import ModelFit
from mbpl_ros.trainer_logic import (
    NOT_RUN,
    ControllerUpdate,
    StepFailedError,
    TrialRequest,
    TrialResult,
)

POLICY_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)
CONTROLLERS_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
KEPT_CONTROLLERS = 256  # newest controller messages kept by id (a few iterations of many conditions)


def decode_sample(raw: bytes) -> TrialResult:
    """A TrajectorySample's CDR bytes as a TrialResult; an aborted one (possibly with no step, t_steps = 0)
    keeps its metadata only (batch None), so the loop sees the abort and re-runs the trial."""
    msg = deserialize_message(raw, TrajectorySample)
    if msg.aborted:
        return TrialResult(raw, None, conversions.msg_to_sample_metadata(msg))
    batch, meta = conversions.msg_to_sample(msg)
    return TrialResult(raw, batch, meta)


def may_run(robot: str, condition: int, pinned: dict[str, frozenset[int]]) -> bool:
    """Whether ``robot`` runs ``condition``: a condition pinned to robots runs on those only, any other on
    every robot (``robot_conditions``)."""
    if any(condition in c for c in pinned.values()):
        return condition in pinned.get(robot, frozenset())
    return True


def _robot_name(namespace: str, name: str) -> str:
    """A robot's own topic or service: ``<namespace>/<name>`` (relative), or ``name`` without a namespace."""
    return f"{namespace}/{name}" if namespace else name


class _RobotPool:
    """One batch of trials over several robots: a thread per robot takes the next trial it may run.

    A trial that comes back without a sample (the robot's sampler gone, silent or late) is queued again,
    unchanged, for another robot, and that robot takes no more trials of the batch. An aborted sample is
    the trial's answer (in lockstep the same request aborts the same way on any robot; the loop runs a
    next attempt). A trial no robot is left for is answered :data:`NOT_RUN` (the loop asks again at the
    same attempt: it never ran).
    """

    def __init__(self, transport: GraphTransport, requests: Sequence[TrialRequest],
                 on_result: Callable[[int, Any], None] | None) -> None:
        self.transport, self.requests, self.on_result = transport, list(requests), on_result
        self.pending = list(range(len(self.requests)))
        self.results: list[Any] = [NOT_RUN] * len(self.requests)
        self.failed_on: dict[int, set[int]] = {j: set() for j in self.pending}
        self.out_of_batch: set[int] = set()  # robots that lost a trial of this batch
        self.in_flight = 0
        self.cv = threading.Condition()
        self.error: BaseException | None = None

    def run(self) -> list[Any]:
        threads = [threading.Thread(target=self._worker, args=(k,), name=f"robot-{ns}", daemon=True)
                   for k, ns in enumerate(self.transport.robots)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException as err:  # SIGINT in the joining thread: stop the workers before leaving
            self._fail(err)
            for t in threads:
                t.join(timeout=15.0)
            raise
        if self.error is not None:
            raise self.error
        return self.results

    def _fail(self, err: BaseException) -> None:
        with self.cv:
            self.error = self.error or err  # the first error is the cause
            self.cv.notify_all()

    def _eligible(self, robot: int, j: int) -> bool:
        return (robot not in self.failed_on[j] and robot not in self.out_of_batch
                and self.transport.may_run(robot, self.requests[j].condition))

    def _someone_can(self, j: int) -> bool:
        return any(self._eligible(k, j) for k in range(len(self.transport.robots)))

    def _take(self, robot: int) -> int | None:
        """The next trial this robot may run; None once none is left for it (waits while others run)."""
        with self.cv:
            while True:
                if self.error is not None or robot in self.out_of_batch:
                    return None
                j = next((j for j in self.pending if self._eligible(robot, j)), None)
                if j is not None:
                    self.pending.remove(j)
                    self.in_flight += 1
                    return j
                if self.in_flight == 0:
                    return None
                self.cv.wait(0.5)  # a trial in flight elsewhere may come back to the queue

    def _worker(self, robot: int) -> None:
        while True:
            j = self._take(robot)
            if j is None:
                return
            try:
                result = self.transport._run_on(robot, self.requests[j], give_up_if_absent=True)
                with self.cv:
                    self.in_flight -= 1
                    self._settle(robot, j, result)
                    self.cv.notify_all()
            except BaseException as err:  # noqa: BLE001 - shutdown or a bug: end the batch with it
                self._fail(err)
                return

    def _settle(self, robot: int, j: int, result: TrialResult | None) -> None:
        """(under the lock) Keep trial j's answer, or queue it again for another robot."""
        ns = self.transport.robots[robot]
        if result is None:
            self.failed_on[j].add(robot)
            self.out_of_batch.add(robot)
            if self._someone_can(j):
                self.pending.insert(0, j)
                self.transport.requeued += 1
                self.transport.get_logger().warning(
                    f"trial {self.requests[j].trial_id} lost on robot {ns} (no sample): queued again for "
                    f"another robot; {ns} takes no more trials of this batch")
            else:
                self._answer(j, None)  # lost on every robot that may run it: a failed attempt
        else:
            self._answer(j, result)
        for k in list(self.pending):  # trials no robot is left for: lost (tried) or never run
            if not self._someone_can(k):
                self.pending.remove(k)
                self._answer(k, None if self.failed_on[k] else NOT_RUN)

    def _answer(self, j: int, result: Any) -> None:
        self.results[j] = result
        if self.on_result is not None:
            self.on_result(j, result)


class GraphTransport:
    """trainer_logic.Transport over the graph's services and topics, on the trainer's node.

    Its methods block (they are called from the trainer's loop thread); the node must be spun by an
    executor in another thread, which serves the clients' responses and the sample subscription.
    """

    def __init__(self, node: Node, params: TrainerNodeParams) -> None:
        self.node, self.params = node, params
        self.context = node.context
        group = ReentrantCallbackGroup()
        namespaces, self.pinned = params.robot_pool()
        self.robots: tuple[str, ...] = namespaces or ("",)
        self._trial_clients = [node.create_client(RunTrial, _robot_name(ns, "mbpl/run_trial"),
                                                  callback_group=group) for ns in self.robots]
        self._fit = node.create_client(FitDynamics, "mbpl/fit_dynamics", callback_group=group)
        self._update = node.create_client(UpdateController, "mbpl/update_controller", callback_group=group)
        self._fit_model = node.create_client(FitModel, "mbpl/fit_model", callback_group=group)
        self._samples: dict[int, bytes | None] = {}  # expected trial ids → raw sample once it arrived
        self._cv = threading.Condition()
        self._stopping = False
        self.context.on_shutdown(self._wake)
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self._awaited_on: dict[int, int] = {}  # trial id → the robot running it now
        for k, ns in enumerate(self.robots):
            node.create_subscription(TrajectorySample, _robot_name(ns, "mbpl/samples"),
                                     lambda raw, robot=k: self._on_sample(raw, robot), qos,
                                     callback_group=group, raw=True)
        self.requeued = 0  # trials handed to another robot after theirs failed (diagnostics, tests)
        self._robots_checked = len(self.robots) == 1
        self._down: set[int] = set()  # robots left out of batches while their sampler is not up
        self._policy_pub = node.create_publisher(PolicyParameters, "mbpl/policy", POLICY_QOS)
        self._controllers: OrderedDict[int, Any] = OrderedDict()  # controller id → message
        node.create_subscription(ControllerMsg, "mbpl/controllers", self._on_controller, CONTROLLERS_QOS,
                                 callback_group=group)
        self._controller_pub = node.create_publisher(ControllerMsg, "mbpl/controllers", CONTROLLERS_QOS)
        self.republished: list[int] = []  # controller ids republished after refusals (diagnostics, tests)

    def get_logger(self) -> Any:
        return self.node.get_logger()

    def _wake(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()

    def _check_running(self) -> None:
        """Leave the loop (ExternalShutdownException) once SIGINT/SIGTERM shut the context down."""
        if self._stopping or not self.context.ok():
            raise ExternalShutdownException()

    def _on_sample(self, raw: bytes, robot: int = 0) -> None:
        """A sample from robot ``robot``: kept for the trial awaiting it; from another robot than the one
        running the trial now (a late one of a trial queued again) only if it is not aborted."""
        try:
            msg = deserialize_message(raw, TrajectorySample)
            trial, aborted = int(msg.trial_id), bool(msg.aborted)
        except Exception as err:  # noqa: BLE001 - a callback must never raise
            self.get_logger().warning(f"undecodable message on mbpl/samples ignored: {err!r}")
            return
        with self._cv:
            if trial in self._samples and (self._awaited_on.get(trial, robot) == robot or not aborted):
                self._samples[trial] = bytes(raw)
                self._cv.notify_all()

    def _on_controller(self, msg: ControllerMsg) -> None:
        if msg.run_token != self.params.run_token:
            return  # not from this run's iLQR node
        with self._cv:
            self._controllers[int(msg.controller_id)] = msg
            self._controllers.move_to_end(int(msg.controller_id))
            while len(self._controllers) > KEPT_CONTROLLERS:
                self._controllers.popitem(last=False)
            self._cv.notify_all()

    def _call(self, client: Any, request: Any, timeout: float) -> Any:
        """The response, or None after ``timeout`` s (also when the service is not up)."""
        self._check_running()
        try:
            if not client.wait_for_service(timeout_sec=min(timeout, 5.0)):
                return None
            done = threading.Event()
            future = client.call_async(request)
            future.add_done_callback(lambda _: done.set())
            deadline = time.monotonic() + timeout
            while not done.wait(0.1):  # in slices, to notice SIGINT/SIGTERM
                self._check_running()
                if time.monotonic() > deadline:
                    client.remove_pending_request(future)
                    return None
        except Exception:  # rcl raises once SIGINT/SIGTERM invalidated the context
            self._check_running()
            raise
        self._check_running()
        return future.result()

    # -- Transport -----------------------------------------------------------------------------------
    def run_trial(self, request: TrialRequest) -> TrialResult | None:
        return self.run_trials([request])[0]

    def run_trials(self, requests: Sequence[TrialRequest],
                   on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Every request run on some robot, in parallel over the robots (module docstring); the result of
        request j at j: its sample (maybe aborted), None (no sample) or NOT_RUN (no robot was left for it).
        ``on_result(j, result)`` is called as each one is final, one at a time (from the robot's thread with
        several robots, from the caller's with one)."""
        if len(self.robots) == 1:
            return self._run_queued(requests, on_result)
        self._await_robots()
        pool = _RobotPool(self, requests, on_result)
        pool.out_of_batch |= self._robots_down()
        return pool.run()

    def _robots_down(self) -> set[int]:
        """Robots whose sampler's service is not up now (discovery dropped it: a sampler that died in an
        earlier batch), left out of the batch instead of costing it a wait each time; none left out when
        no robot is up (then each is asked and waited for as usual). Changes are logged once."""
        down = {k for k, client in enumerate(self._trial_clients) if not client.service_is_ready()}
        if len(down) == len(self.robots):
            down = set()
        for k, ns in enumerate(self.robots):
            if (k in down) != (k in self._down):
                change = "gone: its trials go to the others" if k in down else "back: it takes trials again"
                self.get_logger().warning(f"robot {ns}: sampler {change}")
        self._down = down
        return down

    def _await_robots(self, timeout: float = 30.0) -> None:
        """Before the first batch: wait up to ``timeout`` s for every robot's sampler (they start together
        with the trainer); one still missing is named, and its trials go to the others meanwhile."""
        if self._robots_checked:
            return
        self._robots_checked = True
        deadline = time.monotonic() + timeout
        for ns, client in zip(self.robots, self._trial_clients, strict=True):
            while not client.wait_for_service(timeout_sec=0.5):
                self._check_running()
                if time.monotonic() > deadline:
                    self.get_logger().warning(f"robot {ns}: no sampler after {timeout:g} s; the other robots "
                                              "take its trials until it answers")
                    break

    def may_run(self, robot: int, condition: int) -> bool:
        """Whether robot ``robot`` (index into robots) runs ``condition``: a condition pinned to robots
        (robot_conditions) runs on those only, any other on every robot."""
        return may_run(self.robots[robot], condition, self.pinned)

    def _run_on(self, robot: int, request: TrialRequest, give_up_if_absent: bool) -> TrialResult | None:
        """RunTrial on robot ``robot`` and the sample (maybe aborted); None if refused or lost (logged)."""
        return self._collect(robot, request, self._put(robot, request, give_up_if_absent), give_up_if_absent)

    def _request(self, robot: int, request: TrialRequest) -> RunTrial.Request:
        """The RunTrial request of a trial, its sample expected from robot ``robot`` from now on."""
        with self._cv:
            self._samples[request.trial_id] = None
            self._awaited_on[request.trial_id] = robot
        return RunTrial.Request(condition=request.condition, trial_id=request.trial_id, seed=request.seed,
                                policy_kind=request.policy_kind, add_noise=request.add_noise,
                                controller_id=request.controller_id, run_token=self.params.run_token)

    def _put(self, robot: int, request: TrialRequest, give_up_if_absent: bool) -> RunTrial.Request | None:
        """Have robot ``robot`` queue the trial, asking until it accepts: the request it accepted, or None if
        it kept refusing (:meth:`_collect` ends the expectation of the sample either way)."""
        msg = self._request(robot, request)
        try:
            return msg if self._until_accepted(self._trial_clients[robot], msg, give_up_if_absent) else None
        except BaseException:
            self._forget(request.trial_id)
            raise

    def _put_ahead(self, robot: int, request: TrialRequest) -> RunTrial.Request | None:
        """One try to queue a trial behind the one running (no retry, no waiting: a refusal, e.g. a full
        queue or a controller not there yet, leaves it to :meth:`_put` in its turn); None if not queued."""
        msg = self._request(robot, request)
        try:
            response = self._call(self._trial_clients[robot], msg, min(10.0, self.params.requery_after))
        except BaseException:
            self._forget(request.trial_id)
            raise
        if response is not None and response.accepted:
            return msg
        self._forget(request.trial_id)
        return None

    def _forget(self, trial_id: int) -> None:
        with self._cv:
            self._samples.pop(trial_id, None)
            self._awaited_on.pop(trial_id, None)

    def _collect(self, robot: int, request: TrialRequest, accepted: RunTrial.Request | None,
                 give_up_if_absent: bool) -> TrialResult | None:
        """The sample of a trial :meth:`_put` to robot ``robot``; None if it was refused or is lost."""
        try:
            if accepted is None:
                return None
            raw = self._await_sample(self._trial_clients[robot], accepted, give_up_if_absent)
            self._check_running()
            if raw is None:
                return None
            try:
                return self.decode(raw)
            except Exception as err:  # noqa: BLE001 - a malformed sample is a missing one, re-run
                self.get_logger().error(f"sample of trial {request.trial_id} does not decode: {err}")
                return None
        finally:
            self._forget(request.trial_id)

    def _run_queued(self, requests: Sequence[TrialRequest],
                    on_result: Callable[[int, Any], None] | None) -> list[Any]:
        """One robot: the requests in order, each put to the sampler while the one before runs, so the
        sampler starts it as soon as it has published the last (no round trip between two trials)."""
        out: list[Any] = []
        ahead: dict[int, RunTrial.Request | None] = {}
        try:
            for j, request in enumerate(requests):
                accepted = ahead.pop(j, None)
                if accepted is None:  # not put ahead, or refused then: asked now until accepted
                    accepted = self._put(0, request, False)
                if accepted is not None and j + 1 < len(requests):
                    ahead[j + 1] = self._put_ahead(0, requests[j + 1])
                out.append(self._collect(0, request, accepted, False))
                if on_result is not None:
                    on_result(j, out[-1])
        finally:
            for j in ahead:  # left by an error or a shutdown: no sample is expected any more
                self._forget(requests[j].trial_id)
        return out

    def _await_sample(self, client: Any, msg: RunTrial.Request, give_up_if_absent: bool) -> bytes | None:
        """The sample of an accepted trial, or None after trial_timeout s.

        Every ``requery_after`` s without it the request is sent again: a sampler that still has the
        trial answers "already queued"; one restarted since (killed with the trial) queues it anew, so
        the trial runs without waiting out trial_timeout. A refusal then goes back to the retry loop.
        ``give_up_if_absent`` (several robots): a sampler whose service is gone or that does not answer the
        request again (a live one answers at once) loses the trial.
        """
        tid = int(msg.trial_id)
        deadline = time.monotonic() + self.params.trial_timeout
        while True:
            remaining = deadline - time.monotonic()
            with self._cv:
                self._cv.wait_for(lambda: self._stopping or self._samples[tid] is not None,
                                  max(0.0, min(remaining, self.params.requery_after)))
                raw = self._samples[tid]
            self._check_running()
            if raw is not None or remaining <= self.params.requery_after:
                return raw
            response = self._call(client, msg, min(10.0, self.params.requery_after))
            if response is None and give_up_if_absent:  # gone or hung: a live sampler answers at once
                with self._cv:
                    return self._samples[tid]  # it may have come in meanwhile
            if response is not None and not response.accepted:
                self.get_logger().warning(f"trial {tid} lost by the sampler ({response.message}); "
                                          "asking again")
                if not self._until_accepted(client, msg, give_up_if_absent):
                    return None
            elif response is not None and "already queued" not in response.message:
                self.get_logger().warning(f"trial {tid} was lost by the sampler (restarted?); queued again")

    def _until_accepted(self, client: Any, msg: RunTrial.Request, give_up_if_absent: bool = False) -> bool:
        """Ask until the sampler accepts, backing off 0.05 s → 1 s; False after refused_wait seconds (or,
        ``give_up_if_absent``, as soon as its service is not up or does not answer in requery_after s)."""
        start = time.monotonic()
        deadline, delay, last = start + self.params.refused_wait, 0.05, ""
        republish_at = start + self.params.republish_after
        while time.monotonic() < deadline:
            timeout = self.params.requery_after if give_up_if_absent else self.params.refused_wait
            response = self._call(client, msg, min(10.0, timeout))
            if response is not None and response.accepted:
                return True
            if response is None and give_up_if_absent:  # gone or hung: a live sampler answers at once
                return False
            if response is not None and response.message != last:
                last = response.message
                self.get_logger().info(f"trial {msg.trial_id} refused: {last}; retrying")
            missing = response is not None and "not received yet" in response.message
            if missing and msg.controller_id and time.monotonic() >= republish_at:
                self._republish(int(msg.controller_id))
                republish_at = time.monotonic() + self.params.republish_after
            time.sleep(delay)
            delay = min(1.0, 2.0 * delay)
        self.get_logger().warning(f"trial {msg.trial_id} still refused after {self.params.refused_wait:g} s")
        return False

    def _republish(self, controller_id: int) -> None:
        """Publish controller ``controller_id`` again as the iLQR node sent it (if this trainer has it)."""
        with self._cv:
            msg = self._controllers.get(controller_id)
        if msg is None:
            self.get_logger().warning(f"controller {controller_id} refused as missing and not known here")
            return
        self.get_logger().warning(f"the sampler lacks controller {controller_id}: republishing it")
        self._controller_pub.publish(msg)
        self.republished.append(controller_id)

    def decode(self, raw: bytes) -> TrialResult:
        return decode_sample(raw)

    def _ask(self, client: Any, request: Any, what: str) -> Any:
        """Call an idempotent service until it answers (asked again after a timeout); raise if it fails."""
        while True:
            response = self._call(client, request, self.params.service_timeout)
            if response is None:
                timeout = self.params.service_timeout
                self.get_logger().warning(f"{what}: no answer in {timeout:g} s; asking again")
                continue
            if not response.success:
                raise StepFailedError(f"{what} failed: {response.message}")
            return response

    def fit_dynamics(self, condition: int, iteration: int, samples: Sequence[TrialResult]) -> Any:
        msgs = [deserialize_message(s.raw, TrajectorySample) for s in samples]
        request = FitDynamics.Request(condition=condition, iteration=iteration, samples=msgs)
        return self._ask(self._fit, request, f"fit_dynamics({condition}, {iteration})").dynamics

    def fit_model(self, iteration: int, samples: Sequence[TrialResult]) -> ModelFit:
        """PETS: add one iteration's trajectories to the model node's data and refit (idempotent)."""
        msgs = [deserialize_message(s.raw, TrajectorySample) for s in samples]
        request = FitModel.Request(iteration=iteration, samples=msgs, run_token=self.params.run_token)
        r = self._ask(self._fit_model, request, f"fit_model({iteration})")
        return ModelFit(int(r.model_version), float(r.holdout_nll), int(r.transitions))

    def decode_dynamics(self, dynamics: Any) -> LinearDynamics:
        return conversions.msg_to_dynamics(dynamics)

    def update_controller(self, condition: int, iteration: int, dynamics: Any, samples: Sequence[TrialResult],
                          reference: LinearGaussianController | None,
                          step_mult: float | None = None) -> ControllerUpdate:
        msgs = [deserialize_message(s.raw, TrajectorySample) for s in samples]
        request = UpdateController.Request(condition=condition, iteration=iteration, dynamics=dynamics,
                                           samples=msgs, has_reference=reference is not None,
                                           step_mult=0.0 if step_mult is None else float(step_mult))
        if reference is not None:
            request.reference = conversions.controller_to_msg(reference, condition, 0)
        r = self._ask(self._update, request, f"update_controller({condition}, {iteration})")
        return ControllerUpdate(int(r.controller.controller_id), r.eta, r.kl, r.epsilon, r.step_mult,
                                r.expected_cost, conversions.msg_to_controller(r.controller))

    def controller(self, controller_id: int, timeout: float) -> LinearGaussianController | None:
        """The LG controller ``controller_id`` from mbpl/controllers; None if absent after ``timeout`` s."""
        with self._cv:
            self._cv.wait_for(lambda: self._stopping or controller_id in self._controllers, timeout)
            msg = self._controllers.get(controller_id)
        self._check_running()
        if msg is None:
            return None
        try:
            return conversions.msg_to_controller(msg)
        except ShapeError as err:
            self.get_logger().error(f"controller {controller_id} on mbpl/controllers is malformed: {err}")
            return None

    def publish_policy(self, params: PolicyParams, policy_id: int) -> None:
        """Publish a trained policy (weights, normalisation, obs_indices) for the sampler to deploy."""
        stamp = self.node.get_clock().now().to_msg()
        self._policy_pub.publish(conversions.policy_params_to_msg(params, policy_id, stamp,
                                                                  self.params.run_token))
