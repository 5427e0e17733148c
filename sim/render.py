"""Offscreen rendering of trajectories to GIF/MP4 and to a PNG strip of a few frames.

Needs an OpenGL backend without a display: MUJOCO_GL=osmesa (+ PYOPENGL_PLATFORM=osmesa) with the
system's libOSMesa. mujoco chooses the backend when it is first imported; importing mbpl_sim before
mujoco selects OSMesa on display-less machines (see mbpl_sim/__init__.py). The Renderer is
always closed explicitly: left to the garbage collector it fails noisily at interpreter shutdown.
"""

from __future__ import annotations

import ctypes.util
import os
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import mujoco
import numpy as np

from mbpl_core.containers import SampleBatch


def offscreen_available() -> tuple[bool, str]:
    """(True, "") if an offscreen context can be made, else (False, why)."""
    backend = os.environ.get("MUJOCO_GL", "")
    if backend == "osmesa" and ctypes.util.find_library("OSMesa") is None:
        return False, "MUJOCO_GL=osmesa but libOSMesa is not installed (apt-get install libosmesa6)"
    try:
        renderer = mujoco.Renderer(mujoco.MjModel.from_xml_string("<mujoco/>"), 8, 8)
    except Exception as err:  # any backend failure means: no rendering on this machine
        return False, (f"cannot create an offscreen GL context (MUJOCO_GL={backend or 'unset'}; "
                       f"it must be set before mujoco is first imported): {err}")
    renderer.close()
    return True, ""


def default_camera(model: mujoco.MjModel, lookat: np.ndarray | None = None,
                   distance: float | None = None) -> mujoco.MjvCamera:
    """Free camera looking at `lookat` (default: the model's centre) from the front-left, above."""
    camera = mujoco.MjvCamera()
    mujoco.mjv_defaultFreeCamera(model, camera)
    if lookat is not None:
        camera.lookat[:] = lookat
    camera.distance = distance if distance is not None else max(1.0, float(model.stat.extent))
    camera.azimuth, camera.elevation = 135.0, -25.0
    return camera


def render_frames(model: mujoco.MjModel, qpos: np.ndarray, mocap_pos: np.ndarray | None = None,
                  width: int = 320, height: int = 240, camera: mujoco.MjvCamera | None = None) -> np.ndarray:
    """RGB frames (F, height, width, 3) uint8 of qpos (F, nq); mocap_pos (nmocap, 3) places task objects."""
    qpos = np.asarray(qpos, dtype=np.float64)
    if qpos.ndim != 2 or qpos.shape[1] != model.nq:
        raise ValueError(f"qpos has shape {qpos.shape}, expected (F, {model.nq})")
    data = mujoco.MjData(model)
    if mocap_pos is not None:
        data.mocap_pos[:] = mocap_pos
    camera = camera or default_camera(model)
    frames = np.empty((len(qpos), height, width, 3), dtype=np.uint8)
    renderer = mujoco.Renderer(model, height, width)
    try:
        for i, q in enumerate(qpos):
            data.qpos[:] = q
            mujoco.mj_forward(model, data)
            renderer.update_scene(data, camera)
            frames[i] = renderer.render()
    finally:
        renderer.close()
    return frames


def write_video(frames: np.ndarray, path: Path | str, fps: float) -> Path:
    """Write frames (F, H, W, 3) to a .gif, or .mp4 when imageio's ffmpeg plugin is installed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        iio.imwrite(path, list(frames), duration=1000.0 / fps, loop=0)
    elif path.suffix.lower() in (".mp4", ".mkv", ".webm", ".avi"):
        try:
            iio.imwrite(path, frames, fps=fps)
        except OSError as err:  # imageio has no video encoder without its ffmpeg or pyav plugin
            raise RuntimeError(f"cannot write {path.name}: video formats need imageio's ffmpeg plugin "
                               "(imageio-ffmpeg); write a .gif instead") from err
    else:
        raise ValueError(f"unsupported video format {path.suffix!r}: use .gif or .mp4")
    return path


def write_strip(frames: np.ndarray, path: Path | str, count: int = 5) -> Path:
    """PNG of `count` evenly spaced frames side by side (H, count·W, 3)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    idx = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    iio.imwrite(path, np.concatenate([frames[i] for i in idx], axis=1))
    return path


def render_sample(env: object, batch: SampleBatch, condition: int, path: Path | str,
                  strip_path: Path | str | None = None, width: int = 320, height: int = 240,
                  sample_index: int = 0) -> Path:
    """Replay a sample's actions in `env` (a MujocoEnv) from the condition's start and render it.

    The replay is exact because the simulation is deterministic given the start and the actions.
    """
    qpos = env.rollout_qpos(condition, batch.U[sample_index, :-1])  # type: ignore[attr-defined]
    return render_qpos(env, qpos, condition, path, strip_path, width, height)


def render_qpos(env: object, qpos: Sequence[np.ndarray] | np.ndarray, condition: int, path: Path | str,
                strip_path: Path | str | None = None, width: int = 320, height: int = 240) -> Path:
    """Render qpos frames (F, nq) of `env`'s scene with the condition's task objects; video at 1/dt fps."""
    env.reset(condition)  # type: ignore[attr-defined]
    model, data = env.model, env.data  # type: ignore[attr-defined]
    lookat = 0.5 * (env.target_points(condition).mean(axis=0) + data.xpos[1])  # type: ignore[attr-defined]
    # frame the robot: its farthest body from the look-at point sets the distance
    reach = float(np.max(np.linalg.norm(data.xpos[1:] - lookat, axis=1)))
    camera = default_camera(model, lookat, distance=max(0.6, 2.4 * reach))
    frames = render_frames(model, np.asarray(qpos), data.mocap_pos.copy(), width, height, camera)
    if strip_path is not None:
        write_strip(frames, strip_path)
    return write_video(frames, path, fps=1.0 / env.dt)  # type: ignore[attr-defined]
