"""Frozen encoders: the Qwen3 text encoder and the DINOv3 ViT as Flax ports, each with its Hugging Face loader;
tokenizers; where their weights come from and how they are placed on the devices."""
