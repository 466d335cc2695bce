"""Sampling apart from the network: ODE solvers, classifier-free guidance, the request and its plan, the
text-to-image and image-to-image pipeline, images in and out."""
