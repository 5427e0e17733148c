"""Shared set-up for tests that talk ROS 2: an isolated graph per test session, helpers for processes.

The environment is set at import time, before any test module imports rclpy, so both this process
and every process it starts use the same private domain: ROS_DOMAIN_ID derived from the pid (fresh
per session), discovery limited to localhost, logs under a temporary directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_ROS_HOME = Path(tempfile.mkdtemp(prefix="mbpl-ros-test-"))
os.environ["ROS_DOMAIN_ID"] = str(os.getpid() % 100 + 1)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_HOME"] = str(_ROS_HOME)
os.environ["ROS_LOG_DIR"] = str(_ROS_HOME / "log")
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(
    p for p in (str(Path(sys.prefix)), os.environ.get("AMENT_PREFIX_PATH", "")) if p
)


def ros_env() -> dict[str, str]:
    """Environment for child processes: this session's isolated ROS graph, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGINT, then SIGTERM, then SIGKILL, each after ``timeout`` seconds; returns the exit code."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


@pytest.fixture
def rclpy_node() -> Iterator[object]:
    """An rclpy node in a private context for talking to processes under test; torn down afterwards."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("mbpl_test_client", context=context)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


class ProcessFactory:
    """Starts ``python -m <module> --ros-args ...`` processes with a params file; stops them at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(
        self, module: str, node_name: str, parameters: dict[str, object], *ros_args: str
    ) -> subprocess.Popen:
        from mbpl_ros.params import write_params_file

        # "/**" applies the file whatever namespace the node is remapped into
        params = write_params_file(self.tmp_path / f"{node_name}.yaml", "/**", parameters)
        log = self.tmp_path / f"{node_name}-{len(self.procs)}.log"
        cmd = [sys.executable, "-m", module, "--ros-args", "-r", f"__node:={node_name}",
               "--params-file", str(params), *ros_args]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env=ros_env(), stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        self.procs.append((proc, log))
        return proc

    def output(self, proc: subprocess.Popen) -> str:
        """Everything the process has written so far (for assertion messages)."""
        log = next(log for p, log in self.procs if p is proc)
        return log.read_text(errors="replace")

    def check_alive(self) -> None:
        """Fail the test, showing its output, if a started process has exited."""
        for proc, log in self.procs:
            if proc.poll() is not None:
                pytest.fail(f"process {proc.args[2]} exited with {proc.returncode}:\n{log.read_text()}")

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            stop_process(proc)


@pytest.fixture
def ros_processes(tmp_path: Path) -> Iterator[ProcessFactory]:
    """Factory for node processes in this session's isolated graph; all are stopped after the test."""
    factory = ProcessFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


def spin_until(
    node: object, predicate: object, timeout: float, what: str, processes: ProcessFactory | None = None
) -> None:
    """Spin ``node`` until ``predicate()`` is true; fail naming ``what`` after ``timeout`` seconds.

    With ``processes``, also fail as soon as one of them exits.
    """
    import time

    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=node.context)  # type: ignore[attr-defined]
    executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            executor.spin_once(timeout_sec=min(0.1, remaining))
            if processes is not None:
                processes.check_alive()
    finally:
        executor.remove_node(node)
        executor.shutdown()


@pytest.fixture
def wait_for(ros_processes: ProcessFactory) -> object:
    """``wait_for(node, predicate, timeout, what)``: spin until the predicate holds, or fail.

    Fails early if a process started through ``ros_processes`` exits.
    """

    def wait(node: object, predicate: object, timeout: float, what: str) -> None:
        spin_until(node, predicate, timeout, what, ros_processes)

    return wait


@pytest.fixture(scope="session")
def experiment_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small reacher2 experiment (2 joints, 2 conditions, dt = 10 ms) for node tests."""
    path = tmp_path_factory.mktemp("experiment") / "reacher2_test.yaml"
    path.write_text(
        f"""name: reacher2_test
robot:
  description: {REPO_ROOT / 'urdf/reacher2/reacher2.urdf'}
  joints: [joint1, joint2]
  ee: {{frame: ee_link, points: [[0.0, 0.0, 0.0]]}}
task:
  T: 20
  dt: 0.01
  substeps: 2
  initial_q: [-0.5, 1.6]
  conditions: {{positions: [[0.35, 0.10, 0.10], [0.10, 0.35, 0.10]]}}
ros:
  lockstep: true
  controller: effort_controller
"""
    )
    return path
