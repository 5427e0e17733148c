"""Per-column standardisation fitted to data, kept as torch buffers so checkpoints carry it."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

STD_FLOOR = 1e-6  # a column whose std is below this is constant: it is centred and left unscaled


class Normaliser(nn.Module):
    """z = (v − mean) / std per column; v = z · std + mean back. mean, std: (d,) buffers.

    Fitted with :meth:`fit`; a column of std < STD_FLOOR is constant in the data and gets std =
    ``constant_std``: 1.0 for inputs (centred only, so a constant input never divides by ~0); STD_FLOOR
    for the model's targets (Δx), so what the network outputs in a column that never changed in the data
    — its mean and its sampled noise — denormalises to at most ~1e-6 raw: a planar arm's ee z stays put
    in model rollouts. (With 1.0 there, an ensemble's initial logvar of 0.5 put noise of std ~1 m on
    reacher2's ee z in sampled predictions.)
    """

    mean: Tensor
    std: Tensor

    def __init__(self, d: int, dtype: torch.dtype = torch.float32, constant_std: float = 1.0) -> None:
        super().__init__()
        if not constant_std > 0:
            raise ValueError(f"constant_std must be > 0, got {constant_std}")
        self.constant_std = float(constant_std)
        self.register_buffer("mean", torch.zeros(d, dtype=dtype))
        self.register_buffer("std", torch.ones(d, dtype=dtype))

    def fit(self, data: np.ndarray) -> None:
        """Set mean and std from data: (N, d), computed in float64."""
        data = np.asarray(data, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != self.mean.shape[0] or data.shape[0] == 0:
            raise ValueError(f"normaliser data must be (N>0, {self.mean.shape[0]}), got {data.shape}")
        std = data.std(axis=0)
        std[std < STD_FLOOR] = self.constant_std
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(data.mean(axis=0)))
            self.std.copy_(torch.as_tensor(std))

    def normalise(self, v: Tensor) -> Tensor:
        """(..., d) raw → (..., d) standardised."""
        return (v - self.mean) / self.std

    def denormalise(self, z: Tensor) -> Tensor:
        """(..., d) standardised → (..., d) raw."""
        return z * self.std + self.mean
