# ruff: noqa: E501  (a table of exact code snippets reads best one mutant per line)
"""The mutant catalogue of bench/mutation/run.py: which fast tests guard each target file, and the mutants.

A mutant replaces the exact snippet ``find`` (present once in ``file``) by ``replace``. Kinds: sign,
dropped-term, transpose, off-by-one, axis, wrong-operand, boundary, dropped-check, issue-14 (the bugs
planted for issue 14). ``equivalent`` holds the reason a mutant cannot change observable behaviour; keep
that list short and argued. When a new module lands (models, planners, learners), add its tests to TESTS
and its mutants below, or run ``bench/mutation/run.py --auto FILE`` for generated ones first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CORE = "tests/core"
TESTS: dict[str, list[str]] = {
    "mbpl_core/local/dynamics.py": [f"{CORE}/test_dynamics.py", f"{CORE}/test_lqr_flm.py"],
    "mbpl_core/local/gmm.py": [f"{CORE}/test_gmm.py", f"{CORE}/test_dynamics.py"],
    "mbpl_core/local/traj_opt.py": [f"{CORE}/test_traj_opt.py", f"{CORE}/test_lqr_flm.py"],
    "mbpl_core/local/init.py": [f"{CORE}/test_init.py", f"{CORE}/test_lqr_flm.py"],
    "mbpl_core/local/lqr_flm.py": [f"{CORE}/test_lqr_flm.py"],
    "mbpl_core/guided/mdgps.py": [f"{CORE}/test_gps.py", f"{CORE}/test_policy.py"],
    "mbpl_core/policy.py": [f"{CORE}/test_policy.py", f"{CORE}/test_gps.py"],
    "mbpl_core/costs.py": [f"{CORE}/test_costs.py", f"{CORE}/test_lqr_flm.py"],
    "mbpl_core/containers.py": [f"{CORE}/test_containers.py", f"{CORE}/test_traj_opt.py",
                                f"{CORE}/test_dynamics.py", f"{CORE}/test_lqr_flm.py"],
    "mbpl_core/noise.py": [f"{CORE}/test_noise.py"],
    "ros2_ws/src/mbpl_ros/mbpl_ros/sampler_logic.py": ["tests/ros/test_sampler_logic.py",
                                                       "tests/ros/test_hardening.py"],
    "ros2_ws/src/mbpl_ros/mbpl_ros/action_bounds.py": ["tests/ros/test_sampler_logic.py",
                                                       "tests/ros/test_hardening.py"],
}


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    find: str
    replace: str
    kind: str
    note: str
    equivalent: str = ""
    tests: list[str] = field(default_factory=list)


def _m(id: str, file: str, find: str, replace: str, kind: str, note: str, equivalent: str = "") -> Mutant:
    return Mutant(id, file, find, replace, kind, note, equivalent, TESTS[file])


DYN = "mbpl_core/local/dynamics.py"
GMM = "mbpl_core/local/gmm.py"
TRAJ = "mbpl_core/local/traj_opt.py"
INIT = "mbpl_core/local/init.py"
FLM = "mbpl_core/local/lqr_flm.py"
GPS = "mbpl_core/guided/mdgps.py"
POL = "mbpl_core/policy.py"
COST = "mbpl_core/costs.py"
CONT = "mbpl_core/containers.py"
NOISE = "mbpl_core/noise.py"
SAMP = "ros2_ws/src/mbpl_ros/mbpl_ros/sampler_logic.py"
BOUNDS = "ros2_ws/src/mbpl_ros/mbpl_ros/action_bounds.py"

MUTANTS: list[Mutant] = [
    # ---------------------------------------------------------------- dynamics (BLR with the NIW prior)
    _m("dyn-niw-discrepancy", DYN,
       "m * niw.Phi + shrink * d[:, :, None] * d[:, None, :]) / (N + n0)", "m * niw.Phi) / (N + n0)",
       "issue-14", "mean-discrepancy term N·m/(N+m)(ȳ−μ0)(ȳ−μ0)ᵀ dropped from the NIW posterior"),
    _m("dyn-shrink-n0", DYN, "shrink = N * m / (N + m)", "shrink = N * m / (N + n0)",
       "wrong-operand", "discrepancy weight with n0 for m"),
    _m("dyn-phi-unscaled", DYN, "N * emp + m * niw.Phi", "N * emp + niw.Phi",
       "dropped-term", "prior scatter not scaled by the prior strength"),
    _m("dyn-denominator", DYN, "d[:, None, :]) / (N + n0)", "d[:, None, :]) / (N + m)",
       "wrong-operand", "posterior covariance divided by N + m instead of N + n0"),
    _m("dyn-x0-discrepancy", DYN, " + N * s / (N + s) * (x0mu - pmu) ** 2) / (N + s)", ") / (N + s)",
       "dropped-term", "x0 variance: mean-discrepancy term dropped"),
    _m("dyn-x0-prior-unscaled", DYN, "x0.var(axis=0) + s * pvar", "x0.var(axis=0) + pvar",
       "dropped-term", "x0 variance: prior variance not weighted by s"),
    _m("dyn-fv-sign", DYN, "fv = mu[:, dXU:] - np.einsum", "fv = mu[:, dXU:] + np.einsum",
       "sign", "offset fv = μ_y + Fm μ_x"),
    _m("dyn-covar-unregularised", DYN, "dyn_covar = sigma[:, dXU:, dXU:] - Fm @ sxx @",
       "dyn_covar = sigma[:, dXU:, dXU:] - Fm @ sigma[:, :dXU, :dXU] @",
       "dropped-term", "residual covariance with Σ_xx instead of Σ_xx + λI"),
    _m("dyn-unbiased-cov", DYN, "cov = np.swapaxes(diff, 1, 2) @ diff / Y.shape[1]",
       "cov = np.swapaxes(diff, 1, 2) @ diff / (Y.shape[1] - 1)",
       "off-by-one", "empirical covariance 1/(N−1) instead of the documented 1/N"),
    _m("dyn-next-state", DYN, "batch.U[:, :-1], batch.X[:, 1:]], axis=2)",
       "batch.U[:, :-1], batch.X[:, :-1]], axis=2)", "off-by-one", "tuples pair x_t with x_t, not x_{t+1}"),
    _m("dyn-x0-floor", DYN, "np.maximum(np.var(x0, axis=0), initial_state_var)",
       "np.minimum(np.var(x0, axis=0), initial_state_var)", "sign", "x0 variance floor becomes a ceiling"),
    _m("dyn-keep-oldest", DYN, "self.X, self.U = X[-keep:], U[-keep:]", "self.X, self.U = X[:keep], U[:keep]",
       "off-by-one", "prior keeps the oldest max_samples trajectories instead of the newest"),
    _m("dyn-x0-mean-axis", DYN, "return self.X[:, 0].mean(axis=0), self.X[:, 0].var(axis=0)",
       "return self.X[:, 0].mean(axis=0), self.X[:, 0].var(axis=0) * 0 + self.X[:, 0].var()",
       "axis", "prior x0 variance over all coordinates instead of per coordinate"),
    # ---------------------------------------------------------------- GMM
    _m("gmm-phi-between", GMM, "phi = phi + np.swapaxes(diff, -1, -2) @ diff", "phi = phi",
       "dropped-term", "collapsed prior Φ without the between-cluster spread"),
    _m("gmm-weights-log-n", GMM, "axis=-2) - np.log(N))", "axis=-2))", "dropped-term",
       "responsibility weights not divided by N",
       equivalent="the weights are renormalised to sum 1 on the next line, so a common factor 1/N cancels"),
    _m("gmm-n0-unnormalised", GMM, "n0 = max(self.num_points - 2 - D, 1) / self.num_points",
       "n0 = max(self.num_points - 2 - D, 1)", "dropped-term", "n0 not normalised by the number of points"),
    _m("gmm-logdet-sign", GMM, "-0.5 * (maha + logdet[None, :] + D * _LOG_2PI)",
       "-0.5 * (maha - logdet[None, :] + D * _LOG_2PI)", "sign", "log-density with + log|Σ|/2"),
    _m("gmm-mstep-sqrt", GMM, "* np.sqrt(w[rows, j])[:, None]", "* w[rows, j][:, None]", "dropped-term",
       "M-step covariance weights squared"),
    _m("gmm-em-stop", GMM, "if (ll - prev_ll) / P <= self.tolerance:", "if (ll - prev_ll) / P >= self.tolerance:",
       "sign", "EM stop test inverted"),
    _m("gmm-mass-unnormalised", GMM, "self.logmass = log_nk - scipy.special.logsumexp(log_nk)",
       "self.logmass = log_nk - np.log(P)", "wrong-operand",
       "log masses normalised by P instead of the total responsibility",
       equivalent="Σ_k n_k = P (responsibilities sum to 1 per point) up to the dead-cluster floor of 1e-8"),
    _m("gmm-centre", GMM, "shifted[:, :D] = data - centre", "shifted[:, :D] = data", "dropped-term",
       "data not centred while the means are"),
    _m("gmm-inference-mu0", GMM, "mu0 = wts @ self.mu", "mu0 = self.mu.mean(axis=0) + 0 * wts[..., :1]",
       "wrong-operand", "prior mean = unweighted mean of the cluster means"),
    # ---------------------------------------------------------------- trajectory optimisation
    _m("traj-backward-time", TRAJ, "else C[t] + F[t].T @ V @ F[t]", "else C[t] + F[t + 1].T @ V @ F[t + 1]",
       "issue-14", "backward pass uses F[t+1] for F[t]"),
    _m("traj-value-sign", TRAJ, "V = Q[:nx, :nx] + Q[nx:, :nx].T @ gains[t]",
       "V = Q[:nx, :nx] - Q[nx:, :nx].T @ gains[t]", "sign", "value update with the wrong sign"),
    _m("traj-no-ref-precision", TRAJ, "        C[:, nx:, nx:] += problem.P_ref\n", "        pass\n",
       "dropped-term", "reference precision left out of Q_uu"),
    _m("traj-no-congruence", TRAJ, "    F = F @ J  # the row", "    F = F  # the row", "dropped-term",
       "dynamics not moved to the reference's deviation coordinates"),
    _m("traj-half-linear-cost", TRAJ, "    C[:, orig, dX] = cv\n", "", "dropped-term",
       "linear cost term only on one side of the homogeneous matrix"),
    _m("traj-ref-cross-sign", TRAJ, "M[:, dX:, :dX] = -PK", "M[:, dX:, :dX] = PK", "sign",
       "−log p_ref cross term sign"),
    _m("traj-forward-no-dyn-noise", TRAJ, "np.swapaxes(Fu, 1, 2) + dynamics.dyn_covar",
       "np.swapaxes(Fu, 1, 2)", "dropped-term", "forward pass ignores the dynamics covariance"),
    _m("traj-forward-no-pol-covar", TRAJ, "KS @ np.swapaxes(K, 1, 2) + controller.pol_covar",
       "KS @ np.swapaxes(K, 1, 2)", "dropped-term", "action marginal without the controller covariance"),
    _m("traj-forward-transpose", TRAJ, "S = A[t] @ S @ A[t].T + W[t]", "S = A[t].T @ S @ A[t] + W[t]",
       "transpose", "state covariance propagated with Aᵀ S A"),
    _m("traj-kl-logdet", TRAJ, "- new.dU + logdet_ref - logdet_new)", "- new.dU + logdet_new - logdet_ref)",
       "sign", "KL log-determinant terms swapped"),
    _m("traj-kl-state-term", TRAJ, "trace_term + mean_term + state_term", "trace_term + mean_term",
       "dropped-term", "KL without the state-covariance term tr(ΔKᵀPΔKΣ)"),
    _m("traj-kl-transpose", TRAJ, "state_term = np.sum(dK * (P @ dK @ Sx), axis=(1, 2))",
       "state_term = np.sum(dK * (P @ dK @ np.swapaxes(Sx, 1, 2)), axis=(1, 2))", "transpose",
       "Σ transposed in the KL state term", equivalent="Sx is a covariance, symmetric by construction"),
    _m("traj-expected-cost-half", TRAJ, "0.5 * np.sum(quad.Cm * sigma, axis=(1, 2))",
       "np.sum(quad.Cm * sigma, axis=(1, 2))", "dropped-term", "E[c] trace term without the ½"),
    _m("traj-step-predicted-new-model", TRAJ,
       "predicted = total_expected_cost(self.controller, self._prev_dynamics, self._prev_quad)",
       "predicted = total_expected_cost(self.controller, dynamics, quad)", "issue-14",
       "LQR-FLM step rule: predicted cost under the new model instead of the previous one"),
    _m("traj-step-previous-controller", TRAJ,
       "previous = total_expected_cost(self._prev_controller, self._prev_dynamics, self._prev_quad)",
       "previous = total_expected_cost(self.controller, self._prev_dynamics, self._prev_quad)",
       "wrong-operand", "step rule: previous cost of the current controller"),
    _m("traj-step-rule-factor", TRAJ, "mult = predicted_impr / (2.0 * max(1e-4,", "mult = predicted_impr / (max(1e-4,",
       "dropped-term", "step rule without the factor 2"),
    _m("traj-step-rule-clip", TRAJ, "mult = min(max(mult, 0.1), 5.0)", "mult = min(max(mult, 0.1), 10.0)",
       "boundary", "step rule's growth clipped at 10 instead of 5"),
    _m("traj-epsilon-t", TRAJ, "epsilon = self.config.kl_step * mult * dynamics.T",
       "epsilon = self.config.kl_step * mult * (dynamics.T - 1)", "off-by-one", "ε with T − 1"),
    _m("traj-prev-is-new", TRAJ,
       "self._prev_controller, self._prev_dynamics, self._prev_quad = self.controller, dynamics, quad\n        self.controller, self.eta = controller, info.eta",
       "self._prev_controller, self._prev_dynamics, self._prev_quad = controller, dynamics, quad\n        self.controller, self.eta = controller, info.eta",
       "wrong-operand", "accept remembers the new controller as the previous one"),
    _m("traj-eta-expand", TRAJ, "return min(math.sqrt(lo * hi), 10.0 * lo)", "return max(math.sqrt(lo * hi), 10.0 * lo)",
       "sign", "η search expands to the geometric midpoint at once"),
    _m("traj-accept-tolerance", TRAJ, "if abs(kl - epsilon) <= tol or", "if abs(kl - epsilon) < 0.5 * tol or",
       "boundary", "η search accepts only within half the tolerance"),
    _m("traj-psd-check", TRAJ, "bad = np.flatnonzero((low < -1e-9 * scale) | (asym > 1e-8 * scale))",
       "bad = np.flatnonzero(asym > 1e-8 * scale)", "dropped-check", "indefinite dyn_covar accepted"),
    # ---------------------------------------------------------------- init, LQR-FLM loop, containers, noise
    _m("init-pd-sign", INIT, "K[:, layout.q] = -np.diag(Kp)", "K[:, layout.q] = np.diag(Kp)", "sign",
       "PD init with positive position feedback"),
    _m("init-var", INIT, "np.asarray(config.init_var) * np.eye(dQ)",
       "np.sqrt(np.asarray(config.init_var)) * np.eye(dQ)", "wrong-operand",
       "PD init covariance is the standard deviation"),
    _m("flm-mean-cost-axis", FLM, "mean_cost = float(np.mean(np.sum(sample_costs, axis=1)))",
       "mean_cost = float(np.mean(np.sum(sample_costs, axis=0)))", "axis",
       "reported cost sums over samples and averages over time"),
    _m("cont-act-offset", CONT, "u = self.K[t] @ x + self.k[t]", "u = self.K[t] @ x + self.k[t - 1]",
       "off-by-one", "controller offset of the previous step"),
    _m("cont-fold-transpose", CONT, 'np.einsum("tij,tj->ti", self.chol_pol_covar, noise)',
       'np.einsum("tji,tj->ti", self.chol_pol_covar, noise)', "transpose",
       "folded noise with Lᵀ instead of L"),
    _m("noise-renormalise-axis", NOISE, "std = np.std(noise, axis=0)", "std = np.std(noise, axis=1)",
       "axis", "noise renormalised per time step instead of per action dimension"),
    # ---------------------------------------------------------------- MDGPS
    _m("mdgps-sstep-diagonal", GPS, 'torch.einsum("bi,bij,bj->b", d, prec, d)',
       'torch.einsum("bi,bii,bi->b", d, prec, d)', "issue-14", "S-step loss uses only diag(Λ)"),
    _m("mdgps-action-covar-transpose", GPS, "torch.as_tensor(covar.T @ covar, dtype=DTYPE)",
       "torch.as_tensor(covar @ covar.T, dtype=DTYPE)", "transpose",
       "policy covariance L⁻¹L⁻ᵀ instead of (LLᵀ)⁻¹"),
    _m("mdgps-predicted-new-model", GPS,
       "predicted = total_expected_cost(record.controller, record.dynamics, record.quad)",
       "predicted = total_expected_cost(record.controller, dynamics, quad)", "issue-14",
       "MDGPS step rule: predicted cost under today's model instead of the record's"),
    _m("mdgps-previous-controller", GPS, "values = (total_expected_cost(record.reference, record.dynamics",
       "values = (total_expected_cost(record.controller, record.dynamics", "wrong-operand",
       "laplace previous cost of the C-step's controller instead of the last reference"),
    _m("mdgps-actual-old-reference", GPS, "total_expected_cost(reference, dynamics, quad))",
       "total_expected_cost(record.reference, dynamics, quad))", "wrong-operand",
       "laplace actual cost of the last reference instead of today's"),
    _m("mdgps-global-axis", GPS, "costs = np.broadcast_to(costs.mean(axis=0), costs.shape)",
       "costs = np.broadcast_to(costs.mean(axis=1, keepdims=True), costs.shape)", "axis",
       "global step rule averages the three estimates instead of the conditions"),
    _m("mdgps-target-offset", GPS, 'mu = np.einsum("tux,ntx->ntu", c.K, batch.X) + c.k',
       'mu = np.einsum("tux,ntx->ntu", c.K, batch.X)', "dropped-term", "S-step targets without k_t"),
    _m("mdgps-target-covariance", GPS, "prec = np.broadcast_to(c.inv_pol_covar, (batch.N, *c.inv_pol_covar.shape))",
       "prec = np.broadcast_to(c.pol_covar, (batch.N, *c.inv_pol_covar.shape))", "wrong-operand",
       "S-step weights are the controller covariance instead of its inverse"),
    _m("mdgps-augment-scale", GPS, 'np.einsum("cpn,ntx->cptx", z, D) / np.sqrt(batch.N)',
       'np.einsum("cpn,ntx->cptx", z, D)', "dropped-term", "perturbed targets √N too wide"),
    _m("mdgps-ema-swap", GPS, "p.mul_(1.0 - config.policy_ema).add_(old, alpha=config.policy_ema)",
       "p.mul_(config.policy_ema).add_(old, alpha=1.0 - config.policy_ema)", "wrong-operand",
       "policy EMA weights swapped"),
    _m("mdgps-refit-bias-sign", GPS, "first.bias.add_(first.weight @ shift)", "first.bias.sub_(first.weight @ shift)",
       "sign", "normalisation refit compensates the bias with the wrong sign"),
    _m("mdgps-average-alpha", GPS, "acc.add_(p, alpha=1.0 / config.average_last)", "acc.add_(p, alpha=1.0)",
       "dropped-term", "iterate average not divided by its count"),
    _m("mdgps-sample-cost-axis", GPS, "sample_costs.append(float(np.mean(np.sum(costs, axis=1))))",
       "sample_costs.append(float(np.mean(np.sum(costs, axis=0))))", "axis",
       "sampled cost of the step rule sums over samples, averages over time"),
    # ---------------------------------------------------------------- deployable policy
    _m("pol-normalise-sign", POL, "self._layers = [(np.ascontiguousarray(W1_state), b1 - W1_scaled @ params.obs_mean)]",
       "self._layers = [(np.ascontiguousarray(W1_state), b1 + W1_scaled @ params.obs_mean)]", "sign",
       "folded normalisation adds the mean"),
    _m("pol-noise-transpose", POL, "u += self._chol @ noise", "u += self._chol.T @ noise", "transpose",
       "policy noise with Lᵀ"),
    _m("pol-jacobian-offset-sign", POL, 'k = mu.mean(axis=0) - np.einsum("tux,tx->tu", K, X.mean(axis=0))',
       'k = mu.mean(axis=0) + np.einsum("tux,tx->tu", K, X.mean(axis=0))', "sign", "linearisation offset sign"),
    _m("pol-jacobian-covar", POL, 'resid, resid) / N + policy.action_covar', 'resid, resid) / N',
       "dropped-term", "jacobian linearisation without the policy covariance"),
    _m("pol-jacobian-time-mean", POL, "K = J.mean(axis=0)", "K = J.mean(axis=1)", "axis",
       "gains averaged over time instead of samples"),
    _m("pol-regression-discrepancy", POL, "Phi + (N * m) / (N + m) * np.einsum", "Phi + 0 * np.einsum",
       "dropped-term", "policy linearisation: NIW mean-discrepancy term dropped"),
    _m("pol-condition-covar", POL, "return LinearGaussianController.from_covariance(K, k, resid + action_covar)",
       "return LinearGaussianController.from_covariance(K, k, resid + 0 * action_covar)", "dropped-term",
       "regression linearisation without the policy covariance"),
    _m("pol-tanh-slope", POL, "slope = 1.0 - h * h", "slope = 1.0 - h", "dropped-term",
       "tanh derivative 1 − tanh instead of 1 − tanh²"),
    # ---------------------------------------------------------------- costs
    _m("cost-l1l2-hessian-sign", COST, "ldd = scale[:, None, None] * np.diag(wp) - (l1 / rho**3)",
       "ldd = scale[:, None, None] * np.diag(wp) + (l1 / rho**3)", "sign", "l1-l2 Hessian correction sign"),
    _m("cost-l1l2-rho", COST, "scale = l2 + l1 / rho", "scale = l2 + l1 * rho", "wrong-operand",
       "l1-l2 gradient scale"),
    _m("cost-average", COST, "return costs, QuadraticCost(Cm / N, cv / N, cc / N)",
       "return costs, QuadraticCost(Cm / N, cv / N, cc)", "dropped-term", "cost model constant not averaged"),
    _m("cost-state-half", COST, "l = 0.5 * r * np.sum(self.weights * diff**2, axis=1)",
       "l = r * np.sum(self.weights * diff**2, axis=1)", "dropped-term", "state cost without ½"),
    # ---------------------------------------------------------------- sampler validation (issue 8 owns the tests)
    _m("sampler-gain-abs", SAMP, "gain = float(np.max(np.abs(controller.K)))", "gain = float(np.max(controller.K))",
       "issue-14", "gain bound without abs: large negative gains accepted"),
    _m("sampler-gain-boundary", SAMP, "if not gain <= limits.max_gain:", "if not gain < limits.max_gain:",
       "boundary", "a controller exactly at the gain bound rejected"),
    _m("sampler-shape-check", SAMP, "if controller.K.shape != expected:", "if controller.K.shape[1:] != expected[1:]:",
       "dropped-check", "controller of another horizon T accepted"),
    _m("sampler-lg-action-bound", SAMP, '    limits.check("controller", lg_action_bound(controller, limits.box))\n', "",
       "dropped-check", "controller's action and noise over the state box not bounded"),
    _m("sampler-policy-shape", SAMP, "    require_params_shape(params, setup.dX, setup.dU)\n", "",
       "dropped-check", "policy for another state or action size accepted"),
    _m("sampler-policy-gain", SAMP, "if not gain <= limits.max_policy_gain:", "if False:",
       "dropped-check", "policy gain bound not enforced"),
    _m("sampler-policy-action-bound", SAMP, '        limits.check("policy", policy_action_bound(params, limits.box))\n',
       "", "dropped-check", "policy's action over the state box not bounded"),
    _m("sampler-policy-finite", SAMP, "    policy.act(0, np.zeros(setup.dX), None)  # raises", "    pass  # raises",
       "dropped-check", "policy with non-finite output at x = 0 accepted"),
    _m("bounds-lg-radius", BOUNDS, "+ np.abs(controller.K) @ box.radius", "+ controller.K @ box.radius",
       "dropped-term", "LG action bound with signed gains over the box radius"),
    _m("bounds-lg-offset-abs", BOUNDS, "mean = np.abs(controller.K @ box.centre + controller.k)",
       "mean = (controller.K @ box.centre + controller.k)", "dropped-term",
       "LG action bound without abs of the centre action"),
    _m("bounds-policy-radius", BOUNDS, "centre, radius = W @ mid + b, np.abs(W) @ half",
       "centre, radius = W @ mid + b, W @ half", "dropped-term", "interval propagation with signed weights"),
]
