"""Training: datasets as tensors, the fit loop with checkpoints, calibration on normal images, evaluation."""
