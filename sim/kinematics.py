"""End-effector kinematics from joint positions alone (the same code path on hardware and in sim).

On hardware only ``joint_states`` arrive; the sampler rebuilds the end-effector part of the state with
the robot's MuJoCo model. This module does that on its own ``MjData`` so it never disturbs a simulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from mbpl_core.config import ConfigError
from mbpl_core.containers import ShapeError, StateLayout, check_finite, check_shape
from mbpl_sim.robot import RobotConfig, actuated_joint_ids, load_robot_spec


@dataclass(frozen=True)
class EndEffectorState:
    """World positions and velocities of the P end-effector points and their Jacobian.

    points: (P, 3); velocities: (P, 3) = (jacobian @ qd).reshape(P, 3);
    jacobian: (3P, dQ), rows ordered [p0x, p0y, p0z, p1x, ...] like the state's ee slices.
    """

    points: np.ndarray
    velocities: np.ndarray
    jacobian: np.ndarray


class EndEffectorKinematics:
    """Forward kinematics p_i(q) = x_frame(q) + R_frame(q) r_i of points r_i fixed in a body or site frame.

    model: any MjModel containing the robot (a scene is fine); joint_names: the dQ actuated joints;
    frame: body or site name; points: (P, 3) in that frame. Joints not listed stay at qpos0.
    """

    def __init__(self, model: mujoco.MjModel, joint_names: tuple[str, ...] | list[str], frame: str,
                 points: np.ndarray | tuple[tuple[float, float, float], ...]) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.joint_names = tuple(joint_names)
        jids = actuated_joint_ids(model, self.joint_names)
        self._qpos_adr = model.jnt_qposadr[jids]
        self._dof_adr = model.jnt_dofadr[jids]
        self.local_points = np.array(points, dtype=np.float64).reshape(-1, 3)
        check_finite("points", self.local_points)
        self._site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, frame)
        body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, frame)
        if self._site < 0 and body < 0:
            bodies = [model.body(i).name for i in range(1, model.nbody) if model.body(i).name]
            sites = [model.site(i).name for i in range(model.nsite) if model.site(i).name]
            raise ConfigError(f"robot.ee.frame: {frame!r} is neither a body nor a site of the model; "
                              f"bodies: {bodies}; sites: {sites} (a body on a fixed joint is fused into "
                              "its parent unless loaded through mbpl_sim.robot.load_robot, which keeps it "
                              "as a site)")
        self._body = int(model.site_bodyid[self._site]) if self._site >= 0 else body
        self.frame = frame
        self._jacp = np.zeros((3, model.nv))
        self.layout = StateLayout(dQ=len(self.joint_names), n_points=len(self.local_points))

    @classmethod
    def from_robot_config(cls, config: RobotConfig,
                          base_dir: Path | str | None = None) -> EndEffectorKinematics:
        """Kinematics of the robot alone, as the sampler builds it on hardware."""
        model = load_robot_spec(config, base_dir).compile()
        return cls(model, config.joints, config.ee.frame, config.ee.points)

    @property
    def body_id(self) -> int:
        """Id of the body that carries the frame (the surviving parent of a fused fixed-joint body)."""
        return self._body

    @property
    def dQ(self) -> int:
        return len(self.joint_names)

    @property
    def n_points(self) -> int:
        return len(self.local_points)

    def _frame_pose(self) -> tuple[np.ndarray, np.ndarray]:
        if self._site >= 0:
            return self.data.site_xpos[self._site], self.data.site_xmat[self._site].reshape(3, 3)
        return self.data.xpos[self._body], self.data.xmat[self._body].reshape(3, 3)

    def compute(self, q: np.ndarray, qd: np.ndarray) -> EndEffectorState:
        """Points (P, 3), velocities (P, 3), Jacobian (3P, dQ) at positions q (dQ,), velocities qd (dQ,).

        Uses mj_kinematics + mj_comPos, then mj_jac at each world point: J_i = ∂p_i/∂q restricted to
        the actuated joints' dofs, so ṗ_i = J_i q̇.
        """
        q = np.asarray(q, dtype=np.float64)
        qd = np.asarray(qd, dtype=np.float64)
        check_shape("q", q, (self.dQ,))
        check_shape("qd", qd, (self.dQ,))
        check_finite("q", q)
        check_finite("qd", qd)
        self.data.qpos[self._qpos_adr] = q
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        origin, rot = self._frame_pose()
        points = origin + self.local_points @ rot.T
        jac = np.empty((3 * self.n_points, self.dQ))
        for i, point in enumerate(points):
            mujoco.mj_jac(self.model, self.data, self._jacp, None, point, self._body)
            jac[3 * i:3 * i + 3] = self._jacp[:, self._dof_adr]
        velocities = (jac @ qd).reshape(self.n_points, 3)
        return EndEffectorState(points=points, velocities=velocities, jacobian=jac)

    def state_vector(self, q: np.ndarray, qd: np.ndarray, target_points: np.ndarray) -> np.ndarray:
        """x = [q, qd, (points − target).ravel(), velocities.ravel()] (dX,), dX = 2 dQ + 6 P (StateLayout)."""
        x, _ = self.state_and_jacobian(q, qd, target_points)
        return x

    def state_and_jacobian(self, q: np.ndarray, qd: np.ndarray,
                           target_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x (dX,), jacobian (3P, dQ)) in one kinematics pass; see :meth:`state_vector`."""
        target = np.asarray(target_points, dtype=np.float64)
        if target.shape != (self.n_points, 3):
            raise ShapeError(f"target_points has shape {target.shape}, expected ({self.n_points}, 3)")
        check_finite("target_points", target)
        ee = self.compute(q, qd)
        x = np.concatenate([np.asarray(q, dtype=np.float64), np.asarray(qd, dtype=np.float64),
                            (ee.points - target).ravel(), ee.velocities.ravel()])
        return x, ee.jacobian
