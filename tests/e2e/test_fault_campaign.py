"""The fault campaign of issue 8, re-run: the whole learning graph (sim, sampler, fitting, iLQR, trainer
and a safety monitor on the effort topic, each its own process, one run token) under a seeded stream of
malformed controllers, policies, joint states and RunTrial requests from an outside node, while every
node is killed with SIGKILL once at a random time and started again with the same parameters.

Asserted: learning completes (the trainer exits 0 with every iteration in the history); no node exits
other than by the campaign's kills; no command on the effort topic is non-finite, of the wrong length
or over the limits (safety monitor); no fuzz input is ever accepted (the sampler's log names every
controller/policy it accepts: only the run's own ids appear), every fuzzed RunTrial is refused; the
bags hold exactly iterations × conditions × samples samples, each trial id once (nothing lost or
duplicated). The figures are printed (``pytest -s``) and written to ``<tmp>/campaign.json``.

Every node runs with its default parameters (timeouts, attempts). Scale: ``MBPL_CAMPAIGN_RATE`` fuzz
inputs per second (default 200), seed ``MBPL_CAMPAIGN_SEED``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")

from mbpl_ros.bringup import NodeSpec, graph_from_experiment, new_run_token  # noqa: E402
from mbpl_ros.cli import effective_config  # noqa: E402
from mbpl_ros.params import write_params_file  # noqa: E402
from mbpl_ros.recording import SampleStore  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "ros"))
from fuzz_messages import Robot, bad_inputs  # noqa: E402
from test_sim_in_the_loop import graph_env  # noqa: E402

CONFIG = REPO / "configs" / "reacher2_sim.yaml"
ITERATIONS, CONDITIONS, SAMPLES = 2, 4, 3
SEED = int(os.environ.get("MBPL_CAMPAIGN_SEED", "13"))
RATE = float(os.environ.get("MBPL_CAMPAIGN_RATE", "200"))
RUN_TIMEOUT = 300.0
VICTIMS = ("sim", "sampler", "fitting", "ilqr", "trainer")
COUNTERS = ("states_received", "states_rejected", "controllers_received", "controllers_rejected",
            "policies_received", "policies_rejected", "trials_requested", "trials_refused", "tokens_rejected")
FUZZ_ID_BASE = 10**12  # fuzz controller/policy ids: FUZZ_ID_BASE * (class + 1) + n, never the run's own


class Graph:
    """Each node its own process (bringup's description + the safety monitor); restartable after a kill."""

    def __init__(self, specs: list[NodeSpec], tmp: Path) -> None:
        self.specs = {s.name: s for s in specs}
        self.tmp, self.env = tmp, graph_env(tmp, domain_base=190, domains=30)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, list[Path]] = {}
        self.kills: list[str] = []

    def start(self, name: str) -> None:
        spec = self.specs[name]
        params = write_params_file(self.tmp / "params" / f"{name}.yaml", "/**", spec.parameters)
        log = self.tmp / f"{name}-{len(self.logs.get(name, []))}.log"
        self.logs.setdefault(name, []).append(log)
        with open(log, "wb") as out:
            self.procs[name] = subprocess.Popen(spec.command(params), env=self.env, cwd=REPO, stdout=out,
                                                stderr=subprocess.STDOUT)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()
        self.kills.append(name)

    def text(self, name: str) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs.get(name, []))

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}"
                         for logs in self.logs.values() for log in logs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Fuzzer:
    """The outside user: a thread publishing seeded bad inputs at ``rate`` per second, counting each class."""

    def __init__(self, robot: Robot, env: dict[str, str], rate: float, seed: int) -> None:
        self.robot, self.env, self.rate = robot, env, rate
        self.rng = np.random.default_rng(seed)
        self.sent: Counter[str] = Counter()
        self.trials_accepted: Counter[str] = Counter()
        self.trials_answered: Counter[str] = Counter()
        self.lifetimes: list[dict[str, int]] = []  # the sampler's newest counters, one dict per process
        self.quiet = threading.Event()  # set: stop sending, keep listening
        self.diagnostics_seen = 0
        self.seen = threading.Condition()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="fuzzer", daemon=True)

    def _run(self) -> None:
        try:
            self._fuzz()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            self.error = err

    def _fuzz(self) -> None:
        for key, value in self.env.items():  # the graph's domain, before rclpy reads it
            if key.startswith("ROS_"):
                os.environ[key] = value
        import rclpy
        from mbpl_msgs.msg import LinearGaussianController as ControllerMsg
        from mbpl_msgs.msg import PolicyParameters
        from mbpl_msgs.srv import RunTrial
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState

        from mbpl_ros.sampler_node import CONTROLLERS_QOS, LATCHED_QOS
        from mbpl_ros.sim_node import STATE_QOS

        context = Context()
        rclpy.init(context=context)
        node = rclpy.create_node("campaign_fuzzer", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        pubs = {"controller": node.create_publisher(ControllerMsg, "mbpl/controllers", CONTROLLERS_QOS),
                "policy": node.create_publisher(PolicyParameters, "mbpl/policy", LATCHED_QOS),
                "state": node.create_publisher(JointState, "joint_states", STATE_QOS)}
        client = node.create_client(RunTrial, "mbpl/run_trial")
        from diagnostic_msgs.msg import DiagnosticArray

        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        classes = [(kind, name, make) for kind, group in bad_inputs(self.robot).items()
                   for name, make in group.items()]
        # joint-state faults abort the running lockstep trial: a few, or learning could not proceed
        weights = np.array([0.05 if kind == "state" else 1.0 for kind, _, _ in classes])
        weights /= weights.sum()
        period, n = 1.0 / self.rate, 0
        try:
            next_at = time.monotonic()
            while not self.stop.is_set():
                if self.quiet.is_set():
                    executor.spin_once(timeout_sec=0.05)
                    continue
                index = int(self.rng.choice(len(classes), p=weights))
                kind, name, make = classes[index]
                n += 1
                msg = make(self.rng, FUZZ_ID_BASE * (index + 1) + n)
                self.sent[name] += 1
                if kind == "trial":
                    if client.service_is_ready():
                        future = client.call_async(msg)
                        future.add_done_callback(lambda f, c=name: self._answered(c, f))
                    else:
                        self.sent[name] -= 1  # nobody to ask (sampler restarting): not an input tried
                else:
                    pubs[kind].publish(msg)
                executor.spin_once(timeout_sec=0.0)
                next_at += period
                self.stop.wait(max(0.0, next_at - time.monotonic()))
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and sum(self.trials_answered.values()) < sum(
                    v for k, v in self.sent.items() if k.startswith("trial_")):
                executor.spin_once(timeout_sec=0.05)
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.shutdown(context=context)

    def _on_diagnostics(self, msg: object) -> None:
        for status in msg.status:  # type: ignore[attr-defined]
            if not status.name.startswith("mbpl_sampler"):
                continue
            values = {kv.key: kv.value for kv in status.values}
            counters = {k: int(values[k]) for k in COUNTERS}
            # a restarted sampler counts from zero again: a new lifetime
            if not self.lifetimes or counters["states_received"] < self.lifetimes[-1]["states_received"]:
                self.lifetimes.append(counters)
            else:
                self.lifetimes[-1] = counters
            with self.seen:
                self.diagnostics_seen += 1
                self.seen.notify_all()

    def totals(self) -> dict[str, int]:
        """The sampler's counters summed over its lifetimes (each lifetime's last /diagnostics)."""
        return {k: sum(life[k] for life in self.lifetimes) for k in COUNTERS}

    def _answered(self, name: str, future: object) -> None:
        result = future.result()  # type: ignore[attr-defined]
        if result is not None:
            self.trials_answered[name] += 1
            self.trials_accepted[name] += bool(result.accepted)


@pytest.fixture
def tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mbpl-campaign-") as folder:
        yield Path(folder)


def _specs(tmp: Path, run_dir: Path, token: str) -> list[NodeSpec]:
    sets = [f"algorithm.iterations={ITERATIONS}", f"algorithm.samples_per_condition={SAMPLES}"]
    sets += [f"ros.nodes.{n}.run_dir={run_dir}" for n in ("sampler", "fitting", "ilqr", "trainer")]
    config, _ = effective_config(CONFIG, sets, run_dir)
    specs = graph_from_experiment(config, run_token=token)
    monitor = NodeSpec("safety_monitor", "mbpl_ros.safety_monitor",
                       {"config": str(config), "summary_file": str(tmp / "safety.json")})
    return [monitor, *specs]


def _sampler_log_figures(graph: Graph) -> dict[str, int]:
    """From every sampler lifetime's log: fuzz ids ever accepted (13+ digits), rejections logged
    (one line per second carries "and N more"), invalid joint states counted."""
    text = graph.text("sampler")
    rejections = sum(1 + int(more or 0) for more in re.findall(
        r"rejected (?:controller|policy) .*?the last good one stays(?: \(and (\d+) more)?", text))
    states = sum(int(n) for n in re.findall(r"invalid joint state \((\d+) so far\)", text)[-1:])
    return {"accepted_fuzz_controllers": len(re.findall(r"accepted controller \d{13,}", text)),
            "deployed_fuzz_policies": len(re.findall(r"deployed policy \d{13,}", text)),
            "controller_policy_rejections_logged": rejections, "joint_states_rejected_last_lifetime": states}


def _progress(run_dir: Path) -> int:
    """Samples recorded so far, read without a SampleStore (whose constructor tidies up the trainer's
    in-flight temporary folders: only the trainer may own one)."""
    bags = run_dir / "bags"
    closed = len(list(bags.glob("iteration_*/condition_*")))
    return closed * SAMPLES + len([p for p in bags.glob("pending/iteration_*")])


def _check_bags(run_dir: Path) -> tuple[int, int, int]:
    """(samples, lost, duplicated) over every batch of the run."""
    from mbpl_msgs.msg import TrajectorySample
    from rclpy.serialization import deserialize_message

    store = SampleStore(run_dir)
    trial_ids: Counter[int] = Counter()
    lost = 0
    for i in range(ITERATIONS):
        for m in range(CONDITIONS):
            samples = store.samples(i, m)
            lost += SAMPLES - len(samples)
            for raw in samples.values():
                trial_ids[int(deserialize_message(raw, TrajectorySample).trial_id)] += 1
    duplicated = sum(c - 1 for c in trial_ids.values())
    return store.count(), lost, duplicated


def test_fault_campaign_finds_no_crash_no_stall_and_no_unsafe_command(tmp: Path) -> None:
    run_dir, token = tmp / "run", new_run_token()
    graph = Graph(_specs(tmp, run_dir, token), tmp)
    from mbpl_sim.env import MujocoEnv
    from mbpl_sim.experiment import load_experiment

    env = MujocoEnv(load_experiment(graph.specs["sampler"].parameters["config"]))
    robot = Robot(env.T, env.dU, env.dX, tuple(env.joint_names), env.num_conditions, token)
    fuzzer = Fuzzer(robot, graph.env, RATE, SEED)
    rng = np.random.default_rng(SEED)
    victims = list(rng.permutation(VICTIMS))
    start = time.monotonic()
    try:
        for name in graph.specs:
            graph.start(name)
        fuzzer.thread.start()
        trainer_exit = None
        while victims or trainer_exit is None:
            elapsed = time.monotonic() - start
            assert elapsed < RUN_TIMEOUT, f"stalled: no end in {RUN_TIMEOUT} s\n{graph.output()}"
            for name, proc in graph.procs.items():
                if name != "trainer":
                    assert proc.poll() is None, f"{name} exited by itself\n{graph.output()}"
            trainer = graph.procs["trainer"]
            if trainer.poll() is not None:
                trainer_exit = trainer.returncode
                assert trainer_exit == 0, graph.output()
                break
            if victims and _progress(run_dir) >= (len(VICTIMS) - len(victims) + 1) * 2:
                victim = str(victims.pop(0))
                time.sleep(float(rng.uniform(0.0, 1.5)))  # a random moment within the running phase
                graph.kill(victim)
                graph.start(victim)
            time.sleep(0.1)
        fuzzer.quiet.set()  # then a few more /diagnostics of the sampler: its counts include every input
        with fuzzer.seen:
            seen = fuzzer.diagnostics_seen
            assert fuzzer.seen.wait_for(lambda: fuzzer.diagnostics_seen >= seen + 3, 15.0), "no /diagnostics"
        fuzzer.stop.set()
        fuzzer.thread.join(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        fuzzer.stop.set()
        if fuzzer.thread.is_alive():
            fuzzer.thread.join(timeout=30)  # out of rclpy before the interpreter may exit
        graph.stop()
    assert fuzzer.error is None, repr(fuzzer.error)
    safety = json.loads((tmp / "safety.json").read_text())
    samples, lost, duplicated = _check_bags(run_dir)
    log_figures = _sampler_log_figures(graph)
    accepted = {k: log_figures[k] for k in ("accepted_fuzz_controllers", "deployed_fuzz_policies")}
    history = json.loads((run_dir / "history.json").read_text())
    refused = {k: fuzzer.trials_answered[k] - fuzzer.trials_accepted[k] for k in fuzzer.trials_answered}
    figures = {"seconds": round(elapsed, 1), "inputs_per_class": dict(sorted(fuzzer.sent.items())),
               "inputs_total": sum(fuzzer.sent.values()), "sampler_log": log_figures,
               "run_trial_refused_per_class": refused, "sampler_diagnostics_total": fuzzer.totals(),
               "sampler_lifetimes": len(fuzzer.lifetimes), "kills": graph.kills,
               "crashes": 0, "commands": safety["commands_seen"],
               "unsafe_commands": safety["unsafe_commands"],
               "samples": samples, "samples_lost": lost, "samples_duplicated": duplicated,
               "iterations": len(history)}
    (tmp / "campaign.json").write_text(json.dumps(figures, indent=1))
    print("\nfault campaign:", json.dumps(figures, indent=1))
    assert not victims and sorted(graph.kills) == sorted(VICTIMS), graph.kills
    assert safety["unsafe_commands"] == 0, safety["last_unsafe"]
    assert safety["commands_seen"] > ITERATIONS * CONDITIONS * SAMPLES * (env.T - 1) * 0.9
    assert accepted == {"accepted_fuzz_controllers": 0, "deployed_fuzz_policies": 0}
    assert sum(fuzzer.trials_accepted.values()) == 0, fuzzer.trials_accepted
    assert (samples, lost, duplicated) == (ITERATIONS * CONDITIONS * SAMPLES, 0, 0)
    assert [r["iteration"] for r in history] == list(range(ITERATIONS))
