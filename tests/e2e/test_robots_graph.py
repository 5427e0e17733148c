"""Several robots through the real graph: ``mbpl launch configs/reacher2_sim.yaml --set ros.robots=2``.

Separate processes over DDS in an isolated domain, MuJoCo in lockstep. Oracles: in lockstep a trial's
sample depends only on its request (controller, condition, noise seed), so two robots must give the one
robot's run exactly — every recorded sample's arrays and metadata, every history figure — whichever robot
ran which trial; with one of the two samplers SIGKILLed mid-iteration the run still ends (exit 0) with
those same samples, none missing and none twice, and the trainer says which trial it queued again; and
the graph split over two launches (``--only robot`` / ``--only learner`` with one token, as on two hosts)
learns the same; and samplers that step MuJoCo themselves (``ros.sim_link: in_process``) learn the same.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.sim, pytest.mark.slow]

pytest.importorskip("rclpy")
pytest.importorskip("mbpl_msgs.srv")

# pytest's default (prepend) import mode puts this folder on sys.path
from test_sim_in_the_loop import CONFIG, REPO, graph_env  # noqa: E402

from mbpl_ros.recording import SampleStore  # noqa: E402
from mbpl_ros.trainer_transport import decode_sample  # noqa: E402

SETS = ["algorithm.iterations=2", "algorithm.samples_per_condition=3"]
CONDITIONS, SAMPLES, ITERATIONS = 4, 3, 2
TOKEN = "0123456789abcdef0123456789abcdef"


def _launch(run_dir: Path, env: dict[str, str], *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "mbpl_ros.cli", "launch", str(CONFIG), "--run-dir", str(run_dir)]
    for s in SETS:
        cmd += ["--set", s]
    return cmd + list(extra)


def _samples(run_dir: Path) -> dict[tuple[int, int, int], tuple]:
    """Every recorded sample by (iteration, condition, index): X, U and what the request fixed."""
    store = SampleStore(run_dir)
    out = {}
    for i in range(ITERATIONS):
        for m in range(CONDITIONS):
            for index, raw in store.samples(i, m).items():
                r = decode_sample(raw)
                out[(i, m, index)] = (r.batch.X.tobytes(), r.batch.U.tobytes(), r.meta.seed,
                                      r.meta.controller_id, r.meta.condition)
    return out


def _figures(run_dir: Path) -> list[dict]:
    history = json.loads((run_dir / "history.json").read_text())
    keys = ("mean_cost", "mean_final_distance", "controller_ids", "eta", "kl", "step_mult",
            "eval_final_distance")
    return [{k: r[k] for k in keys} for r in history]


@pytest.fixture(scope="module")
def one_robot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("one")
    done = subprocess.run(_launch(tmp / "run", graph_env(tmp)), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return tmp / "run"


def _check_same_run(run_dir: Path, reference: Path) -> None:
    assert SampleStore(run_dir).count() == ITERATIONS * CONDITIONS * SAMPLES
    mine, theirs = _samples(run_dir), _samples(reference)
    assert len(mine) == ITERATIONS * CONDITIONS * SAMPLES and mine.keys() == theirs.keys()
    different = [key for key in mine if mine[key] != theirs[key]]
    assert not different, f"samples differ from the one-robot run: {different[:5]}"
    assert _figures(run_dir) == _figures(reference)


def test_two_robots_sample_in_parallel_and_learn_exactly_what_one_does(tmp_path: Path,
                                                                        one_robot: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(_launch(run_dir, graph_env(tmp_path), "--set", "ros.robots=2"), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    ran = {ns: len(re.findall(r"\]: trial \d+ \(condition \d+\) done", (run_dir / "logs" / ns / "sampler.log")
                              .read_text())) for ns in ("robot0", "robot1")}
    assert all(n > 0 for n in ran.values()), ran   # both robots sampled
    assert sum(ran.values()) == ITERATIONS * CONDITIONS * (SAMPLES + 1)   # + the noiseless evaluations
    _check_same_run(run_dir, one_robot)


@pytest.mark.parametrize("robots", [1, 2])
def test_samplers_with_mujoco_in_process_learn_exactly_what_the_sim_nodes_give(
        tmp_path: Path, one_robot: Path, robots: int) -> None:
    """ros.sim_link: in_process (no sim node, no message per control step) is the same physics: the run
    equals the sim-node run sample for sample, with one robot and with two."""
    run_dir = tmp_path / "run"
    extra = ["--set", "ros.sim_link=in_process", "--set", f"ros.robots={robots}"]
    done = subprocess.run(_launch(run_dir, graph_env(tmp_path), *extra), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    logs = run_dir / "logs"
    assert not list(logs.rglob("sim.log")), "no sim node runs with the in-process link"
    assert all("MuJoCo in process" in p.read_text() for p in logs.rglob("sampler.log"))
    assert len(list(logs.rglob("sampler.log"))) == robots
    _check_same_run(run_dir, one_robot)


def _sampler_pid(namespace: str) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mbpl_ros.sampler_node" in cmd and f"__ns:=/{namespace}".encode() in cmd:
            return int(proc.name)
    return None


def _iteration_of(trial: int) -> int:
    return (trial // (100 * 1000 * 1000)) % 10_000   # trainer_logic.trial_id's digits


def test_a_killed_sampler_loses_only_its_trial_to_the_other_robot(tmp_path: Path, one_robot: Path) -> None:
    run_dir = tmp_path / "run"
    env = graph_env(tmp_path)
    proc = subprocess.Popen(_launch(run_dir, env, "--set", "ros.robots=2"), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log = run_dir / "logs" / "robot1" / "sampler.log"
    deadline, killed = time.monotonic() + 300, None
    try:
        while killed is None and time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text() if log.exists() else ""
            trials = [int(t) for t in re.findall(r"\]: trial (\d+) \(condition \d+\) done", text)]
            if any(_iteration_of(t) == 1 for t in trials):   # robot1 is sampling iteration 1: kill it
                pid = _sampler_pid("robot1")
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
            time.sleep(0.01)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "robot1 never sampled iteration 1"
    assert proc.returncode == 0, out[-6000:]
    assert "robot1/sampler died with exit code 137: the graph goes on without it" in out
    trainer_log = (run_dir / "logs" / "trainer.log").read_text()
    assert "lost on robot robot1" in trainer_log and "queued again for another robot" in trainer_log
    _check_same_run(run_dir, one_robot)


def test_robot_and_learner_sides_launched_apart_learn_the_same(tmp_path: Path, one_robot: Path) -> None:
    env = graph_env(tmp_path)
    robot_side = subprocess.Popen(_launch(tmp_path / "robot", env, "--only", "robot", "--run-token", TOKEN),
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        learner = subprocess.run(_launch(tmp_path / "run", env, "--only", "learner", "--run-token", TOKEN),
                                 cwd=REPO, capture_output=True, text=True, timeout=600)
        assert learner.returncode == 0, learner.stdout[-6000:] + learner.stderr[-3000:]
        assert robot_side.poll() is None   # the robot side runs on until it is stopped
    finally:
        robot_side.send_signal(signal.SIGINT)
        out, _ = robot_side.communicate(timeout=60)
    assert robot_side.returncode == 128 + signal.SIGINT, out[-3000:]
    assert sorted(p.name for p in (tmp_path / "run" / "logs").iterdir()) == ["fitting.log", "ilqr.log",
                                                                           "trainer.log"]
    _check_same_run(tmp_path / "run", one_robot)
    assert np.isfinite(_figures(tmp_path / "run")[-1]["mean_cost"]).all()


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair only (10.231.<k>.1 and .2): two hosts as far as the
    network goes — separate loopbacks, no route between them but the link. Needs root and iproute2."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag, subnet = os.getpid() % 100_000, 10 + os.getpid() % 200
    hosts = [(f"mbpl_host_a_{tag}", f"10.231.{subnet}.1", f"mbpla{tag}"),
             (f"mbpl_host_b_{tag}", f"10.231.{subnet}.2", f"mbplb{tag}")]

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)

    try:
        for name, _, _ in hosts:
            ip("netns", "add", name)
        ip("link", "add", hosts[0][2], "type", "veth", "peer", "name", hosts[1][2])
        for name, address, link in hosts:
            ip("link", "set", link, "netns", name)
            ip("-n", name, "addr", "add", f"{address}/24", "dev", link)
            ip("-n", name, "link", "set", "lo", "up")
            ip("-n", name, "link", "set", link, "up")
            ip("-n", name, "route", "add", "224.0.0.0/4", "dev", link)  # DDS discovery's multicast
    except subprocess.CalledProcessError as err:
        for name, _, _ in hosts:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        pytest.skip(f"cannot make network namespaces here: {err.stderr.strip()}")
    yield [(name, address) for name, address, _ in hosts]
    for name, _, _ in hosts:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def test_robot_and_learner_on_two_network_isolated_hosts_learn_the_same(tmp_path: Path, one_robot: Path,
                                                                        two_hosts: list) -> None:
    """The README's two-host set-up, with the hosts' networks made in the test: the robot side in one
    network namespace, the learner in the other, discovery over the subnet with static peers, DDS over
    UDP only (no shared memory between the two), one run token. Same run as the whole graph on one host."""
    (host_a, ip_a), (host_b, ip_b) = two_hosts
    env = graph_env(tmp_path) | {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
                                 "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}
    robot_cmd = _launch(tmp_path / "robot", env, "--only", "robot", "--run-token", TOKEN)
    learner_cmd = _launch(tmp_path / "run", env, "--only", "learner", "--run-token", TOKEN)
    robot_side = subprocess.Popen(["ip", "netns", "exec", host_a, *robot_cmd], cwd=REPO, text=True,
                                  env=env | {"ROS_STATIC_PEERS": ip_b}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
    try:
        learner = subprocess.run(["ip", "netns", "exec", host_b, *learner_cmd], cwd=REPO, text=True,
                                 env=env | {"ROS_STATIC_PEERS": ip_a}, capture_output=True, timeout=600)
        assert learner.returncode == 0, learner.stdout[-6000:] + learner.stderr[-3000:]
    finally:
        robot_side.send_signal(signal.SIGINT)
        out, _ = robot_side.communicate(timeout=60)
    assert robot_side.returncode == 128 + signal.SIGINT, out[-3000:]
    _check_same_run(tmp_path / "run", one_robot)
