"""Attention kernels behind one registry."""
