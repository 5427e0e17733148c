"""The model interface the planners plan over (implemented by mbpl_core.models' ensemble).

Planning depends on this protocol only, never on mbpl_core.models, so planners are tested with small
hand-written models and the ensemble can change without touching them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class DynamicsModel(Protocol):
    """An ensemble of B = num_members one-step dynamics models in raw (unnormalised) units.

    ``step(x, u)`` with x: (B, M, dX), u: (B, M, dU) returns x_next: (B, M, dX): member b propagates
    the rows x[b] (PETS's trajectory sampling relies on this). sample=True draws x_next from each
    member's predictive distribution using ``generator``; sample=False returns its mean.
    """

    num_members: int

    def step(self, x: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None,
             sample: bool = True) -> torch.Tensor: ...
