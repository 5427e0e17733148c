"""A gymnasium view of an experiment's task: any gymnasium learner runs on mbpl's robots and costs.

observation = the state x (dX,) of :class:`mbpl_sim.env.MujocoEnv`; action = efforts u (dU,) in the Box
±effort_limits, or ±min(effort_limits, action_limits) where a method explores within a smaller box
(``sac|mbpo.action_limits``; clipped there, as the sampler does); reward of step t = −l_t(x_t, u_t), the
per-step term of the experiment's cost that the LQR methods sum (``Cost.value_batched`` at the episode's
absolute step t, so the ramp and the final-step multiplier fall on the same steps: Σ_t reward_t = −Σ_t l_t
of the same trajectory); an episode is T steps and ends by truncation (nothing terminates a reach); the
condition is chosen at reset (``options={"condition": m}``, else in turn 0, 1, …, or at random from
``np_random`` with ``condition_order="random"``).

Every action is simulated, the last one too: the observation after step T−1 is x_T, so the T transitions
(x_t, u_t, x_{t+1}) of an episode are all real (a model learner may use them). The reward depends on t
(ramp, final multiplier), which the observation does not contain; ``info["t"]`` says which step a
transition was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.costs import Cost, CostConfig, build_cost
from mbpl_core.limits import bounded_limits
from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import ExperimentConfig
from mbpl_sim.task import ConditionSetName

ConditionOrder = Literal["cycle", "random"]


class MbplGymEnv(gym.Env[np.ndarray, np.ndarray]):
    """The task of ``experiment`` on one of its condition sets as a ``gymnasium.Env`` (module docstring).

    Attributes: ``sim`` (the MujocoEnv), ``cost``, ``T``, ``condition`` (of the running episode),
    ``t`` (steps taken in it).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, experiment: ExperimentConfig, condition_set: ConditionSetName = "train",
                 cost: Cost | None = None, condition_order: ConditionOrder = "cycle",
                 action_limits: Sequence[float] | None = None) -> None:
        if condition_order not in ("cycle", "random"):
            raise ConfigError(f"condition_order must be 'cycle' or 'random', got {condition_order!r}")
        self.sim = MujocoEnv(experiment, condition_set)
        self.cost = cost if cost is not None else build_cost(
            from_dict(CostConfig, experiment.cost, "cost"), self.sim.layout, self.sim.dU)
        self.T, self.condition_order = self.sim.T, condition_order
        limits = bounded_limits(action_limits, np.asarray(self.sim.effort_limits, dtype=np.float64),
                                "action_limits")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.sim.dX,), np.float64)
        self.action_space = gym.spaces.Box(-limits, limits, dtype=np.float64)
        self.condition, self.t = 0, 0
        self._next_condition = 0
        self._x: np.ndarray | None = None

    @property
    def num_conditions(self) -> int:
        return self.sim.num_conditions

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None,
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode in ``options["condition"]`` (else the next in turn / a random one): x_0 (dX,)."""
        super().reset(seed=seed)
        if seed is not None:
            self._next_condition = 0
        if options is not None and "condition" in options:
            condition = int(options["condition"])
        elif self.condition_order == "random":
            condition = int(self.np_random.integers(self.num_conditions))
        else:
            condition = self._next_condition
            self._next_condition = (condition + 1) % self.num_conditions
        self._x = self.sim.reset(condition)
        self.condition, self.t = condition, 0
        return self._x.copy(), {"condition": condition, "t": 0}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply u = clip(action) for one control period; reward −l_t(x_t, u), truncated after T steps.

        info: condition, t (the step this transition was), cost (l_t).
        """
        if self._x is None or self.t >= self.T:
            raise RuntimeError("step() needs reset() first (and again after the episode's T steps)")
        u = np.clip(self.sim.clip_action(action), self.action_space.low, self.action_space.high)
        step_cost = self.step_cost(self._x, u, self.t)
        t = self.t
        self._x = self.sim.step(u)
        self.t += 1
        info = {"condition": self.condition, "t": t, "cost": step_cost}
        return self._x.copy(), -step_cost, False, self.t >= self.T, info

    def step_cost(self, x: np.ndarray, u: np.ndarray, t: int) -> float:
        """l_t(x (dX,), u (dU,)) at step t of a T-step episode (0 for t >= T)."""
        return float(self.cost.value_batched(x[None, None], u[None, None], t0=int(t), T=self.T)[0, 0])
