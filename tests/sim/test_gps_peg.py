"""MDGPS on simulated peg insertion (configs/arm7_peg.yaml): a short run of the full in-process loop.

The acceptance run (12 iterations, 16 held-out holes, several seeds) is bench/gps_peg.py; this test only
checks that a few iterations learn without numerical failures: the LG controllers' sampled cost falls,
no C-step had to fall back, and the policy gets the peg much closer to held-out holes than untrained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mbpl_core.config import from_dict
from mbpl_core.costs import CostConfig, build_cost
from mbpl_core.guided.mdgps import MDGPS, evaluate_policy
from mbpl_core.local.lqr_flm import AlgorithmConfig
from mbpl_core.policy import GPSConfig

ITERATIONS = 5
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.sim
@pytest.mark.slow
def test_mdgps_peg_insertion_learns_in_a_few_iterations() -> None:
    from mbpl_sim.env import MujocoEnv
    from mbpl_sim.experiment import load_experiment
    from mbpl_sim.training import validation_env

    exp = load_experiment(REPO / "configs/arm7_peg.yaml")
    train, held_out = MujocoEnv(exp), MujocoEnv(exp, "held_out")
    cost = build_cost(from_dict(CostConfig, exp.cost), exp.layout, train.dU)
    gps_config = from_dict(GPSConfig, exp.gps)
    mdgps = MDGPS(train, cost, from_dict(AlgorithmConfig, exp.algorithm), gps_config, eval_env=held_out,
                  eval_cost=cost, select_env=validation_env(exp, gps_config))
    untrained = float(np.mean(evaluate_policy(held_out, mdgps.numpy_policy)))
    reports = mdgps.run(ITERATIONS)
    assert np.mean(reports[-1].lg_cost) < 0.3 * np.mean(reports[0].lg_cost)
    assert mdgps.fallbacks == []
    assert all(np.all(np.isfinite(r.kl)) for r in reports)
    assert np.mean(reports[-1].policy_distance) < 0.5 * untrained  # type: ignore[arg-type]


@pytest.mark.sim
def test_bench_compare_matches_seeds_and_ignores_only_wall_times() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gps_peg_bench", REPO / "bench/gps_peg.py")
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(bench)  # type: ignore[union-attr]

    def run(seed: int, tip: float, wall: float) -> dict:
        return {"seed": seed, "total_s": wall, "iterations": [{"lg_tip_m": [tip], "wall_s": wall}]}

    old = {"config": "c.yaml", "overrides": {}, "machine": {"cpus": 2},
           "runs": [run(0, 0.1, 5.0), run(1, 0.2, 6.0)]}
    repeat = {"config": "c.yaml", "overrides": {}, "machine": {"cpus": 16}, "runs": [run(1, 0.2, 9.0)]}
    assert bench.compare_runs(repeat, old) == {1: True}  # one seed against a 5-seed run; wall times differ
    repeat["runs"] = [run(1, 0.2000001, 6.0), run(0, 0.1, 5.0), run(7, 0.1, 5.0)]
    assert bench.compare_runs(repeat, old) == {1: False, 0: True}
    assert bench.compare_runs({**repeat, "overrides": {"gps": {"iterations": 1}}}, old) == {}
