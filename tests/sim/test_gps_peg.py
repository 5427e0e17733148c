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
