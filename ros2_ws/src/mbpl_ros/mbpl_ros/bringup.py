"""The one description of the mbpl node graph, and a process launcher for machines without ros2 launch.

:func:`graph_from_experiment` turns an experiment YAML (its ``ros:`` section and its path) into a list
of :class:`NodeSpec`. Both ``launch/mbpl_sim.launch.py`` (full ROS 2 installs) and ``mbpl launch``
(:class:`ProcessLauncher`) start exactly that list, so the two cannot drift.

``ros:`` section keys (all optional)::

    lockstep: true               # sim node mode: lockstep (true) or realtime (false)
    controller: effort_controller  # efforts travel on <controller>/commands
    realtime_rate: 0.0           # realtime sim steps per second; 0 = 1/dt
    sim: true                    # false on hardware: a robot driver publishes joint_states instead
    sim_link: dds                # lockstep sim: "dds" (a sim node, the topics of a robot driver) or
                                 # "in_process" (each sampler steps MuJoCo itself: no sim node)
    respawn: []                  # names of nodes restarted when they exit
    nodes: {sampler: {...}}      # extra parameters per node name, checked against the node's schema
    robots: 1                    # robot-side pairs (sim or driver + sampler): N, or a list of namespaces
    robot_conditions: {}         # optional pinning: namespace -> the conditions only that robot runs

Several robots (``robots: N > 1`` → namespaces ``robot0 … robot{N-1}``, or a list of names): each robot's
sim node and sampler run in the robot's namespace, so ``joint_states``, ``<controller>/commands``,
``reset_sim``, ``mbpl/run_trial`` and ``mbpl/samples`` are the robot's own; the controllers and policies
are the run's, remapped to the global ``/mbpl/controllers`` and ``/mbpl/policy`` (and a sim's ``/clock``
to its namespace). The trainer gets the namespaces (parameter ``robots``) and hands each trial to a free
robot (:mod:`mbpl_ros.trainer_transport`). One robot keeps the names un-namespaced, as before.

Every node receives ``config`` (absolute experiment path) and, except the sim node, ``run_dir`` when
one is given; the sampler, iLQR and trainer nodes receive ``run_token`` (the sampler accepts
controllers, policies and trials carrying only this token; ``mbpl launch`` and the launch file draw a
fresh one per launch with :func:`new_run_token`); the sim node and the sampler also receive ``mode``
and ``controller``, the sim node ``realtime_rate`` and the sampler the same value as ``rate_hz``.
The trainer is the graph's *required* node: when it exits the graph is shut down and its exit code is
the launcher's.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from mbpl_core.config import ConfigError, from_dict
from mbpl_ros.console import ROS_LOG_FORMAT, Console
from mbpl_ros.params import write_params_file

GRAPH_NODES = (
    ("sim", "mbpl_ros.sim_node"),
    ("sampler", "mbpl_ros.sampler_node"),
    ("fitting", "mbpl_ros.fitting_node"),
    ("ilqr", "mbpl_ros.ilqr_node"),
    ("model", "mbpl_ros.model_node"),
    ("planner", "mbpl_ros.planner_node"),
    ("trainer", "mbpl_ros.trainer_node"),
)
# the nodes each method's graph runs (local models: fitting + iLQR; PETS: the learned model + planner)
METHOD_NODES = {
    "lqr_flm": ("sim", "sampler", "fitting", "ilqr", "trainer"),
    "mdgps": ("sim", "sampler", "fitting", "ilqr", "trainer"),
    "pets": ("sim", "sampler", "model", "planner", "trainer"),
    # the policy learners train in the trainer itself (model, rollouts, SAC updates): off the robot's path
    "sac": ("sim", "sampler", "trainer"),
    "mbpo": ("sim", "sampler", "trainer"),
    "bptt": ("sim", "sampler", "trainer"),
}
REQUIRED_NODE = "trainer"
# each graph node's declared parameter schema (module:class), imported only to check ros.nodes entries
NODE_SCHEMAS = {
    "sim": "mbpl_ros.sim_node:SimNodeParams",
    "sampler": "mbpl_ros.sampler_logic:SamplerParams",
    "fitting": "mbpl_ros.node_params:FittingNodeParams",
    "ilqr": "mbpl_ros.node_params:IlqrNodeParams",
    "model": "mbpl_ros.node_params:ModelNodeParams",
    "planner": "mbpl_ros.node_params:PlannerNodeParams",
    "trainer": "mbpl_ros.node_params:TrainerNodeParams",
}
ROS_NODE_PARAMETERS = {"use_sim_time": bool}  # declared by rclpy itself on every node


def check_node_parameters(name: str, params: Any) -> None:
    """``ros.nodes.<name>``: a mapping of parameters the node declares, each valid for it.

    The values are checked by the node's own schema (types and ``__post_init__``), so a typo or a bad
    value is a ConfigError before any node starts; without this a misspelt parameter is silently ignored
    by ROS (a params file may hold parameters a node never declares).
    """
    if not isinstance(params, Mapping):
        raise ConfigError(f"ros.nodes.{name}: expected a mapping of parameters, got {params!r}")
    for key, kind in ROS_NODE_PARAMETERS.items():
        if key in params and not isinstance(params[key], kind):
            raise ConfigError(f"ros.nodes.{name}.{key}: expected {kind.__name__}, got {params[key]!r}")
    module, _, cls = NODE_SCHEMAS[name].partition(":")
    schema = getattr(importlib.import_module(module), cls)
    own = {k: v for k, v in params.items() if k not in ROS_NODE_PARAMETERS}
    try:
        from_dict(schema, {"config": "<experiment file>", **own}, f"ros.nodes.{name}")
    except ConfigError as err:
        if str(err).startswith(f"ros.nodes.{name}"):
            raise
        raise ConfigError(f"ros.nodes.{name}: {err}") from err


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph: started as ``python -m <module> --ros-args -r __node:=<name> --params-file F``.

    parameters: ROS parameters (bool/int/float/str or homogeneous lists); respawn: restart it when it
    exits; required: the graph ends when it exits, with its exit code; optional: its exit is reported and
    the graph goes on (a robot of several: the others take its trials); namespace, remaps: ``__ns`` and
    remapping rules (a robot of several).
    """

    name: str
    module: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    respawn: bool = False
    required: bool = False
    respawn_delay: float = 1.0
    namespace: str = ""
    remaps: tuple[tuple[str, str], ...] = ()
    optional: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"node name {self.name!r} must be a plain identifier")
        if self.namespace and not self.namespace.isidentifier():
            raise ConfigError(f"node {self.name}: namespace {self.namespace!r} must be a plain identifier")
        if not all(part.isidentifier() for part in self.module.split(".")):
            raise ConfigError(f"node {self.name}: {self.module!r} is not a module path")
        if self.respawn and self.required:
            raise ConfigError(f"node {self.name}: a required node cannot respawn")
        if self.optional and (self.respawn or self.required):
            raise ConfigError(f"node {self.name}: an optional node neither respawns nor is required")
        if self.respawn_delay < 0:
            raise ConfigError(f"node {self.name}: respawn_delay must be >= 0")

    @property
    def label(self) -> str:
        """The node's unique name in the launcher (logs, params files, console): ``[namespace/]name``."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def executable(self) -> str:
        """Console-script name of the module in a colcon install (``mbpl_ros.sim_node`` → ``sim_node``)."""
        return self.module.rsplit(".", 1)[-1]

    def command(self, params_file: Path) -> list[str]:
        """The process command line."""
        cmd = [sys.executable, "-m", self.module, "--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace:
            cmd += ["-r", f"__ns:=/{self.namespace}"]
        for source, target in self.remaps:
            cmd += ["-r", f"{source}:={target}"]
        return cmd + ["--params-file", str(params_file)]


@dataclass(frozen=True)
class RosSection:
    """The experiment's ``ros:`` section (see the module docstring)."""

    lockstep: bool = True
    controller: str = "effort_controller"
    realtime_rate: float = 0.0
    sim: bool = True
    sim_link: str = "dds"
    respawn: tuple[str, ...] = ()
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    robots: Any = 1
    robot_conditions: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "robots", robot_namespaces(self.robots))
        unknown_robots = sorted(set(self.robot_conditions) - set(self.robots))
        if unknown_robots:
            raise ConfigError(f"ros.robot_conditions: unknown robot(s) {unknown_robots}; robots are "
                              f"{list(self.robots) or ['(one robot, no namespace)']}")
        for robot, conditions in self.robot_conditions.items():
            if not isinstance(conditions, list | tuple) or not conditions or not all(
                    isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in conditions):
                raise ConfigError(f"ros.robot_conditions.{robot}: a non-empty list of condition indices, got "
                                  f"{conditions!r}")
        if self.sim_link not in SIM_LINKS:
            raise ConfigError(f"ros.sim_link: one of {list(SIM_LINKS)}, got {self.sim_link!r}")
        if self.sim_link == "in_process" and not (self.sim and self.lockstep):
            raise ConfigError("ros.sim_link: in_process runs a lockstep simulation inside each sampler; "
                              "it needs ros.sim: true and ros.lockstep: true (a robot or a realtime sim is "
                              "reached over DDS: sim_link: dds)")
        names = {name for name, _ in GRAPH_NODES}
        unknown = sorted((set(self.respawn) | set(self.nodes)) - names)
        if unknown:
            raise ConfigError(f"ros: unknown node name(s) {unknown}; nodes are {sorted(names)}")
        if REQUIRED_NODE in self.respawn:
            raise ConfigError(f"ros.respawn: the {REQUIRED_NODE} ends the graph and cannot respawn")
        if not self.controller or any(c.isspace() for c in self.controller):
            raise ConfigError(f"ros.controller: invalid name {self.controller!r}")
        if self.realtime_rate < 0:
            raise ConfigError(f"ros.realtime_rate: must be >= 0, got {self.realtime_rate}")
        for name, params in self.nodes.items():
            check_node_parameters(name, params)
        self._check_sim_link()

    def _check_sim_link(self) -> None:
        """What ``sim_link`` decides is not set elsewhere; nothing waits for a sim node that does not run."""
        if "sim_in_process" in self.nodes.get("sampler", {}):
            raise ConfigError("ros.nodes.sampler.sim_in_process: set by ros.sim_link (dds or in_process), "
                              "not per node")
        if self.sim_link != "in_process":
            return
        named = sorted({"sim"} & (set(self.respawn) | set(self.nodes)))
        if named:
            raise ConfigError("ros.sim_link: in_process runs no sim node; remove 'sim' from ros.respawn and "
                              "ros.nodes")
        clocked = sorted(n for n, p in self.nodes.items() if p.get("use_sim_time"))
        if clocked:
            raise ConfigError(f"ros.nodes.{clocked[0]}.use_sim_time: nothing publishes /clock with "
                              "ros.sim_link: in_process (the sim node does, with sim_link: dds)")
        # the sampler as it will run: lockstep and simulating, with the experiment's overrides
        check_node_parameters("sampler", {"mode": "lockstep", "sim_in_process": True,
                                          **self.nodes.get("sampler", {})})


SIM_LINKS = ("dds", "in_process")
TOKEN_NODES = ("sampler", "ilqr", "model", "planner", "trainer")
ROBOT_NODES = ("sim", "sampler")  # the robot side: one pair per robot
PARALLEL_METHODS = ("lqr_flm", "mdgps")  # methods whose trials of an iteration are independent
MAX_ROBOTS = 64


def robot_namespaces(robots: Any) -> tuple[str, ...]:
    """``ros.robots`` as namespaces: N → () for 1 (no namespace), ``robot0 … robot{N-1}`` otherwise; a list
    of names as given (unique plain identifiers). ConfigError for anything else."""
    if isinstance(robots, bool):
        raise ConfigError(f"ros.robots: a number of robots or a list of namespaces, got {robots!r}")
    if isinstance(robots, int):
        if not 1 <= robots <= MAX_ROBOTS:
            raise ConfigError(f"ros.robots: between 1 and {MAX_ROBOTS}, got {robots}")
        return () if robots == 1 else tuple(f"robot{k}" for k in range(robots))
    if isinstance(robots, list | tuple) and robots and all(isinstance(r, str) for r in robots):
        bad = [r for r in robots if not r.isidentifier()]
        if bad or len(set(robots)) != len(robots) or len(robots) > MAX_ROBOTS:
            raise ConfigError(f"ros.robots: unique plain identifiers (ROS namespaces), at most {MAX_ROBOTS}, "
                              f"got {list(robots)}")
        return tuple(robots)
    raise ConfigError(f"ros.robots: a number of robots or a list of namespaces, got {robots!r}")


def new_run_token() -> str:
    """A fresh secret for one run of the graph (128 random bits, hex)."""
    return secrets.token_hex(16)


def graph_from_experiment(
    config_path: str | Path, raw: Mapping[str, Any] | None = None, run_dir: str | Path | None = None,
    run_token: str = "", only: str | None = None,
) -> list[NodeSpec]:
    """The node graph of an experiment: per robot a sim (unless ``ros.sim`` is false) and a sampler, the
    method's learning nodes (fitting + ilqr, or model + planner for PETS: :data:`METHOD_NODES`), trainer.

    raw: the parsed YAML when the caller has it already (else the file is read). run_dir: the run
    folder every node except the sim writes to (parameter ``run_dir``; None: the nodes' default).
    run_token: given to the sampler, iLQR and trainer nodes (empty: the nodes' default, no token).
    only: ``"robot"`` (the sims and samplers: what runs beside each robot) or ``"learner"`` (the rest:
    what runs on the learning host); None: the whole graph.
    """
    config_path = Path(config_path).resolve()
    if raw is None:
        if not config_path.is_file():
            raise ConfigError(f"experiment file {str(config_path)!r} not found")
        raw = yaml.safe_load(config_path.read_text()) or {}
    ros = from_dict(RosSection, dict(raw.get("ros") or {}), "ros")
    method = str(raw.get("method") or "lqr_flm")
    if method not in METHOD_NODES:
        raise ConfigError(f"method: {method!r} does not run through the graph; graph methods: "
                          f"{list(METHOD_NODES)} (the others run in one process: mbpl train)")
    if len(ros.robots) > 1 and method not in PARALLEL_METHODS:
        raise ConfigError(f"ros.robots: several robots sample in parallel for {list(PARALLEL_METHODS)}; "
                          f"method {method!r} runs one trial after the other (each depends on the last): "
                          "use one robot")
    if only not in (None, "robot", "learner"):
        raise ConfigError(f"only: 'robot' or 'learner', got {only!r}")
    specs = []
    for name, module in GRAPH_NODES:
        if name not in METHOD_NODES[method] or (name == "sim" and (not ros.sim or ros.sim_link != "dds")):
            continue
        if only is not None and (name in ROBOT_NODES) != (only == "robot"):
            continue
        params = _node_parameters(name, ros, config_path, run_dir, run_token)
        respawn, required = name in ros.respawn, name == REQUIRED_NODE
        if name in ROBOT_NODES and ros.robots:
            optional = len(ros.robots) > 1 and not respawn  # the other robots go on without it
            specs += [NodeSpec(name, module, params, respawn=respawn, namespace=ns, remaps=ROBOT_REMAPS[name],
                               optional=optional) for ns in ros.robots]
        else:
            specs.append(NodeSpec(name, module, params, respawn=respawn, required=required))
    return specs


# a namespaced robot's names that stay the run's (one iLQR node, one trainer) or its own (a sim's clock)
ROBOT_REMAPS: dict[str, tuple[tuple[str, str], ...]] = {
    "sampler": (("mbpl/controllers", "/mbpl/controllers"), ("mbpl/policy", "/mbpl/policy"),
                ("mbpl/plan_requests", "/mbpl/plan_requests"), ("mbpl/plans", "/mbpl/plans")),
    "sim": (("/clock", "clock"),),
}


def _node_parameters(name: str, ros: RosSection, config_path: Path, run_dir: str | Path | None,
                     run_token: str) -> dict[str, Any]:
    """The ROS parameters the graph gives node ``name`` (module docstring), ``ros.nodes.<name>`` last."""
    mode = "lockstep" if ros.lockstep else "realtime"
    params: dict[str, Any] = {"config": str(config_path)}
    if name in ("sim", "sampler"):
        params.update(mode=mode, controller=ros.controller)
    if name == "sim":
        params["realtime_rate"] = float(ros.realtime_rate)
    elif run_dir is not None:
        params["run_dir"] = str(Path(run_dir).resolve())
    if name == "sampler":
        params["rate_hz"] = float(ros.realtime_rate)  # one command per sim step when the sim runs faster
        if ros.sim_link == "in_process":
            params["sim_in_process"] = True
    if name == "trainer" and ros.robots:
        params["robots"] = " ".join(ros.robots)
        pinned = ros.robot_conditions.items()
        params["robot_conditions"] = " ".join(f"{r}:{','.join(map(str, c))}" for r, c in pinned)
    if name in TOKEN_NODES and run_token:
        params["run_token"] = run_token
    params.update(ros.nodes.get(name, {}))
    return params


def exit_code(proc: subprocess.Popen) -> int:
    """A finished process's exit code as a shell reports it: 128 + N when signal N killed it."""
    code = int(proc.returncode)
    return code if code >= 0 else 128 - code


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the launcher dies, so no node outlives it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class _Running:
    """A started node: its process and the thread that forwards its output."""

    def __init__(self, spec: NodeSpec, proc: subprocess.Popen, forwarder: threading.Thread) -> None:
        self.spec, self.proc, self.forwarder = spec, proc, forwarder


class ProcessLauncher:
    """Starts each NodeSpec as its own process and supervises the graph.

    * each node's parameters go to ``<run_dir>/params/<name>.yaml``; its whole output is copied to
      ``<run_dir>/logs/<name>.log`` and shown on ``out`` prefixed with ``[name]``: every line
      (``verbose``, the default), or only progress, warnings, errors and the summary
      (:class:`mbpl_ros.console.Console`; ``mbpl launch`` without ``-v``: ``success_distance`` is the
      distance in m its progress lines count conditions within, ``live`` draws its status line, by
      default where ``out`` is a terminal). The nodes' ROS console format is set to rcutils' default
      where the environment does not choose one, so the lines can be told apart;
    * SIGINT/SIGTERM received by the launcher are forwarded to the graph, which is then shut down;
    * a node that exits is reported with its exit code; a respawn node is restarted, the required
      node ends the graph with its exit code, an optional node's exit leaves the graph running (one
      robot of several), any other exit stops the graph (exit code 1 if it was 0);
    * when a node's failure stops the graph (a non-respawn node exits, or the required node exits
      non-zero) its output, forwarded as it came, is the last node output shown: the others are
      stopped quietly (what they print from then on, e.g. the ``KeyboardInterrupt`` tracebacks of nodes
      still importing, or the same error again, goes to their log files only) and a closing line names
      the failed node, its exit code and its log file;
    * shutdown sends SIGINT, then SIGTERM, then SIGKILL, each after ``stop_timeout`` seconds.
    """

    def __init__(
        self,
        specs: Sequence[NodeSpec],
        run_dir: str | Path,
        env: Mapping[str, str] | None = None,
        out: IO[str] | None = None,
        stop_timeout: float = 5.0,
        verbose: bool = True,
        success_distance: float | None = None,
        live: bool | None = None,
    ) -> None:
        names = [s.label for s in specs]
        if not specs or len(set(names)) != len(names):
            raise ConfigError(f"the graph needs >= 1 node with unique names, got {names}")
        self.specs = list(specs)
        self.run_dir = Path(run_dir)
        self.env = dict(os.environ if env is None else env) | {"PYTHONUNBUFFERED": "1"}
        self.env.setdefault("RCUTILS_CONSOLE_OUTPUT_FORMAT", ROS_LOG_FORMAT)
        self.out = out if out is not None else sys.stdout
        self.console = Console(self.out, verbose=verbose, success_distance=success_distance, live=live)
        self.stop_timeout = stop_timeout
        self.exit_codes: dict[str, int] = {}
        self._running: dict[str, _Running] = {}
        self._exits: queue.Queue[tuple[str, subprocess.Popen]] = queue.Queue()
        self._signal: int | None = None
        self._failed: tuple[str, int] | None = None  # (node, exit code) whose failure stopped the graph
        self._quiet = threading.Event()  # set: other nodes' output goes to their log files only

    @property
    def processes(self) -> dict[str, subprocess.Popen]:
        """The latest process of every node started so far, by node name."""
        return {name: r.proc for name, r in self._running.items()}

    def say(self, text: str) -> None:
        """One launcher line on the output stream."""
        self.console.launcher(text)

    # -- processes ---------------------------------------------------------------------------------
    def _start(self, spec: NodeSpec) -> None:
        params = write_params_file(self.run_dir / "params" / f"{spec.label}.yaml", "/**", spec.parameters)
        log_path = self.run_dir / "logs" / f"{spec.label}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            spec.command(params), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        forwarder = threading.Thread(target=self._forward, args=(spec.label, proc, log_path), daemon=True)
        forwarder.start()
        self._running[spec.label] = _Running(spec, proc, forwarder)
        self.say(f"started {spec.label} ({spec.module}, pid {proc.pid})")

    def _forward(self, name: str, proc: subprocess.Popen, log_path: Path) -> None:
        """Copy the node's output line by line to its log and the console; then report its exit."""
        assert proc.stdout is not None
        with open(log_path, "ab") as log:
            for line in iter(proc.stdout.readline, b""):
                log.write(line)
                log.flush()  # the log is where the detail is: current while the graph runs
                if not self._quiet.is_set():
                    self.console.node_line(name, line.decode(errors="replace").rstrip())
        proc.wait()
        self._exits.put((name, proc))

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signal = signum

    # -- supervision --------------------------------------------------------------------------------
    def run(self) -> int:
        """Start the graph and supervise it until it ends; returns the launcher's exit code.

        The required node's exit code when it finishes; 128 + signal number after SIGINT/SIGTERM;
        the dead node's exit code (1 if that was 0) when a non-respawn node exits.
        """
        in_main = threading.current_thread() is threading.main_thread()
        previous = {}
        if in_main:
            previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for spec in self.specs:
                self._start(spec)
            return self._supervise()
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._failed is not None:
                name, code = self._failed
                shown = "its output is above" if self.console.verbose else "its errors are above"
                self.say(f"the graph stopped because {name} exited with code {code}: {shown}, all of it "
                         f"in {self.run_dir / 'logs' / f'{name}.log'}; the other nodes were stopped "
                         "(their output since then is in their log files only)")
            self.console.close()

    def _supervise(self) -> int:
        respawn_at: dict[str, float] = {}
        while True:
            if self._signal is not None:
                self.say(f"received {signal.Signals(self._signal).name}: stopping the graph")
                return 128 + self._signal
            for name, due in list(respawn_at.items()):
                if time.monotonic() >= due:
                    del respawn_at[name]
                    self._start(self._running[name].spec)
            try:
                name, proc = self._exits.get(timeout=0.1)
            except queue.Empty:
                continue
            running = self._running.get(name)
            if running is None or running.proc is not proc:
                continue  # an exit already handled (e.g. reported during shutdown)
            code = exit_code(proc)
            self.exit_codes[name] = code
            spec = running.spec
            if spec.required:
                if code != 0:
                    self._fail(name, code)
                self.say(f"{name} finished with exit code {code}: stopping the graph")
                return code
            if spec.respawn:
                self.say(f"node {name} died with exit code {code}")
                self.say(f"respawning {name} in {spec.respawn_delay:g} s")
                respawn_at[name] = time.monotonic() + spec.respawn_delay
                continue
            if spec.optional:
                self.say(f"node {name} died with exit code {code}: the graph goes on without it (its log: "
                         f"{self.run_dir / 'logs' / f'{name}.log'})")
                if all(r.proc.poll() is not None for r in self._running.values()) and not respawn_at:
                    self.say("no node of the graph is left: stopping")
                    return 1
                continue
            self._fail(name, code)
            self.say(f"node {name} died with exit code {code}")
            self.say("stopping the graph (set respawn for this node to restart it instead)")
            return code if code != 0 else 1

    def _fail(self, name: str, code: int) -> None:
        """The graph stops because of ``name``: from now on the other nodes' output goes to their logs."""
        self._quiet.set()
        self._failed = (name, code)

    def shutdown(self) -> None:
        """Stop every running node: SIGINT, then SIGTERM, then SIGKILL, each after stop_timeout."""
        alive = [r for r in self._running.values() if r.proc.poll() is None]
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if not alive:
                break
            for r in alive:
                with contextlib.suppress(ProcessLookupError):
                    r.proc.send_signal(sig)
            deadline = time.monotonic() + self.stop_timeout
            for r in alive:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            still = [r for r in alive if r.proc.poll() is None]
            if still and sig != signal.SIGKILL:
                names = ", ".join(r.spec.label for r in still)
                self.say(f"{names} ignored {sig.name} for {self.stop_timeout:g} s")
            alive = still
        for r in self._running.values():
            r.forwarder.join(timeout=self.stop_timeout)
            code = exit_code(r.proc)
            if r.spec.label not in self.exit_codes or code != self.exit_codes[r.spec.label]:
                self.exit_codes[r.spec.label] = code
                self.say(f"{r.spec.label} exited with code {code}")


def launch(specs: Sequence[NodeSpec], run_dir: str | Path, out: IO[str] | None = None) -> int:
    """Run a graph with :class:`ProcessLauncher` until it ends; returns its exit code."""
    return ProcessLauncher(specs, run_dir, out=out).run()
