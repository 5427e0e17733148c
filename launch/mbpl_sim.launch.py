"""ros2 launch file of the mbpl graph in simulation (full ROS 2 installs with launch_ros).

    ros2 launch mbpl_ros mbpl_sim.launch.py config:=/path/to/experiment.yaml [enclave_root:=/mbpl]

The Node actions are built from :func:`mbpl_ros.bringup.graph_from_experiment`, the same description
``mbpl launch`` starts with its own process launcher, so the two cannot drift. As there, a node that
exits ends the launch unless the experiment's ``ros.respawn`` lists it or it is one robot's node of
several (``ros.robots``). A fresh run token is drawn per
launch. With ``enclave_root`` (SROS2, ``ROS_SECURITY_ENABLE=true``) each node runs in the enclave
``<enclave_root>/<node name>`` (``<enclave_root>/<robot>/<node name>`` for a robot's nodes when the
experiment has several robots, ``ros.robots``) of the keystore.
"""

from __future__ import annotations

from typing import Any

from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription
from mbpl_ros.bringup import graph_from_experiment, new_run_token


def _graph_actions(context: Any) -> list[Any]:
    """Node actions of the experiment named by the ``config`` launch argument."""
    config = LaunchConfiguration("config").perform(context)
    enclave_root = LaunchConfiguration("enclave_root").perform(context).rstrip("/")
    actions = []
    for spec in graph_from_experiment(config, run_token=new_run_token()):
        extra: dict[str, Any] = {}
        if spec.respawn:
            extra.update(respawn=True, respawn_delay=spec.respawn_delay)
        elif not spec.optional:  # one robot of several may stop; the others take its trials
            extra["on_exit"] = Shutdown(reason=f"{spec.label} exited")
        if enclave_root:
            extra["ros_arguments"] = ["--enclave", f"{enclave_root}/{spec.label}"]
        actions.append(
            Node(
                package="mbpl_ros",
                executable=spec.executable,
                name=spec.name,
                namespace=spec.namespace,
                remappings=list(spec.remaps),
                parameters=[dict(spec.parameters)],
                output="screen",
                **extra,
            )
        )
    return actions


def generate_launch_description() -> LaunchDescription:
    """Declare ``config`` and build the graph from it when the launch runs."""
    return LaunchDescription(
        [
            DeclareLaunchArgument("config", description="experiment YAML file (robot, task, cost, ros)"),
            DeclareLaunchArgument("enclave_root", default_value="",
                                  description="SROS2: run each node in the enclave <enclave_root>/<name>"),
            OpaqueFunction(function=_graph_actions),
        ]
    )
