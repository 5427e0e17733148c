"""mbpl_sim: MuJoCo robots, scenes, tasks and the in-process environment."""
