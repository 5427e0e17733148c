"""A seed means the same run: two `mbpl train` processes of the same short MDGPS experiment, one with the
machine's default thread counts and one with every math library on one thread, give bit-identical
samples, controllers, fitted dynamics state and policy weights (timings excepted).

Thread counts are the one machine property a test can vary here; results that moved with them would
differ between machines of the same kind with other core counts.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.sim]

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "reacher2_sim.yaml"
TIMING_SUFFIX = "_s"  # reports' wall-clock fields (sampling_s, c_step_s, ...)
TIMING_KEYS = ("timings", "planning_ms_p50", "planning_ms_p99")  # wall-clock figures


METHOD_SETS = {
    "mdgps": ["--iterations", "2", "--set", "method=mdgps", "--set", "gps.iterations=200",
              "--set", "algorithm.samples_per_condition=3"],
    # PETS: one model fit, MPC trials, and one DAgger round of the distillation
    "pets": ["--iterations", "1", "--set", "method=pets", "--set", "pets.planner.population=50",
             "--set", "pets.planner.horizon=8", "--set", "pets.model.max_epochs=10",
             "--set", "pets.distill.rounds=1", "--set", "pets.distill.policy.iterations=100"],
}


def _train(run_dir: Path, env_extra: dict[str, str], method: str) -> None:
    env = dict(os.environ) | env_extra
    cmd = [sys.executable, "-m", "mbpl_ros.cli", "train", str(CONFIG), "--run-dir", str(run_dir),
           *METHOD_SETS[method]]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two pickled states differ (arrays bit for bit, objects through their __dict__)."""
    import torch

    if type(a) is not type(b):
        return [f"{path}: type {type(a).__name__} != {type(b).__name__}"]
    if isinstance(a, np.ndarray):
        same = a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
        return [] if same else [path]
    if isinstance(a, torch.Tensor):
        return [] if torch.equal(a, b) else [path]
    if isinstance(a, torch.Generator):
        return differences(a.get_state(), b.get_state(), path)
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys differ"]
        return [d for k in a for d in differences(a[k], b[k], f"{path}/{k}")
                if not (str(k).endswith(TIMING_SUFFIX) or k in TIMING_KEYS)]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, np.random.Generator):
        return differences(a.bit_generator.state, b.bit_generator.state, path)
    if hasattr(a, "__dict__") or hasattr(a, "__slots__"):
        state_a = getattr(a, "__dict__", None) or {s: getattr(a, s) for s in a.__slots__}
        state_b = getattr(b, "__dict__", None) or {s: getattr(b, s) for s in b.__slots__}
        return differences(state_a, state_b, path)
    if isinstance(a, float) and np.isnan(a) and np.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("method", ["mdgps", pytest.param("pets", marks=pytest.mark.slow)])
def test_same_seed_same_run_in_separate_processes_and_thread_counts(tmp_path: Path, method: str) -> None:
    one_thread = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    _train(tmp_path / "a", {}, method)
    _train(tmp_path / "b", one_thread, method)
    states = [pickle.loads((tmp_path / r / "algorithm_state.pkl").read_bytes()) for r in ("a", "b")]
    assert not differences(*states)
    # the comparison is not vacuous: the state holds the samples (and controllers or model weights)
    assert sum(v.size for v in _arrays(states[0]) if isinstance(v, np.ndarray)) > 1000
    policies = [np.load(tmp_path / r / "policy" / "policy.npz") for r in ("a", "b")]
    assert sorted(policies[0].files) == sorted(policies[1].files)
    for key in policies[0].files:
        assert policies[0][key].tobytes() == policies[1][key].tobytes(), key


def _arrays(obj: Any, depth: int = 0) -> list[np.ndarray]:
    if depth > 6:
        return []
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, dict):
        return [a for v in obj.values() for a in _arrays(v, depth + 1)]
    if isinstance(obj, (list, tuple)):
        return [a for v in obj for a in _arrays(v, depth + 1)]
    if hasattr(obj, "__dict__"):
        return _arrays(vars(obj), depth + 1)
    return []


def test_differences_finds_a_single_changed_bit() -> None:
    a = {"x": [np.arange(5.0)], "t_s": 1.0}
    b = {"x": [np.arange(5.0)], "t_s": 2.0}
    assert not differences(a, b)
    b["x"][0][3] = np.nextafter(3.0, 4.0)
    assert differences(a, b) == ["/x[0]"]
