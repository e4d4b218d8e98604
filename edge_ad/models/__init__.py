"""The anomaly-detection models (one file each) and their shared parts (backbones, U-Net, diffusion)."""
