"""Offscreen rendering writes non-empty images and videos (skipped where no GL backend exists)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from mbpl_sim import render
from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import ExperimentConfig

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def gl() -> None:
    ok, why = render.offscreen_available()
    if not ok:
        pytest.skip(why)


class _Push:
    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        return np.array([1.0, -1.0])


def test_render_sample_writes_gif_and_strip(gl: None, tmp_path: Path,
                                            shipped_experiments: dict[str, ExperimentConfig]) -> None:
    experiment = shipped_experiments["reacher2_sim"]
    env = MujocoEnv(replace(experiment, task=replace(experiment.task, T=6)))
    batch = env.sample(_Push(), 0, None)
    video = render.render_sample(env, batch, 0, tmp_path / "run.gif", tmp_path / "strip.png", 96, 64)
    frames = iio.imread(video, index=None)
    assert frames.shape[0] == env.T and frames.shape[1:3] == (64, 96)
    strip = iio.imread(tmp_path / "strip.png")
    assert strip.shape[0] == 64 and strip.shape[1] == 5 * 96
    assert strip.std() > 5.0  # not a blank image
    first, last = frames[0].astype(float), frames[-1].astype(float)
    assert np.abs(first - last).mean() > 0.1  # the arm moved between the first and last frame


def test_render_frames_rejects_wrong_qpos(gl: None, shipped_experiments: dict[str, ExperimentConfig]) -> None:
    env = MujocoEnv(shipped_experiments["arm7_peg"])
    with pytest.raises(ValueError, match="qpos has shape"):
        render.render_frames(env.model, np.zeros((2, 3)))


def test_unsupported_video_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported video format"):
        render.write_video(np.zeros((2, 8, 8, 3), dtype=np.uint8), tmp_path / "run.png", fps=10)


def test_mp4_video_has_every_frame(gl: None, tmp_path: Path,
                                   shipped_experiments: dict[str, ExperimentConfig]) -> None:
    experiment = shipped_experiments["reacher2_sim"]
    env = MujocoEnv(replace(experiment, task=replace(experiment.task, T=8)))
    batch = env.sample(_Push(), 0, None)
    video = render.render_sample(env, batch, 0, tmp_path / "run.mp4", None, 96, 64)
    frames = iio.imread(video, index=None)
    assert frames.shape[0] == env.T and frames.shape[1:3] == (64, 96)
