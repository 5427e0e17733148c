"""Per-column standardisation fitted to data, kept as torch buffers so checkpoints carry it."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

STD_FLOOR = 1e-6  # a column whose std is below this is constant: it is centred and left unscaled


class Normaliser(nn.Module):
    """z = (v − mean) / std per column; v = z · std + mean back. mean, std: (d,) buffers.

    Fitted with :meth:`fit`; a column of std < STD_FLOOR gets std = 1.0 (centred only), so a
    constant input never divides by ~0.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, d: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(d, dtype=dtype))
        self.register_buffer("std", torch.ones(d, dtype=dtype))

    def fit(self, data: np.ndarray) -> None:
        """Set mean and std from data: (N, d), computed in float64."""
        data = np.asarray(data, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != self.mean.shape[0] or data.shape[0] == 0:
            raise ValueError(f"normaliser data must be (N>0, {self.mean.shape[0]}), got {data.shape}")
        std = data.std(axis=0)
        std[std < STD_FLOOR] = 1.0
        with torch.no_grad():
            self.mean.copy_(torch.as_tensor(data.mean(axis=0)))
            self.std.copy_(torch.as_tensor(std))

    def normalise(self, v: Tensor) -> Tensor:
        """(..., d) raw → (..., d) standardised."""
        return (v - self.mean) / self.std

    def denormalise(self, z: Tensor) -> Tensor:
        """(..., d) standardised → (..., d) raw."""
        return z * self.std + self.mean
