"""Family 2, planning over a learned model: random shooting, CEM, the MPC loop, planner distillation."""

from mbpl_core.planning.model import DynamicsModel
from mbpl_core.planning.mpc import MPCController, Plan
from mbpl_core.planning.optimizers import (
    CEMOptimizer,
    Objective,
    Optimizer,
    OptimizerResult,
    PlannerConfig,
    RandomShootingOptimizer,
    make_optimizer,
)
from mbpl_core.planning.trajectory_sampling import (
    expected_costs,
    member_of_particle,
    particles_by_candidate,
    particles_per_member,
    rollout_particles,
)

__all__ = [
    "CEMOptimizer",
    "DynamicsModel",
    "MPCController",
    "Objective",
    "Optimizer",
    "OptimizerResult",
    "Plan",
    "PlannerConfig",
    "RandomShootingOptimizer",
    "expected_costs",
    "make_optimizer",
    "member_of_particle",
    "particles_by_candidate",
    "particles_per_member",
    "rollout_particles",
]
