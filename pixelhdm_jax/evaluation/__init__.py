"""Image-quality metrics: FID (InceptionV3), FD-DINOv3, precision and recall, reference statistics."""
