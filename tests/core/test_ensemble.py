"""Probabilistic ensemble (PETS model): oracles are a known linear-Gaussian system and plain per-member code.

The linear system x' = A x + B u + w, w ~ N(0, σ² I) gives the true mean, variance and NLL the trained
ensemble is held against; batched members are checked against a per-member loop written here.
All tests run on one torch thread (set per test, restored afterwards).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.functional import silu, softplus

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import ShapeError
from mbpl_core.models import (
    EnsembleConfig,
    Normaliser,
    ProbabilisticEnsemble,
    TrainReport,
    load_ensemble,
    prediction_errors,
    save_ensemble,
    torch_threads,
    train_ensemble,
    transitions_from_trajectories,
)

SIGMA = 0.1
LINEAR_CONFIG = EnsembleConfig(
    members=3, elites=2, hidden=(64, 64), batch_size=128, learning_rate=3e-3, max_epochs=150, patience=10,
    device="cpu",
)
TINY_CONFIG = EnsembleConfig(members=3, elites=2, hidden=(16, 16), batch_size=32, max_epochs=4, device="cpu")


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@dataclass
class LinearGaussian:
    """x' = A x + B u + w, w ~ N(0, SIGMA² I). A: (dX, dX), B: (dX, dU)."""

    A: np.ndarray
    B: np.ndarray

    def mean(self, X: np.ndarray, U: np.ndarray) -> np.ndarray:
        return X @ self.A.T + U @ self.B.T

    def trajectories(self, rng: np.random.Generator, N: int, T: int) -> tuple[np.ndarray, np.ndarray]:
        """X (N, T, dX) from x0 ~ N(0, I) under u ~ N(0, I): U (N, T, dU)."""
        dX, dU = self.B.shape
        X, U = np.zeros((N, T, dX)), rng.standard_normal((N, T, dU))
        X[:, 0] = rng.standard_normal((N, dX))
        for t in range(T - 1):
            X[:, t + 1] = self.mean(X[:, t], U[:, t]) + SIGMA * rng.standard_normal((N, dX))
        return X, U

    def nll(self, X: np.ndarray, U: np.ndarray, X_next: np.ndarray) -> float:
        """Mean −log p(x' | x, u) under the true model, nats per transition."""
        return gaussian_nll_numpy(X_next, self.mean(X, U), np.full(X.shape, SIGMA**2))


def gaussian_nll_numpy(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> float:
    """Mean over rows of −log N(x; mean, diag var): (N, d) each."""
    return float(np.mean(np.sum(0.5 * ((x - mean) ** 2 / var + np.log(2 * np.pi * var)), axis=1)))


def make_linear_system(rng: np.random.Generator, dX: int = 3, dU: int = 2) -> LinearGaussian:
    A = rng.standard_normal((dX, dX))
    A *= 0.9 / np.linalg.norm(A, ord=2)
    return LinearGaussian(A, 0.5 * rng.standard_normal((dX, dU)))


@dataclass
class Trained:
    system: LinearGaussian
    model: ProbabilisticEnsemble
    report: TrainReport
    X: np.ndarray
    U: np.ndarray
    X_next: np.ndarray


@pytest.fixture(scope="module")
def trained_linear() -> Trained:
    """LINEAR_CONFIG ensemble trained on 30 × 100 transitions of a random 3-state, 2-action system."""
    rng = np.random.default_rng(0)
    system = make_linear_system(rng)
    with torch_threads(1):
        X, U, X_next = transitions_from_trajectories(*system.trajectories(rng, 30, 101))
        model = ProbabilisticEnsemble(3, 2, LINEAR_CONFIG, rng)
        report = train_ensemble(model, X, U, X_next, LINEAR_CONFIG, rng)
    return Trained(system, model, report, X, U, X_next)


def random_transitions(rng: np.random.Generator, N: int, dX: int = 3, dU: int = 2) -> tuple[np.ndarray, ...]:
    """Transitions of a fresh random linear system: X (N, dX), U (N, dU), X_next (N, dX)."""
    system = make_linear_system(rng, dX, dU)
    X, U = rng.standard_normal((N, dX)), rng.standard_normal((N, dU))
    return X, U, system.mean(X, U) + SIGMA * rng.standard_normal((N, dX))


def train_tiny(
    seed: int, config: EnsembleConfig = TINY_CONFIG, N: int = 300
) -> tuple[ProbabilisticEnsemble, TrainReport]:
    rng = np.random.default_rng(seed)
    X, U, X_next = random_transitions(np.random.default_rng(123), N)
    model = ProbabilisticEnsemble(3, 2, config, rng)
    return model, train_ensemble(model, X, U, X_next, config, rng)


# ------------------------------------------------------------------------------------------ config, parts


def test_config_defaults_and_validation() -> None:
    config = from_dict(EnsembleConfig, {"members": 7, "elites": 5, "hidden": [32, 32]}, "pets.model")
    assert config.hidden == (32, 32) and config.members == 7
    assert EnsembleConfig().members == 5 and EnsembleConfig().device == "auto"
    for bad in ({"elites": 6}, {"elites": 0}, {"hidden": []}, {"activation": "gelu"}, {"holdout_ratio": 1.0},
                {"patience": 0}, {"device": "gpu"}, {"learning_rate": 0.0}, {"init_min_logvar": 1.0}):
        with pytest.raises(ConfigError):
            from_dict(EnsembleConfig, bad, "pets.model")


def test_normaliser_fits_mean_and_std_and_leaves_constant_columns_unscaled() -> None:
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(500, 3))
    data[:, 1] = 7.0
    norm = Normaliser(3, torch.float64)
    norm.fit(data)
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(axis=0))
    np.testing.assert_allclose(norm.std.numpy(), [data[:, 0].std(), 1.0, data[:, 2].std()])
    z = norm.normalise(torch.as_tensor(data))
    np.testing.assert_allclose(z[:, 1].numpy(), 0.0)
    np.testing.assert_allclose(norm.denormalise(z).numpy(), data)
    targets = Normaliser(3, torch.float64, constant_std=1e-6)  # the model's Δx normaliser
    targets.fit(data)
    np.testing.assert_allclose(targets.std.numpy(), [data[:, 0].std(), 1e-6, data[:, 2].std()])
    with pytest.raises(ValueError):
        Normaliser(3, constant_std=0.0)


def test_a_state_column_constant_in_the_data_stays_put_in_sampled_predictions() -> None:
    """A planar arm's ee z never changes: its Δ is constant (0) in every transition. A model that put the
    untrained or partly trained noise of that column back at raw scale (std 1 for a constant column) moved
    z by metres in sampled predictions; the target normaliser keeps it at STD_FLOOR scale."""
    rng = np.random.default_rng(4)
    X = rng.normal(0.0, 1.0, size=(400, 3))
    X[:, 2] = 0.1  # constant column, Δ = 0 in every transition
    U = rng.normal(0.0, 1.0, size=(400, 1))
    X_next = X.copy()
    X_next[:, :2] += 0.1 * (X[:, :2] + U)
    config = dataclasses.replace(TINY_CONFIG, max_epochs=2, holdout_ratio=0.0)
    for epochs in (0, 2):  # untrained (normalisers fitted only), then barely trained
        model = ProbabilisticEnsemble(3, 1, config, rng)
        if epochs:
            train_ensemble(model, X, U, X_next, config, rng)
        else:
            model.input_normaliser.fit(np.hstack([X, U]))
            model.target_normaliser.fit(X_next - X)
        x = torch.as_tensor(X[None], dtype=torch.float32).expand(model.num_members, -1, -1)
        u = torch.as_tensor(U[None], dtype=torch.float32).expand(model.num_members, -1, -1)
        with torch.no_grad():
            draws = model.step(x, u, torch.Generator().manual_seed(0))
        assert float((draws[..., 2] - 0.1).abs().max()) < 1e-4, epochs
        assert float((draws[..., :2] - x[..., :2]).abs().max()) > 1e-3  # the other columns do move


def per_member_forward(model: ProbabilisticEnsemble, xu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: member b alone, plain matmuls over its own weight slices. xu (B, M, dX + dU)."""
    means, logvars = [], []
    for b in range(model.num_members):
        h = xu[b]
        for i, layer in enumerate(model.layers):
            h = h @ layer.weight[b] + layer.bias[b]
            if i < len(model.layers) - 1:
                h = silu(h)
        mean, raw = h[:, : model.dX], h[:, model.dX :]
        hi, lo = model.max_logvar[b], model.min_logvar[b]
        logvar = hi - softplus(hi - raw)
        means.append(mean)
        logvars.append(lo + softplus(logvar - lo))
    return torch.stack(means), torch.stack(logvars)


def test_batched_members_equal_a_per_member_loop() -> None:
    model = ProbabilisticEnsemble(3, 2, dataclasses.replace(TINY_CONFIG, members=4), np.random.default_rng(1))
    xu = 3.0 * torch.randn(4, 50, 5, generator=torch.Generator().manual_seed(0))  # large: hits both bounds
    with torch.no_grad():
        mean, logvar = model(xu)
        ref_mean, ref_logvar = per_member_forward(model, xu)
        sub_mean, sub_logvar = model(xu[[3, 1]], members=(3, 1))
    torch.testing.assert_close(mean, ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logvar, ref_logvar, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sub_mean, mean[[3, 1]])
    torch.testing.assert_close(sub_logvar, logvar[[3, 1]])
    assert not torch.allclose(mean[0], mean[1])  # the members really differ
    with pytest.raises(ShapeError):
        model(xu[:3])


def with_normalisers(model: ProbabilisticEnsemble, rng: np.random.Generator) -> ProbabilisticEnsemble:
    """Fit the normalisers to data far from zero mean / unit scale, so a missing (de)normalisation shows."""
    X = rng.normal(5.0, 3.0, size=(200, model.dX))
    U = rng.normal(-2.0, 0.5, size=(200, model.dU))
    model.fit_normalisers(X, U, X + rng.normal(1.0, 4.0, size=X.shape))
    return model


def test_step_returns_x_plus_denormalised_delta_and_samples_its_variance() -> None:
    rng = np.random.default_rng(2)
    model = with_normalisers(ProbabilisticEnsemble(3, 2, TINY_CONFIG, rng), rng)
    x = torch.as_tensor(rng.normal(5.0, 3.0, size=(3, 1, 3)), dtype=torch.float32).expand(3, 20000, 3)
    u = torch.as_tensor(rng.normal(-2.0, 0.5, size=(3, 1, 2)), dtype=torch.float32).expand(3, 20000, 2)
    with torch.no_grad():
        xu_n = (torch.cat([x, u], -1) - model.input_normaliser.mean) / model.input_normaliser.std
        mean_n, logvar_n = model(xu_n)
        std, offset = model.target_normaliser.std, model.target_normaliser.mean
        expected_mean = x + mean_n * std + offset
        expected_var = torch.exp(logvar_n) * std**2
        torch.testing.assert_close(model.step(x, u, sample=False), expected_mean)
        torch.testing.assert_close(model.step(x.double(), u.double(), sample=False), expected_mean.double())
        draws = model.step(x, u, torch.Generator().manual_seed(0))
        again = model.step(x, u, torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws, again, rtol=0, atol=0)
    torch.testing.assert_close(draws.mean(dim=1), expected_mean[:, 0], rtol=0, atol=0.05 * float(std.max()))
    ratio = draws.var(dim=1) / expected_var[:, 0]
    assert torch.all((ratio > 0.95) & (ratio < 1.05)), ratio


# ------------------------------------------------------------------------------------- trained: accuracy


def test_recovers_a_linear_system_and_its_noise_variance(trained_linear: Trained) -> None:
    rng = np.random.default_rng(99)
    system, model = trained_linear.system, trained_linear.model
    X, U = system.trajectories(rng, 20, 101)
    X, U, X_next = transitions_from_trajectories(X, U)
    mean, var = model.predict_numpy(X, U)
    rms_mean_error = np.sqrt(np.mean((mean - system.mean(X, U)) ** 2))
    assert rms_mean_error < 0.4 * SIGMA
    assert 1 / 1.5 < np.median(var) / SIGMA**2 < 1.5
    low, high = np.percentile(var, [5, 95]) / SIGMA**2  # not min/max: a few test states lie off the data
    assert 0.6 < low and high < 1.8
    true_nll, model_nll = system.nll(X, U, X_next), gaussian_nll_numpy(X_next, mean, var)
    assert true_nll - 0.05 < model_nll < true_nll + 0.2


def test_learned_logvar_bounds_tighten_around_the_noise(trained_linear: Trained) -> None:
    """The penalty 0.01 (Σ max − Σ min) pulls both bounds in from their start until they bracket the data."""
    model = trained_linear.model
    true_logvar = torch.log(SIGMA**2 / model.target_normaliser.std**2)  # in normalised units, (dX,)
    low, high = model.min_logvar.detach(), model.max_logvar.detach()
    assert torch.all(low > LINEAR_CONFIG.init_min_logvar + 1)
    assert torch.all(high < LINEAR_CONFIG.init_max_logvar - 1)
    assert torch.all((low < true_logvar) & (true_logvar < high))


def test_reported_holdout_nll_is_close_to_the_true_models(trained_linear: Trained) -> None:
    t = trained_linear
    rows = np.array(t.report.holdout_indices)
    assert rows.size == round(LINEAR_CONFIG.holdout_ratio * t.X.shape[0])
    true_nll = t.system.nll(t.X[rows], t.U[rows], t.X_next[rows])
    assert true_nll - 0.1 < t.report.elite_holdout_nll < true_nll + 0.25
    assert t.report.train_nll[-1] < t.report.train_nll[0]
    train = np.setdiff1d(np.arange(t.X.shape[0]), rows)  # the normalisers see the training split only
    xu = np.concatenate([t.X[train], t.U[train]], axis=1)
    np.testing.assert_allclose(t.model.input_normaliser.mean.numpy(), xu.mean(axis=0), rtol=1e-5, atol=1e-6)
    delta = t.X_next[train] - t.X[train]
    np.testing.assert_allclose(t.model.target_normaliser.std.numpy(), delta.std(axis=0), rtol=1e-5)


def test_open_loop_errors_grow_like_the_true_models(trained_linear: Trained) -> None:
    """Oracle: the true mean model's open-loop RMSE from the same states, which grows with the noise."""
    system, model = trained_linear.system, trained_linear.model
    X, U = system.trajectories(np.random.default_rng(5), 20, 41)
    errors = prediction_errors(model, X, U, horizons=(1, 5, 10, 50))
    assert sorted(errors) == [1, 5, 10]  # 50 ≥ T is skipped
    for H, rmse in errors.items():
        x = X[:, : 41 - H]
        for h in range(H):
            x = x @ system.A.T + U[:, h : 41 - H + h] @ system.B.T
        true_rmse = np.sqrt(np.mean((x - X[:, H:]) ** 2))
        assert 0.95 * true_rmse < rmse < 1.3 * true_rmse, (H, rmse, true_rmse)
    assert errors[10] > 1.1 * errors[1]  # the noise accumulates (A has spectral norm 0.9)


# -------------------------------------------------------------------------- training: seeds, elites, stop


def state_bytes(model: ProbabilisticEnsemble) -> dict[str, bytes]:
    return {k: v.cpu().numpy().tobytes() for k, v in model.state_dict().items()}


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not() -> None:
    first, second, other = (state_bytes(train_tiny(seed)[0]) for seed in (7, 7, 8))
    assert first == second
    assert first["layers.0.weight"] != other["layers.0.weight"]


DIGEST_SCRIPT = """
import hashlib
import numpy as np
from mbpl_core.models import EnsembleConfig, ProbabilisticEnsemble, train_ensemble
config = EnsembleConfig(members=3, elites=2, hidden=(16, 16), batch_size=32, max_epochs=4, device="cpu")
data = np.random.default_rng(1).standard_normal((3, 300, 3))
rng = np.random.default_rng(7)
model = ProbabilisticEnsemble(3, 2, config, rng)
train_ensemble(model, data[0], data[1, :, :2], data[0] + 0.1 * data[2], config, rng)
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest()
"""


def test_same_seed_gives_the_same_weights_in_another_process() -> None:
    """A fresh interpreter on one thread (no pytest, no test module) trains to the same bytes."""
    namespace: dict[str, object] = {}
    exec(DIGEST_SCRIPT, namespace)  # noqa: S102 - the same source runs in both processes
    script = "import torch\ntorch.set_num_threads(1)\n" + DIGEST_SCRIPT + "print(digest)\n"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == namespace["digest"]


def member_holdout_nll(
    model: ProbabilisticEnsemble, X: np.ndarray, U: np.ndarray, X_next: np.ndarray
) -> np.ndarray:
    """Each member's NLL (nats per transition) on the rows given, from its raw-unit Δ mean and variance."""
    mean, var = (a.double().numpy() for a in model.delta_distribution(X, U))
    return np.array([gaussian_nll_numpy(X_next - X, mean[b], var[b]) for b in range(model.num_members)])


def test_elites_are_the_members_of_lowest_holdout_nll_and_predictions_use_only_them() -> None:
    config = dataclasses.replace(TINY_CONFIG, members=6, elites=2, max_epochs=6)
    model, report = train_tiny(3, config)
    rows = np.array(report.holdout_indices)
    X, U, X_next = (a[rows] for a in random_transitions(np.random.default_rng(123), 300))
    nll = member_holdout_nll(model, X, U, X_next)
    np.testing.assert_allclose(nll, report.member_holdout_nll, rtol=1e-4)
    expected = tuple(sorted(np.argsort(nll)[:2].tolist()))
    assert expected != (0, 1)  # this seed's best members are not simply the first ones
    assert model.elite_indices == report.elite_indices == expected
    mean, var = (a.double().numpy() for a in model.delta_distribution(X, U, expected))
    pred_mean, pred_var = model.predict_numpy(X, U)
    mix = mean.mean(axis=0)
    np.testing.assert_allclose(pred_mean, X + mix, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pred_var, (var + mean**2).mean(axis=0) - mix**2, rtol=1e-4, atol=1e-7)


def test_early_stopping_stops_and_keeps_each_members_best_weights() -> None:
    config = dataclasses.replace(TINY_CONFIG, hidden=(64, 64), max_epochs=400, patience=3, holdout_ratio=0.3)
    model, report = train_tiny(4, config, N=120)  # few rows, wide net: overfits, held-out NLL turns up
    assert report.stopped_early and report.epochs < config.max_epochs
    assert max(report.best_epochs) == report.epochs - config.patience
    history = np.array(report.holdout_nll)
    assert history.shape == (report.epochs, config.members)
    np.testing.assert_allclose(report.member_holdout_nll, history.min(axis=0), rtol=1e-6)
    rows = np.array(report.holdout_indices)
    X, U, X_next = (a[rows] for a in random_transitions(np.random.default_rng(123), 120))
    np.testing.assert_allclose(member_holdout_nll(model, X, U, X_next), history.min(axis=0), rtol=1e-4)


def test_without_holdout_all_epochs_run() -> None:
    model, report = train_tiny(5, dataclasses.replace(TINY_CONFIG, holdout_ratio=0.0, max_epochs=3))
    assert report.epochs == 3 and not report.stopped_early
    assert report.holdout_nll == () and report.holdout_indices == ()
    assert report.n_train == 300 and len(model.elite_indices) == 2


# ------------------------------------------------------------------------------------------ save / load


def test_save_load_round_trip_gives_identical_predictions(tmp_path: pytest.TempPathFactory) -> None:
    model, _ = train_tiny(6, dataclasses.replace(TINY_CONFIG, members=4, elites=2))
    path = tmp_path / "ensemble.pt"  # type: ignore[operator]
    save_ensemble(model, path)
    loaded = load_ensemble(path, device="cpu")
    assert loaded.config == model.config and loaded.elite_indices == model.elite_indices
    assert state_bytes(loaded) == state_bytes(model)
    X, U, _ = random_transitions(np.random.default_rng(0), 50)
    for a, b in zip(model.predict_numpy(X, U), loaded.predict_numpy(X, U), strict=True):
        np.testing.assert_array_equal(a, b)
    x = torch.as_tensor(np.tile(X, (4, 1, 1)), dtype=torch.float32)
    u = torch.as_tensor(np.tile(U, (4, 1, 1)), dtype=torch.float32)
    with torch.no_grad():
        steps = [m.step(x, u, torch.Generator().manual_seed(1)) for m in (model, loaded)]
    torch.testing.assert_close(steps[0], steps[1], rtol=0, atol=0)


def test_shape_and_config_errors() -> None:
    model = ProbabilisticEnsemble(3, 2, TINY_CONFIG)
    with pytest.raises(ShapeError):
        model.predict_numpy(np.zeros((4, 3)), np.zeros((4, 3)))
    with pytest.raises(ShapeError):
        train_ensemble(model, np.zeros((4, 3)), np.zeros((5, 2)), np.zeros((4, 3)), TINY_CONFIG,
                       np.random.default_rng(0))
    with pytest.raises(ShapeError):
        model.set_elites((0, 0))
    with pytest.raises(ConfigError):
        X, U, X_next = random_transitions(np.random.default_rng(0), 20)
        train_ensemble(model, X, U, X_next, dataclasses.replace(TINY_CONFIG, members=4),
                       np.random.default_rng(0))


# ----------------------------------------------------------------------------- data split and resampling


def test_held_out_rows_never_reach_training() -> None:
    """Same seed, so the same split: corrupting exactly the held-out rows leaves every epoch's training
    NLL bit-identical (no early stop within the epochs), while corrupting one training row changes it."""
    config = dataclasses.replace(TINY_CONFIG, max_epochs=3, patience=10, holdout_ratio=0.2)
    X, U, X_next = random_transitions(np.random.default_rng(123), 200)

    def train(targets: np.ndarray) -> TrainReport:
        rng = np.random.default_rng(11)
        return train_ensemble(ProbabilisticEnsemble(3, 2, config, rng), X, U, targets, config, rng)

    clean = train(X_next)
    rows = np.array(clean.holdout_indices)
    assert rows.size == 40 and clean.epochs == 3
    held_out_corrupted = X_next.copy()
    held_out_corrupted[rows] += 100.0
    report = train(held_out_corrupted)
    assert report.holdout_indices == clean.holdout_indices
    assert report.train_nll == clean.train_nll
    assert report.holdout_nll != clean.holdout_nll  # the corruption is seen where it belongs
    train_corrupted = X_next.copy()
    train_corrupted[np.setdiff1d(np.arange(200), rows)[0]] += 100.0
    assert train(train_corrupted).train_nll != clean.train_nll


def test_each_member_trains_on_its_own_bootstrap_resample() -> None:
    """Members made identical before training, one minibatch per epoch (row order cannot matter): they
    move apart by a good part of how far they move, which only different resamples can cause."""
    config = dataclasses.replace(TINY_CONFIG, members=3, elites=3, batch_size=10_000, max_epochs=3,
                                 holdout_ratio=0.0)
    rng = np.random.default_rng(12)
    model = ProbabilisticEnsemble(3, 2, config, rng)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p[:1].expand_as(p))
    before = model.layers[0].weight.detach().clone()
    X, U, X_next = random_transitions(np.random.default_rng(123), 300)
    train_ensemble(model, X, U, X_next, config, rng)
    after = model.layers[0].weight.detach()
    moved = float((after - before).abs().max())
    spread = float((after[1:] - after[0]).abs().max())
    assert moved > 0 and spread > 0.1 * moved, (moved, spread)
