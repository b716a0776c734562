"""Training: losses, data and the Accelerate loop."""
