"""The ``mbpl`` command.

* ``mbpl launch CONFIG [--set key=value ...] [--run-dir DIR] [-v]`` — start the ROS 2 graph of an
  experiment (sim node, sampler, the method's learning nodes, trainer) with the bringup's process
  launcher. The console shows a progress line per iteration, the nodes' warnings and errors and the
  summary (a live progress bar on a terminal); ``-v`` every node line. All of it is in the node logs.
* ``mbpl train CONFIG [--set key=value ...] [--iterations N] [--run-dir DIR]`` —
  the experiment's method (LQR-FLM, MDGPS, PETS) in one process over the MuJoCo environment (no ROS),
  the way algorithms are benchmarked and debugged.
* ``mbpl eval CONFIG --policy CHECKPOINT [--conditions held_out|train|validation] [--render] [--graph]``
  — roll a saved policy out in simulation (no trainer needed) and report success and final distances; with
  ``--graph`` through the ROS 2 nodes instead: the sim node and the sampler alone, the sampler loading
  the checkpoint (numpy only) and running one noiseless RunTrial(policy_kind="policy") per condition.

``--set`` overrides one key of the experiment YAML with a dotted path and a YAML value, e.g.
``--set algorithm.iterations=3 --set ros.lockstep=false``. The effective configuration is written to
``<run-dir>/config.yaml`` and that file is what the nodes read.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mbpl_core.config import ConfigError

EXIT_USAGE = 2


def apply_overrides(raw: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """A copy of ``raw`` with each ``dotted.key=yaml_value`` assignment applied (missing levels created)."""
    out = copy.deepcopy(raw)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {assignment!r}: value is not valid YAML: {err}") from err
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {assignment!r}: {where} is a {type(child).__name__}, not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def effective_config(
    config: str | Path, assignments: Sequence[str], run_dir: Path, strict: bool = False,
    log: bool = False, graph: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Read CONFIG, apply ``--set`` overrides, check it, write ``run_dir/config.yaml``; (its path, the dict).

    Everything is checked before the run folder exists (:func:`mbpl_sim.checks.prepare_run`: every
    section, the robot's names, frames, meshes, contacts, limits and targets; ``strict``: warnings are
    errors): paths become absolute against CONFIG's folder, so the copy in run_dir still finds the robot,
    and the robot-scaled defaults are written out. ``log`` prints the check's notes and warnings;
    ``graph``: the method must be one the ROS graph runs (``mbpl launch``).
    """
    from mbpl_ros.bringup import RosSection
    from mbpl_sim.checks import prepare_run

    source = Path(config)
    if not source.is_file():
        raise ConfigError(f"experiment file {str(source)!r} not found")
    try:
        raw = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    raw = apply_overrides(raw, assignments)
    from mbpl_core.config import from_dict

    from_dict(RosSection, dict(raw.get("ros") or {}), "ros")  # train rejects ros: typos as launch does
    prepared = prepare_run(raw, source.resolve().parent, str(source.resolve()), strict=strict)
    if log:
        for line in prepared.log_lines():
            print(f"[mbpl] {line}", flush=True)
    raw = prepared.raw
    if graph:
        from mbpl_ros.bringup import METHOD_NODES

        method = str(raw.get("method") or "lqr_flm")
        if method not in METHOD_NODES:
            raise ConfigError(f"method: {method!r} does not run through the graph; graph methods: "
                              f"{list(METHOD_NODES)} (the others run in one process: mbpl train)")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, raw


# which robots run it and whether they restart: not what is learned (lockstep, node parameters such as
# the sampler's bounds or the trainer's evaluation are)
RESUMABLE_FREELY = ("ros.robots", "ros.robot_conditions", "ros.respawn")
# how long it runs: a finished run may be extended (gps.iterations, Adam steps per S-step, is not one)
RUN_LENGTHS = ("algorithm.iterations", "pets.iterations", "sac.iterations", "mbpo.iterations",
               "bptt.iterations")


def _started_run_settings(run_dir: Path) -> dict[str, Any] | None:
    """The settings of the run already in ``run_dir`` (its config.yaml once a trainer checkpointed), else
    None."""
    config = run_dir / "config.yaml"
    if not (run_dir / "trainer_state.json").exists() or not config.exists():
        return None
    return yaml.safe_load(config.read_text()) or {}


def settings_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two experiment mappings (the robots and the run lengths
    ignored; a key set on one side only differs, except those)."""
    if prefix in RUN_LENGTHS or prefix in RESUMABLE_FREELY:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key in old and key in new:
                out += settings_diff(old[key], new[key], name)
            elif name not in RUN_LENGTHS and name not in RESUMABLE_FREELY:
                out.append(name)
        return out
    return [] if old == new else [prefix or "(top)"]


def _default_run_dir(config: str, mode: str) -> Path:
    return Path("runs") / f"{Path(config).stem}-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_launch(args: argparse.Namespace) -> int:
    """Start the node graph of the experiment and supervise it; exit code of the trainer.

    The console shows one progress line per iteration, the nodes' warnings and errors and the summary;
    ``--verbose`` every node line (all of them are in ``<run_dir>/logs/<node>.log`` either way).
    ``--only robot|learner`` starts the part of the graph that belongs on one host (README: several
    hosts); both parts need the same ``--run-token`` (or ``MBPL_RUN_TOKEN``).
    """
    from mbpl_ros.bringup import ProcessLauncher, graph_from_experiment, new_run_token
    from mbpl_sim.evaluate import DEFAULT_SUCCESS_THRESHOLD

    token = args.run_token or os.environ.get("MBPL_RUN_TOKEN", "")
    if args.only and not token:
        raise ConfigError("--only needs the run's token, the same on every host: --run-token TOKEN or "
                          "MBPL_RUN_TOKEN (draw one with: python -c 'import secrets; "
                          "print(secrets.token_hex(16))'; keep it private)")
    if token and (len(token) < 16 or not token.isalnum()):
        raise ConfigError("--run-token: at least 16 letters or digits (e.g. secrets.token_hex(16))")
    run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(args.config, "launch")
    previous = _started_run_settings(run_dir)
    path, raw = effective_config(args.config, args.set, run_dir, args.strict, log=True, graph=True)
    if previous is not None:
        changed = settings_diff(previous, raw)
        if changed:
            path.write_text(yaml.safe_dump(previous, sort_keys=False))  # the run keeps what it ran with
            raise ConfigError(f"{run_dir} holds a run started with other settings ({', '.join(changed[:8])}"
                              f"{', …' if len(changed) > 8 else ''} differ): resuming would mix them; "
                              "launch with the same settings or use another --run-dir")
        print(f"[mbpl] resuming the run in {run_dir} (same settings)", flush=True)
    specs = graph_from_experiment(path, raw, run_dir=run_dir, run_token=token or new_run_token(),
                                  only=args.only)
    part = f" ({args.only} side)" if args.only else ""
    print(f"[mbpl] run folder {run_dir}; nodes{part}: {', '.join(s.label for s in specs)}; node logs in "
          f"{run_dir / 'logs'}", flush=True)
    if args.only == "robot":
        print("[mbpl] the robot side runs until Ctrl-C (the trainer on the learning host drives it)",
              flush=True)
    scene = str((raw.get("task") or {}).get("scene", "reach"))
    return ProcessLauncher(specs, run_dir, verbose=args.verbose,
                           success_distance=DEFAULT_SUCCESS_THRESHOLD.get(scene, 0.02)).run()


def _load(args: argparse.Namespace, mode: str) -> tuple[Path, Any]:
    from mbpl_sim.experiment import experiment_from_dict

    run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(args.config, mode)
    path, raw = effective_config(args.config, args.set, run_dir, args.strict, log=True)
    return run_dir, experiment_from_dict(raw, base_dir=path.parent, source=str(path))


def cmd_train(args: argparse.Namespace) -> int:
    """The experiment's ``method`` in one process over MujocoEnv; see mbpl_sim.training."""
    from mbpl_sim.training import train_in_process

    run_dir, experiment = _load(args, "train")
    train_in_process(experiment, run_dir, args.iterations, log=lambda line: print(line, flush=True))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Roll a saved policy (checkpoint) out on chosen conditions in simulation; exit 0 iff all succeed
    when --require-success is given, else 0."""
    from mbpl_core.policy import load_policy_checkpoint
    from mbpl_sim.evaluate import evaluate_in_sim, write_result

    checkpoint = Path(args.policy)
    if not checkpoint.exists():  # before the run folder exists: a typo leaves nothing behind
        raise ConfigError(f"--policy {str(checkpoint)!r}: no such checkpoint")
    run_dir, experiment = _load(args, "eval")
    render_dir = run_dir / "videos" if args.render else None
    if args.graph:
        if args.render:
            raise ConfigError("--render works in-process only (without --graph)")
        try:
            result = evaluate_in_graph(experiment, run_dir, checkpoint, args.conditions, args.only,
                                       args.threshold)
        except RuntimeError as err:  # a node did not come up, refused or aborted a trial
            print(f"mbpl eval --graph: {err}", file=sys.stderr)
            return 1
    else:
        policy, _ = load_policy_checkpoint(checkpoint)
        result = evaluate_in_sim(experiment, policy, args.conditions, args.only, args.threshold, render_dir)
    print(result.summary(), flush=True)
    write_result(result, run_dir / "evaluation.json")
    videos = f" and videos in {render_dir}" if render_dir else ""
    print(f"[mbpl] wrote {run_dir / 'evaluation.json'}{videos}", flush=True)
    return 1 if args.require_success and not bool(np.all(result.success)) else 0


def evaluate_in_graph(experiment: Any, run_dir: Path, checkpoint: Path, condition_set: str = "held_out",
                      only: Sequence[int] | None = None, threshold: float | None = None,
                      trial_timeout: float = 60.0) -> Any:
    """Noiseless policy trials through the graph: sim node + sampler (policy_checkpoint), one per condition
    (with ``ros.sim_link: in_process`` the sampler alone, simulating).

    Both nodes get ``condition_set``; their output goes to ``<run_dir>/graph.log``. Returns an
    mbpl_sim.evaluate.EvaluationResult from the samples' last states (tip = first ee point).
    """
    import threading

    from mbpl_ros.bringup import NodeSpec, ProcessLauncher, graph_from_experiment, new_run_token
    from mbpl_sim.evaluate import DEFAULT_SUCCESS_THRESHOLD, EvaluationResult

    count = len(experiment.conditions(condition_set))
    chosen = tuple(range(count)) if only is None else tuple(int(c) for c in only)
    if not chosen or any(not 0 <= c < count for c in chosen):
        raise ConfigError(f"conditions {list(chosen)} out of range: the {condition_set!r} set has {count}")
    extra = {"sim": {"condition_set": condition_set},
             "sampler": {"condition_set": condition_set, "policy_checkpoint": str(checkpoint.resolve())}}
    token = new_run_token()
    raw = yaml.safe_load(Path(experiment.source).read_text()) or {}
    ros = dict(raw.get("ros") or {})
    ros.pop("robot_conditions", None)
    raw["ros"] = ros | {"robots": 1}  # one sim and one sampler, whatever the run had
    specs = [NodeSpec(s.name, s.module, {**s.parameters, **extra[s.name]})
             for s in graph_from_experiment(experiment.source, raw, run_dir=run_dir, run_token=token)
             if s.name in extra]
    if len(specs) != (1 if ros.get("sim_link") == "in_process" else 2):  # in_process: the sampler alone
        raise ConfigError("--graph needs the sim node (ros.sim: true)")
    with open(run_dir / "graph.log", "w") as log:
        launcher = ProcessLauncher(specs, run_dir, out=log)
        supervisor = threading.Thread(target=launcher.run, name="graph", daemon=True)
        supervisor.start()
        try:
            batches = _policy_trials(chosen, trial_timeout, token)
        finally:
            launcher.shutdown()
            supervisor.join(timeout=30.0)
    layout = experiment.layout
    points = [np.linalg.norm(b.X[0, -1, layout.ee_points].reshape(-1, 3), axis=1) for b in batches]
    if threshold is None:
        threshold = DEFAULT_SUCCESS_THRESHOLD.get(experiment.task.scene, 0.02)
    return EvaluationResult(condition_set, chosen, np.array([p[0] for p in points]),
                            np.array([p.mean() for p in points]), float(threshold))


def _policy_trials(conditions: Sequence[int], timeout: float, run_token: str = "") -> list[Any]:
    """RunTrial(policy_kind="policy", no noise) per condition, each sample awaited on mbpl/samples."""
    import rclpy
    from mbpl_msgs.msg import TrajectorySample
    from mbpl_msgs.srv import RunTrial
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    from mbpl_ros.conversions import msg_to_sample

    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("mbpl_eval", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    samples: dict[int, Any] = {}
    node.create_subscription(TrajectorySample, "mbpl/samples",
                             lambda msg: samples.setdefault(int(msg.trial_id), msg),
                             QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    client = node.create_client(RunTrial, "mbpl/run_trial")

    def spin_until(done: Any, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {timeout:g} s (see graph.log in the run folder)")
            executor.spin_once(timeout_sec=0.05)
        return done()

    try:
        out = []
        for trial, condition in enumerate(conditions, start=1):
            request = RunTrial.Request(condition=condition, trial_id=trial, policy_kind="policy",
                                       add_noise=False, run_token=run_token)
            spin_until(client.service_is_ready, "sampler service")
            future = client.call_async(request)
            answer = spin_until(lambda f=future: f.done() and f.result(), f"answer to trial {trial}")
            if not answer.accepted:
                raise RuntimeError(f"the sampler refused condition {condition}: {answer.message}")
            msg = spin_until(lambda t=trial: samples.get(t), f"sample of trial {trial}")
            if msg.aborted:
                raise RuntimeError(f"the trial of condition {condition} aborted: {msg.abort_reason}")
            out.append(msg_to_sample(msg)[0])
        return out
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


def cmd_security(args: argparse.Namespace) -> int:
    """``mbpl security check``: exit 0 if SROS2 can be enabled with the installed Fast DDS, else 1."""
    from mbpl_ros.dds_security import check

    return check()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mbpl`` (sub-commands launch, train, eval, security)."""
    from mbpl_sim.experiment import METHODS

    parser = argparse.ArgumentParser(prog="mbpl", description="Model-based policy learning on ROS 2.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("launch", cmd_launch, "start the ROS 2 node graph of an experiment"),
        ("train", cmd_train, f"run the experiment's method ({', '.join(METHODS)}) in one process (MuJoCo)"),
        ("eval", cmd_eval, "roll a saved policy out in simulation and report success and distances"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", help="experiment YAML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a dotted key of the experiment file (repeatable)")  # fmt: skip
        p.add_argument("--run-dir", default=None, help="output folder (default runs/<config>-<mode>-<time>)")
        p.add_argument("--strict", action="store_true",
                       help="refuse to start on any warning of the robot check (reach, limits, contacts)")
        p.set_defaults(func=func)
    security = sub.add_parser(
        "security", help="DDS security (SROS2) support of the installed Fast DDS",
        description="check: whether the installed Fast DDS has the DDS security plugins")
    security.add_argument("action", choices=["check"])
    security.set_defaults(func=cmd_security)
    sub.choices["launch"].add_argument(
        "--only", choices=["robot", "learner"], default=None,
        help="start only the robot side (sims or drivers' samplers) or only the learner side (learning "
             "nodes and trainer), for graphs spread over hosts; needs --run-token")
    sub.choices["launch"].add_argument(
        "--run-token", default="", metavar="TOKEN",
        help="the run's token (default: a fresh one per launch; with --only the same on every host)")
    sub.choices["launch"].add_argument(
        "-v", "--verbose", action="store_true",
        help="show every node line live (default: one progress line per iteration, warnings, errors and "
             "the summary; every line is in <run-dir>/logs/<node>.log either way)")
    train = sub.choices["train"]
    train.add_argument("--iterations", type=int, default=None, help="default: algorithm.iterations")
    ev = sub.choices["eval"]
    ev.add_argument("--policy", required=True, help="policy checkpoint folder (or its policy.npz)")
    ev.add_argument("--conditions", default="held_out", choices=["held_out", "train", "validation"],
                    help="condition set (default held_out)")
    ev.add_argument("--only", type=int, nargs="+", default=None, help="condition indices (default: all)")
    ev.add_argument("--threshold", type=float, default=None,
                    help="success distance of the tip in m (default: 0.01 peg, 0.02 reach)")
    ev.add_argument("--render", action="store_true", help="write a GIF and PNG strip per rollout")
    ev.add_argument("--require-success", action="store_true", help="exit 1 unless every condition succeeds")
    ev.add_argument("--graph", action="store_true",
                    help="run the policy through the sim node and the sampler (ROS 2) instead of in-process")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mbpl`` command; returns the exit code (2 for usage/configuration errors)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as err:
        print(f"mbpl {args.command}: configuration error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
