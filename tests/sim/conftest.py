"""Shared helpers of the MuJoCo tests: shipped experiment files and a small custom robot."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbpl_sim.experiment import ExperimentConfig, load_experiment

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["reacher2_sim", "arm7_reach", "arm7_peg"]

# A 3-link planar arm that is not one of the shipped robots: vertical joint axes, fixed tip frame.
THREE_LINK_URDF = """<?xml version="1.0"?>
<robot name="three_link">
  <mujoco><compiler fusestatic="false"/></mujoco>
  <link name="base"><inertial><origin xyz="0 0 0"/><mass value="1"/>
    <inertia ixx="0.01" ixy="0" ixz="0" iyy="0.01" iyz="0" izz="0.01"/></inertial></link>
  {links}
</robot>
"""


def _three_link_body() -> str:
    parts = []
    parent = "base"
    for i in range(3):
        name = f"l{i}"
        parts.append(
            f'<link name="{name}"><inertial><origin xyz="0.1 0 0"/><mass value="0.5"/>'
            '<inertia ixx="0.0001" ixy="0" ixz="0" iyy="0.002" iyz="0" izz="0.002"/></inertial>'
            '<collision><origin xyz="0.1 0 0" rpy="0 1.5708 0"/>'
            '<geometry><cylinder radius="0.01" length="0.2"/></geometry></collision></link>'
        )
        origin = "0 0 0.05" if i == 0 else "0.2 0 0.02"
        parts.append(
            f'<joint name="j{i}" type="revolute"><parent link="{parent}"/><child link="{name}"/>'
            f'<origin xyz="{origin}"/><axis xyz="0 0 1"/>'
            '<limit lower="-2.5" upper="2.5" effort="2" velocity="5"/>'
            '<dynamics damping="0.05"/></joint>'
        )
        parent = name
    parts.append('<link name="tip"/><joint name="tip_fixed" type="fixed"><parent link="l2"/>'
                 '<child link="tip"/><origin xyz="0.2 0 0"/></joint>')
    return "\n  ".join(parts)


def three_link_urdf() -> str:
    return THREE_LINK_URDF.format(links=_three_link_body())


THREE_LINK_YAML = """
robot:
  description: three_link.urdf
  joints: [j0, j1, j2]
  ee: {frame: tip, points: [[0.0, 0.0, 0.0], [-0.05, 0.0, 0.0]]}
task:
  scene: reach
  T: 20
  dt: 0.02
  substeps: 4
  initial_q: [0.3, 0.5, 0.5]
  conditions:
    positions: [[0.3, 0.2, 0.11], [0.2, 0.3, 0.11]]
  held_out:
    grid: {center: [0.25, 0.25, 0.11], half_extent: [0.05, 0.05, 0.0], n: [3, 3, 1]}
cost: {}
algorithm: {}
"""


@pytest.fixture
def three_link_text() -> str:
    """URDF text of the custom 3-link arm (joints j0, j1, j2; fixed frame "tip")."""
    return three_link_urdf()


@pytest.fixture
def custom_robot_dir(tmp_path: Path) -> Path:
    """A folder holding three_link.urdf and experiment.yaml that refers to it by a relative path."""
    (tmp_path / "three_link.urdf").write_text(three_link_urdf())
    (tmp_path / "experiment.yaml").write_text(THREE_LINK_YAML)
    return tmp_path


@pytest.fixture(scope="session")
def shipped_experiments() -> dict[str, ExperimentConfig]:
    return {name: load_experiment(REPO / "configs" / f"{name}.yaml") for name in SHIPPED}
