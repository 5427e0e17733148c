"""Trajectory sampling with particles that keep their ensemble member ("TS-∞", Chua et al. 2018, Sec. 4.2).

Each of N candidate action sequences U: (N, H, dU) is propagated as P particles through an ensemble of
B members. Particle p of candidate n is assigned member b = p mod B (stratified: each candidate sees
every member P/B times) and sits at row (b, m = n·J + p // B) of the model's (B, M, dX) input, with
J = P/B and M = N·J, for the whole horizon — the row never moves, so the particle keeps its member.
A candidate's cost is the mean over its P particles of the summed per-step cost.
"""

from __future__ import annotations

import torch

from mbpl_core.costs import Cost
from mbpl_core.planning.model import DynamicsModel


def particles_per_member(particles: int, num_members: int) -> int:
    """J = P / B; ValueError unless the P particles split evenly over the B members."""
    if num_members < 1 or particles < 1 or particles % num_members != 0:
        raise ValueError(f"particles ({particles}) must be a positive multiple of the ensemble's "
                         f"num_members ({num_members}) for trajectory sampling")
    return particles // num_members


def member_of_particle(p: int, num_members: int) -> int:
    """The ensemble member that propagates particle p of every candidate, for the whole horizon."""
    return p % num_members


def rollout_particles(model: DynamicsModel, x0: torch.Tensor, U: torch.Tensor, particles: int,
                      generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
    """States of all particles: x0: (dX,), U: (N, S, dU) → (B, N, J, S+1, dX), row s = x_{t+s}.

    Entry [b, n, j] is particle p = j·B + b of candidate n (see :func:`particles_by_candidate`).
    """
    B = model.num_members
    J = particles_per_member(particles, B)
    N, S, dU = U.shape
    M = N * J
    x = x0.reshape(1, 1, -1).expand(B, M, x0.shape[-1]).contiguous()
    states = [x]
    for s in range(S):
        u = U[:, s].repeat_interleave(J, dim=0).unsqueeze(0).expand(B, M, dU).contiguous()
        x = model.step(x, u, generator=generator, sample=sample)
        states.append(x)
    return torch.stack(states, dim=2).reshape(B, N, J, S + 1, x0.shape[-1])


def particles_by_candidate(states: torch.Tensor) -> torch.Tensor:
    """(B, N, J, S+1, dX) → (N, P, S+1, dX) with particle p = j·B + b (member p mod B)."""
    B, N, J = states.shape[:3]
    return states.permute(1, 2, 0, 3, 4).reshape(N, J * B, *states.shape[3:])


def expected_costs(model: DynamicsModel, cost: Cost, x0: torch.Tensor, U: torch.Tensor, t0: int, T: int,
                   particles: int, generator: torch.Generator | None = None, sample: bool = True,
                   terminal_state_cost: bool = True) -> torch.Tensor:
    """Mean over particles of Σ_h l_{t0+h}(x_{t0+h}, u_{t0+h}), h = 0..H−1, for U: (N, H, dU) → (N,).

    x0: (dX,) is the state at step t0 of a T-step episode; steps past T−1 cost 0 (Cost.value_batched).
    terminal_state_cost adds the step after the window, l_{t0+H}(x_{t0+H}, u = 0): the state the window
    reaches, so its last action is not judged by its action cost alone. Non-finite costs become +inf.
    """
    N, H, dU = U.shape
    if terminal_state_cost:
        states = rollout_particles(model, x0, U, particles, generator, sample)
        U_cost = torch.cat([U, U.new_zeros(N, 1, dU)], dim=1)
    else:
        states = rollout_particles(model, x0, U[:, :H - 1], particles, generator, sample)
        U_cost = U
    l = cost.value_batched(states, U_cost.reshape(1, N, 1, U_cost.shape[1], dU), t0, T)  # (B, N, J, S)
    total = l.sum(dim=-1).mean(dim=(0, 2))
    return torch.where(torch.isfinite(total), total, torch.full_like(total, float("inf")))
