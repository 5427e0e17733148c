"""`mbpl launch` and `mbpl train` check the robot and the experiment before a run folder or a node exists
(issue 12, items 4 and 8), on the test models of tests/sim/models (see test_robot_models.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mbpl_ros.cli import EXIT_USAGE, main

pytestmark = pytest.mark.sim

MODELS = Path(__file__).resolve().parent / "models"
PKGS = MODELS / "ros_pkgs"
DEMO_YAML = MODELS / "demo_arm.yaml"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory that is not the experiment's folder; only the experiment's own
    package_paths find the tool package. Should a regression start nodes, they stay in a private graph."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("ROS_PACKAGE_PATH", raising=False)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(230 + os.getpid() % 3))  # 1-229 are the ROS/e2e tests'
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path / "ros_log"))
    return cwd


def _pkgs_without_the_forearm_mesh(tmp_path: Path) -> list[str]:
    shutil.copytree(PKGS, tmp_path / "pkgs")
    (tmp_path / "pkgs" / "demo_arm_description" / "meshes" / "forearm.obj").unlink()
    urdf = tmp_path / "pkgs" / "demo_arm_description" / "urdf" / "demo_arm.urdf"
    return [f"robot.description={urdf}", f"robot.package_paths=[{tmp_path / 'pkgs'}]"]


MISTAKES = {
    "joint name": (["robot.joints=[shoulder_yaw, shoulder_pich, elbow]"],
                   r"robot\.joints: \['shoulder_pich'\] not in demo_arm\.urdf; its hinge/slide joints are "
                   r"\['shoulder_yaw', 'shoulder_pitch', 'elbow'\]"),
    "ee frame": (["robot.ee.frame=tcp"],
                 r"robot\.ee\.frame: 'tcp' not in demo_arm\.urdf; bodies: .*'tool_tcp'"),
    "missing mesh": (None, r"mesh 'package://demo_arm_description/meshes/forearm\.obj'.*not found"),
    "robot key": (["robot.ee_frame=tool_tcp"], r"robot: unknown key\(s\) \['ee_frame'\]"),
    "cost key": (["cost.ee.l3=1.0"], r"cost\.ee: unknown key\(s\) \['l3'\]"),
    "ros key": (["ros.lockstp=false"], r"ros: unknown key\(s\) \['lockstp'\]"),
    "node parameter": (["ros.nodes.sampler.rate_hzz=5"],
                       r"ros\.nodes\.sampler: unknown key\(s\) \['rate_hzz'\]"),
}


def _error_line(err: str, command: str, pattern: str) -> None:
    """stderr is exactly one line: ``mbpl <command>: configuration error: ...`` matching pattern."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mbpl {command}: configuration error: "), err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("mistake", list(MISTAKES))
@pytest.mark.parametrize("command", ["launch", "train"])
def test_each_robot_mistake_is_one_error_before_any_run_folder_or_node(
        command: str, mistake: str, tmp_path: Path, elsewhere: Path, capsys: pytest.CaptureFixture) -> None:
    sets, pattern = MISTAKES[mistake]
    if sets is None:
        sets = _pkgs_without_the_forearm_mesh(tmp_path)
    run = tmp_path / "run"
    args = [command, str(DEMO_YAML), "--run-dir", str(run)] + [a for s in sets for a in ("--set", s)]
    assert main(args) == EXIT_USAGE
    out, err = capsys.readouterr()
    _error_line(err, command, pattern)
    assert "[launch] started" not in out and out == "", out  # not even the check's notes: nothing ran
    assert not run.exists(), "the run folder (and a node's params file in it) must not exist"
    assert main([command, str(DEMO_YAML)] + [a for s in sets for a in ("--set", s)]) == EXIT_USAGE
    assert not (elsewhere / "runs").exists(), "no default run folder either"


def test_mbpl_launch_as_a_command_starts_no_node_on_a_wrong_joint(tmp_path: Path, elsewhere: Path) -> None:
    """The same through a real `mbpl launch` process, from another working directory, default run folder."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mbpl_ros.cli", "launch", str(DEMO_YAML),
         "--set", "robot.joints=[shoulder_yaw, shoulder_pich, elbow]"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_USAGE, proc.stdout + proc.stderr
    _error_line(proc.stderr, "launch", MISTAKES["joint name"][1])
    assert "Traceback" not in proc.stderr and "[launch]" not in proc.stdout, proc.stdout
    assert list(elsewhere.iterdir()) == [], "no run folder may be created"


# --- item 8 ----------------------------------------------------------------------------------------

def test_a_missing_description_names_the_experiment_folder_not_the_run_folder(
        tmp_path: Path, elsewhere: Path, capsys: pytest.CaptureFixture) -> None:
    raw = yaml.safe_load(DEMO_YAML.read_text())
    raw["robot"]["description"] = "robots/arm.urdf"
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "exp.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    assert main(["train", str(folder / "exp.yaml"), "--run-dir", str(run)]) == EXIT_USAGE
    err = capsys.readouterr().err
    # the experiment's own folder first, then the working directory and the repository root
    _error_line(err, "train", "robot\\.description: file 'robots/arm\\.urdf' not found \\(looked in: "
                + re.escape(f"{folder / 'robots' / 'arm.urdf'}, {elsewhere / 'robots' / 'arm.urdf'}, "))
    assert str(run) not in err
    assert not run.exists()


def test_relative_paths_work_from_another_working_directory(tmp_path: Path, elsewhere: Path) -> None:
    """A relative experiment path given from elsewhere, whose robot paths are relative to the experiment:
    `mbpl train` runs, and the run folder's config.yaml names the robot by absolute paths."""
    config = os.path.relpath(DEMO_YAML, elsewhere)
    run = tmp_path / "run"
    assert main(["train", config, "--iterations", "1", "--run-dir", str(run), "--set", "task.T=10",
                 "--set", "algorithm.samples_per_condition=2"]) == 0
    assert (run / "history.json").is_file()
    written = yaml.safe_load((run / "config.yaml").read_text())["robot"]
    assert written["description"] == str(PKGS / "demo_arm_description" / "urdf" / "demo_arm.urdf")
    assert written["package_paths"] == [str(PKGS)]


@pytest.mark.parametrize("command", ["launch", "train"])
def test_strict_refuses_what_is_otherwise_a_warning(command: str, tmp_path: Path, elsewhere: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    below = ["--set", "task.conditions={positions: [[0.3, 0.0, -0.05], [0.35, -0.2, 0.25]]}"]
    run = tmp_path / "run"
    assert main([command, str(DEMO_YAML), "--run-dir", str(run), "--strict", *below]) == EXIT_USAGE
    _error_line(capsys.readouterr().err, command,
                r"--strict: train condition 0: target \[0\.3, 0\.0, -0\.05\] of ee point 0 is below the "
                r"floor at z = 0\.000 m")
    assert not run.exists()
    if command == "train":  # without --strict: the same warning in the log, and the run goes ahead
        assert main(["train", str(DEMO_YAML), "--run-dir", str(run), "--iterations", "1", *below,
                     "--set", "task.T=10", "--set", "algorithm.samples_per_condition=2"]) == 0
        out = capsys.readouterr().out
        assert "[mbpl] warning: train condition 0: target [0.3, 0.0, -0.05]" in out, out
        assert (run / "history.json").is_file()
