"""The normal-inverse-Wishart conjugate update, written out for the oracles of the BLR fits."""

from __future__ import annotations

import numpy as np


def niw_posterior_scatter(Y: np.ndarray, mu0: np.ndarray, Psi0: np.ndarray, kappa0: float,
                          discrepancy: bool = True) -> np.ndarray:
    """Textbook NIW posterior scale Ψ_N for samples Y (N, D), written about the posterior mean:
    Ψ_N = Ψ0 + Σ_n (y_n − μ_N)(y_n − μ_N)ᵀ + κ0 (μ_N − μ0)(μ_N − μ0)ᵀ with μ_N = (κ0 μ0 + N ȳ)/(κ0 + N).
    (Equal to Ψ0 + N S + κ0 N/(κ0 + N)(ȳ − μ0)(ȳ − μ0)ᵀ; discrepancy=False drops the mean-discrepancy
    term, i.e. it is Ψ0 + Σ_n (y_n − ȳ)(y_n − ȳ)ᵀ.)"""
    N = Y.shape[0]
    if not discrepancy:
        centred = Y - Y.mean(axis=0)
        return Psi0 + sum(np.outer(r, r) for r in centred)
    mu_N = (kappa0 * mu0 + Y.sum(axis=0)) / (kappa0 + N)
    out = Psi0 + kappa0 * np.outer(mu_N - mu0, mu_N - mu0)
    for y in Y:
        out = out + np.outer(y - mu_N, y - mu_N)
    return out
