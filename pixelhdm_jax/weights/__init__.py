"""PixelHDM's own weight formats: the original PyTorch checkpoints, inference checkpoints, exports."""
