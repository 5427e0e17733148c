"""The README's main job as a user runs it, checked against the issue's acceptance: `mbpl launch
configs/reacher2_sim.yaml` (10 iterations × 5 samples, real nodes over DDS, MuJoCo in lockstep) brings the
end effector within 1 mm of the target on every condition, as the README promises (the run reaches
0.1-0.3 mm; the issue's original acceptance was 2 cm); and the graph in lockstep is deterministic: two runs
with the same seed record byte-identical samples (the demo's own first iteration against a second,
one-iteration run)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

pytest.importorskip("mbpl_msgs.srv")

# pytest's default (prepend) import mode puts this folder on sys.path
from test_sim_in_the_loop import CONFIG, REPO, graph_env  # noqa: E402

from mbpl_ros.recording import SampleStore, decode_with_rosbags, read_bag  # noqa: E402

SUCCESS_DISTANCE = 0.001  # m: the README's "reaches all four targets to < 1 mm"


def launch(tmp: Path, run_dir: Path, *sets: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mbpl_ros.cli", "launch", str(CONFIG), "--run-dir", str(run_dir)]
    for s in sets:
        cmd += ["--set", s]
    done = subprocess.run(cmd, env=graph_env(tmp), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One ``mbpl launch configs/reacher2_sim.yaml`` with the shipped settings, shared by the tests."""
    tmp = tmp_path_factory.mktemp("demo")
    launch(tmp, tmp / "run")
    yield tmp / "run"


def test_demo_reaches_every_target_within_ten_iterations(demo_run: Path) -> None:
    history = json.loads((demo_run / "history.json").read_text())
    assert len(history) <= 10
    final = history[-1]["eval_final_distance"]  # noise-free trial of each condition's final controller
    assert len(final) == 4 and max(final) < SUCCESS_DISTANCE, f"final distances {final}"
    assert SampleStore(demo_run).count() == len(history) * 4 * 5


def test_two_lockstep_runs_record_identical_samples(demo_run: Path, tmp_path: Path) -> None:
    # the second run stops after one iteration: its bags must equal the demo's first iteration's
    runs = [demo_run, tmp_path / "b"]
    launch(tmp_path, runs[1], "algorithm.iterations=1")
    bags = [sorted((run / "bags" / "iteration_000").rglob("*.mcap")) for run in runs]
    assert len(bags[0]) == len(bags[1]) == 4
    assert not (runs[1] / "bags" / "iteration_001").exists()
    for a, b in zip(*bags, strict=True):
        assert a.relative_to(runs[0]) == b.relative_to(runs[1])
        samples_a = [raw for _, raw in read_bag(a.parent)]
        samples_b = [raw for _, raw in read_bag(b.parent)]
        assert len(samples_a) == 5
        # Header stamps and trial ids hold wall-clock/session parts; the trajectories must match exactly.
        for ra, rb in zip(samples_a, samples_b, strict=True):
            ma, mb = decode_with_rosbags(ra), decode_with_rosbags(rb)
            assert ma.seed == mb.seed and ma.condition == mb.condition
            assert (ma.x == mb.x).all() and (ma.u == mb.u).all()
