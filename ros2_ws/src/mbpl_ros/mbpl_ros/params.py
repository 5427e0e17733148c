"""One declared parameter schema per node: a frozen dataclass drives ROS parameters, validation and docs.

A node's parameters are the fields of a frozen dataclass: the default is the dataclass default, the
description lives in the field's metadata (``param("...", default)``) and validation is the
dataclass's ``__post_init__`` raising :class:`mbpl_core.config.ConfigError`. :func:`declare_parameters`
declares every field on a node (type, default, description, read-only) and builds the dataclass from
the values ROS resolved (defaults < params file < command line), so the parameters a node reads and
the config it passes to mbpl_core cannot disagree. :func:`write_params_file` writes the YAML the
bringup hands to ``--params-file``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mbpl_core.config import ConfigError, from_dict

P = TypeVar("P")
ROS_SCALARS = (bool, int, float, str)


def param(description: str, default: Any) -> Any:
    """A dataclass field with a default and the description ROS shows for the parameter."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"description": description})
    return dataclasses.field(default=default, metadata={"description": description})


def _descriptor(description: str, read_only: bool) -> Any:
    from rcl_interfaces.msg import ParameterDescriptor

    return ParameterDescriptor(description=description, read_only=read_only, dynamic_typing=False)


def declare_parameters(node: Any, schema: type[P], read_only: bool = True) -> P:
    """Declare every field of ``schema`` on ``node`` and return the validated dataclass of their values.

    Raises ConfigError naming the parameter when a value has the wrong type or fails validation.
    """
    hints = typing.get_type_hints(schema)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(schema):  # type: ignore[arg-type]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        description = f.metadata.get("description", "")
        try:
            declared = node.declare_parameter(f.name, default, _descriptor(description, read_only))
        except Exception as err:  # rclpy raises several exception types for a mistyped override
            raise ConfigError(f"parameter {f.name!r} ({hints[f.name]}): {err}") from err
        value = declared.value
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[f.name] = list(value) if isinstance(value, (list, tuple)) else value
    return from_dict(schema, values)


def schema_defaults(schema: type[Any]) -> dict[str, Any]:
    """{name: default} of a parameter schema, in field order."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return out


def describe(schema: type[Any]) -> str:
    """Markdown table (name, type, default, description) of a parameter schema, for the docs."""
    hints = typing.get_type_hints(schema)
    rows = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for name, default in schema_defaults(schema).items():
        field = next(f for f in dataclasses.fields(schema) if f.name == name)
        text = field.metadata.get("description", "")
        rows.append(f"| `{name}` | `{hints[name]}` | `{default!r}` | {text} |")
    return "\n".join(rows)


def _check_ros_value(node_name: str, key: str, value: Any) -> None:
    if isinstance(value, ROS_SCALARS):
        return
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, type(value[0])) for v in value):
        if isinstance(value[0], ROS_SCALARS):
            return
    raise ConfigError(
        f"{node_name}.{key}: a ROS parameter is a bool/int/float/str or a non-empty list of one of them, "
        f"got {value!r}"
    )


def write_params_file(path: str | Path, node_name: str, parameters: Mapping[str, Any]) -> Path:
    """Write ``{node_name: {ros__parameters: parameters}}`` as YAML for ``--params-file``; returns it."""
    for key, value in parameters.items():
        _check_ros_value(node_name, key, value)
    clean = {k: list(v) if isinstance(v, tuple) else v for k, v in parameters.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({node_name: {"ros__parameters": clean}}, sort_keys=False))
    return path
