"""`mbpl launch` in the modes the README promises beyond the lockstep demo, end to end over real DDS:

* real time (``ros.lockstep=false``): the sim node steps against wall-clock deadlines and the sampler runs
  its deadline thread; one short iteration trains, every sample is recorded, and each trial lasts at least
  its horizon in wall time (a lockstep trial takes a fraction of it: real time cannot be faster);
* ``arm7_peg`` with MDGPS through the graph (the 7-DoF arm, the peg scene's mocap block, a 26-D state):
  two iterations to the end, every sample in the bags, a policy checkpoint, the LG controllers' cost down.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")

# pytest's default (prepend) import mode puts this folder on sys.path
from test_sim_in_the_loop import graph_env as sim_in_the_loop_env  # noqa: E402

from mbpl_ros.cli import effective_config  # noqa: E402
from mbpl_ros.recording import SampleStore, decode_with_rosbags, read_bag  # noqa: E402
from mbpl_sim.experiment import load_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 600.0
NODES = ("sampler", "fitting", "ilqr", "trainer")


def graph_env(tmp: Path) -> dict[str, str]:
    # a domain range of its own (tests/ros: 1-100, test_sim_in_the_loop: 110-189, test_gps_graph: 190-229;
    # Fast DDS's default ports allow ids up to 232)
    return sim_in_the_loop_env(tmp, domain_base=101, domains=9)


@pytest.fixture
def tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mbpl-e2e-modes-") as folder:
        yield Path(folder)


def _launch(tmp: Path, config: Path, sets: list[str]) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp / "run"
    path, _ = effective_config(config, sets + [f"ros.nodes.{n}.run_dir={run_dir}" for n in NODES], run_dir)
    cmd = [sys.executable, "-m", "mbpl_ros.cli", "launch", str(path), "--run-dir", str(run_dir)]
    done = subprocess.run(cmd, env=graph_env(tmp), cwd=REPO, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    return run_dir, done


def _samples(run_dir: Path) -> list[object]:
    return [decode_with_rosbags(raw) for bag in sorted((run_dir / "bags").glob("iteration_*/condition_*"))
            for _, raw in read_bag(bag)]


def test_realtime_launch_trains_an_iteration_at_wall_clock_pace(tmp: Path) -> None:
    iterations, samples = 1, 2
    run_dir, _ = _launch(tmp, REPO / "configs" / "reacher2_sim.yaml",
                         ["ros.lockstep=false", f"algorithm.iterations={iterations}",
                          f"algorithm.samples_per_condition={samples}"])
    experiment = load_experiment(run_dir / "config.yaml")
    conditions, T, dt = len(experiment.conditions("train")), experiment.task.T, experiment.task.dt
    assert SampleStore(run_dir).count() == iterations * conditions * samples
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["iteration"] for r in history] == [0]
    recorded = _samples(run_dir)
    assert len(recorded) == iterations * conditions * samples
    for msg in recorded:
        assert not msg.aborted and msg.t_steps == T
        # T commands at the control period: at least (T − 1)·dt of wall time from the first to the last.
        assert msg.end_time - msg.start_time >= 0.95 * (T - 1) * dt, (msg.start_time, msg.end_time)


def test_arm7_peg_with_mdgps_through_the_graph(tmp: Path) -> None:
    pytest.importorskip("torch")
    iterations, samples = 2, 5
    run_dir, done = _launch(tmp, REPO / "configs" / "arm7_peg.yaml",
                            ["method=mdgps", f"algorithm.iterations={iterations}",
                             f"algorithm.samples_per_condition={samples}", "gps.iterations=300",
                             "gps.device=cpu"])
    experiment = load_experiment(run_dir / "config.yaml")
    assert experiment.task.scene == "peg" and experiment.layout.dX == 26
    conditions = len(experiment.conditions("train"))
    assert SampleStore(run_dir).count() == iterations * conditions * samples
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["iteration"] for r in history] == list(range(iterations))
    assert all(len(r["policy_tip_distance"]) == conditions for r in history)
    assert (run_dir / "policy" / "policy.npz").is_file()
    first, last = (sum(r["mean_cost"]) / conditions for r in (history[0], history[-1]))
    assert last < first, f"LG cost did not decrease: {first:.4g} → {last:.4g}"
    assert "GPS: S-step of iteration 1" in (run_dir / "logs" / "trainer.log").read_text()  # log only
