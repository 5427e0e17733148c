"""mbpl_core: the model-based policy learning algorithms (LQR-FLM, MDGPS), pure numpy/scipy/torch.

No ROS, no MuJoCo, no config files here: everything is testable in one process.
"""

from mbpl_core.containers import (
    LinearDynamics,
    LinearGaussianController,
    SampleBatch,
    ShapeError,
    TrajectoryMarginals,
)

__all__ = [
    "LinearDynamics",
    "LinearGaussianController",
    "SampleBatch",
    "ShapeError",
    "TrajectoryMarginals",
]
