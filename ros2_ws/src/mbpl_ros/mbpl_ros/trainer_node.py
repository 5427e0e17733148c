"""Trainer node: runs the experiment's method over DDS (LQR-FLM, MDGPS, PETS, SAC, MBPO, BPTT).

Calls ``mbpl/run_trial`` and waits for each sample on ``mbpl/samples``, records every sample to
rosbag2 (``<run_dir>/bags``), calls ``mbpl/fit_dynamics`` then ``mbpl/update_controller`` per condition
(:mod:`mbpl_ros.trainer_transport`), checkpoints ``<run_dir>/trainer_state.json`` after every
iteration. When done it writes ``history.json`` and ``history.png`` and exits 0, which ends the graph.
A restarted trainer resumes at its last finished iteration and keeps the samples already recorded.

With ``method: mdgps`` in the experiment, :class:`mbpl_ros.gps_hooks.GPSHooks` adds the policy: it
linearises it as the KL reference of each LQR step, trains it (S-step) on the new controllers, writes
``<run_dir>/policy`` and publishes it on ``mbpl/policy``, and evaluates it after every iteration.
PETS runs :class:`mbpl_ros.pets_trainer.PETSTrainerLoop`; SAC, MBPO and BPTT
:class:`mbpl_ros.learner_trainer.LearnerTrainerLoop` (the learner trains here, the sampler runs its
policy with exploration noise).

The loop runs in the main thread; a SingleThreadedExecutor in a background thread serves the clients'
responses and the subscriptions (the loop waits on events, never inside a callback, so one thread is
enough). rclpy's MultiThreadedExecutor was measured to keep a core ~80 % busy while the trainer only waits
for samples, starving the sim and the sampler on a 2-core machine: trials of 50 lockstep steps took
0.06-1.7 s instead of ~0.06 s.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from mbpl_core.config import ConfigError
from mbpl_core.costs import build_cost
from mbpl_ros.console import SUMMARY_PREFIX
from mbpl_ros.gps_hooks import build_gps_hooks
from mbpl_ros.node_params import TrainerNodeParams, load_settings
from mbpl_ros.params import declare_parameters
from mbpl_ros.trainer_logic import Hooks, LoopSettings, TrainerLoop, run_summary, write_history
from mbpl_ros.trainer_transport import GraphTransport


class TrainerNode(Node):
    """ROS shell over TrainerLoop; ``hooks`` replaces the experiment's (GPSHooks for mdgps, else none)."""

    def __init__(self, hooks: Hooks | None = None, **node_kwargs: Any) -> None:
        super().__init__("trainer", **node_kwargs)
        self.params = declare_parameters(self, TrainerNodeParams)
        limit_torch_threads(self.params.torch_threads)
        self.settings = load_settings(self.params.config, self.params.run_dir)
        self.transport = GraphTransport(self, self.params)
        self.hooks = hooks

    def train(self) -> None:
        """Run (or resume) the experiment's method to the end, then write the history and its plot."""
        TRAINERS[self.settings.experiment.method](self)

    def train_local(self) -> None:
        """LQR-FLM, and MDGPS with GPSHooks: :class:`TrainerLoop`."""
        algo, experiment = self.settings.algorithm, self.settings.experiment
        iterations = algo.iterations if self.params.iterations < 0 else self.params.iterations
        loop_settings = LoopSettings(self.settings.num_conditions, iterations, algo.samples_per_condition,
                                     algo.seed, self.params.max_attempts, self.params.evaluate)
        cost = build_cost(self.settings.cost, experiment.layout, experiment.robot.dQ)
        log = self.get_logger().info
        hooks = self.hooks or build_gps_hooks(experiment, self.settings.run_dir, self.transport, cost,
                                              algo.kl, self.params.max_attempts, log)
        loop = TrainerLoop(self.settings.run_dir, loop_settings, self.transport, cost, experiment.layout,
                           hooks, log=log)
        state = loop.run()
        json_path, png = write_history(self.settings.run_dir, state.history)
        self.get_logger().info(f"{SUMMARY_PREFIX}{run_summary(state.history)}")
        self.get_logger().info(f"{SUMMARY_PREFIX}{loop.store.count()} samples in {loop.store.root}; "
                               f"history {json_path}, plot {png}")


    def train_pets(self) -> None:
        """PETS: :class:`mbpl_ros.pets_trainer.PETSTrainerLoop`, then the planner distilled (DAgger)."""
        from mbpl_core.config import from_dict
        from mbpl_core.planning.pets import PETSConfig
        from mbpl_ros.pets_trainer import PETSLoopSettings, PETSTrainerLoop
        from mbpl_sim.evaluate import DEFAULT_SUCCESS_THRESHOLD

        experiment, run_dir = self.settings.experiment, self.settings.run_dir
        config = from_dict(PETSConfig, experiment.pets, "pets")
        iterations = config.iterations if self.params.iterations < 0 else self.params.iterations
        settings = PETSLoopSettings(self.settings.num_conditions, iterations, config.random_trials,
                                    config.trials_per_condition, experiment.task.T, config.seed,
                                    self.params.max_attempts)
        cost = build_cost(self.settings.cost, experiment.layout, experiment.robot.dQ)
        threshold = DEFAULT_SUCCESS_THRESHOLD.get(experiment.task.scene, 0.02)
        log = self.get_logger().info
        loop = PETSTrainerLoop(run_dir, settings, self.transport, cost, experiment.layout, threshold, log)
        history = [dict(r) for r in loop.run().history]
        if config.distill.enabled and iterations > 0:
            history[-1] |= self._distill(loop, config, cost, threshold)
        json_path, png = write_history(run_dir, history, f"{experiment.name} (pets, graph)")
        last = history[-1] if history else {}
        self.get_logger().info(f"{SUMMARY_PREFIX}{len(history)} iterations; MPC final distance (cm) "
                               f"{[round(100 * d, 2) for d in last.get('eval_final_distance', [])]}; "
                               f"history {json_path}, plot {png}")

    def _distill(self, loop: Any, config: Any, cost: Any, threshold: float) -> dict[str, Any]:
        """The distilled policy: trained, saved to ``<run_dir>/policy``, evaluated (held-out in the sim)."""
        import json

        from mbpl_core.guided.mdgps import policy_to_params, save_policy_checkpoint
        from mbpl_core.planning.distill import deployed_round
        from mbpl_core.planning.pets import action_box
        from mbpl_core.policy import NumpyPolicy
        from mbpl_ros.model_logic import PlannerService
        from mbpl_ros.pets_trainer import distill_in_graph
        from mbpl_sim.env import MujocoEnv
        from mbpl_sim.history import success_fields
        from mbpl_sim.robot import load_robot_spec
        from mbpl_sim.training import tip_distances

        experiment, run_dir = self.settings.experiment, self.settings.run_dir
        dX, dU = experiment.layout.dX, experiment.robot.dQ
        limits = action_box(config, load_robot_spec(experiment.robot).compile().actuator_ctrlrange[:, 1])
        planner = PlannerService(run_dir / "model", cost, dX, limits, experiment.task.T, config,
                                 config.model.device)
        log = self.get_logger().info
        log(f"distilling the planner into a policy ({config.distill.rounds} DAgger rounds, policy trials "
            "through the sampler)")
        policy, rounds = distill_in_graph(loop, planner, dX, dU, limits, config.distill, log)
        path = save_policy_checkpoint(run_dir / "policy", policy, config.distill.policy)
        (run_dir / "distill.json").write_text(json.dumps([vars(r) for r in rounds], indent=1))
        deployed = deployed_round(rounds)
        log(f"deployed policy: DAgger round {deployed.round} (pets.distill.select_best)")
        extra = success_fields("policy", list(deployed.final_distance), threshold)
        if experiment.conditions("held_out"):
            tips = tip_distances(MujocoEnv(experiment, condition_set="held_out"),
                                 [NumpyPolicy(policy_to_params(policy))])
            extra |= success_fields("policy_held_out", tips, threshold)
        log(f"{SUMMARY_PREFIX}policy checkpoint {path}: training conditions {extra['policy_success']}, "
            f"held-out success rate {extra.get('policy_held_out_success_rate', 'n/a')} (in simulation)")
        return extra


    def train_learner(self) -> None:
        """SAC, MBPO, BPTT: :class:`mbpl_ros.learner_trainer.LearnerTrainerLoop` over the method's learner."""
        from mbpl_core.policy import NumpyPolicy
        from mbpl_ros.learner_trainer import LEARNERS, LearnerLoopSettings, LearnerTrainerLoop
        from mbpl_sim.env import MujocoEnv
        from mbpl_sim.evaluate import DEFAULT_SUCCESS_THRESHOLD
        from mbpl_sim.training import tip_distances

        experiment, run_dir = self.settings.experiment, self.settings.run_dir
        cost = build_cost(self.settings.cost, experiment.layout, experiment.robot.dQ)
        learner = LEARNERS[experiment.method](experiment, cost, MujocoEnv(experiment))
        iterations = learner.num_iterations if self.params.iterations < 0 else self.params.iterations
        seed = int(experiment.section(experiment.method).get("seed", 0))
        settings = LearnerLoopSettings(self.settings.num_conditions, iterations, seed,
                                       self.params.max_attempts)
        threshold = DEFAULT_SUCCESS_THRESHOLD.get(experiment.task.scene, 0.02)
        held_out_env = MujocoEnv(experiment, condition_set="held_out") if experiment.conditions("held_out") \
            else None

        def held_out(params: Any) -> list[float]:
            assert held_out_env is not None
            return tip_distances(held_out_env, [NumpyPolicy(params)])

        log = self.get_logger().info
        loop = LearnerTrainerLoop(run_dir, settings, self.transport, cost, experiment.layout, learner,
                                  threshold, held_out if held_out_env is not None else None, log)
        history = list(loop.run().history)
        json_path, png = write_history(run_dir, history, f"{experiment.name} ({experiment.method}, graph)")
        last = history[-1] if history else {}
        self.get_logger().info(
            f"{SUMMARY_PREFIX}{len(history)} iterations, {last.get('env_steps', 0)} env steps; deployed "
            f"policy final distance (cm) {[round(100 * d, 2) for d in last.get('eval_final_distance', [])]}, "
            f"held-out success rate {last.get('policy_held_out_success_rate', 'n/a')} (in simulation); "
            f"policy {run_dir / 'policy'}; history {json_path}, plot {png}")


TRAINERS = {"lqr_flm": TrainerNode.train_local, "mdgps": TrainerNode.train_local,
            "pets": TrainerNode.train_pets, "sac": TrainerNode.train_learner,
            "mbpo": TrainerNode.train_learner, "bptt": TrainerNode.train_learner}


def limit_torch_threads(threads: int) -> None:
    """torch's intra-op threads for the trainer's networks (0: torch's default). Small networks gain
    nothing from more, and on a machine shared with the sims and samplers spinning threads wait for cores
    (measured: a SAC update 0.7 ms on one thread, 52 ms on two with one core busy)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _spin(executor: Executor) -> None:
    with contextlib.suppress(ExternalShutdownException):
        executor.spin()


def main(args: list[str] | None = None) -> int:
    """Train to the end (exit 0), or stop on SIGINT/SIGTERM (130) or a failure (1); 2 on a config error."""
    rclpy.init(args=args)
    node: TrainerNode | None = None
    executor = SingleThreadedExecutor()
    spinner = threading.Thread(target=_spin, args=(executor,), name="trainer_executor")
    try:
        node = TrainerNode()
        executor.add_node(node)
        spinner.start()
        node.train()
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 130
    except ConfigError as err:
        print(f"trainer node: configuration error: {err}", flush=True)
        return 2
    except RuntimeError as err:  # a failed service call or a trial that never produced a sample
        print(f"trainer node: {err}", flush=True)
        return 1
    finally:
        # the spinning thread must be out of rcl before teardown, or the process aborts at exit
        executor.shutdown(timeout_sec=10.0)
        if spinner.is_alive():
            spinner.join(timeout=10.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
