"""The model and planner nodes' logic without ROS (PETS through the graph).

Model side (:class:`ModelState`, persisted with :class:`mbpl_ros.step_logic.PersistentCondition`): each
FitModel request adds one iteration's trajectories to the data set and refits the ensemble on all of
it (:func:`mbpl_core.models.train_ensemble`, continuing from the last weights), exactly once per
iteration; the weights of version v = iteration + 1 go to ``<run_dir>/model/ensemble_v<v>.pt``, which
the planner loads. State and results are pickled atomically after every fit, so a killed model node
resumes with its data and weights, and a repeated request returns the stored result.

Planner side (:class:`PlannerService`): one :class:`mbpl_core.planning.mpc.MPCController` per trial over
the requested model version; t = 0 starts a trial (the planner's sampling seeded from the trial's seed,
no warm start), later steps warm-start from the previous plan of the same trial.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mbpl_core.containers import SampleBatch, ShapeError
from mbpl_core.costs import Cost
from mbpl_core.models import (
    ProbabilisticEnsemble,
    load_ensemble,
    save_ensemble,
    torch_threads,
    train_ensemble,
)
from mbpl_core.models.ensemble import transitions_from_trajectories
from mbpl_core.planning.mpc import MPCController
from mbpl_core.planning.pets import EliteModel, PETSConfig
from mbpl_ros.conversions import PlanData, PlanRequestData
from mbpl_ros.step_logic import PersistentCondition

MAX_OPEN_TRIALS = 16


def model_path(folder: str | Path, version: int) -> Path:
    """Where the weights of model version ``version`` (>= 1) live."""
    return Path(folder) / f"ensemble_v{int(version)}.pt"


@dataclass(frozen=True)
class FitResult:
    """Answer of one fit: version (iteration + 1), held-out NLL of the elites, transitions in the data."""

    version: int
    holdout_nll: float
    transitions: int
    epochs: int


class ModelState:
    """The ensemble, every trajectory received so far (X (N, T, dX), U (N, T, dU)) and the rng."""

    def __init__(self, dX: int, dU: int, config: PETSConfig) -> None:
        self.rng = np.random.default_rng(config.seed)
        self.config = config
        self.model = ProbabilisticEnsemble(dX, dU, config.model, self.rng)
        self.X: list[np.ndarray] = []
        self.U: list[np.ndarray] = []

    def fit(self, iteration: int, batch: SampleBatch, folder: Path) -> FitResult:
        """Add ``batch`` to the data, refit, save version iteration + 1 for the planner."""
        self.X.extend(batch.X)
        self.U.extend(batch.U)
        X, U, X_next = transitions_from_trajectories(np.stack(self.X), np.stack(self.U))
        threads = torch_threads(1) if self.model.device.type == "cpu" else contextlib.nullcontext()
        with threads:  # as mbpl_core.planning.pets.PETS.fit_model: one result whatever the core count
            report = train_ensemble(self.model, X, U, X_next, self.config.model, self.rng)
        version = iteration + 1
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".ensemble_v{version}.pt.tmp"
        save_ensemble(self.model, tmp)
        tmp.replace(model_path(folder, version))
        return FitResult(version, report.elite_holdout_nll, int(X.shape[0]), report.epochs)


def model_condition(folder: str | Path, dX: int, dU: int, config: PETSConfig,
                    keep: int = 3) -> PersistentCondition[ModelState, FitResult]:
    """The persisted model state of a run (``<run_dir>/model``)."""
    return PersistentCondition(folder, 0, lambda: ModelState(dX, dU, config), keep)


def fit_model(state: PersistentCondition[ModelState, FitResult], iteration: int, batch: SampleBatch,
              folder: Path) -> tuple[FitResult, bool]:
    """ModelState.fit once per iteration; (result, computed now)."""
    return state.run(iteration, lambda s: s.fit(iteration, batch, folder))


class PlannerService:
    """Answers plan requests with MPC over the ensemble version they name (see the module docstring)."""

    def __init__(self, folder: str | Path, cost: Cost, dX: int, effort_limits: np.ndarray, T: int,
                 config: PETSConfig, device: str = "cpu") -> None:
        self.folder, self.cost, self.dX, self.T, self.config = Path(folder), cost, dX, T, config
        self.effort_limits = np.array(effort_limits, dtype=np.float64)
        self.device = device
        self._model: tuple[int, ProbabilisticEnsemble] | None = None
        self._trials: OrderedDict[int, MPCController] = OrderedDict()

    def model(self, version: int) -> ProbabilisticEnsemble:
        """The ensemble of ``version`` (loaded once); ShapeError if it is not on disk."""
        if self._model is None or self._model[0] != version:
            path = model_path(self.folder, version)
            if version < 1 or not path.is_file():
                raise ShapeError(f"model version {version} not found ({path})")
            self._model = (version, load_ensemble(path, self.device))
        return self._model[1]

    def plan(self, request: PlanRequestData) -> PlanData:
        """The plan from request.x at step request.t of its trial; ShapeError on a bad request."""
        if request.x.shape != (self.dX,):
            raise ShapeError(f"plan request x has shape {request.x.shape}, expected ({self.dX},)")
        if not 0 <= request.t < self.T:
            raise ShapeError(f"plan request step t = {request.t} outside [0, T = {self.T})")
        mpc = self._controller(request)
        plan = mpc.plan(request.x, request.t)
        return PlanData(request.trial_id, request.t, plan.actions, plan.predicted_cost, request.model_version,
                        plan.planning_time, request.run_token)

    def _controller(self, request: PlanRequestData) -> MPCController:
        model = self.model(request.model_version)
        mpc = self._trials.get(request.trial_id)
        if request.t == 0 or mpc is None or mpc.model.ensemble is not model:  # type: ignore[attr-defined]
            planner = replace(self.config.planner, seed=int(request.seed) % 2**62)
            mpc = MPCController(EliteModel(model), self.cost, self.effort_limits, self.T, planner,
                                device=model.device, dtype=model.dtype)
            self._trials[request.trial_id] = mpc
            while len(self._trials) > MAX_OPEN_TRIALS:  # trials of several samplers interleave
                self._trials.popitem(last=False)
        return mpc
