"""Flax Linen modules of the PixelHDM network (no training logic)."""
