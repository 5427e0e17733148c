"""The unchanged test robots of tests/sim/models reach every target through `mbpl launch` too (issue 12).

demo_arm: a URDF with ``package://`` meshes (its own package and a tool package found through the
experiment's package_paths) and the end effector on a fixed-joint TCP link, tracked as a site by the sim
node and the sampler alike; mjcf_planar: an MJCF arm whose own geared motors are kept (the sim node
applies the sampler's joint torques through them) beside a free puck on a table. Only the experiment file
is given, from another working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

MODELS = Path(__file__).resolve().parents[1] / "sim" / "models"
RUN_TIMEOUT = 900


@pytest.mark.parametrize("config", [MODELS / "demo_arm.yaml", MODELS / "mjcf_planar" / "experiment.yaml"],
                         ids=["urdf_package", "mjcf_own_motors"])
def test_unchanged_test_robot_reaches_every_target_through_the_graph(config: Path, tmp_path: Path) -> None:
    # os.environ holds this session's isolated ROS graph settings (tests/ros/conftest.py)
    env = {k: v for k, v in os.environ.items() if k != "ROS_PACKAGE_PATH"} | {"PYTHONUNBUFFERED": "1"}
    run = tmp_path / "run"
    command = [sys.executable, "-m", "mbpl_ros.cli", "launch", str(config), "--run-dir", str(run)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    assert "Traceback" not in output and "warning:" not in output, output[-8000:]
    history = json.loads((run / "history.json").read_text())
    final = history[-1]["eval_final_distance"]
    assert len(final) == 2 and max(final) < 0.02, f"final tip distances {final}"
