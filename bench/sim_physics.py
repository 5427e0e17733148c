"""Simulation speed of each shipped experiment: physics steps/s, control steps/s, full trials/s.

Prints a table and writes bench/results/sim_physics.json. Control steps include the substeps, the
effort clipping and the state assembly through EndEffectorKinematics (what MujocoEnv.step does).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import mujoco
import numpy as np

from mbpl_sim.env import MujocoEnv
from mbpl_sim.experiment import load_experiment

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["reacher2_sim", "arm7_reach", "arm7_peg"]


class _Damping:
    """u = -0.5 qd + 0.2 noise: a cheap stand-in for an LG controller."""

    def __init__(self, dU: int) -> None:
        self.dU = dU

    def act(self, t: int, x: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        u = -0.5 * x[self.dU:2 * self.dU]
        return u if noise is None else u + 0.2 * noise


def _rate(fn, min_seconds: float = 0.5) -> float:
    """Calls per second of fn(), repeated until min_seconds have passed (best of 3 rounds)."""
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_seconds / 3 or n < 10:
            fn()
            n += 1
        best = max(best, n / elapsed)
    return best


def bench_experiment(name: str) -> dict[str, float | int | str]:
    env = MujocoEnv(load_experiment(ROOT / "configs" / f"{name}.yaml"))
    rng = np.random.default_rng(0)
    env.reset(0)
    u = 0.05 * env.effort_limits

    def physics() -> None:
        mujoco.mj_step(env.model, env.data)

    def control() -> None:
        env.step(u)

    noise = rng.normal(size=(env.T, env.dU))
    policy = _Damping(env.dU)
    trials = _rate(lambda: env.sample(policy, 0, noise), min_seconds=1.0)
    env.reset(0)
    result = {
        "experiment": name, "dQ": env.dU, "dX": env.dX, "T": env.T, "dt": env.dt, "substeps": env.substeps,
        "physics_steps_per_s": _rate(physics),
        "control_steps_per_s": _rate(control),
        "trials_per_s": trials,
    }
    result["realtime_factor"] = result["control_steps_per_s"] * env.dt
    return result


def main() -> None:
    results = [bench_experiment(name) for name in CONFIGS]
    header = f"{'experiment':<14}{'physics/s':>12}{'control/s':>12}{'substeps':>9}{'trials/s':>10}"
    print(header + f"{'x realtime':>11}")
    for r in results:
        print(f"{r['experiment']:<14}{r['physics_steps_per_s']:>12.0f}{r['control_steps_per_s']:>12.0f}"
              f"{r['substeps']:>9}{r['trials_per_s']:>10.1f}{r['realtime_factor']:>11.0f}")
    out = ROOT / "bench" / "results" / "sim_physics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"mujoco": mujoco.__version__, "machine": platform.machine(), "python": platform.python_version()}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
