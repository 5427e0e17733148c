"""mbpl_sim: MuJoCo robots, scenes, tasks and the in-process environment."""

import ctypes.util as _ctypes_util
import os as _os

# mujoco picks its OpenGL backend once, when it is first imported: choose offscreen OSMesa before that
# on display-less machines where the library exists (an explicit MUJOCO_GL always wins).
if "DISPLAY" not in _os.environ and "MUJOCO_GL" not in _os.environ and _ctypes_util.find_library("OSMesa"):
    _os.environ["MUJOCO_GL"] = "osmesa"
    _os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
