"""Evaluation during training: FID, FD-DINOv3, precision and recall of the EMA weights between steps.

`PeriodicEvaluation.prepare()` runs once before the first step: it loads the Inception weights and the reference
statistics (`evaluation.reference`, or those of `train.eval_num_images` training images at `train.sample_size`,
computed once and cached by key). A call at step S samples that many images from the EMA weights with the run's
`config.sample` settings and writes `<workdir>/eval/step_<S>.json` and TensorBoard scalars. It reads the state
only: the train state, the run's random key and the data order are untouched, so a run with evaluation is
bit-identical to one without.
"""

from __future__ import annotations

from typing import Any

from absl import logging
from etils import epath

from pixelhdm_jax.evaluation.evaluate import evaluate, write_result
from pixelhdm_jax.evaluation.features import Extractors
from pixelhdm_jax.evaluation.reference import Reference, check_extractors, load_reference, reference_for
from pixelhdm_jax.sample.pipeline import Pipeline
from pixelhdm_jax.train.setup import Trainer


class PeriodicEvaluation:
  """Scores the EMA weights every `train.eval_every` steps and at the last step (never when it is 0)."""

  def __init__(self, trainer: Trainer, workdir: epath.Path):
    self.trainer = trainer
    self.workdir = workdir
    self.extractors: Extractors | None = None
    self.reference: Reference | None = None
    self.pipeline: Pipeline | None = None

  @property
  def enabled(self) -> bool:
    return self.trainer.config.train.eval_every > 0

  def due(self, step: int) -> bool:
    train = self.trainer.config.train
    return self.enabled and (step % train.eval_every == 0 or step == train.num_steps)

  def prepare(self) -> None:
    """The extractors and the reference statistics (computed here, once, when no file is named)."""
    config, trainer = self.trainer.config, self.trainer
    if not trainer.has_teacher:
      logging.warning("evaluation without FD-DINOv3, precision and recall: loss.repa_lambda=0 builds no teacher")
    self.extractors = Extractors(config, trainer.mesh, trainer.teacher, trainer.frozen.get("dino"))
    if config.evaluation.reference:
      self.reference = load_reference(config.evaluation.reference)
      check_extractors(self.reference, self.extractors.info)
    else:
      self.reference, _ = reference_for(config, self.extractors, config.train.eval_num_images,
                                        config.train.sample_size)

  def __call__(self, state: Any, step: int) -> dict[str, Any]:
    """The scores of step `step`'s EMA weights, also written to the workdir."""
    config, trainer = self.trainer.config, self.trainer
    if self.pipeline is None:
      self.pipeline = Pipeline(config, state.ema, *trainer.prompt_encoder(), mesh=trainer.mesh)
    prompts = None if self.reference.captions else list(config.train.sample_prompts)
    result = evaluate(self.pipeline, self.extractors, self.reference, config.train.eval_num_images,
                      config.train.sample_size, seed=config.seed, prompts=prompts, params=state.ema)
    path = write_result(self.workdir, step, {**result, "use_ema": True})
    scores = ", ".join(f"{k}={result[k]:.4g}" for k in ("fid", "fd_dinov3", "precision", "recall") if k in result)
    weights = " (FID with random Inception weights)" if result["random_inception_weights"] else ""
    logging.info("evaluation of step %d%s: %s; %s", step, weights, scores, path)
    return result
