"""Families 2-3, global learned models: the probabilistic ensemble, its training and normalisation."""

from mbpl_core.models.ensemble import (
    EnsembleConfig,
    ProbabilisticEnsemble,
    TrainReport,
    load_ensemble,
    prediction_errors,
    resolve_device,
    save_ensemble,
    torch_threads,
    train_ensemble,
    transitions_from_trajectories,
)
from mbpl_core.models.normalisation import Normaliser

__all__ = [
    "EnsembleConfig",
    "Normaliser",
    "ProbabilisticEnsemble",
    "TrainReport",
    "load_ensemble",
    "prediction_errors",
    "resolve_device",
    "save_ensemble",
    "torch_threads",
    "train_ensemble",
    "transitions_from_trajectories",
]
