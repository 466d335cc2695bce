"""PixelHDM-JAX: a dual-path pixel-space text-to-image diffusion transformer in JAX/Flax."""

__version__ = "0.1.0"
