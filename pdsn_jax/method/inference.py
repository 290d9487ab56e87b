"""Inference pieces the stages share with the commands: the occlusion detector's masks (used by
the detector and evaluation stages), occlusions a user names, the fingerprint a threshold
belongs to, and the check that a checkpoint fits its network. The whole pipeline of a finished
run is ``recognizer.Recognizer``."""

import re

import jax
import numpy as np

from pdsn_jax.method import builders
from pdsn_jax.train import parallel
from pdsn_jax.data import occlusion, pipeline, placement
from pdsn_jax.gallery import store


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


OCCLUSION_CHOICES = ("auto", "none") + placement.CATEGORY_REGIONS


def occlusion_masks(where: str, n: int, image_size, template: str = "arcface") -> np.ndarray:
  """(n, H, W) bool masks of an occlusion the user names: "none", a category of
  ``placement.CATEGORY_REGIONS`` (its region on the template), or generator blocks as
  "row,col;row,col" (rows and columns 1-3 of the 5x5 grid, e.g. "2,1;2,2;2,3" for the eye
  row). "auto" (the detector) is the Recognizer's."""
  h, w = image_size
  if where == "none":
    return np.zeros((n, h, w), bool)
  if where in placement.CATEGORY_REGIONS:
    return np.repeat(placement.category_mask(where, (h, w), template)[None], n, 0)
  pairs = re.findall(r"\(?\s*(\d+)\s*,\s*(\d+)\s*\)?", where)
  rest = re.sub(r"[\s;()]", "", re.sub(r"\(?\s*\d+\s*,\s*\d+\s*\)?", "", where))
  blocks = [int(r) * occlusion.GRID + int(c) for r, c in pairs]
  if not pairs or rest.strip(",") or any(b not in occlusion.CENTRAL_BLOCKS for b in blocks):
    central = ";".join(f"{b // occlusion.GRID},{b % occlusion.GRID}"
                       for b in occlusion.CENTRAL_BLOCKS)
    raise ValueError(f"--occlusion={where!r}: allowed values {OCCLUSION_CHOICES} or generator "
                     f"blocks as 'row,col;row,col' among {central}")
  m = occlusion.block_pixel_masks((h, w))[blocks].any(0)
  return np.repeat(m[None], n, 0)


def model_fingerprint(variables: dict, dictionary) -> str:
  """Which network (and dictionary, for an FDM model) a decision threshold belongs to."""
  return store.fingerprint({"variables": variables, "dictionary": dictionary})


def check_shapes(net, variables: dict, image_size, what: str) -> None:
  """Refuses variables that the network ``config.json`` describes does not take (an edited
  ``model.*`` field), naming the first differing parameter, before flax would fail deep
  inside ``apply``."""
  x = jax.numpy.zeros((1, *image_size, 3))
  want = jax.eval_shape(lambda: net.init(jax.random.key(0), x))
  want = {k: want[k] for k in variables if k in want}
  have_leaves = dict(jax.tree_util.tree_leaves_with_path(variables))
  want_leaves = dict(jax.tree_util.tree_leaves_with_path(want))
  for path in sorted(set(have_leaves) | set(want_leaves), key=str):
    a, b = have_leaves.get(path), want_leaves.get(path)
    if a is None or b is None or tuple(np.shape(a)) != tuple(b.shape):
      name = jax.tree_util.keystr(path)
      raise ValueError(
          f"{what} does not fit the network of the run's config.json: {name} is "
          f"{'absent' if a is None else tuple(np.shape(a))} in the checkpoint, "
          f"{'absent' if b is None else tuple(b.shape)} in the network (a model.* or "
          "data.image_size field of config.json was edited; restore it, or remake the stages)")
