"""Benchmark of MPC planning latency per control step over an ensemble of the PETS size.

Model: B = 5 members, MLP (200, 200, 200) silu on [x, u] (33 inputs) → mean and log-variance of Δx
(2 × 26 outputs), float32: the real ProbabilisticEnsemble (mbpl_core/models/ensemble.py) when it is
committed and importable, otherwise a stand-in of the same size and arithmetic (said in the output).
State dX = 26 (7 joints, 2 end-effector points), dU = 7, cost = the experiment's action + ee cost
(build_cost), episode T = 100. Each setting runs MPCController.act for a few steps from a random state
(warm start included) and reports median / p99 / max planning time per step.
Prints the figures and writes them to bench/results/planning.json. Usage:

    python bench/planning.py [--device cpu|cuda] [--steps 6] [--threads 1 [2]] [--quick]
                             [--model auto|standin]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mbpl_core.containers import StateLayout
from mbpl_core.costs import CostConfig, EndEffectorCostConfig, build_cost
from mbpl_core.planning import DynamicsModel, MPCController, PlannerConfig

LAYOUT = StateLayout(dQ=7, n_points=2)  # dX = 26
DX, DU, T, MEMBERS, HIDDEN = LAYOUT.dX, 7, 100, 5, (200, 200, 200)
RESULTS = Path(__file__).resolve().parent / "results" / "planning.json"
SETTINGS = {
    "default (H25 N400 K40 I5 P20)": PlannerConfig(),
    "medium (H15 N200 K20 I3 P10)": PlannerConfig(horizon=15, population=200, elites=20, iterations=3,
                                                  particles=10),
    "small (H10 N100 K10 I3 P5)": PlannerConfig(horizon=10, population=100, elites=10, iterations=3,
                                               particles=5),
    "random shooting (H10 N400 P5)": PlannerConfig(method="random", horizon=10, population=400, particles=5),
    "fast (H8 N64 K8 I2 P5)": PlannerConfig(horizon=8, population=64, elites=8, iterations=2, particles=5),
}


class StandInEnsemble(nn.Module):
    """B batched Gaussian MLPs of the ensemble's size: x_next = x + μ + σ ε (ε from the generator)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        sizes = [DX + DU, *HIDDEN, 2 * DX]
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(MEMBERS, a, b, generator=gen) / a**0.5) for a, b in pairs]
        )
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(MEMBERS, 1, b)) for b in sizes[1:]])
        self.num_members = MEMBERS
        self.to(device)

    def step(self, x: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None = None,
             sample: bool = True) -> torch.Tensor:
        h = torch.cat([x, u], dim=-1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = nn.functional.silu(h)
        mean, logvar = h[..., :DX], torch.clamp(h[..., DX:], -10.0, 0.5)
        if sample:
            mean = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator,
                                                                device=mean.device, dtype=mean.dtype)
        return x + 0.01 * mean


def _real_ensemble_committed() -> bool:
    path = "mbpl_core/models/ensemble.py"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(["git", "ls-files", "--error-unmatch", path], cwd=root, capture_output=True)
    return done.returncode == 0


def make_model(kind: str, device: torch.device) -> tuple[DynamicsModel, str]:
    """The real ensemble if committed (kind "auto"), else the stand-in; returns (model, description)."""
    if kind == "auto" and _real_ensemble_committed():
        from mbpl_core.models.ensemble import EnsembleConfig, ProbabilisticEnsemble

        config = EnsembleConfig(members=MEMBERS, elites=MEMBERS, hidden=HIDDEN, device=str(device))
        return ProbabilisticEnsemble(DX, DU, config), "ProbabilisticEnsemble (mbpl_core/models/ensemble.py)"
    return StandInEnsemble(device), "stand-in MLP ensemble of the same size (real ensemble not committed)"


def bench_setting(model: DynamicsModel, config: PlannerConfig, steps: int, device: torch.device) -> dict:
    """Per-step planning times (s) of MPCController.act over ``steps`` steps from a random state."""
    cost = build_cost(CostConfig(action_weight=1e-3, ee=EndEffectorCostConfig()), LAYOUT, DU)
    mpc = MPCController(model, cost, np.full(DU, 5.0), T, config, device=device)
    x = np.random.default_rng(0).normal(size=DX) * 0.1
    mpc.act(0, x)  # warm-up (allocator, kernels); not counted
    mpc.reset()
    times = []
    for t in range(1, steps + 1):
        mpc.act(t, x)
        times.append(mpc.planning_times[-1])
    arr = np.array(times)
    return {"median_ms": 1e3 * float(np.median(arr)), "p99_ms": 1e3 * float(np.percentile(arr, 99)),
            "max_ms": 1e3 * float(arr.max()), "steps": steps,
            "model_rows_per_step": config.population * config.particles,
            "model_calls_per_plan": config.horizon * (config.iterations if config.method == "cem" else 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="torch intra-op threads while planning (CPU); e.g. 1 2 to compare")
    parser.add_argument("--model", choices=["auto", "standin"], default="auto")
    parser.add_argument("--quick", action="store_true", help="small settings only, 3 steps")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, description = make_model(args.model, device)
    print(f"model: {description}; B = {MEMBERS}, hidden {HIDDEN}, dX = {DX}, dU = {DU}, float32, {device}")
    threads = args.threads if device.type == "cpu" else [None]
    results: dict = {"model": description, "device": str(device), "cpu_count": os.cpu_count(),
                     "torch": torch.__version__, "python": platform.python_version(), "settings": {}}
    steps = 3 if args.quick else args.steps
    for name, config in SETTINGS.items():
        if args.quick and name.startswith("default"):
            continue
        for n in threads:
            cfg = dataclasses.replace(config, torch_threads=n)
            row = bench_setting(model, cfg, steps, device)
            key = f"{name}, threads={n}"
            results["settings"][key] = row
            print(f"{key:48s} median {row['median_ms']:9.1f} ms   p99 {row['p99_ms']:9.1f} ms   "
                  f"({row['model_rows_per_step']} rows × {row['model_calls_per_plan']} model calls)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
