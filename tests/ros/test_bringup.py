"""Bringup: the graph description from an experiment, and the process launcher with real processes."""

from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from mbpl_core.config import ConfigError
from mbpl_ros.bringup import NodeSpec, ProcessLauncher, graph_from_experiment

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tiny node modules: a ROS node that spins until SIGINT, one that crashes, a trainer that finishes.
NODE_MODULES = {
    "mbpl_test_spinner": """
        import pathlib, sys
        import rclpy
        from rclpy.executors import ExternalShutdownException
        rclpy.init()
        node = rclpy.create_node("spinner")
        node.declare_parameter("greeting", "none")
        print("ready", node.get_name(), node.get_parameter("greeting").value, flush=True)
        params = pathlib.Path(sys.argv[sys.argv.index("--params-file") + 1]).parent
        (params / f"ready-{node.get_name()}").write_text("")
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        print("clean exit", flush=True)
        rclpy.try_shutdown()
    """,
    "mbpl_test_crasher": """
        import pathlib, sys
        marker = pathlib.Path(sys.argv[sys.argv.index("--params-file") + 1]).parent / "starts.txt"
        with open(marker, "a") as f:
            f.write("start\\n")
        print("crashing now", flush=True)
        sys.exit(3)
    """,
    "mbpl_test_trainer": """
        import pathlib, sys, time
        marker = pathlib.Path(sys.argv[sys.argv.index("--params-file") + 1]).parent / "starts.txt"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # finishes once the crasher has been started twice
            if marker.exists() and marker.read_text().count("start") >= 2:
                print("trained", flush=True)
                sys.exit(0)
            time.sleep(0.05)
        sys.exit(7)
    """,
    "mbpl_test_starter": """
        import pathlib, sys, time
        # stands for a node still importing its libraries: SIGINT here is a KeyboardInterrupt traceback
        print("loading", flush=True)
        params = pathlib.Path(sys.argv[sys.argv.index("--params-file") + 1]).parent
        (params / "ready-starter").write_text("")
        while True:
            time.sleep(0.02)
    """,
    "mbpl_test_failer": """
        import pathlib, sys, time
        params = pathlib.Path(sys.argv[sys.argv.index("--params-file") + 1]).parent
        deadline = time.monotonic() + 60
        while not all((params / f"ready-{n}").exists() for n in ("spinner", "starter")):
            if time.monotonic() > deadline:
                sys.exit(9)
            time.sleep(0.05)
        print("controller step 17", flush=True)
        raise RuntimeError("lost the robot: encoder 3 stopped")
    """,
    "mbpl_test_finisher": """
        import sys
        print("done", flush=True)
        sys.exit(5)
    """,
    "mbpl_test_killed": """
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """,
    "mbpl_test_trainer_waits": """
        import time
        time.sleep(3.0)
        print("trained", flush=True)
    """,
    # a node's chatter through the real ROS logger: per-trial INFO lines, one WARN, one ERROR
    "mbpl_test_talker": """
        import pathlib, sys
        import rclpy
        from rclpy.executors import ExternalShutdownException
        rclpy.init()
        node = rclpy.create_node("talker")
        for k in range(5):
            node.get_logger().info(f"trial {k} done: 50 steps, 0 deadline misses")
        node.get_logger().warning("deadline missed by 3.2 ms")
        node.get_logger().error("joint 2 over its effort limit")
        params = pathlib.Path(sys.argv[sys.argv.index("--params-file") + 1]).parent
        (params / "ready-talker").write_text("")
        try:
            rclpy.spin(node)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        rclpy.try_shutdown()
    """,
    # a trainer that logs, through the ROS logger, chatter, a progress record per iteration, a summary
    "mbpl_test_iterations": """
        import pathlib, sys, time
        import rclpy
        from mbpl_ros.console import SUMMARY_PREFIX, progress_message
        params = pathlib.Path(sys.argv[sys.argv.index("--params-file") + 1]).parent
        deadline = time.monotonic() + 60
        while not (params / "ready-talker").exists():
            if time.monotonic() > deadline:
                sys.exit(9)
            time.sleep(0.05)
        rclpy.init()
        node = rclpy.create_node("trainer")
        log = node.get_logger()
        for i, seconds in enumerate((2.0, 4.0, 3.0)):
            log.info(f"iteration {i} condition 0: 5 samples recorded")
            log.info(f"iteration {i}: mean cost {12.5 - i}")
            log.info(progress_message(i, 3, 12.5 - i, [0.01, 0.03 - 0.01 * i], seconds))
        log.info(SUMMARY_PREFIX + "3 iterations; mean cost 12.5 -> 10.5")
        node.destroy_node()
        rclpy.shutdown()
    """,
}


@pytest.fixture
def node_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Writes the tiny node modules and puts them on the children's PYTHONPATH."""
    folder = tmp_path / "modules"
    folder.mkdir()
    for name, source in NODE_MODULES.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]))
    return folder


def test_graph_from_the_demo_experiment() -> None:
    specs = graph_from_experiment(REPO_ROOT / "configs/reacher2_sim.yaml")
    assert [s.name for s in specs] == ["sim", "sampler", "fitting", "ilqr", "trainer"]
    assert [s.required for s in specs] == [False, False, False, False, True]
    sim = specs[0]
    assert sim.module == "mbpl_ros.sim_node" and sim.executable == "sim_node"
    assert sim.parameters["mode"] == "lockstep" and sim.parameters["controller"] == "effort_controller"
    assert all(Path(s.parameters["config"]).is_absolute() for s in specs)


def test_each_method_gets_its_learning_nodes(tmp_path: Path) -> None:
    names = {method: [s.name for s in graph_from_experiment(tmp_path / "x.yaml", {"method": method})]
             for method in ("lqr_flm", "mdgps", "pets", "sac", "mbpo", "bptt")}
    assert names["lqr_flm"] == names["mdgps"] == ["sim", "sampler", "fitting", "ilqr", "trainer"]
    assert names["pets"] == ["sim", "sampler", "model", "planner", "trainer"]
    # the policy learners train inside the trainer: no learning node of their own
    assert names["sac"] == names["mbpo"] == names["bptt"] == ["sim", "sampler", "trainer"]
    specs = graph_from_experiment(tmp_path / "x.yaml", {"method": "pets"}, run_token="abc")
    assert all(s.parameters.get("run_token") == "abc" for s in specs if s.name != "sim")
    with pytest.raises(ConfigError, match="does not run through the graph"):
        graph_from_experiment(tmp_path / "x.yaml", {"method": "dyna"})


def test_ros_section_options_and_errors(tmp_path: Path) -> None:
    ros = {"lockstep": False, "sim": False, "respawn": ["fitting"],
           "nodes": {"ilqr": {"keep_results": 2, "use_sim_time": True}}}
    raw = {"ros": ros}
    specs = {s.name: s for s in graph_from_experiment(tmp_path / "x.yaml", raw)}
    assert "sim" not in specs and specs["sampler"].parameters["mode"] == "realtime"
    assert specs["fitting"].respawn and specs["ilqr"].parameters["keep_results"] == 2
    for bad, reason in (
        ({"lockstep": 1}, "true/false"),
        ({"respawn": ["trainer"]}, "cannot respawn"),
        ({"nodes": {"optimizer": {}}}, "unknown node"),
        ({"lockstep_typo": True}, "unknown key"),
        # node parameters are checked against the node's schema: ROS itself would ignore a typo
        ({"nodes": {"sampler": {"rate_hzz": 5}}}, r"ros\.nodes\.sampler: unknown key\(s\) \['rate_hzz'\]"),
        ({"nodes": {"sim": {"realtime_rate": "fast"}}}, r"ros\.nodes\.sim\.realtime_rate: expected a number"),
        ({"nodes": {"trainer": {"max_attempts": 0}}}, r"ros\.nodes\.trainer: trainer node: max_attempts"),
        ({"nodes": {"fitting": {"use_sim_time": 1}}}, r"ros\.nodes\.fitting\.use_sim_time: expected bool"),
        ({"nodes": {"planner": 3}}, r"ros\.nodes\.planner: expected a mapping"),
        ({"sim_link": "shm"}, r"ros\.sim_link: one of \['dds', 'in_process'\]"),
        ({"sim_link": "in_process", "lockstep": False}, "needs ros.sim: true and ros.lockstep: true"),
        ({"sim_link": "in_process", "sim": False}, "needs ros.sim: true and ros.lockstep: true"),
        ({"nodes": {"sampler": {"sim_in_process": True}}}, "set by ros.sim_link"),
        ({"sim_link": "in_process", "nodes": {"sampler": {"reset_service": ""}}}, "a reset before every"),
        ({"sim_link": "in_process", "nodes": {"sampler": {"mode": "realtime"}}}, "sim_in_process needs mode"),
        ({"sim_link": "in_process", "respawn": ["sim"]}, "runs no sim node"),
        ({"sim_link": "in_process", "nodes": {"sim": {"realtime_rate": 2.0}}}, "runs no sim node"),
        ({"sim_link": "in_process", "nodes": {"ilqr": {"use_sim_time": True}}}, "nothing publishes /clock"),
    ):
        with pytest.raises(ConfigError, match=reason):
            graph_from_experiment(tmp_path / "x.yaml", {"ros": bad})


@pytest.mark.parametrize("robots", [1, 2])
def test_an_in_process_sim_link_leaves_out_the_sim_nodes(tmp_path: Path, robots: int) -> None:
    """ros.sim_link: in_process — each sampler steps MuJoCo itself: no sim node, the samplers are told so."""
    dds = graph_from_experiment(tmp_path / "x.yaml", {"ros": {"robots": robots}})
    inside = graph_from_experiment(tmp_path / "x.yaml", {"ros": {"robots": robots, "sim_link": "in_process"}})
    assert [s.name for s in dds].count("sim") == robots and "sim" not in [s.name for s in inside]
    assert [(s.name, s.namespace) for s in inside] == [(s.name, s.namespace) for s in dds if s.name != "sim"]
    for spec in inside:
        assert spec.parameters.get("sim_in_process", False) == (spec.name == "sampler")
    assert all("sim_in_process" not in s.parameters for s in dds)


def _launcher(specs: list[NodeSpec], run_dir: Path,
              verbose: bool = True) -> tuple[ProcessLauncher, io.StringIO]:
    out = io.StringIO()
    return ProcessLauncher(specs, run_dir, out=out, stop_timeout=5.0, verbose=verbose), out


def _iterations_graph() -> list[NodeSpec]:
    return [NodeSpec("talker", "mbpl_test_talker"),
            NodeSpec("trainer", "mbpl_test_iterations", required=True)]


# what the console shows of mbpl_test_iterations' progress records (success distance 2 cm): the time left
# is the mean of the iterations so far times the iterations still to run (2 s x 2, then 3 s x 1)
PROGRESS_LINES = [
    "[trainer] iteration 1/3: cost 12.5; distance (cm) [1.00 3.00], 1/2 within 2 cm; 2.0 s, ~4 s left",
    "[trainer] iteration 2/3: cost 11.5; distance (cm) [1.00 2.00], 2/2 within 2 cm; 4.0 s, ~3 s left",
    "[trainer] iteration 3/3: cost 10.5; distance (cm) [1.00 1.00], 2/2 within 2 cm; 3.0 s",
]


@pytest.mark.parametrize("verbose", [False, True])
def test_console_shows_progress_warnings_and_errors_and_the_logs_keep_everything(
        node_modules: Path, tmp_path: Path, verbose: bool) -> None:
    """Real nodes logging through rclpy: the console gets one line per iteration, the warning and the error
    with the node's name, the summary and the launcher's lines, not the INFO chatter (unless verbose);
    each node's log file has every line, raw."""
    run = tmp_path / "run"
    out = io.StringIO()
    launcher = ProcessLauncher(_iterations_graph(), run, out=out, verbose=verbose, success_distance=0.02)
    assert launcher.run() == 0, out.getvalue()
    text = out.getvalue()
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("[trainer] iteration ")] == PROGRESS_LINES, text
    assert "[trainer] 3 iterations; mean cost 12.5 -> 10.5" in lines or verbose, text
    assert "[launch] started talker" in text and "[launch] trainer finished with exit code 0" in text, text
    assert "progress: {" not in text, "a progress record is shown as its line, never raw"
    assert "\x1b" not in text and "elapsed" not in text, "no status line where the output is no terminal"
    chatter = ("trial 0 done: 50 steps", "trial 4 done: 50 steps", "condition 0: 5 samples recorded",
               "iteration 1: mean cost 11.5")
    if verbose:  # every node line live, as it came
        assert all(c in text for c in chatter), text
        assert any(line.startswith("[talker] [WARN] [") and "deadline missed by 3.2 ms" in line
                   for line in lines), text
    else:
        assert "[talker] WARN: deadline missed by 3.2 ms" in lines, text
        assert "[talker] ERROR: joint 2 over its effort limit" in lines, text
        assert not any(c in text for c in chatter) and "[INFO]" not in text, text
    logs = {name: (run / "logs" / f"{name}.log").read_text() for name in ("talker", "trainer")}
    assert all(f"trial {k} done" in logs["talker"] for k in range(5)), logs
    assert "[WARN]" in logs["talker"] and "[ERROR]" in logs["talker"], logs
    assert logs["trainer"].count("progress: {") == 3 and logs["trainer"].count("5 samples recorded") == 3
    assert "summary: 3 iterations" in logs["trainer"], logs


def test_a_terminal_gets_a_live_progress_bar(node_modules: Path, tmp_path: Path) -> None:
    """Output on a terminal (a pseudo-terminal here): a status line under the others, redrawn after each
    line, with the bar full after the last iteration, and erased when the graph ends."""
    import pty

    master, slave = pty.openpty()
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal side is closed
                return
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with os.fdopen(slave, "w") as terminal:
        launcher = ProcessLauncher(_iterations_graph(), tmp_path / "run", out=terminal, verbose=False,
                                   success_distance=0.02)
        code = launcher.run()
    reader.join(timeout=10)
    os.close(master)
    data = b"".join(received).decode(errors="replace")
    assert code == 0, data
    assert "waiting for the first iteration" in data, data
    assert "[################........] 2/3 iterations" in data, data
    assert "[########################] 3/3 iterations" in data, data
    assert all(line in data for line in PROGRESS_LINES), data
    assert data.endswith("\r\x1b[K"), "the status line is erased at the end"


def test_crashing_node_is_reported_and_stops_the_graph(node_modules: Path, tmp_path: Path) -> None:
    specs = [
        NodeSpec("spinner", "mbpl_test_spinner", {"greeting": "hi"}),
        NodeSpec("crasher", "mbpl_test_crasher"),
    ]
    launcher, out = _launcher(specs, tmp_path / "run")
    code = launcher.run()
    text = out.getvalue()
    assert code == 3, text
    assert "node crasher died with exit code 3" in text and "[crasher] crashing now" in text
    assert launcher.exit_codes["spinner"] is not None
    assert all(proc.poll() is not None for proc in launcher.processes.values())


@pytest.mark.parametrize("verbose", [True, False])
def test_a_dying_node_shows_its_error_once_and_the_others_stop_quietly(node_modules: Path, tmp_path: Path,
                                                                       verbose: bool) -> None:
    """A node fails while a ROS node spins and another is still starting (SIGINT there is a
    KeyboardInterrupt traceback): the output holds the failed node's traceback once, then no line of the
    others' shutdown (it is in their log files), and a closing line names the node and its log."""
    specs = [
        NodeSpec("spinner", "mbpl_test_spinner", {"greeting": "hi"}),
        NodeSpec("starter", "mbpl_test_starter"),
        NodeSpec("failer", "mbpl_test_failer"),
    ]
    run = tmp_path / "run"
    launcher, out = _launcher(specs, run, verbose)
    code = launcher.run()
    text = out.getvalue()
    assert code == 1, text
    assert text.count("RuntimeError: lost the robot: encoder 3 stopped") == 1, text
    assert text.count("Traceback") == 1 and "[failer] Traceback (most recent call last):" in text, text
    assert "KeyboardInterrupt" not in text and "[spinner] clean exit" not in text, text
    assert "[spinner] ready spinner hi" in text and "[starter] loading" in text
    last = text.splitlines()[-1]
    assert last.startswith("[launch] the graph stopped because failer exited with code 1"), text
    assert str(run / "logs" / "failer.log") in last
    logs = {name: (run / "logs" / f"{name}.log").read_text() for name in ("spinner", "starter", "failer")}
    assert "KeyboardInterrupt" in logs["starter"] and "clean exit" in logs["spinner"], logs
    assert "lost the robot" in logs["failer"]
    assert all(proc.poll() is not None for proc in launcher.processes.values())


def test_required_node_ends_the_graph_and_respawn_restarts(node_modules: Path, tmp_path: Path) -> None:
    specs = [
        NodeSpec("crasher", "mbpl_test_crasher", respawn=True, respawn_delay=0.0),
        NodeSpec("trainer", "mbpl_test_trainer", required=True),
    ]
    launcher, out = _launcher(specs, tmp_path / "run")
    assert launcher.run() == 0, out.getvalue()
    assert "respawning crasher" in out.getvalue() and "[trainer] trained" in out.getvalue()

    specs = [
        NodeSpec("spinner", "mbpl_test_spinner"),
        NodeSpec("trainer", "mbpl_test_finisher", required=True),
    ]
    launcher, out = _launcher(specs, tmp_path / "run2")
    assert launcher.run() == 5, out.getvalue()
    assert "trainer finished with exit code 5" in out.getvalue()

    # a node killed by a signal exits as a shell reports it (128 + N), not Popen's -N, and an optional
    # node's death (one robot of several) leaves the graph running
    specs = [
        NodeSpec("robot", "mbpl_test_killed", optional=True, namespace="robot1"),
        NodeSpec("trainer", "mbpl_test_killed", required=True),
    ]
    launcher, out = _launcher(specs, tmp_path / "run3")
    assert launcher.run() == 137, out.getvalue()
    assert "trainer finished with exit code 137" in out.getvalue()
    specs = [
        NodeSpec("robot", "mbpl_test_killed", optional=True, namespace="robot1"),
        NodeSpec("trainer", "mbpl_test_trainer_waits", required=True),
    ]
    launcher, out = _launcher(specs, tmp_path / "run4")
    assert launcher.run() == 0, out.getvalue()
    assert "robot1/robot died with exit code 137: the graph goes on without it" in out.getvalue()
    assert "[trainer] trained" in out.getvalue() and (tmp_path / "run4/logs/robot1/robot.log").exists()


@pytest.mark.ros
def test_sigint_is_forwarded_and_every_process_exits(node_modules: Path, tmp_path: Path) -> None:
    """A launcher process with a real sim node and a spinner: SIGINT to it stops all of them cleanly."""
    pytest.importorskip("mbpl_sim.env")
    driver = tmp_path / "driver.py"
    config = str(REPO_ROOT / "configs/reacher2_sim.yaml")
    driver.write_text(textwrap.dedent(f"""
        import sys
        from mbpl_ros.bringup import NodeSpec, launch
        specs = [
            NodeSpec("sim", "mbpl_ros.sim_node", {{"config": {config!r}}}),
            NodeSpec("spinner", "mbpl_test_spinner", {{"greeting": "hello"}}),
        ]
        sys.exit(launch(specs, {str(tmp_path / 'run')!r}))
    """))
    # os.environ holds this session's isolated ROS graph settings (tests/ros/conftest.py)
    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen: list[str] = []
    try:
        def both_up() -> bool:
            return any("[spinner] ready spinner hello" in s for s in seen) and any("[sim]" in s for s in seen)

        while not both_up():
            seen.append(lines.get(timeout=60))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    while not lines.empty():
        seen.append(lines.get())
    text = "".join(seen)
    assert "[spinner] clean exit" in text, text
    pids = [int(s.split("pid ")[1].rstrip(")\n")) for s in seen if "started" in s and "pid " in s]
    assert len(pids) == 2
    for pid in pids:  # children were reaped by the launcher: the pids no longer exist
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("robots", [1, 2])
def test_launch_file_builds_the_same_graph(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           robots: int) -> None:
    """launch/mbpl_sim.launch.py against stand-ins for launch / launch_ros (absent here): same nodes, with
    the robots' namespaces and remaps; one robot's node of several does not end the launch."""
    import importlib.util
    import types

    import yaml

    config = REPO_ROOT / "configs/reacher2_sim.yaml"
    if robots > 1:
        raw = yaml.safe_load(config.read_text())
        raw["ros"] = {**raw.get("ros", {}), "robots": robots}
        raw["robot"]["description"] = str(REPO_ROOT / "urdf" / "reacher2" / "reacher2.urdf")
        config = tmp_path / "two.yaml"
        config.write_text(yaml.safe_dump(raw))

    class Recorder:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.args, self.kwargs = args, kwargs

    class Config(Recorder):
        def perform(self, context: object) -> str:
            return str(config)

    stubs = {
        "launch": {"LaunchDescription": Recorder},
        "launch.actions": dict.fromkeys(("DeclareLaunchArgument", "OpaqueFunction", "Shutdown"), Recorder),
        "launch.substitutions": {"LaunchConfiguration": Config},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Recorder},
    }
    for name, attrs in stubs.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    monkeypatch.setattr("mbpl_ros.bringup.new_run_token", lambda: "token-of-launch")
    spec = importlib.util.spec_from_file_location("mbpl_sim_launch", REPO_ROOT / "launch/mbpl_sim.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    opaque = description.args[0][-1]
    nodes = opaque.kwargs["function"](context=None)
    expected = graph_from_experiment(config, run_token="token-of-launch")
    got = [(n.kwargs["name"], n.kwargs["executable"], n.kwargs["namespace"]) for n in nodes]
    assert got == [(s.name, s.executable, s.namespace) for s in expected]
    assert [n.kwargs["parameters"] for n in nodes] == [[dict(s.parameters)] for s in expected]
    assert [n.kwargs["remappings"] for n in nodes] == [list(s.remaps) for s in expected]
    # no node respawns here: any exit ends the launch, but one robot's node of several
    assert [("on_exit" in n.kwargs) for n in nodes] == [not s.optional for s in expected]
    assert sum(s.optional for s in expected) == (0 if robots == 1 else 2 * robots)


def test_cli_overrides_and_placeholders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mbpl_ros.cli import apply_overrides, build_parser, effective_config, main

    raw = {"algorithm": {"iterations": 10}, "ros": None}
    out = apply_overrides(raw, ["algorithm.iterations=3", "ros.lockstep=false", "gps.policy.layers=[64, 64]"])
    assert out["algorithm"] == {"iterations": 3} and out["ros"] == {"lockstep": False}
    assert out["gps"] == {"policy": {"layers": [64, 64]}}
    assert raw["algorithm"]["iterations"] == 10, "the input must not be modified"
    for bad in ("algorithm.iterations", "=3", "algorithm..x=1", "algorithm.iterations.x=1"):
        with pytest.raises(ConfigError, match="--set"):
            apply_overrides(raw, [bad])
    path, merged = effective_config(REPO_ROOT / "configs/reacher2_sim.yaml", ["ros.lockstep=false"], tmp_path)
    assert [s.parameters["mode"] for s in graph_from_experiment(path)[:2]] == ["realtime", "realtime"]
    missing = str(tmp_path / "no-policy")
    assert main(["eval", str(REPO_ROOT / "configs/reacher2_sim.yaml"), "--policy", missing,
                 "--run-dir", str(tmp_path / "ev")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["launch", str(tmp_path / "missing.yaml")]) == 2 and "not found" in capsys.readouterr().err
    parser = build_parser()
    assert not parser.parse_args(["launch", "x.yaml"]).verbose
    assert parser.parse_args(["launch", "x.yaml", "-v"]).verbose
    assert parser.parse_args(["launch", "x.yaml", "--verbose"]).verbose


@pytest.mark.sim
def test_the_trainer_loop_reports_each_iteration_in_one_progress_record(tmp_path: Path,
                                                                         experiment_file: Path) -> None:
    """TrainerLoop in process (no ROS): one progress record per iteration, agreeing with the history
    record (cost, noiseless final distances), and the console shows it as one line."""
    pytest.importorskip("mujoco")
    import numpy as np
    from test_trainer_logic import InProcessTransport, LoopSettings, TrainerLoop

    from mbpl_ros.console import Console, parse_progress
    from mbpl_sim.env import MujocoEnv
    from mbpl_sim.experiment import load_experiment

    env = MujocoEnv(load_experiment(experiment_file))
    transport = InProcessTransport(env, tmp_path)
    messages: list[str] = []
    settings = LoopSettings(env.num_conditions, 2, 3, seed=3)
    state = TrainerLoop(tmp_path, settings, transport, transport.cost, env.layout, log=messages.append).run()
    records = [p for p in map(parse_progress, messages) if p is not None]
    assert [(p.iteration, p.iterations) for p in records] == [(0, 2), (1, 2)], messages
    for p, h in zip(records, state.history, strict=True):
        assert p.cost == pytest.approx(np.mean(h["mean_cost"]))
        assert p.distances == pytest.approx(h["eval_final_distance"]) and p.seconds > 0
    out = io.StringIO()
    console = Console(out, verbose=False, success_distance=0.02)
    for message in messages:
        console.node_line("trainer", f"[INFO] [1796226826.841427561] [trainer]: {message}")
    console.close()
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == [
        "[trainer] iteration 1/2", "[trainer] iteration 2/2"], out.getvalue()
