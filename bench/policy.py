"""Benchmark of the global policy at the peg size: S-step, linearisation, inference per control step.

Sizes: N = 20 samples × T = 100 steps per condition, dX = 26, dU = 7, MLP (64, 64) relu (GPSConfig defaults).
Prints the figures and writes them to bench/results/policy.json. Usage:

    python bench/policy.py [--conditions 1 4] [--iterations 2000] [--device auto|cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mbpl_core.blas import single_threaded_blas
from mbpl_core.guided.mdgps import (
    GaussianMLPPolicy,
    GPSConfig,
    policy_to_params,
    resolve_device,
    single_torch_thread,
    train_policy,
)
from mbpl_core.policy import NumpyPolicy, linearize_policy

N, T, DX, DU = 20, 100, 26, 7
RESULTS = Path(__file__).resolve().parent / "results" / "policy.json"


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls of fn, in seconds (least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _targets(rng: np.random.Generator, M: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets of a random LG controller at random states: obs (M, dX), mu (M, dU), prec (M, dU, dU)."""
    X = rng.normal(size=(M, DX))
    K = rng.normal(size=(DU, DX)) * 0.3
    A = rng.normal(size=(DU, DU))
    prec = np.broadcast_to(A @ A.T + DU * np.eye(DU), (M, DU, DU)).copy()
    return X, X @ K.T + rng.normal(size=DU), prec


def bench_s_step(conditions: int, iterations: int, device: str) -> dict[str, float]:
    """Wall time of one S-step on conditions·N·T targets with ``iterations`` gradient steps."""
    rng = np.random.default_rng(0)
    obs, mu, prec = _targets(rng, conditions * N * T)
    config = GPSConfig(iterations=iterations, device=device)
    policy = GaussianMLPPolicy.from_config(config, DX, DU)
    # Warm-up: the first steps pay for allocator and kernel set-up.
    train_policy(policy, obs, mu, prec, GPSConfig(iterations=20, device=device))
    start = time.perf_counter()
    report = train_policy(policy, obs, mu, prec, config)
    if policy.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"points": float(obs.shape[0]), "gradient_steps": float(iterations), "s_step_s": seconds,
            "per_gradient_step_ms": 1e3 * seconds / max(iterations, 1),
            "loss_before": report.loss_before, "loss_after": report.loss_after}


def bench_inference(repeats: int) -> dict[str, float]:
    """Per-call time of the mean action of one state: numpy deployment pass vs torch (CPU, no grad)."""
    config = GPSConfig(device="cpu")
    policy = GaussianMLPPolicy.from_config(config, DX, DU)
    numpy_policy = NumpyPolicy(policy_to_params(policy))
    x, noise = np.random.default_rng(1).normal(size=DX), np.zeros(DU)
    calls = 2000

    def numpy_loop() -> None:
        for _ in range(calls):
            numpy_policy.act(0, x, noise)

    xt = torch.as_tensor(x[None])

    def torch_loop() -> None:
        with torch.no_grad():
            for _ in range(calls):
                policy(xt)[0].numpy()

    # Both on one thread, as the sampler's control thread runs them.
    with single_threaded_blas(), single_torch_thread(torch.device("cpu")):
        return {"numpy_us_per_call": 1e6 * _best_of(numpy_loop, repeats) / calls,
                "torch_us_per_call": 1e6 * _best_of(torch_loop, repeats) / calls}


def bench_linearisation(repeats: int) -> dict[str, float]:
    """Wall time of linearising the policy at one condition's N × T sampled states."""
    policy = NumpyPolicy(policy_to_params(GaussianMLPPolicy.from_config(GPSConfig(device="cpu"), DX, DU)))
    X = np.random.default_rng(2).normal(size=(N, T, DX))
    with single_threaded_blas():
        return {"linearize_ms": 1e3 * _best_of(lambda: linearize_policy(policy, X), repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conditions", type=int, nargs="+", default=[1, 4],
                        help="S-step sizes to time: conditions × N × T targets")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer gradient steps and repeats (smoke run)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    iterations, repeats = (100, 2) if args.quick else (args.iterations, 5)
    results = {
        "sizes": {"N": N, "T": T, "dX": DX, "dU": DU, "hidden_sizes": list(GPSConfig().hidden_sizes),
                  "conditions": args.conditions},
        "device": str(resolve_device(args.device)),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "s_step": [bench_s_step(c, iterations, args.device) for c in args.conditions],
        "inference": bench_inference(repeats),
        "linearisation": bench_linearisation(repeats),
    }
    print(json.dumps(results, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
