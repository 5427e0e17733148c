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
             for method in ("lqr_flm", "mdgps", "pets")}
    assert names["lqr_flm"] == names["mdgps"] == ["sim", "sampler", "fitting", "ilqr", "trainer"]
    assert names["pets"] == ["sim", "sampler", "model", "planner", "trainer"]
    specs = graph_from_experiment(tmp_path / "x.yaml", {"method": "pets"}, run_token="abc")
    assert all(s.parameters.get("run_token") == "abc" for s in specs if s.name != "sim")
    with pytest.raises(ConfigError, match="does not run through the graph"):
        graph_from_experiment(tmp_path / "x.yaml", {"method": "sac"})


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
    ):
        with pytest.raises(ConfigError, match=reason):
            graph_from_experiment(tmp_path / "x.yaml", {"ros": bad})


def _launcher(specs: list[NodeSpec], run_dir: Path) -> tuple[ProcessLauncher, io.StringIO]:
    out = io.StringIO()
    return ProcessLauncher(specs, run_dir, out=out, stop_timeout=5.0), out


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


def test_a_dying_node_shows_its_error_once_and_the_others_stop_quietly(node_modules: Path,
                                                                       tmp_path: Path) -> None:
    """A node fails while a ROS node spins and another is still starting (SIGINT there is a
    KeyboardInterrupt traceback): the output holds the failed node's traceback once, then no line of the
    others' shutdown (it is in their log files), and a closing line names the node and its log."""
    specs = [
        NodeSpec("spinner", "mbpl_test_spinner", {"greeting": "hi"}),
        NodeSpec("starter", "mbpl_test_starter"),
        NodeSpec("failer", "mbpl_test_failer"),
    ]
    run = tmp_path / "run"
    launcher, out = _launcher(specs, run)
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


def test_launch_file_builds_the_same_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """launch/mbpl_sim.launch.py against stand-ins for launch / launch_ros (absent here): same nodes."""
    import importlib.util
    import types

    class Recorder:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.args, self.kwargs = args, kwargs

    class Config(Recorder):
        def perform(self, context: object) -> str:
            return str(REPO_ROOT / "configs/reacher2_sim.yaml")

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
    expected = graph_from_experiment(REPO_ROOT / "configs/reacher2_sim.yaml", run_token="token-of-launch")
    got = [(n.kwargs["name"], n.kwargs["executable"]) for n in nodes]
    assert got == [(s.name, s.executable) for s in expected]
    assert [n.kwargs["parameters"] for n in nodes] == [[dict(s.parameters)] for s in expected]
    assert all("on_exit" in n.kwargs for n in nodes)  # no node respawns in the demo: any exit ends the launch


def test_cli_overrides_and_placeholders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mbpl_ros.cli import apply_overrides, effective_config, main

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
