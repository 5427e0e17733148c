"""Benchmark of the PETS probabilistic ensemble at the peg size: training and the batched forward pass.

Sizes: dX = 26, dU = 7; N = 3000 transitions (30 trials × 100 steps) by default; EnsembleConfig defaults
(5 members, (200, 200, 200) SiLU). Forward pass: B = 5 members × M = 400 × 20 / 5 = 1600 rows each (400 CEM
candidates × 20 particles, TS-∞), one sampled ``step`` under no_grad, and a 30-step horizon of them.
Each figure is timed with 1 and 2 torch threads (CPU). Prints the figures and writes them to
bench/results/ensemble.json. Usage:

    python bench/ensemble.py [--transitions 3000] [--epochs 10] [--device auto|cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mbpl_core.models import (
    EnsembleConfig,
    ProbabilisticEnsemble,
    resolve_device,
    torch_threads,
    train_ensemble,
)

DX, DU = 26, 7
CANDIDATES, PARTICLES, HORIZON = 400, 20, 30
RESULTS = Path(__file__).resolve().parent / "results" / "ensemble.json"


def _best_of(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Smallest wall time of ``repeats`` calls of fn, in seconds (least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _transitions(rng: np.random.Generator, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth nonlinear dynamics x' = x + 0.1 tanh(W [x, u]) + noise: X (N, dX), U (N, dU), X_next (N, dX)."""
    W = rng.normal(size=(DX, DX + DU)) / np.sqrt(DX + DU)
    X, U = rng.normal(size=(N, DX)), rng.normal(size=(N, DU))
    X_next = X + 0.1 * np.tanh(np.concatenate([X, U], axis=1) @ W.T) + 0.01 * rng.normal(size=(N, DX))
    return X, U, X_next


def bench_training(N: int, epochs: int, device: str) -> dict[str, float]:
    """Wall time of train_ensemble for exactly ``epochs`` epochs (no early stop) on N transitions."""
    config = EnsembleConfig(max_epochs=epochs, patience=epochs + 1, device=device)
    rng = np.random.default_rng(0)
    X, U, X_next = _transitions(rng, N)
    model = ProbabilisticEnsemble(DX, DU, config, rng)
    train_ensemble(model, X[:512], U[:512], X_next[:512], dataclasses.replace(config, max_epochs=1), rng)
    report = train_ensemble(model, X, U, X_next, config, rng)
    per_epoch = report.wall_time_s / report.epochs
    return {"transitions": float(N), "epochs": float(report.epochs), "train_s": report.wall_time_s,
            "per_epoch_s": per_epoch, "per_epoch_per_1k_transitions_s": per_epoch * 1000.0 / N,
            "holdout_nll_first": float(np.mean(report.holdout_nll[0])),
            "holdout_nll_last": float(np.mean(report.holdout_nll[-1]))}


def bench_forward(repeats: int, device: str) -> dict[str, float]:
    """One sampled step and a HORIZON-step TS-∞ rollout of B × M = 5 × 1600 particles, under no_grad."""
    model = ProbabilisticEnsemble(DX, DU, EnsembleConfig(device=device), np.random.default_rng(1))
    dev, B = model.device, model.num_members
    M = CANDIDATES * PARTICLES // B
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(B, M, DX, device=dev, generator=gen)
    u = torch.randn(HORIZON, B, M, DU, device=dev, generator=gen)

    def one_step() -> None:
        with torch.no_grad():
            model.step(x, u[0], gen)

    def rollout() -> None:
        with torch.no_grad():
            state = x
            for t in range(HORIZON):
                state = model.step(state, u[t], gen)

    one_step()
    return {"B": float(B), "M": float(M), "step_ms": 1e3 * _best_of(one_step, repeats, dev),
            "horizon": float(HORIZON), "rollout_ms": 1e3 * _best_of(rollout, max(2, repeats // 5), dev)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transitions", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts")
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repeats (smoke run)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    epochs, repeats = (2, 3) if args.quick else (args.epochs, 10)
    runs = {}
    for threads in args.threads:
        with torch_threads(threads):
            runs[f"threads_{threads}"] = {"training": bench_training(args.transitions, epochs, args.device),
                                          "forward": bench_forward(repeats, args.device)}
    results = {
        "sizes": {"dX": DX, "dU": DU, "members": EnsembleConfig().members,
                  "hidden": list(EnsembleConfig().hidden), "candidates": CANDIDATES, "particles": PARTICLES},
        "device": str(resolve_device(args.device)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_average_1min": os.getloadavg()[0]},
        "runs": runs,
    }
    print(json.dumps(results, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
