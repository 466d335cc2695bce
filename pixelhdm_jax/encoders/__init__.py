"""Frozen encoders (Qwen3 text encoder, DINOv3 ViT) as Flax ports, and tokenizers."""
