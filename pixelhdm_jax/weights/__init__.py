"""Weight converters: the original PyTorch PixelHDM, Hugging Face encoders, exports."""
