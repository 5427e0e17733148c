"""What a controller or policy could ask the robot to do, bounded over every state the robot can reach.

The sampler clips every command to the effort limits, but clipping is the last line, not the only one:
a controller or policy is refused on arrival when the largest action it could command anywhere in the
robot's reachable state box is beyond ``max_action_ratio`` times the effort limits (a sign of a broken
or hostile message, e.g. k = 1e300 or first-layer weights of 1e200), or when its exploration noise is.

The reachable state box (:class:`StateBox`, centre c and radius r, both (dX,)) of x = [q, q̇, p(q) − p*,
J(q) q̇] (DESIGN.md) is built from the robot model alone:

* q: the joint ranges of the model (±2π for a joint without one), q̇: ± the joints' velocity limits
  (URDF ``<limit velocity>``; ``default_velocity`` where none is given);
* ee points − target: every target and every point the arm can reach (|p| sampled over the joint box,
  with a margin), per coordinate;
* ee velocities: Σ_j |J_ij(q)| q̇_max,j, the largest over the same samples, with the margin.

Bounds are exact for an LG controller (max over a box of |K x + k| is |K c + k| + |K| r per row) and
sound for an MLP (interval bound propagation: relu and tanh are monotone).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbpl_core.containers import LinearGaussianController, ShapeError
from mbpl_core.policy import PolicyParams
from mbpl_sim.kinematics import EndEffectorKinematics

REACH_MARGIN = 1.5  # sampled reach and ee speed × this: sampling under-estimates the true maxima
UNLIMITED_JOINT_RANGE = 2.0 * math.pi


@dataclass(frozen=True)
class StateBox:
    """The box c ± r (both (dX,)) that holds every state x the robot can reach, for any target."""

    centre: np.ndarray
    radius: np.ndarray

    @property
    def low(self) -> np.ndarray:
        return self.centre - self.radius

    @property
    def high(self) -> np.ndarray:
        return self.centre + self.radius


def urdf_velocity_limits(description: str | Path, joints: tuple[str, ...]) -> dict[str, float]:
    """{joint: velocity limit} from a URDF's ``<joint><limit velocity=…>``; {} for MJCF or unreadable."""
    path = Path(description)
    if path.suffix.lower() != ".urdf" or not path.is_file():
        return {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return {}
    limits = {}
    for joint in root.iter("joint"):
        limit = joint.find("limit")
        if joint.get("name") in joints and limit is not None and limit.get("velocity"):
            limits[str(joint.get("name"))] = float(limit.get("velocity", "0"))
    return {k: v for k, v in limits.items() if math.isfinite(v) and v > 0}


def reachable_state_box(kinematics: EndEffectorKinematics, targets: tuple[np.ndarray, ...],
                        velocity_limits: np.ndarray, samples: int = 256, seed: int = 0) -> StateBox:
    """The state box of this robot (module docstring); targets[m]: (P, 3); velocity_limits: (dQ,)."""
    model, layout = kinematics.model, kinematics.layout
    jids = [model.joint(name).id for name in kinematics.joint_names]
    limited = np.array([bool(model.jnt_limited[j]) for j in jids])
    ranges = np.array([model.jnt_range[j] if lim else (-UNLIMITED_JOINT_RANGE, UNLIMITED_JOINT_RANGE)
                       for j, lim in zip(jids, limited, strict=True)], dtype=np.float64)
    qd_max = np.asarray(velocity_limits, dtype=np.float64)
    rng = np.random.default_rng(seed)
    q_samples = rng.uniform(ranges[:, 0], ranges[:, 1], size=(samples, len(jids)))
    reach = np.zeros(3 * layout.n_points)
    speed = np.zeros(3 * layout.n_points)
    for q in q_samples:
        state = kinematics.compute(q, np.zeros_like(q))
        reach = np.maximum(reach, np.abs(state.points.ravel()))
        speed = np.maximum(speed, np.abs(state.jacobian) @ qd_max)
    target_reach = np.max([np.abs(np.asarray(t, dtype=np.float64).ravel()) for t in targets], axis=0)
    centre = np.zeros(layout.dX)
    radius = np.zeros(layout.dX)
    centre[layout.q] = ranges.mean(axis=1)
    radius[layout.q] = 0.5 * (ranges[:, 1] - ranges[:, 0])
    radius[layout.qd] = qd_max
    radius[layout.ee_points] = REACH_MARGIN * reach + target_reach
    radius[layout.ee_velocities] = REACH_MARGIN * speed
    return StateBox(centre, radius)


def lg_action_bound(controller: LinearGaussianController, box: StateBox) -> tuple[np.ndarray, np.ndarray]:
    """(max over t and the box of |K_t x + k_t|, max_t sqrt(diag pol_covar_t)), each (dU,).

    Exact: for x = c + δ, |δ| ≤ r, the largest |K x + k|_i is |K c + k|_i + (|K| r)_i.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        mean = np.abs(controller.K @ box.centre + controller.k) + np.abs(controller.K) @ box.radius
        std = np.sqrt(np.diagonal(controller.pol_covar, axis1=1, axis2=2))
    return np.max(mean, axis=0), np.max(std, axis=0)


def policy_action_bound(params: PolicyParams, box: StateBox) -> tuple[np.ndarray, np.ndarray]:
    """(a sound bound of max |mlp(normalise(x[obs_indices]))| over the box, sqrt(diag action_covar)), (dU,).

    Interval bound propagation: an interval [lo, hi] goes through W as centre W m + b, radius |W| h,
    and through relu/tanh endpoint-wise (both are monotone); so does a squashed output
    (u = action_bias + action_scale ⊙ tanh(h), scale > 0), whose bound is at most |bias| + scale.
    """
    idx = np.asarray(params.obs_indices, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        lo = (box.low[idx] - params.obs_mean) / params.obs_std
        hi = (box.high[idx] - params.obs_mean) / params.obs_std
        last = len(params.weights) - 1
        for n, (W, b) in enumerate(params.weights):
            mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
            centre, radius = W @ mid + b, np.abs(W) @ half
            lo, hi = centre - radius, centre + radius
            if n < last:
                lo, hi = (np.maximum(lo, 0.0), np.maximum(hi, 0.0)) if params.activation == "relu" \
                    else (np.tanh(lo), np.tanh(hi))
        if params.squashed:
            lo = params.action_bias + params.action_scale * np.tanh(lo)
            hi = params.action_bias + params.action_scale * np.tanh(hi)
        std = np.sqrt(np.diagonal(params.action_covar))
    return np.maximum(np.abs(lo), np.abs(hi)), std


def check_action_bound(what: str, bound: tuple[np.ndarray, np.ndarray], effort_limits: np.ndarray,
                       max_action_ratio: float) -> None:
    """ShapeError unless every entry of both parts of ``bound`` is finite and ≤ ratio × effort_limits."""
    allowed = max_action_ratio * np.asarray(effort_limits, dtype=np.float64)
    for name, values in zip(("action", "exploration std"), bound, strict=True):
        values = np.where(np.isnan(values), np.inf, values)
        worst = int(np.argmax(values / allowed))
        if not values[worst] <= allowed[worst]:
            raise ShapeError(
                f"{what}: largest {name} over the reachable state box is {values[worst]:.3g} for joint "
                f"{worst}, beyond max_action_ratio = {max_action_ratio:g} × its effort limit "
                f"{effort_limits[worst]:g}")


def require_params_shape(params: PolicyParams, dX: int, dU: int) -> None:
    """ShapeError unless the policy maps states of dX to dU actions (checked before any bound)."""
    if params.state_dim != dX:
        raise ShapeError(f"policy is for states of dX = {params.state_dim}, the robot has dX = {dX}")
    if params.dU != dU:
        raise ShapeError(f"policy has {params.dU} actions, the robot has dU = {dU}")


def policy_gain_bound(params: PolicyParams) -> float:
    """A sound bound of every |∂u_i/∂x_j| of the MLP over all x: max entry of |W_L| ··· |W_1| diag(1/obs_std).

    relu and tanh have slopes in [0, 1], so each Jacobian entry is at most that of the absolute product;
    a squashed output (action_scale ⊙ tanh) multiplies row i by at most action_scale_i.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        product = np.abs(params.weights[0][0]) / params.obs_std
        for W, _ in params.weights[1:]:
            product = np.abs(W) @ product
        if params.squashed:
            product = np.asarray(params.action_scale)[:, None] * product
        worst = float(np.max(product, initial=0.0))
    return worst if np.isfinite(worst) else math.inf
