"""Per-joint bounds within the robot's effort limits (numpy only: the robot side imports this).

A method may explore or plan within a smaller box than the actuators allow (``pets.action_limits``):
:func:`bounded_limits` turns such a setting — dU values, or one value for every joint — into the (dU,)
bound min(effort_limits, own), with a ConfigError naming the setting for anything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mbpl_core.config import ConfigError


def check_limits(own: Sequence[float], name: str) -> np.ndarray:
    """``own`` as a 1-D array of positive finite values; ConfigError naming ``name`` otherwise."""
    try:
        limits = np.asarray(own, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be numbers, got {own!r}") from err
    if limits.ndim != 1 or limits.size == 0 or not np.all(np.isfinite(limits)) or np.any(limits <= 0):
        raise ConfigError(f"{name} must be positive finite values, got {own!r}")
    return limits


def bounded_limits(own: Sequence[float] | None, effort_limits: np.ndarray, name: str) -> np.ndarray:
    """(dU,) min(effort_limits, own); ``own`` None: the effort limits; one value: every joint."""
    limits = np.asarray(effort_limits, dtype=np.float64)
    if own is None:
        return limits.copy()
    values = check_limits(own, name)
    if values.size not in (1, limits.size):
        raise ConfigError(f"{name}: {values.size} values for {limits.size} joints")
    return np.minimum(limits, np.broadcast_to(values, limits.shape))


def check_action_limits(section: str, config: Any) -> None:
    """ConfigError unless ``<section>.action_limits`` of a frozen config is None or positive finite values;
    stored as a tuple of floats."""
    if config.action_limits is not None:
        values = check_limits(config.action_limits, f"{section}.action_limits")
        object.__setattr__(config, "action_limits", tuple(float(v) for v in values))
