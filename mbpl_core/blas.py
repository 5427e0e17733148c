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
