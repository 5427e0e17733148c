"""Model-predictive control over a learned ensemble (PETS, Chua et al. 2018, Algorithm 1's inner loop).

At every control step t the controller plans an action sequence u_t..u_{t+H−1} from the measured state
x_t by minimising the particles' expected cost under the model (:func:`expected_costs`, TS-∞), executes
the first action and keeps the rest, shifted by one step, as the next plan's warm start.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from mbpl_core.containers import ShapeError, check_finite
from mbpl_core.costs import Cost
from mbpl_core.planning.model import DynamicsModel
from mbpl_core.planning.optimizers import PlannerConfig, make_optimizer
from mbpl_core.planning.trajectory_sampling import expected_costs, particles_per_member


@dataclass(frozen=True, eq=False)
class Plan:
    """An action sequence planned from the state at step t.

    actions: (H, dU) float64 for steps t..t+H−1, within ±effort_limits (entries past the episode's last
    step are unconstrained by the cost); predicted_cost: the model's expected cost of the window (mean
    over particles); t: the step it was planned from; planning_time: seconds spent planning.
    """

    actions: np.ndarray
    predicted_cost: float
    t: int
    planning_time: float


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to n inside the block (None: unchanged), restored on exit."""
    previous = torch.get_num_threads()
    if n is not None and n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


class MPCController:
    """Receding-horizon controller over a DynamicsModel; a Policy (``act``) for MujocoEnv.sample.

    model: DynamicsModel with num_members B (config.particles must be a multiple of B); cost: the
    experiment's Cost on (x, u); effort_limits: (dU,) > 0; T: the episode length (the cost's ramps and
    final step refer to it; planned steps past T−1 cost 0). Tensors are made with ``dtype`` on
    ``device``, the model's. Randomness comes from one torch.Generator seeded with config.seed, so
    the same seed, model and states give bit-identical plans.
    """

    def __init__(self, model: DynamicsModel, cost: Cost, effort_limits: np.ndarray, T: int,
                 config: PlannerConfig, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        limits = np.array(effort_limits, dtype=np.float64)  # a copy: torch refuses read-only arrays
        if limits.ndim != 1 or not np.all(np.isfinite(limits)) or np.any(limits <= 0):
            raise ValueError(f"effort_limits must be a finite positive (dU,) vector, got {limits}")
        if T < 1:
            raise ValueError(f"episode length T must be >= 1, got {T}")
        particles_per_member(config.particles, model.num_members)
        self.model, self.cost, self.T, self.config = model, cost, T, config
        self.effort_limits = limits
        self.device, self.dtype = torch.device(device), dtype
        upper = torch.as_tensor(limits, dtype=dtype, device=self.device)
        self._optimizer = make_optimizer(config, -upper, upper)
        self._generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self._previous: Plan | None = None
        self.planning_times: list[float] = []
        """Seconds per act() call since the last reset (t = 0)."""

    @property
    def dU(self) -> int:
        return int(self.effort_limits.shape[0])

    def reset(self) -> None:
        """Forget the warm start and the recorded planning times (a new episode)."""
        self._previous = None
        self.planning_times = []

    def warm_start(self, t: int) -> np.ndarray:
        """(H, dU): the previous plan shifted to start at step t, zeros after its end; zeros if none."""
        H = self.config.horizon
        initial = np.zeros((H, self.dU))
        prev = self._previous
        if prev is not None and 0 <= t - prev.t < H:
            shift = t - prev.t
            initial[:H - shift] = prev.actions[shift:]
        return initial

    def plan(self, x: np.ndarray, t: int) -> Plan:
        """Plan u_t..u_{t+H−1} from x: (dX,) at step t; becomes the next call's warm start."""
        start = time.perf_counter()
        x = np.array(x, dtype=np.float64)  # a copy: torch refuses read-only arrays (recorded samples)
        if x.ndim != 1:
            raise ShapeError(f"x must have shape (dX,), got {x.shape}")
        check_finite("x", x)
        if not 0 <= t:
            raise ValueError(f"t must be >= 0, got {t}")
        actions, cost = self._optimize(x, t)
        plan = Plan(np.clip(actions, -self.effort_limits, self.effort_limits), cost, t,
                    time.perf_counter() - start)
        self._previous = plan
        return plan

    @torch.no_grad()
    def _optimize(self, x: np.ndarray, t: int) -> tuple[np.ndarray, float]:
        cfg = self.config
        x0 = torch.as_tensor(x, dtype=self.dtype, device=self.device)
        initial = torch.as_tensor(self.warm_start(t), dtype=self.dtype, device=self.device)

        def objective(U: torch.Tensor) -> torch.Tensor:
            return expected_costs(self.model, self.cost, x0, U, t, self.T, cfg.particles, self._generator,
                                  cfg.sample_model, cfg.terminal_state_cost)

        with torch_threads(cfg.torch_threads if self.device.type == "cpu" else None):
            result = self._optimizer.optimize(objective, initial, self._generator)
        return result.actions.to(device="cpu", dtype=torch.float64).numpy(), result.cost

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """u_t: (dU,) within ±effort_limits, the first action of a plan from x: (dX,) at step t.

        t = 0 starts an episode (reset). noise is accepted for the Policy protocol and not used: PETS
        explores through the model's uncertainty and the planner's sampling.
        """
        if t == 0:
            self.reset()
        plan = self.plan(x, t)
        self.planning_times.append(plan.planning_time)
        return plan.actions[0].copy()
