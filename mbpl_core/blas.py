"""BLAS thread pinning for the small dense linear algebra of the hot paths.

On small machines the default multi-threaded BLAS makes (T=100, dX≈26)-sized products 10–100×
slower than one thread; every hot path runs inside :func:`single_threaded_blas`.
The library scan of threadpoolctl costs ~1 ms, so it is done once and cached.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from threadpoolctl import ThreadpoolController

F = TypeVar("F", bound=Callable[..., Any])

_controller: ThreadpoolController | None = None
_lock = threading.Lock()


def _get_controller() -> ThreadpoolController:
    global _controller
    with _lock:
        if _controller is None:
            _controller = ThreadpoolController()
        return _controller


def single_threaded_blas() -> AbstractContextManager[Any]:
    """Context manager limiting BLAS pools to one thread (restores the previous limits on exit)."""
    return _get_controller().limit(limits=1, user_api="blas")


def with_single_threaded_blas(func: F) -> F:
    """Decorator form of :func:`single_threaded_blas`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_threaded_blas():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def numerical_environment() -> dict[str, Any]:
    """What decides the floating-point results of a run besides its seed: library versions, the BLAS
    kernel chosen for this CPU (OpenBLAS picks e.g. SkylakeX or Haswell at load time), torch's CPU
    instruction set, thread counts, and the environment variables that override those choices.

    Two machines of one kind whose records differ here may give different runs from one seed (learning
    amplifies last-bit differences); recorded in every run folder so such runs can be told apart.
    """
    import os
    import platform

    import numpy
    import scipy

    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                            "numpy": numpy.__version__, "scipy": scipy.__version__}
    try:
        import torch

        info |= {"torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                 "torch_threads": torch.get_num_threads()}
    except ImportError:  # the robot side deploys policies with numpy alone
        info["torch"] = None
    try:
        import mujoco

        info["mujoco"] = mujoco.__version__
    except ImportError:
        info["mujoco"] = None
    info["blas"] = [{k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                    for lib in _get_controller().info() if lib.get("user_api") == "blas"]
    keys = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY")
    info["environment"] = {k: os.environ[k] for k in keys if k in os.environ}
    info["cpu"] = _cpu_model() or platform.processor()
    return info


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else None."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None
