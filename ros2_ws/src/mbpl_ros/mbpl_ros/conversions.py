"""The only place that converts between ROS messages and numpy arrays.

Arrays travel flattened row-major with their shape in the message (DESIGN.md). Shapes:
K: (T, dU, dX), k: (T, dU), pol_covar: (T, dU, dU); Fm: (T, dX, dX+dU), fv: (T, dX),
dyn_covar: (T, dX, dX), x0mu: (dX,), x0sigma: (dX, dX); X: (T, dX), U: (T, dU),
ee_jacobians: (T, dP, dQ).

Every ``msg_to_*`` validates dimensions, array lengths and finiteness and raises
:class:`mbpl_core.containers.ShapeError` with the reason, so a node can log it and keep its last
good value. Float arrays move through ``array.array('d')`` / ``np.frombuffer``: the generated
message setters accept an ``array.array`` without a per-element Python check, which is what keeps a
T=100, dX=26 controller conversion in the tens of microseconds.
"""

from __future__ import annotations

import array
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from mbpl_msgs.msg import LinearDynamics as LinearDynamicsMsg
from mbpl_msgs.msg import LinearGaussianController as LinearGaussianControllerMsg
from mbpl_msgs.msg import Plan as PlanMsg
from mbpl_msgs.msg import PlanRequest as PlanRequestMsg
from mbpl_msgs.msg import PolicyParameters as PolicyParametersMsg
from mbpl_msgs.msg import TrajectorySample as TrajectorySampleMsg
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

from mbpl_core.containers import (
    LinearDynamics,
    LinearGaussianController,
    SampleBatch,
    ShapeError,
    batched_cholesky,
    check_finite,
)
from mbpl_core.policy import PolicyParams
from mbpl_ros.plan_source import PlanData, PlanRequestData

POLICY_KINDS = ("lg", "policy", "mpc", "random")
# the hidden-layer activations mbpl_core.policy.NumpyPolicy implements
ACTIVATIONS = ("relu", "tanh")
_SYMMETRY_RTOL = 1e-9

__all__ = [
    "ACTIVATIONS",
    "POLICY_KINDS",
    "JointOrder",
    "PolicyParams",
    "SampleMetadata",
    "controller_to_msg",
    "dynamics_to_msg",
    "efforts_to_msg",
    "joint_state_to_arrays",
    "arrays_to_joint_state",
    "msg_to_controller",
    "msg_to_dynamics",
    "msg_to_efforts",
    "msg_to_policy_params",
    "msg_to_plan",
    "msg_to_plan_request",
    "msg_to_sample",
    "PlanData",
    "PlanRequestData",
    "plan_request_to_msg",
    "plan_to_msg",
    "msg_to_sample_metadata",
    "policy_params_to_msg",
    "sample_to_msg",
    "seconds_to_time",
    "time_to_seconds",
]


# --------------------------------------------------------------------------------------------- helpers
def seconds_to_time(seconds: float) -> Time:
    """builtin_interfaces/Time from seconds (non-negative; nanoseconds rounded)."""
    if not np.isfinite(seconds) or seconds < 0:
        raise ShapeError(f"time must be finite and non-negative, got {seconds}")
    total_ns = int(round(seconds * 1e9))
    return Time(sec=total_ns // 1_000_000_000, nanosec=total_ns % 1_000_000_000)


def time_to_seconds(stamp: Time) -> float:
    """Seconds of a builtin_interfaces/Time."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def _to_array_d(arr: np.ndarray) -> array.array:
    """Row-major flattening of ``arr`` into an ``array.array('d')`` (one memcpy)."""
    out = array.array("d")
    out.frombytes(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    return out


def _from_field(msg: object, field: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Field ``field`` of ``msg`` as a float64 array of ``shape``; ShapeError on length or NaN/Inf."""
    data = getattr(msg, field)
    flat = np.frombuffer(data, dtype=np.float64) if isinstance(data, array.array) else np.asarray(
        data, dtype=np.float64
    )
    # Python ints: numpy's int64 product of uint32 fields wraps (2^22 · 2^21 · 2^21 = 2^64 → 0) and would
    # let an empty array through to a reshape that raises something other than ShapeError
    expected = math.prod(int(n) for n in shape)
    if flat.size != expected:
        raise ShapeError(f"{what}.{field} has {flat.size} values, expected {expected} for shape {shape}")
    arr = flat.reshape(shape)
    check_finite(f"{what}.{field}", arr)
    return arr


def _require_dims(what: str, **dims: int) -> None:
    bad = {name: value for name, value in dims.items() if int(value) < 1}
    if bad:
        raise ShapeError(f"{what}: dimensions must be >= 1, got {bad}")


def _check_symmetric(name: str, covar: np.ndarray) -> None:
    """ShapeError unless every covar[..., :, :] is symmetric up to round-off."""
    asym = np.max(np.abs(covar - np.swapaxes(covar, -1, -2)), initial=0.0)
    scale = max(1.0, float(np.max(np.abs(covar), initial=0.0)))
    if asym > _SYMMETRY_RTOL * scale:
        raise ShapeError(f"{name} is not symmetric (max |S - S^T| = {asym:.3g})")


def _chol_and_inverse(name: str, covar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower Cholesky factors and inverses of (T, d, d) SPD matrices, batched.

    Falls back to the per-step factorisation only to name the first non-PD step.
    """
    try:
        chol = np.linalg.cholesky(covar)
    except np.linalg.LinAlgError:
        batched_cholesky(name, covar)  # raises ShapeError naming the step
        raise
    inv_chol = np.linalg.inv(chol)
    return chol, np.swapaxes(inv_chol, -1, -2) @ inv_chol


def _header_stamp(msg: object, stamp: Time | None) -> None:
    if stamp is not None:
        msg.header.stamp = stamp  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ controller
def controller_to_msg(
    controller: LinearGaussianController,
    condition: int,
    controller_id: int,
    stamp: Time | None = None,
    run_token: str = "",
) -> LinearGaussianControllerMsg:
    """Message of an LG controller: K (T, dU, dX), k (T, dU), pol_covar (T, dU, dU) flattened row-major."""
    msg = LinearGaussianControllerMsg()
    _header_stamp(msg, stamp)
    msg.run_token = str(run_token)
    msg.condition = int(condition)
    msg.controller_id = int(controller_id)
    msg.t_steps, msg.du, msg.dx = controller.T, controller.dU, controller.dX
    msg.k_gains = _to_array_d(controller.K)
    msg.k_offsets = _to_array_d(controller.k)
    msg.pol_covar = _to_array_d(controller.pol_covar)
    return msg


def msg_to_controller(msg: LinearGaussianControllerMsg,
                      expected: tuple[int, int, int] | None = None) -> LinearGaussianController:
    """LG controller from its message; ShapeError on bad dims, lengths, NaN/Inf or a non-SPD pol_covar[t].

    expected: (T, dU, dX) of the receiver (the robot), checked before any array is touched.
    """
    T, dU, dX = int(msg.t_steps), int(msg.du), int(msg.dx)
    _require_dims("LinearGaussianController", t_steps=T, du=dU, dx=dX)
    if expected is not None and (T, dU, dX) != tuple(expected):
        raise ShapeError(f"LinearGaussianController has (t_steps, du, dx) = {(T, dU, dX)}, expected "
                         f"(T, dU, dX) = {tuple(expected)}")
    K = _from_field(msg, "k_gains", (T, dU, dX), "LinearGaussianController")
    k = _from_field(msg, "k_offsets", (T, dU), "LinearGaussianController")
    pol_covar = _from_field(msg, "pol_covar", (T, dU, dU), "LinearGaussianController")
    _check_symmetric("LinearGaussianController.pol_covar", pol_covar)
    pol_covar = 0.5 * (pol_covar + np.swapaxes(pol_covar, 1, 2))
    chol, inv = _chol_and_inverse("LinearGaussianController.pol_covar", pol_covar)
    return LinearGaussianController(K=K, k=k, pol_covar=pol_covar, chol_pol_covar=chol, inv_pol_covar=inv)


# -------------------------------------------------------------------------------------------- dynamics
def dynamics_to_msg(
    dynamics: LinearDynamics, condition: int, iteration: int, stamp: Time | None = None
) -> LinearDynamicsMsg:
    """Message of fitted dynamics: Fm (T, dX, dX+dU), fv (T, dX), dyn_covar (T, dX, dX), x0mu, x0sigma."""
    msg = LinearDynamicsMsg()
    _header_stamp(msg, stamp)
    msg.condition, msg.iteration = int(condition), int(iteration)
    msg.t_steps, msg.dx, msg.du = dynamics.T, dynamics.dX, dynamics.dU
    msg.fm = _to_array_d(dynamics.Fm)
    msg.fv = _to_array_d(dynamics.fv)
    msg.dyn_covar = _to_array_d(dynamics.dyn_covar)
    msg.x0mu = _to_array_d(dynamics.x0mu)
    msg.x0sigma = _to_array_d(dynamics.x0sigma)
    return msg


def msg_to_dynamics(msg: LinearDynamicsMsg) -> LinearDynamics:
    """Fitted dynamics from their message; ShapeError on bad dims, lengths, NaN/Inf, asymmetric covars."""
    T, dX, dU = int(msg.t_steps), int(msg.dx), int(msg.du)
    _require_dims("LinearDynamics", t_steps=T, dx=dX, du=dU)
    what = "LinearDynamics"
    Fm = _from_field(msg, "fm", (T, dX, dX + dU), what)
    fv = _from_field(msg, "fv", (T, dX), what)
    dyn_covar = _from_field(msg, "dyn_covar", (T, dX, dX), what)
    x0mu = _from_field(msg, "x0mu", (dX,), what)
    x0sigma = _from_field(msg, "x0sigma", (dX, dX), what)
    _check_symmetric(f"{what}.dyn_covar", dyn_covar)
    _check_symmetric(f"{what}.x0sigma", x0sigma)
    return LinearDynamics(Fm=Fm, fv=fv, dyn_covar=dyn_covar, x0mu=x0mu, x0sigma=x0sigma)


# --------------------------------------------------------------------------------------------- samples
@dataclass(frozen=True)
class SampleMetadata:
    """Bookkeeping that travels with one trajectory sample (TrajectorySample.msg).

    policy_kind: "lg" or "policy"; times in seconds (sim time in lockstep, wall time on hardware);
    seed, add_noise: the RunTrial request's noise seed and flag, so the trial can be replayed.
    """

    condition: int
    trial_id: int
    controller_id: int = 0
    policy_kind: str = "lg"
    aborted: bool = False
    abort_reason: str = ""
    start_time: float = 0.0
    end_time: float = 0.0
    deadline_misses: int = 0
    seed: int = 0
    add_noise: bool = False

    def __post_init__(self) -> None:
        if self.policy_kind not in POLICY_KINDS:
            raise ShapeError(f"policy_kind must be one of {POLICY_KINDS}, got {self.policy_kind!r}")
        for name in ("condition", "trial_id", "controller_id", "deadline_misses", "seed"):
            if int(getattr(self, name)) < 0:
                raise ShapeError(f"SampleMetadata.{name} must be >= 0, got {getattr(self, name)}")


def sample_to_msg(batch: SampleBatch, meta: SampleMetadata, stamp: Time | None = None) -> TrajectorySampleMsg:
    """Message of one trajectory: batch must hold N=1 sample, X (1, T, dX), U (1, T, dU), J (1, T, dP, dQ)."""
    if batch.N != 1:
        raise ShapeError(f"a TrajectorySample carries one trajectory, got a batch of N={batch.N}")
    msg = TrajectorySampleMsg()
    _header_stamp(msg, stamp)
    msg.condition, msg.trial_id = int(meta.condition), int(meta.trial_id)
    msg.controller_id = int(meta.controller_id)
    msg.policy_kind = meta.policy_kind
    msg.t_steps, msg.dx, msg.du = batch.T, batch.dX, batch.dU
    msg.x = _to_array_d(batch.X[0])
    msg.u = _to_array_d(batch.U[0])
    if batch.ee_jacobians is not None:
        msg.dp, msg.dq = int(batch.ee_jacobians.shape[2]), int(batch.ee_jacobians.shape[3])
        msg.ee_jacobians = _to_array_d(batch.ee_jacobians[0])
    msg.aborted, msg.abort_reason = bool(meta.aborted), meta.abort_reason
    msg.start_time, msg.end_time = float(meta.start_time), float(meta.end_time)
    msg.deadline_misses = int(meta.deadline_misses)
    msg.seed, msg.add_noise = int(meta.seed), bool(meta.add_noise)
    return msg


def msg_to_sample_metadata(msg: TrajectorySampleMsg) -> SampleMetadata:
    """The metadata of a TrajectorySample alone (also of an aborted one with t_steps = 0)."""
    for name in ("start_time", "end_time"):
        if not np.isfinite(getattr(msg, name)):
            raise ShapeError(f"TrajectorySample.{name} is not finite")
    return SampleMetadata(
        condition=int(msg.condition),
        trial_id=int(msg.trial_id),
        controller_id=int(msg.controller_id),
        policy_kind=msg.policy_kind,
        aborted=bool(msg.aborted),
        abort_reason=msg.abort_reason,
        start_time=float(msg.start_time),
        end_time=float(msg.end_time),
        deadline_misses=int(msg.deadline_misses),
        seed=int(msg.seed),
        add_noise=bool(msg.add_noise),
    )


def msg_to_sample(msg: TrajectorySampleMsg) -> tuple[SampleBatch, SampleMetadata]:
    """(SampleBatch with N=1, metadata) from a TrajectorySample; ShapeError with the reason if malformed.

    ee_jacobians are present iff dp and dq are both non-zero.
    """
    T, dX, dU = int(msg.t_steps), int(msg.dx), int(msg.du)
    _require_dims("TrajectorySample", t_steps=T, dx=dX, du=dU)
    X = _from_field(msg, "x", (T, dX), "TrajectorySample")
    U = _from_field(msg, "u", (T, dU), "TrajectorySample")
    dP, dQ = int(msg.dp), int(msg.dq)
    J = None
    if dP or dQ:
        _require_dims("TrajectorySample (ee_jacobians)", dp=dP, dq=dQ)
        J = _from_field(msg, "ee_jacobians", (T, dP, dQ), "TrajectorySample")[None]
    elif len(msg.ee_jacobians):
        raise ShapeError("TrajectorySample.ee_jacobians is non-empty but dp = dq = 0")
    return SampleBatch(X[None], U[None], J), msg_to_sample_metadata(msg)


# -------------------------------------------------------------------------------------- policy weights
def _validate_normalisation(obs_mean: np.ndarray, obs_std: np.ndarray, obs_dim: int) -> None:
    for name, arr in (("obs_mean", obs_mean), ("obs_std", obs_std)):
        if arr.shape != (obs_dim,):
            raise ShapeError(f"{name} has shape {arr.shape}, expected ({obs_dim},)")
        check_finite(name, arr)
    if np.any(obs_std <= 0):
        raise ShapeError(f"obs_std must be > 0 (first bad index {int(np.argmax(obs_std <= 0))})")


def policy_params_to_msg(
    params: PolicyParams, policy_id: int, stamp: Time | None = None, run_token: str = ""
) -> PolicyParametersMsg:
    """Message of a policy (mbpl_core.policy.PolicyParams): every layer's W (out, in) row-major then b (out,).

    Also carries obs_indices (dO,) and state_dim dX, so a policy that observes a subset of the state
    is applied to the same entries of x on the receiving side, and the output map: squash "tanh" with
    action_scale, action_bias (dU,) each, or squash "" with both empty (unsquashed).
    """
    msg = PolicyParametersMsg()
    _header_stamp(msg, stamp)
    msg.run_token = str(run_token)
    msg.policy_id = int(policy_id)
    msg.obs_dim, msg.act_dim = params.dO, params.dU
    msg.layer_sizes = array.array("I", params.layer_sizes)
    msg.activation = params.activation
    msg.squash = params.squash if params.squashed else ""
    if params.squashed:
        msg.action_scale = _to_array_d(np.asarray(params.action_scale))
        msg.action_bias = _to_array_d(np.asarray(params.action_bias))
    parts = [p for w, b in params.weights for p in (w.ravel(), b)]
    msg.weights = _to_array_d(np.concatenate(parts))
    msg.obs_mean = _to_array_d(params.obs_mean)
    msg.obs_std = _to_array_d(params.obs_std)
    msg.action_covar = _to_array_d(params.action_covar)
    msg.obs_indices = array.array("I", (int(i) for i in params.obs_indices))
    msg.state_dim = int(params.state_dim or 0)
    return msg


def _split_layers(msg: PolicyParametersMsg, sizes: list[int]) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """[(W_l (n_l, n_{l-1}), b_l (n_l,))] from the flat weights field, checking its length."""
    n_weights = sum(o * i + o for i, o in zip(sizes[:-1], sizes[1:], strict=True))
    flat = _from_field(msg, "weights", (n_weights,), "PolicyParameters")
    layers, offset = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        W = flat[offset : offset + n_out * n_in].reshape(n_out, n_in).copy()
        offset += n_out * n_in
        layers.append((W, flat[offset : offset + n_out].copy()))
        offset += n_out
    return tuple(layers)


def _obs_indices(msg: PolicyParametersMsg, obs_dim: int) -> np.ndarray:
    """obs_indices (obs_dim,) of the message; an empty field means the whole state 0..obs_dim-1."""
    idx = np.asarray(msg.obs_indices, dtype=np.int64)
    if idx.size == 0:
        return np.arange(obs_dim)
    if idx.shape != (obs_dim,):
        raise ShapeError(f"PolicyParameters.obs_indices has {idx.size} entries, expected obs_dim={obs_dim}")
    if np.unique(idx).size != idx.size:
        raise ShapeError("PolicyParameters.obs_indices must be unique")
    return idx


def msg_to_policy_params(msg: PolicyParametersMsg) -> PolicyParams:
    """mbpl_core.policy.PolicyParams from its message; ShapeError naming the inconsistency if malformed.

    Checks the layer sizes against obs_dim/act_dim and the weights' length, finite values, obs_std > 0,
    a relu/tanh activation, a symmetric positive definite action_covar (act_dim, act_dim),
    obs_indices inside [0, state_dim) (state_dim 0: max(obs_indices) + 1), and the output map (squash ""
    with empty action_scale / action_bias, or "tanh" with both (act_dim,), finite, scale > 0).
    """
    sizes = [int(s) for s in msg.layer_sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ShapeError(f"PolicyParameters.layer_sizes must list >= 2 positive sizes, got {sizes}")
    if sizes[0] != msg.obs_dim or sizes[-1] != msg.act_dim:
        raise ShapeError(f"layer_sizes {sizes} disagree with obs_dim={msg.obs_dim}, act_dim={msg.act_dim}")
    if msg.activation not in ACTIVATIONS:
        raise ShapeError(f"PolicyParameters.activation {msg.activation!r} is not one of {ACTIVATIONS}")
    layers = _split_layers(msg, sizes)
    obs_dim, act_dim = sizes[0], sizes[-1]
    obs_mean = _from_field(msg, "obs_mean", (obs_dim,), "PolicyParameters").copy()
    obs_std = _from_field(msg, "obs_std", (obs_dim,), "PolicyParameters").copy()
    _validate_normalisation(obs_mean, obs_std, obs_dim)
    covar = _from_field(msg, "action_covar", (act_dim, act_dim), "PolicyParameters").copy()
    _check_symmetric("PolicyParameters.action_covar", covar)
    batched_cholesky("PolicyParameters.action_covar", covar[None])
    state_dim = int(msg.state_dim) or None
    squash, scale, bias = _squash(msg, act_dim)
    return PolicyParams(weights=layers, activation=msg.activation, obs_mean=obs_mean, obs_std=obs_std,
                        obs_indices=_obs_indices(msg, obs_dim), action_covar=covar, state_dim=state_dim,
                        squash=squash, action_scale=scale, action_bias=bias)


def _squash(msg: PolicyParametersMsg, act_dim: int) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """(squash, action_scale, action_bias) of the message: "none" with both empty, or "tanh" with each
    (act_dim,), finite, scale > 0; ShapeError otherwise."""
    squash = str(msg.squash) or "none"
    if squash == "none":
        if len(msg.action_scale) or len(msg.action_bias):
            raise ShapeError("PolicyParameters.action_scale / action_bias need squash 'tanh' (squash is "
                             f"{msg.squash!r})")
        return "none", None, None
    if squash != "tanh":
        raise ShapeError(f"PolicyParameters.squash {msg.squash!r} is not one of ['', 'none', 'tanh']")
    scale = _from_field(msg, "action_scale", (act_dim,), "PolicyParameters").copy()
    bias = _from_field(msg, "action_bias", (act_dim,), "PolicyParameters").copy()
    if not np.all(scale > 0):
        raise ShapeError(f"PolicyParameters.action_scale must be > 0, got {scale}")
    return "tanh", scale, bias


# ------------------------------------------------------------------------------------------------ plans
def plan_to_msg(plan: PlanData, stamp: Time | None = None) -> PlanMsg:
    """Message of a plan: actions (h, du) flattened row-major."""
    msg = PlanMsg()
    _header_stamp(msg, stamp)
    msg.run_token, msg.trial_id, msg.t = plan.run_token, int(plan.trial_id), int(plan.t)
    msg.h, msg.du = int(plan.actions.shape[0]), int(plan.actions.shape[1])
    msg.actions = _to_array_d(plan.actions)
    msg.predicted_cost, msg.model_version = float(plan.predicted_cost), int(plan.model_version)
    msg.planning_time = float(plan.planning_time)
    return msg


def msg_to_plan(msg: PlanMsg) -> PlanData:
    """PlanData from its message; ShapeError on bad dims, lengths or NaN/Inf."""
    h, du = int(msg.h), int(msg.du)
    _require_dims("Plan", h=h, du=du)
    actions = _from_field(msg, "actions", (h, du), "Plan").copy()
    return PlanData(int(msg.trial_id), int(msg.t), actions, float(msg.predicted_cost),
                    int(msg.model_version), float(msg.planning_time), msg.run_token)


def plan_request_to_msg(request: PlanRequestData, stamp: Time | None = None) -> PlanRequestMsg:
    """Message of a plan request: x (dx,)."""
    msg = PlanRequestMsg()
    _header_stamp(msg, stamp)
    msg.run_token, msg.trial_id = request.run_token, int(request.trial_id)
    msg.condition, msg.t, msg.seed = int(request.condition), int(request.t), int(request.seed)
    msg.model_version, msg.dx = int(request.model_version), int(request.x.shape[0])
    msg.x = _to_array_d(request.x)
    return msg


def msg_to_plan_request(msg: PlanRequestMsg) -> PlanRequestData:
    """PlanRequestData from its message; ShapeError on a bad dx, length or NaN/Inf."""
    dx = int(msg.dx)
    _require_dims("PlanRequest", dx=dx)
    x = _from_field(msg, "x", (dx,), "PlanRequest").copy()
    return PlanRequestData(int(msg.trial_id), int(msg.condition), int(msg.t), int(msg.seed),
                           int(msg.model_version), x, msg.run_token)


# ------------------------------------------------------------------------------- joint states, efforts
class JointOrder:
    """Maps JointState messages (any joint order, extra joints allowed) to arrays in a fixed joint order.

    The index map is cached for the last seen name list: drivers publish the same order every time,
    so the per-message cost is one comparison and two fancy-index copies.
    """

    def __init__(self, joint_names: Sequence[str]) -> None:
        names = list(joint_names)
        if not names or len(set(names)) != len(names):
            raise ShapeError(f"joint_names must be non-empty and unique, got {names}")
        self.joint_names: tuple[str, ...] = tuple(names)
        self._cached_names: list[str] | None = None
        self._index = np.zeros(0, dtype=np.intp)

    def _indices(self, names: Sequence[str]) -> np.ndarray:
        names = list(names)
        if names != self._cached_names:
            position = {n: i for i, n in enumerate(names)}
            missing = [n for n in self.joint_names if n not in position]
            if missing:
                raise ShapeError(f"JointState lacks joint(s) {missing}; it has {names}")
            self._index = np.array([position[n] for n in self.joint_names], dtype=np.intp)
            self._cached_names = names
        return self._index

    def extract(self, msg: JointState) -> tuple[np.ndarray, np.ndarray]:
        """(q, qd), each (dQ,), in this order; ShapeError on missing joints, short arrays or NaN/Inf."""
        n = len(msg.name)
        if len(msg.position) != n or len(msg.velocity) != n:
            n_q, n_qd = len(msg.position), len(msg.velocity)
            raise ShapeError(f"JointState has {n} names but {n_q} positions and {n_qd} velocities")
        index = self._indices(msg.name)
        q = np.asarray(msg.position, dtype=np.float64)[index]
        qd = np.asarray(msg.velocity, dtype=np.float64)[index]
        check_finite("JointState.position", q)
        check_finite("JointState.velocity", qd)
        return q, qd


def joint_state_to_arrays(msg: JointState, joint_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(q, qd), each (dQ,), in the order of ``joint_names``; one-off form of :class:`JointOrder`."""
    return JointOrder(joint_names).extract(msg)


def arrays_to_joint_state(
    joint_names: Sequence[str],
    q: np.ndarray,
    qd: np.ndarray,
    effort: np.ndarray | None = None,
    stamp: Time | None = None,
) -> JointState:
    """JointState with positions q (dQ,), velocities qd (dQ,) and optional applied efforts (dQ,)."""
    msg = JointState()
    _header_stamp(msg, stamp)
    msg.name = list(joint_names)
    msg.position = _to_array_d(q)
    msg.velocity = _to_array_d(qd)
    if effort is not None:
        msg.effort = _to_array_d(effort)
    return msg


def efforts_to_msg(u: np.ndarray) -> Float64MultiArray:
    """Float64MultiArray of an effort command u (dU,), as ros2_control's forward command controller takes."""
    u = np.asarray(u, dtype=np.float64)
    if u.ndim != 1:
        raise ShapeError(f"effort command must be one-dimensional, got shape {u.shape}")
    msg = Float64MultiArray()
    msg.data = _to_array_d(u)
    return msg


def msg_to_efforts(msg: Float64MultiArray, dU: int) -> np.ndarray:
    """Effort command (dU,) from a Float64MultiArray; ShapeError on a wrong length or NaN/Inf."""
    return _from_field(msg, "data", (int(dU),), "Float64MultiArray").copy()
