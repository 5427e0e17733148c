"""Exploration noise for linear-Gaussian controllers.

The sampler draws standard-normal noise ε: (T, dU) before a trial and folds chol(pol_covar_t) ε_t into k_t,
so a trial can be replayed exactly. As in the GPS code, the noise may be smoothed along time with a
Gaussian kernel (smoother motions on a real robot) and then rescaled to unit variance per action
dimension, so the controller's covariance still sets the exploration magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage

from mbpl_core.config import ConfigError
from mbpl_core.containers import ShapeError


@dataclass(frozen=True)
class NoiseConfig:
    """How exploration noise is drawn (YAML section ``algorithm.noise``).

    smooth: Gaussian-smooth each action dimension along time; smooth_sigma: kernel standard deviation in
    time steps; renormalize: rescale smoothed noise to unit empirical variance per dimension.
    """

    smooth: bool = True
    smooth_sigma: float = 2.0
    renormalize: bool = True

    def __post_init__(self) -> None:
        if not np.isfinite(self.smooth_sigma) or self.smooth_sigma <= 0.0:
            raise ConfigError(f"noise.smooth_sigma must be a positive number, got {self.smooth_sigma}")


def generate_noise(
    T: int, dU: int, rng: np.random.Generator, config: NoiseConfig | None = None
) -> np.ndarray:
    """Standard-normal exploration noise ε: (T, dU), optionally smoothed along time.

    ε_{t,i} ~ N(0, 1) i.i.d. from ``rng``; with ``config.smooth`` each column is convolved with a Gaussian
    kernel of standard deviation ``smooth_sigma`` steps (reflecting boundaries) and, with
    ``config.renormalize``, divided by its empirical standard deviation so that var_t(ε_{:,i}) = 1.
    Smoothing is skipped for T = 1, where no time axis exists.
    Raises ShapeError for T < 1 or dU < 1, TypeError if rng is not a numpy Generator.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if int(T) < 1 or int(dU) < 1:
        raise ShapeError(f"noise needs T >= 1 and dU >= 1, got T={T}, dU={dU}")
    config = NoiseConfig() if config is None else config
    noise = rng.standard_normal((int(T), int(dU)))
    if not config.smooth or T < 2:
        return noise
    noise = scipy.ndimage.gaussian_filter1d(noise, sigma=config.smooth_sigma, axis=0, mode="reflect")
    if config.renormalize:
        std = np.std(noise, axis=0)
        # A column can only be constant if every draw was identical; leave it rather than divide by zero.
        std = np.where(std > 1e-12, std, 1.0)
        noise = noise / std
    return noise
