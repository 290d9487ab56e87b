"""Inference with a finished run's networks: the occlusion detector's masks (used by the
evaluation stage and the command-line tools)."""

import jax
import numpy as np

from pdsn_jax import builders, parallel
from pdsn_jax.data import pipeline


def detector_logits(model, variables, images: jax.Array, scale: float, train: bool = False,
                    mutable=False):
  """Full-resolution occlusion logits; the net may run at ``scale`` of the input size."""
  x = builders.normalize(images)
  if scale != 1.0:
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, int(round(h * scale)), int(round(w * scale)), c), "linear")
  out = model.apply(variables, x, train, mutable=mutable)
  logits, updates = out if mutable else (out, None)
  if scale != 1.0:
    logits = jax.image.resize(logits, images.shape[:3], "linear")
  return (logits, updates) if mutable else logits


def occlusion_predictor(config, variables: dict, mesh=None):
  """``images (N, H, W, 3) uint8 -> (N, H, W) bool`` occlusion masks, data-parallel, jitted."""
  mesh = mesh or parallel.make_mesh()
  model, cfg = builders.detector(config, False), config.detector
  rep = parallel.put_replicated(variables, mesh)

  def step(v, batch, rng):
    del rng
    probs = jax.nn.sigmoid(detector_logits(model, v, batch["image"], cfg.input_scale))
    return v, probs >= cfg.threshold

  fn = parallel.data_parallel(step, mesh, donate_state=False, batch_out=True)

  def predict(images: np.ndarray) -> np.ndarray:
    out = []
    for local, real in pipeline.eval_batches({"image": np.asarray(images)},
                                             config.eval.batch_size, jax.process_index(),
                                             jax.process_count()):
      _, m = fn(rep, parallel.put_batch(local, mesh), jax.random.key(0))
      out.append(np.asarray(parallel.fetch(m))[:real])
    return np.concatenate(out) if out else np.zeros((0, *np.shape(images)[1:3]), bool)

  return predict
