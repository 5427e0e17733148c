"""MDGPS in the node graph: the trainer's :class:`~mbpl_ros.trainer_logic.Hooks` for GPS mode (no rclpy).

Montgomery & Levine, NIPS 2016 (MDGPS, Alg. 2), split over the trainer's iteration i (the same steps and
order as :class:`mbpl_core.guided.mdgps.MDGPS` in one process):

* S-step — θ ← argmin Σ_{m,n,t} (μ_θ(x) − μ_m(x))ᵀ Λ_m (μ_θ(x) − μ_m(x)), μ_m(x) = K_t x + k_t,
  Λ_m = pol_covar_t⁻¹ (Alg. 2 line 5), at the states X_m (N, T, dX) sampled this iteration (plus
  ``gps.augment_copies`` perturbed copies). With ``gps.s_step_order: before_c_step`` (default) it runs
  in ``before_c_step(i, batches)`` on the controllers that were sampled (received on
  ``mbpl/controllers``: ids ``controller_id(i, m)``); with ``after_c_step`` in
  ``after_c_step(i, batches, updates)`` on the controllers the LQR steps just returned. The policy is
  then persisted, written as a checkpoint to ``<run_dir>/policy`` (``mbpl eval --policy``) and published
  on ``mbpl/policy`` with policy id i + 1 for the sampler;
* linearisation — π̄_m with K (T, dU, dX), k (T, dU), pol_covar (T, dU, dU) of the newest policy at
  X_m (``gps.linearization``: the policy's Jacobian, or GPS's regression); ``reference_for(i, m)``
  gives it to the LQR step as the centre of the trust region KL(p_m ‖ π̄_m) ≤ ε_m (the iLQR node solves
  it). In the after_c_step order, iteration 0 has no policy yet and takes an LQR-FLM step;
* ``after_iteration(i, record)``: noiseless trials of the policy through the graph (RunTrial
  policy_kind "policy") on the training conditions and — because the trainer's sim node and sampler
  know only the training conditions — noiseless in-process rollouts (MujocoEnv) on the held-out ones;
  adds ``policy_tip_distance`` / ``policy_success`` (and ``policy_held_out_*``) to the history.

Resuming: every S-step is saved atomically to ``<run_dir>/gps/s_step_<i>.pt`` (policy weights and
normalisation, torch generator and augmentation rng states, losses). A restarted trainer repeats an
unfinished iteration with the same samples (from the bags) and the same controllers (the iLQR node is
idempotent); an S-step already on disk is loaded instead of trained again, so a resumed run ends with
the policy of an uninterrupted run.

Step size — MDGPS's rule, as in one process (``mbpl_core.guided.mdgps.MDGPS._adapt_step``): ``step_mults``
compares the last C-step's record (its centre, new controller, model and sampled cost; saved to
``<run_dir>/gps/c_step_<i>.pkl``) with today's samples and reference (``gps.step_estimate``), averages
over conditions with ``gps.step_rule: global``, and sends each condition's step multiplier with the LQR
request, so the iLQR node does not apply its own LQR-FLM rule.

Deployment — with ``gps.select_best`` the checkpoint's ``policy.npz`` is the S-step snapshot of lowest
mean noiseless cost in the graph's policy trials on the training conditions (``policy.pt`` stays the
newest network); its held-out figures are recorded as ``deployed_held_out_*``.
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mbpl_core.config import ConfigError, from_dict
from mbpl_core.containers import LinearDynamics, LinearGaussianController, SampleBatch, StateLayout
from mbpl_core.costs import Cost, quadratic_cost_model
from mbpl_core.guided.mdgps import (
    CStepRecord,
    GaussianMLPPolicy,
    mdgps_step_mults,
    policy_rollouts,
    policy_to_params,
    s_step_update,
    save_policy_checkpoint,
)
from mbpl_core.local.lqr_flm import Environment
from mbpl_core.local.traj_opt import KLStepConfig
from mbpl_core.policy import (
    GPSConfig,
    NumpyPolicy,
    PolicyParams,
    linearize_policy,
    linearize_policy_jacobian,
    save_numpy_policy,
)
from mbpl_ros.trainer_logic import (
    MAX_SAMPLES,
    ControllerUpdate,
    Hooks,
    TrainerState,
    TrialFailedError,
    TrialRequest,
    TrialResult,
    controller_id,
    trial_id,
)
from mbpl_sim.experiment import ExperimentConfig
from mbpl_sim.history import success_fields

EVAL_INDEX = MAX_SAMPLES - 2  # sample index of policy evaluation trials (LG evaluation uses MAX_SAMPLES - 1)
STATE_FOLDER = "gps"
CHECKPOINT_FOLDER = "policy"


class PolicyChannel(Protocol):
    """What the hooks need from the graph (the trainer's GraphTransport; a fake in tests)."""

    def publish_policy(self, params: PolicyParams, policy_id: int) -> None:
        """Send the policy to the sampler (mbpl/policy), to be run on RunTrial(policy_kind="policy")."""

    def run_trial(self, request: TrialRequest) -> TrialResult | None:
        """Run one trial and wait for its sample; None if it never came."""

    def controller(self, controller_id: int, timeout: float) -> LinearGaussianController | None:
        """The LG controller of that id as published on mbpl/controllers; None if not within timeout s."""


def policy_id(iteration: int) -> int:
    """Id of the policy trained by the S-step of ``iteration``: i + 1 (0 means "no policy")."""
    if iteration < 0:
        raise ValueError(f"policy_id needs iteration >= 0, got {iteration}")
    return iteration + 1


def tip_distances(layout: StateLayout, batches: Sequence[SampleBatch]) -> list[float]:
    """Distance of the first ee point (tip) to its target at the last step, one per batch (first sample)."""
    return [float(np.linalg.norm(b.X[0, -1, layout.ee_points][:3])) for b in batches]


@dataclass(frozen=True)
class SStepRecord:
    """What one S-step left: iteration, precision-weighted loss before/after, gradient steps, seconds."""

    iteration: int
    loss_before: float
    loss_after: float
    steps: int
    seconds: float


class GPSHooks(Hooks):
    """MDGPS hooks of the trainer (module docstring). One instance per trainer process.

    run_dir: the graph's run folder; config: the experiment's ``gps:`` section; num_conditions: training
    conditions; layout: the state layout (dX = layout.dX); dU: action dimension; channel: publishes
    policies and runs evaluation trials; threshold: success distance of the tip (m); held_out_env:
    in-process environment of the held-out conditions (None: no held-out evaluation); max_attempts:
    per evaluation trial; cost: the experiment's cost (step rule, select_best); kl: ``algorithm.kl``
    (the step multiplier's bounds); validation_env: in-process environment of the validation conditions
    (gps.select_on "validation"). Raises ConfigError for gps.sample_on_policy (the graph samples the LG
    controllers only).
    """

    def __init__(self, run_dir: str | Path, config: GPSConfig, num_conditions: int, layout: StateLayout,
                 dU: int, channel: PolicyChannel, threshold: float, held_out_env: Environment | None = None,
                 max_attempts: int = 5, log: Callable[[str], Any] = print, *, cost: Cost,
                 kl: KLStepConfig, validation_env: Environment | None = None) -> None:
        if config.sample_on_policy:
            raise ConfigError("gps.sample_on_policy is not supported by the node graph (use mbpl train)")
        if config.select_best and config.select_on == "validation" and validation_env is None:
            raise ConfigError("gps.select_on: validation needs task.validation conditions")
        if num_conditions < 1 or max_attempts < 1:
            raise ValueError(f"need num_conditions >= 1 and max_attempts >= 1, got {num_conditions}, "
                             f"{max_attempts}")
        self.run_dir, self.config, self.layout = Path(run_dir), config, layout
        self.num_conditions = num_conditions
        self.dX, self.dU = dX, dU = layout.dX, dU
        self.channel, self.threshold, self.held_out_env = channel, float(threshold), held_out_env
        self.max_attempts, self.log = max_attempts, log
        self.cost, self.kl, self.validation_env = cost, kl, validation_env
        self.session = 0
        # (iteration, dynamics, quadratic cost models, mean sampled costs) of this iteration's C-step
        self._models: tuple[int, list[LinearDynamics], list[Any], list[float]] | None = None
        self.best: tuple[float, int] | None = None  # gps.select_best: (mean training cost, iteration)
        self.policy = GaussianMLPPolicy.from_config(config, dX, dU)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.augment_rng = np.random.default_rng(config.seed)
        self.controller_timeout = 60.0
        self.policy_iteration = -1  # the S-step the in-memory policy comes from; -1: untrained
        self.s_step: SStepRecord | None = None
        self._references: tuple[int, list[LinearGaussianController]] | None = None

    # -- persistence ---------------------------------------------------------------------------------
    def state_path(self, iteration: int) -> Path:
        """``<run_dir>/gps/s_step_<iteration>.pt``: the policy after that iteration's S-step."""
        return self.run_dir / STATE_FOLDER / f"s_step_{iteration:04d}.pt"

    def c_step_path(self, iteration: int) -> Path:
        """``<run_dir>/gps/c_step_<iteration>.pkl``: that iteration's C-step records and step multipliers."""
        return self.run_dir / STATE_FOLDER / f"c_step_{iteration:04d}.pkl"

    def _save_c_step(self, iteration: int, records: list[CStepRecord], step_mults: list[float]) -> None:
        path = self.c_step_path(iteration)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump({"records": records, "step_mults": step_mults}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _load_c_step(self, iteration: int) -> dict[str, Any] | None:
        """The C-step of ``iteration`` as saved by after_c_step; None before the first or if absent."""
        path = self.c_step_path(iteration)
        if iteration < 0 or not path.is_file():
            return None
        with open(path, "rb") as f:
            return pickle.load(f)  # noqa: S301 - the run folder's own file

    def _snapshot(self, iteration: int) -> PolicyParams:
        """The policy of S-step ``iteration`` (from its saved state), leaving the in-memory one alone."""
        policy = GaussianMLPPolicy.from_config(self.config, self.dX, self.dU)
        blob = torch.load(self.state_path(iteration), map_location="cpu", weights_only=True)
        policy.load_state_dict(blob["policy"])
        return policy_to_params(policy)

    def _save(self, record: SStepRecord) -> None:
        """Policy state, generator state and losses of one S-step, written atomically (tmp + rename)."""
        path = self.state_path(record.iteration)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"policy": {k: v.detach().cpu() for k, v in self.policy.state_dict().items()},
                "generator": self.generator.get_state(),
                "augment_rng": json.dumps(self.augment_rng.bit_generator.state),
                "record": [record.iteration, record.loss_before, record.loss_after, record.steps,
                           record.seconds]}
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_s_step(self, iteration: int) -> None:
        """Make the in-memory policy the one after S-step ``iteration`` (-1: the untrained one)."""
        if iteration == self.policy_iteration:
            return
        if iteration < 0:
            self.policy = GaussianMLPPolicy.from_config(self.config, self.dX, self.dU)
            self.generator = torch.Generator().manual_seed(self.config.seed)
            self.augment_rng = np.random.default_rng(self.config.seed)
            self.policy_iteration, self.s_step = -1, None
            return
        path = self.state_path(iteration)
        if not path.is_file():
            raise RuntimeError(f"the S-step of iteration {iteration} is missing ({path}); the run folder is "
                               "incomplete")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        self.policy.load_state_dict(blob["policy"])
        self.generator.set_state(blob["generator"])
        self.augment_rng.bit_generator.state = json.loads(blob["augment_rng"])
        i, before, after, steps, seconds = blob["record"]
        self.s_step = SStepRecord(int(i), float(before), float(after), int(steps), float(seconds))
        self.policy_iteration = iteration

    def latest_s_step(self) -> int:
        """The newest iteration whose S-step is on disk, or -1."""
        folder = self.run_dir / STATE_FOLDER
        found = [int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("s_step_*.pt")] if folder.is_dir() else []
        return max(found, default=-1)

    @property
    def numpy_policy(self) -> NumpyPolicy:
        """Numpy deployment copy of the in-memory policy (what the sampler runs)."""
        return NumpyPolicy(policy_to_params(self.policy))

    # -- hooks ---------------------------------------------------------------------------------------
    def on_start(self, state: TrainerState) -> None:
        """Remember the session (trial ids); after a restart, load and publish the newest policy again."""
        self.session = state.session
        key = self._selection_key
        scored = [(float(np.mean(r[key])), i) for i, r in enumerate(state.history) if key in r]
        self.best = min(scored) if self.config.select_best and scored else None
        latest = min(self.latest_s_step(), state.completed_iterations)
        if latest >= 0:
            self.load_s_step(latest)
            self.log(f"GPS: resumed the policy of iteration {latest}")
            self.channel.publish_policy(policy_to_params(self.policy), policy_id(latest))

    def before_c_step(self, iteration: int, batches: Sequence[SampleBatch]) -> None:
        """S-step (before_c_step order), then the newest policy linearised at the samples X (N, T, dX)."""
        self._references = None
        if self.config.s_step_order == "before_c_step":
            self._s_step(iteration, batches, lambda: self._sampled_controllers(iteration))
        elif iteration == 0:
            return  # no policy before the first S-step: an LQR-FLM step
        else:
            self.load_s_step(iteration - 1)
        policy = self.numpy_policy
        if self.config.linearization == "jacobian":
            refs = [linearize_policy_jacobian(policy, b.X) for b in batches]
        else:
            refs = [linearize_policy(policy, b.X, self.config.policy_prior_strength) for b in batches]
        self._references = (iteration, refs)

    def reference_for(self, iteration: int, condition: int) -> LinearGaussianController | None:
        """π̄_m of this iteration (None when there is no policy yet: an LQR-FLM step)."""
        if self._references is None or self._references[0] != iteration:
            return None
        return self._references[1][condition]

    def step_mults(self, iteration: int, batches: Sequence[SampleBatch],
                   dynamics: Callable[[], Sequence[LinearDynamics]]) -> list[float | None]:
        """MDGPS's step rule (module docstring): per condition the step multiplier of this C-step.

        The last C-step's multipliers, adapted from (previous, predicted, actual) costs
        (``mbpl_core.guided.mdgps.mdgps_step_costs``, averaged over conditions with step_rule "global")
        once the last C-step is on record and every condition has a policy reference; unchanged otherwise.
        """
        dyns = list(dynamics())
        quads, sample_costs = [], []
        for batch in batches:
            costs, quad = quadratic_cost_model(self.cost, batch)
            quads.append(quad)
            sample_costs.append(float(np.mean(np.sum(costs, axis=1))))
        self._models = (iteration, dyns, quads, sample_costs)
        last = self._load_c_step(iteration - 1)
        initial = min(max(1.0, self.kl.min_step_mult), self.kl.max_step_mult)  # as ConditionOptimizer
        mults = [initial] * self.num_conditions if last is None else list(last["step_mults"])
        refs = [self.reference_for(iteration, m) for m in range(self.num_conditions)]
        if last is None or any(r is None for r in refs):
            return mults
        models = list(zip(dyns, quads, strict=True))
        return mdgps_step_mults(mults, last["records"], refs, models,  # type: ignore[arg-type]
                                sample_costs, self.config, self.kl)

    def after_c_step(self, iteration: int, batches: Sequence[SampleBatch],
                     updates: Sequence[ControllerUpdate]) -> None:
        """Record the C-step for the next step rule; S-step onto the new controllers (after_c_step order)."""
        if self._models is not None and self._models[0] == iteration:
            self._record_c_step(iteration, updates)
        if self.config.s_step_order == "after_c_step":
            self._s_step(iteration, batches, lambda: [u.controller for u in updates])

    def _record_c_step(self, iteration: int, updates: Sequence[ControllerUpdate]) -> None:
        """Save this C-step's records (CStepRecord per condition) and step multipliers for the next rule.

        The centre of an LQR-FLM step (no reference, or its fallback) is the sampled controller; it is
        kept only where the "laplace" estimate needs it (after a restart it may be gone from
        mbpl/controllers: the trainer then stops with the reason).
        """
        assert self._models is not None
        _, dyns, quads, sample_costs = self._models
        records = []
        for m, update in enumerate(updates):
            if update.controller is None:
                raise RuntimeError(f"GPS: iteration {iteration} condition {m}: the LQR step returned no "
                                   "controller")
            centre = None if update.reference_fallback else self.reference_for(iteration, m)
            if centre is None and self.config.step_estimate == "laplace":
                centre = self.channel.controller(controller_id(iteration, m), self.controller_timeout)
                if centre is None:
                    raise RuntimeError(f"GPS: iteration {iteration} condition {m}: the sampled controller "
                                       "is not on mbpl/controllers (needed by gps.step_estimate: laplace)")
            records.append(CStepRecord(centre, update.controller, dyns[m], quads[m], sample_costs[m]))
        self._save_c_step(iteration, records, [float(u.step_mult) for u in updates])

    def _sampled_controllers(self, iteration: int) -> list[LinearGaussianController | None]:
        """The controllers that produced this iteration's samples, as the iLQR node published them."""
        return [self.channel.controller(controller_id(iteration, m), self.controller_timeout)
                for m in range(self.num_conditions)]

    def _s_step(self, iteration: int, batches: Sequence[SampleBatch],
                controllers: Callable[[], list[LinearGaussianController | None]]) -> None:
        """S-step of ``iteration`` (or its saved result), checkpoint, publish as policy ``iteration + 1``."""
        if self.state_path(iteration).is_file():
            self.load_s_step(iteration)
            self.log(f"GPS: S-step of iteration {iteration} already done; loaded it")
        else:
            found = controllers()
            missing = [m for m, c in enumerate(found) if c is None]
            if missing:
                raise RuntimeError(f"GPS: iteration {iteration}: no LG controller of condition(s) {missing} "
                                   "for the S-step")
            self._train(iteration, batches, found)  # type: ignore[arg-type]
        save_policy_checkpoint(self.run_dir / CHECKPOINT_FOLDER, self.policy, self.config)
        self.channel.publish_policy(policy_to_params(self.policy), policy_id(iteration))

    def _train(self, iteration: int, batches: Sequence[SampleBatch],
               controllers: list[LinearGaussianController]) -> None:
        """S-step of ``iteration`` from the policy of iteration − 1, saved before it is used.

        The same update as ``mbpl_core.guided.mdgps.MDGPS.s_step``
        (:func:`mbpl_core.guided.mdgps.s_step_update`).
        """
        self.load_s_step(iteration - 1)
        start = time.perf_counter()
        report = s_step_update(self.policy, controllers, batches, self.config, self.generator,
                               self.augment_rng)
        record = SStepRecord(iteration, report.loss_before, report.loss_after, report.iterations,
                             time.perf_counter() - start)
        self._save(record)
        self.policy_iteration, self.s_step = iteration, record
        self.log(f"GPS: S-step of iteration {iteration}: loss {record.loss_before:.4g} → "
                 f"{record.loss_after:.4g} in {record.seconds:.1f} s")

    @property
    def _selection_key(self) -> str:
        """The history field whose mean gps.select_best minimises."""
        return "policy_validation_cost" if self.config.select_on == "validation" else "policy_train_cost"

    def after_iteration(self, iteration: int, record: dict[str, Any]) -> dict[str, Any]:
        """Policy evaluation: tip distances and success on training (graph) and held-out (in-process) sets."""
        self.load_s_step(iteration)
        pid = policy_id(iteration)
        trials = [r.batch for r in self.evaluate_in_graph(iteration, pid)]
        train_cost = [float(quadratic_cost_model(self.cost, b)[0].sum()) for b in trials]
        out: dict[str, Any] = {"policy_id": pid, **self._success_fields("policy", tip_distances(self.layout,
                                                                                                trials)),
                               "policy_train_cost": train_cost}
        if self.s_step is not None:
            out["s_step"] = {"loss_before": self.s_step.loss_before, "loss_after": self.s_step.loss_after,
                             "steps": self.s_step.steps, "seconds": self.s_step.seconds}
        out["reference_used"] = [self.reference_for(iteration, m) is not None
                                 for m in range(self.num_conditions)]
        if self.held_out_env is not None and self.held_out_env.num_conditions:
            conditions = range(self.held_out_env.num_conditions)
            rollouts = policy_rollouts(self.held_out_env, self.numpy_policy, conditions)
            held_out = tip_distances(self.layout, rollouts)
            out.update(self._success_fields("policy_held_out", held_out))
        if self.config.select_best and self.config.select_on == "validation":
            assert self.validation_env is not None  # checked in __init__
            rollouts = policy_rollouts(self.validation_env, self.numpy_policy,
                                       range(self.validation_env.num_conditions))
            out["policy_validation_cost"] = [float(quadratic_cost_model(self.cost, b)[0].sum())
                                             for b in rollouts]
            out.update(self._success_fields("policy_validation", tip_distances(self.layout, rollouts)))
        score = float(np.mean(out[self._selection_key])) if self.config.select_best else float("nan")
        out.update(self.deploy(iteration, score, out))
        return out

    def deploy(self, iteration: int, score: float, out: dict[str, Any]) -> dict[str, Any]:
        """gps.select_best: keep the snapshot of lowest selection cost (noiseless, on the training or the
        validation conditions: gps.select_on) as the checkpoint's policy.npz.

        Returns the history fields of the deployed policy: its iteration and held-out figures.
        """
        if not self.config.select_best:
            return {"deployed_policy_iteration": iteration}
        if np.isfinite(score) and (self.best is None or score < self.best[0]):
            self.best = (score, iteration)
        best = iteration if self.best is None else self.best[1]
        fields: dict[str, Any] = {"deployed_policy_iteration": best}
        if best == iteration:
            fields.update({f"deployed_{k}": v for k, v in out.items() if k.startswith("policy_held_out")})
            return fields  # the checkpoint written after this S-step is the deployed one already
        params = self._snapshot(best)
        save_numpy_policy(self.run_dir / CHECKPOINT_FOLDER, params, self.config)
        self.log(f"GPS: deployed policy: S-step snapshot of iteration {best} (gps.select_best)")
        if self.held_out_env is not None and self.held_out_env.num_conditions:
            rollouts = policy_rollouts(self.held_out_env, NumpyPolicy(params),
                                       range(self.held_out_env.num_conditions))
            fields.update(self._success_fields("deployed_policy_held_out",
                                               tip_distances(self.layout, rollouts)))
        return fields

    def _success_fields(self, prefix: str, distances: list[float]) -> dict[str, Any]:
        return success_fields(prefix, distances, self.threshold)

    def evaluate_in_graph(self, iteration: int, pid: int) -> list[TrialResult]:
        """One noiseless policy trial per training condition; re-run until the sampler ran policy ``pid``.

        The sampler swaps a policy in when its message arrives, so a trial asked for right after the
        publication may still run the previous one: its sample says so (controller_id = policy id).
        """
        return [self._policy_trial(iteration, m, pid) for m in range(self.num_conditions)]

    def _policy_trial(self, iteration: int, m: int, pid: int) -> TrialResult:
        ran = "no sample"
        for attempt in range(self.max_attempts):
            tid = trial_id(self.session, iteration, m, EVAL_INDEX, attempt)
            request = TrialRequest(condition=m, trial_id=tid, controller_id=pid, seed=0, add_noise=False,
                                   policy_kind="policy")
            result = self.channel.run_trial(request)
            if result is not None and not result.meta.aborted and result.meta.controller_id == pid:
                return result
            if result is not None:
                ran = (f"aborted: {result.meta.abort_reason}" if result.meta.aborted
                       else f"ran policy {result.meta.controller_id}")
            time.sleep(min(2.0, 0.1 * 2**attempt))  # give the policy message time to arrive
        raise TrialFailedError(f"iteration {iteration}: policy trial of condition {m} failed "
                               f"({ran}, expected policy {pid})")


def build_gps_hooks(experiment: ExperimentConfig, run_dir: str | Path, channel: PolicyChannel, cost: Cost,
                    kl: KLStepConfig, max_attempts: int = 5,
                    log: Callable[[str], Any] = print) -> GPSHooks | None:
    """GPSHooks for an experiment with ``method: mdgps`` (None for lqr_flm); ConfigError on a bad ``gps:``.

    The held-out conditions, if the experiment has any, are evaluated in-process (MujocoEnv).
    """
    if experiment.method != "mdgps":
        return None
    from mbpl_sim.env import MujocoEnv
    from mbpl_sim.evaluate import DEFAULT_SUCCESS_THRESHOLD

    config = from_dict(GPSConfig, dict(experiment.gps or {}), "gps")
    from mbpl_sim.training import validation_env

    held_out = MujocoEnv(experiment, condition_set="held_out") if experiment.conditions("held_out") else None
    threshold = DEFAULT_SUCCESS_THRESHOLD.get(experiment.task.scene, 0.02)
    return GPSHooks(run_dir, config, len(experiment.conditions("train")), experiment.layout,
                    experiment.robot.dQ, channel, threshold, held_out, max_attempts, log, cost=cost, kl=kl,
                    validation_env=validation_env(experiment, config))
