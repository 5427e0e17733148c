"""ament_python packaging of mbpl_ros for full ROS 2 installs (colcon build).

In this repository the package is normally installed editable from the top-level pyproject.toml;
this file lets `colcon build` on a ROS 2 machine install the nodes, launch files and configs so that
`ros2 run mbpl_ros sim_node` and `ros2 launch mbpl_ros mbpl_sim.launch.py` work.
"""

import os
from glob import glob
from pathlib import Path

from setuptools import setup

package_name = "mbpl_ros"
here = Path(__file__).resolve().parent
repo_root = here.parents[2]


def _rel(pattern: str) -> list[str]:
    """Files of the repository matching ``pattern``, relative to this folder (setuptools insists)."""
    return sorted(os.path.relpath(p, here) for p in glob(str(repo_root / pattern)))


setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", _rel("launch/*.launch.py")),
        ("share/" + package_name + "/configs", _rel("configs/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="mbpl developers",
    maintainer_email="mbpl@example.com",
    description="ROS 2 nodes of the mbpl model-based policy learning stack",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sim_node = mbpl_ros.sim_node:main",
            "sampler_node = mbpl_ros.sampler_node:main",
            "fitting_node = mbpl_ros.fitting_node:main",
            "ilqr_node = mbpl_ros.ilqr_node:main",
            "trainer_node = mbpl_ros.trainer_node:main",
            "safety_monitor = mbpl_ros.safety_monitor:main",
            "mbpl = mbpl_ros.cli:main",
        ],
    },
)
