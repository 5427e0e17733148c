"""`mbpl eval --render` end to end, as a user runs it: a saved policy checkpoint, one process, a GIF and a
PNG strip per rollout, distances equal to the in-process evaluation, and a clean interpreter exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

pytestmark = pytest.mark.sim

torch = pytest.importorskip("torch")

from mbpl_core.guided.mdgps import GaussianMLPPolicy, save_policy_checkpoint  # noqa: E402
from mbpl_core.policy import GPSConfig, load_policy_checkpoint  # noqa: E402
from mbpl_sim import render  # noqa: E402
from mbpl_sim.env import MujocoEnv  # noqa: E402
from mbpl_sim.evaluate import evaluate_in_sim  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "reacher2_sim.yaml"


def _eval(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mbpl_ros.cli", "eval", str(CONFIG), *args]
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "osmesa"))
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_eval_render_writes_a_video_and_strip_per_rollout(tmp_path: Path) -> None:
    ok, why = render.offscreen_available()
    if not ok:
        pytest.skip(why)
    experiment = load_experiment(CONFIG)
    env = MujocoEnv(experiment, condition_set="train")
    config = GPSConfig(hidden_sizes=(8,), device="cpu", seed=3)
    untrained = GaussianMLPPolicy.from_config(config, env.dX, env.dU)
    checkpoint = save_policy_checkpoint(tmp_path / "policy", untrained, config)
    run_dir = tmp_path / "eval"
    done = _eval("--policy", str(checkpoint), "--conditions", "train", "--only", "0", "2", "--render",
                 "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]  # the renderer is closed before exit
    result = json.loads((run_dir / "evaluation.json").read_text())
    policy, _ = load_policy_checkpoint(checkpoint)
    oracle = evaluate_in_sim(experiment, policy, "train", [0, 2])
    assert result["conditions"] == [0, 2]
    np.testing.assert_allclose(result["tip_distance"], oracle.tip_distance, rtol=0, atol=1e-12)
    videos = run_dir / "videos"
    assert sorted(p.name for p in videos.iterdir()) == ["train_0.gif", "train_0.png", "train_2.gif",
                                                        "train_2.png"]
    for c in (0, 2):
        frames = iio.imread(videos / f"train_{c}.gif", index=None)
        assert frames.shape[0] == env.T and frames.shape[1:3] == (240, 320)
        assert frames.std() > 5.0  # not blank
        strip = iio.imread(videos / f"train_{c}.png")
        assert strip.shape[0] == 240 and strip.shape[1] == 5 * 320
    assert str(videos) in done.stdout


def test_eval_render_refuses_the_graph(tmp_path: Path) -> None:
    (tmp_path / "policy").mkdir()
    done = _eval("--policy", str(tmp_path / "policy"), "--render", "--graph", "--run-dir",
                 str(tmp_path / "e"))
    assert done.returncode == 2 and "--render works in-process only" in done.stderr, done.stderr
