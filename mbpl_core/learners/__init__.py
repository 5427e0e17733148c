"""Family 3, policy learning with a learned model: MBPO, backpropagation through the model."""
