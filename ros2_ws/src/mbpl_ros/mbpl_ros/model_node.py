"""Model node (PETS): the probabilistic ensemble trained from the trainer's recorded trajectories.

* serves ``mbpl/fit_model`` (mbpl_msgs/FitModel: iteration, samples → model version, held-out NLL);
  idempotent per iteration; each fit adds the request's samples to the data set and refits on all of it
  (:mod:`mbpl_ros.model_logic`), then writes ``<run_dir>/model/ensemble_v<version>.pt`` for the planner.

State (data set, weights, rng) is persisted to ``<run_dir>/model`` after each fit: a restarted node
resumes with it.
"""

from __future__ import annotations

from typing import Any

from mbpl_msgs.srv import FitModel
from rclpy.node import Node

from mbpl_core.config import from_dict
from mbpl_core.containers import ShapeError
from mbpl_core.planning.pets import PETSConfig
from mbpl_ros.fitting_node import samples_to_batch
from mbpl_ros.model_logic import fit_model, model_condition
from mbpl_ros.node_main import spin_node
from mbpl_ros.node_params import ModelNodeParams, load_settings
from mbpl_ros.params import declare_parameters


class ModelNode(Node):
    """ROS shell over one persisted ModelState."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__("model", **node_kwargs)
        self.params = declare_parameters(self, ModelNodeParams)
        settings = load_settings(self.params.config, self.params.run_dir)
        experiment = settings.experiment
        config = from_dict(PETSConfig, experiment.pets, "pets")
        self.folder = settings.run_dir / "model"
        self.state = model_condition(self.folder, experiment.layout.dX, experiment.robot.dQ, config,
                                     self.params.keep_results)
        self.create_service(FitModel, "mbpl/fit_model", self._on_fit)
        resumed = self.state.last_iteration
        self.get_logger().info(f"model of {config.model.members} members, state in {self.folder}"
                               + (f"; resumed after iteration {resumed}" if resumed is not None else ""))

    def _on_fit(self, request: FitModel.Request, response: FitModel.Response) -> FitModel.Response:
        i = int(request.iteration)
        try:
            if self.params.run_token and request.run_token != self.params.run_token:
                raise ShapeError("unknown run_token (not from this run)")
            batch = samples_to_batch(list(request.samples))
            result, computed = fit_model(self.state, i, batch, self.folder)
        except Exception as err:  # noqa: BLE001 - any request-provoked failure is an answer, not an exit
            response.success, response.message = False, f"model fit of iteration {i} failed: {err}"
            self.get_logger().error(response.message)
            return response
        response.success, response.model_version = True, result.version
        response.holdout_nll, response.transitions = float(result.holdout_nll), int(result.transitions)
        verb = "fitted" if computed else "stored fit of"
        response.message = (f"{verb} iteration {i}: model version {result.version}, {result.transitions} "
                            f"transitions, held-out NLL {result.holdout_nll:.3f} ({result.epochs} epochs)")
        self.get_logger().info(response.message)
        return response


def main(args: list[str] | None = None) -> int:
    """Run the model node until SIGINT/SIGTERM; exit code 2 on a configuration error."""
    return spin_node(ModelNode, "model node", args)


if __name__ == "__main__":
    raise SystemExit(main())
