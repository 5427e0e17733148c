"""Family 1, local models: LG controllers on locally fitted dynamics (GMM prior + BLR), KL-constrained
LQR (LQR-FLM). Modules: ``dynamics`` (BLR with the NIW prior), ``gmm``, ``traj_opt`` (LQR, KL step),
``init`` (initial controllers), ``lqr_flm`` (the loop)."""
