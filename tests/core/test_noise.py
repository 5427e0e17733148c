"""Exploration noise: determinism, smoothing, unit variance, input checks."""

from __future__ import annotations

import numpy as np
import pytest

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import ShapeError
from mbpl_core.noise import NoiseConfig, generate_noise


def test_same_seed_same_noise_and_different_seeds_differ() -> None:
    a = generate_noise(50, 3, np.random.default_rng(7))
    b = generate_noise(50, 3, np.random.default_rng(7))
    c = generate_noise(50, 3, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_unsmoothed_noise_is_the_generators_standard_normal_draw() -> None:
    noise = generate_noise(40, 2, np.random.default_rng(3), NoiseConfig(smooth=False))
    np.testing.assert_array_equal(noise, np.random.default_rng(3).standard_normal((40, 2)))


def test_smoothed_noise_has_unit_variance_per_dimension() -> None:
    noise = generate_noise(100, 7, np.random.default_rng(0), NoiseConfig(smooth_sigma=3.0))
    assert noise.shape == (100, 7)
    np.testing.assert_allclose(np.var(noise, axis=0), np.ones(7), rtol=1e-12)


def test_smoothing_correlates_neighbouring_steps_as_the_kernel_predicts() -> None:
    # A Gaussian kernel of std s makes white noise's lag-1 correlation exp(-1 / (4 s^2)).
    s = 2.0
    noise = generate_noise(20000, 2, np.random.default_rng(1), NoiseConfig(smooth_sigma=s))
    centred = noise - noise.mean(axis=0)
    lag1 = np.sum(centred[1:] * centred[:-1], axis=0) / np.sum(centred**2, axis=0)
    np.testing.assert_allclose(lag1, np.exp(-1.0 / (4 * s * s)), atol=0.01)


def test_smoothing_without_renormalization_shrinks_variance() -> None:
    noise = generate_noise(5000, 2, np.random.default_rng(2), NoiseConfig(renormalize=False))
    assert np.all(np.var(noise, axis=0) < 0.5)


def test_single_step_noise_is_finite() -> None:
    noise = generate_noise(1, 2, np.random.default_rng(0))
    assert noise.shape == (1, 2) and np.all(np.isfinite(noise))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ShapeError, match="T >= 1"):
        generate_noise(0, 2, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        generate_noise(5, 2, 0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="smooth_sigma"):
        NoiseConfig(smooth_sigma=0.0)


def test_config_from_yaml_dict() -> None:
    config = from_dict(NoiseConfig, {"smooth": False, "smooth_sigma": 1.5, "renormalize": True})
    assert config == NoiseConfig(smooth=False, smooth_sigma=1.5, renormalize=True)
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(NoiseConfig, {"sigma": 1.0})
