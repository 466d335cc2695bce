"""Training data: aspect-ratio buckets, batch schedules, sources, the Grain loader, folder preparation.

Nothing here imports JAX: the loader hands numpy batches to the trainer, which makes global arrays.
"""

from pixelhdm_jax.data.buckets import AspectRatioBucket, buckets_from_config
from pixelhdm_jax.data.order import BatchSchedule
from pixelhdm_jax.data.pipeline import build_train_dataset, build_train_loader
from pixelhdm_jax.data.sources import FolderSource, ImageTextSource, TfdsSource, build_source
from pixelhdm_jax.data.synthetic import SyntheticSource

__all__ = ["AspectRatioBucket", "BatchSchedule", "FolderSource", "ImageTextSource", "SyntheticSource", "TfdsSource",
           "build_source", "build_train_dataset", "build_train_loader", "buckets_from_config"]
