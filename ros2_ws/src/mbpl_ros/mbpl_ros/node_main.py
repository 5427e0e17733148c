"""The common ``main()`` of the nodes: init, spin until SIGINT/SIGTERM, shut down cleanly.

Exit codes: 0 after SIGINT/SIGTERM or a normal end, 2 on a configuration error (the message printed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from mbpl_core.config import ConfigError

N = TypeVar("N", bound=Node)


def spin_node(
    make_node: Callable[[], N],
    label: str,
    args: list[str] | None = None,
    on_exit: Callable[[N], None] | None = None,
    make_executor: Callable[[], Executor] = SingleThreadedExecutor,
) -> int:
    """Create the node with ``make_node`` and spin it; ``on_exit(node)`` runs before it is destroyed."""
    rclpy.init(args=args)
    node: N | None = None
    try:
        node = make_node()
        executor = make_executor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ConfigError as err:
        print(f"{label}: configuration error: {err}", flush=True)
        return 2
    except Exception:
        # SIGINT shuts the context down from the signal handler; a spin caught building its wait set
        # at that moment raises RCLError ("context is not valid") instead of ExternalShutdownException
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            if on_exit is not None:
                on_exit(node)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
