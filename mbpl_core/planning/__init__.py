"""Family 2, planning over a learned model: random shooting, CEM, the MPC loop, planner distillation."""
