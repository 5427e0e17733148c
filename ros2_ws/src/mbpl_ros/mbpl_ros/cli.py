"""The ``mbpl`` command.

* ``mbpl launch CONFIG [--set key=value ...] [--run-dir DIR]`` — start the ROS 2 graph of an experiment
  (sim node, sampler, fitting, ilqr, trainer) with the bringup's process launcher.
* ``mbpl train CONFIG [--set key=value ...] [--iterations N] [--run-dir DIR]`` — LQR-FLM in one process
  over the MuJoCo environment (no ROS), the way algorithms are benchmarked and debugged.
* ``mbpl eval`` — not implemented yet.

``--set`` overrides one key of the experiment YAML with a dotted path and a YAML value, e.g.
``--set algorithm.iterations=3 --set ros.lockstep=false``. The effective configuration is written to
``<run-dir>/config.yaml`` and that file is what the nodes read.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    config: str | Path, assignments: Sequence[str], run_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """Read CONFIG, apply ``--set`` overrides, write ``run_dir/config.yaml``; returns (its path, the dict).

    A relative robot.description that exists next to CONFIG is made absolute, so the copy in run_dir
    still finds the robot.
    """
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
    robot = raw.get("robot")
    if isinstance(robot, dict) and isinstance(robot.get("description"), str):
        candidate = source.resolve().parent / robot["description"]
        if not Path(robot["description"]).is_absolute() and candidate.exists():
            robot["description"] = str(candidate)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, raw


def _default_run_dir(config: str, mode: str) -> Path:
    return Path("runs") / f"{Path(config).stem}-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_launch(args: argparse.Namespace) -> int:
    """Start the node graph of the experiment and supervise it; exit code of the trainer."""
    from mbpl_ros.bringup import ProcessLauncher, graph_from_experiment

    run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(args.config, "launch")
    path, raw = effective_config(args.config, args.set, run_dir)
    specs = graph_from_experiment(path, raw, run_dir=run_dir)
    print(f"[mbpl] run folder {run_dir}; nodes: {', '.join(s.name for s in specs)}", flush=True)
    return ProcessLauncher(specs, run_dir).run()


def cmd_train(args: argparse.Namespace) -> int:
    """LQR-FLM in one process over MujocoEnv; prints one line per iteration, pickles the final state."""
    try:
        from mbpl_core.config import from_dict
        from mbpl_core.costs import CostConfig, build_cost
        from mbpl_core.lqr_flm import LQRFLM, AlgorithmConfig, IterationReport
        from mbpl_sim.env import MujocoEnv
        from mbpl_sim.experiment import experiment_from_dict
    except ImportError as err:
        print(f"mbpl train: not available yet ({err})", file=sys.stderr)
        return EXIT_USAGE
    run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(args.config, "train")
    path, raw = effective_config(args.config, args.set, run_dir)
    experiment = experiment_from_dict(raw, base_dir=path.parent, source=str(path))
    env = MujocoEnv(experiment)
    cost = build_cost(from_dict(CostConfig, experiment.cost, "cost"), env.layout, env.dU)
    algorithm = LQRFLM(env, cost, from_dict(AlgorithmConfig, experiment.algorithm, "algorithm"))

    def report(r: IterationReport) -> None:
        costs = " ".join(f"{c:.4g}" for c in r.mean_cost)
        print(f"[mbpl] iteration {r.iteration}: mean cost per condition {costs}; "
              f"step_mult {min(r.step_mult):.3g}..{max(r.step_mult):.3g}", flush=True)  # fmt: skip

    algorithm.run(args.iterations, callback=report)
    with open(run_dir / "lqrflm_state.pkl", "wb") as f:
        pickle.dump(algorithm.state_dict(), f)
    print(f"[mbpl] saved {run_dir / 'lqrflm_state.pkl'}", flush=True)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Placeholder until policy evaluation exists."""
    print("mbpl eval: not implemented yet", file=sys.stderr)
    return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mbpl`` (sub-commands launch, train, eval)."""
    parser = argparse.ArgumentParser(prog="mbpl", description="Model-based policy learning on ROS 2.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("launch", cmd_launch, "start the ROS 2 node graph of an experiment"),
        ("train", cmd_train, "run LQR-FLM in one process over the MuJoCo environment"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("config", help="experiment YAML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a dotted key of the experiment file (repeatable)")  # fmt: skip
        p.add_argument("--run-dir", default=None, help="output folder (default runs/<config>-<mode>-<time>)")
        p.set_defaults(func=func)
    train = sub.choices["train"]
    train.add_argument("--iterations", type=int, default=None, help="default: algorithm.iterations")
    p = sub.add_parser("eval", help="evaluate a trained policy (not implemented yet)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_eval)
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
