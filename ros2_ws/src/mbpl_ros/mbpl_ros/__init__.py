"""mbpl_ros: ROS 2 nodes of the mbpl stack (thin shells over mbpl_core)."""
