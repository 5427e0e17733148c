"""BLAS thread pinning for the small dense linear algebra of the hot paths.

On small machines the default multi-threaded BLAS makes (T=100, dX≈26)-sized products 10–100×
slower than one thread; every hot path runs inside :func:`single_threaded_blas`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from threadpoolctl import threadpool_limits

F = TypeVar("F", bound=Callable[..., Any])


def single_threaded_blas() -> threadpool_limits:
    """Context manager limiting BLAS/OpenMP pools to one thread."""
    return threadpool_limits(limits=1, user_api="blas")


def with_single_threaded_blas(func: F) -> F:
    """Decorator form of :func:`single_threaded_blas`."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with single_threaded_blas():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
