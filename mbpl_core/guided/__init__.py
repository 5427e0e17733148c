"""Family 1, guided policy search: MDGPS (S-step, policy linearisation, step rule) in ``mdgps``."""
