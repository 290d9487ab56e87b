"""Inference with a finished run's networks: the occlusion detector's masks (used by the
evaluation stage) and the whole pipeline for aligned faces (``Recognizer``, used by the
embed / verify / identify commands and the exported functions)."""

import math
import os
import re

import jax
import numpy as np

from pdsn_jax import builders, parallel, provenance
from pdsn_jax.data import occlusion, pipeline, placement


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
  from pdsn_jax.evaluation import store  # pylint: disable=g-import-not-at-top
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


def trained_models(config, workdir: str) -> list:
  """The run's ``eval.models`` (``evaluators.ModelSpec``) whose network and dictionary exist,
  in config order: the last is the commands' default model."""
  from pdsn_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from pdsn_jax.evaluation import evaluators  # pylint: disable=g-import-not-at-top
  dictionary = workdir_lib.dictionary_file(workdir)
  return [m for m in evaluators.parse_models(config.eval.models)
          if workdir_lib.latest_step(workdir, m.stage) is not None
          and (not m.fdm or os.path.isfile(dictionary))]


class Recognizer:
  """A finished run's recognition pipeline for aligned faces: occlusion mask (the run's
  detector) -> occluded blocks -> FDM (the run's dictionary) -> embedding F(FDM * U).

  ``model``: a name of the run's ``eval.models`` (default: the last one whose stage ran, e.g.
  "PDSN + fine-tune"); a plain model embeds with all-ones masks. Without a detector stage the
  faces are taken as unoccluded (``self.note`` says so).
  """

  def __init__(self, workdir: str, model: str = "", mesh=None):
    from pdsn_jax import fdm, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    from pdsn_jax.evaluation import evaluators, masked  # pylint: disable=g-import-not-at-top
    self.config = config = workdir_lib.load_config(workdir)
    self.mesh = mesh or parallel.make_mesh()
    dictionary = workdir_lib.dictionary_file(workdir)
    have = trained_models(config, workdir)
    if model:
      pick = [m for m in have if m.name == model]
      if not pick:
        raise ValueError(f"--model={model!r}: the run {workdir} has {[m.name for m in have]}")
    elif not have:
      raise FileNotFoundError(f"the run {workdir} has no trained model of {config.eval.models}")
    self.spec = (pick if model else have)[-1]
    # the stages loaded below must have been made together, under the run's config.json, as
    # main requires: a trunk made again must never meet the dictionary of the old one
    loaded = [self.spec.stage, workdir_lib.DETECTOR]
    loaded += [workdir_lib.DICTIONARY] if self.spec.fdm else []
    loaded += [workdir_lib.TRUNK] if self.spec.trunk_when_clean else []
    provenance.require_fresh(config, workdir, [s for s in loaded
                                               if provenance.has_outputs(workdir, s)],
                             f"model {self.spec.name!r} of {workdir}")
    host = workdir_lib.backbone_variables(workdir, self.spec.stage)
    self.net = builders.backbone(config, False)
    check_shapes(self.net, host, config.data.image_size,
                 f"the '{self.spec.stage}' checkpoint of {workdir}")
    self.u_shape = builders.u_shape(config)
    table = evaluators.mask_table(self.spec, fdm.load(dictionary)[0] if self.spec.fdm else None,
                                  self.u_shape)
    clean = (workdir_lib.backbone_variables(workdir, workdir_lib.TRUNK)
             if self.spec.trunk_when_clean else None)
    self.host, self.host_clean, self.host_table = host, clean, table
    self.variables = parallel.put_replicated(host, self.mesh)
    self.clean = None if clean is None else parallel.put_replicated(clean, self.mesh)
    self.table = parallel.put_replicated(table, self.mesh)
    self.embedder = masked.Embedder(self.net, self.mesh, config.eval.batch_size,
                                    builders.normalize)
    det = workdir_lib.load(workdir, workdir_lib.DETECTOR)
    self.detector_variables = det
    self.predict = occlusion_predictor(config, det, self.mesh) if det is not None else None
    self.note = "" if det is not None else ("the run has no detector stage: every face is "
                                            "taken as unoccluded")
    self.thresholds, self.thresholds_note = self._thresholds(workdir, host, table)

  def _thresholds(self, workdir: str, host: dict, table: np.ndarray) -> tuple[dict, str]:
    """The evaluation's thresholds for this model, only if they were measured on the very
    network and dictionary loaded here (a fallback to an older checkpoint has none)."""
    from pdsn_jax import files, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    path = workdir_lib.thresholds_file(workdir)
    if not os.path.isfile(path):
      return {}, "none: run the 'evaluate' stage to store thresholds"
    mine = files.read_json(path, "the evaluation's decision thresholds",
                           "run the 'evaluate' stage again to rewrite it").get(self.spec.name, {})
    fp = model_fingerprint(host, table.astype(np.uint8) if self.spec.fdm else None)
    if mine.get("model_fingerprint") != fp:
      return {}, (f"none for the loaded network: {path} was measured on another checkpoint or "
                  "dictionary (run the 'evaluate' stage again)")
    return mine, ""

  def analyse(self, faces: np.ndarray, where: str = "auto") -> dict:
    """U, the pixel masks and the 9 block flags of aligned uint8 faces, the occlusion located
    as ``where`` says (``occlusion_masks``)."""
    o = self.config.occlusion
    if where == "auto" and self.predict is not None:
      masks = self.predict(faces)
    else:
      masks = occlusion_masks("none" if where == "auto" else where, len(faces),
                              faces.shape[1:3], self.config.data.alignment)
    return {"u": self.embedder.features(self.variables, faces), "masks": masks,
            "flags": occlusion.block_flags(masks, o.min_overlap, o.overlap)}

  def embed(self, u: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """L2-normalised F(FDM * U), the FDM of each row's ``flags``."""
    return self.embedder.embed(self.variables, self.table, u, flags, self.clean)

  def threshold(self, occluded: bool) -> tuple[float | None, str]:
    """The decision threshold the evaluation chose (mean of its 10 fold thresholds)."""
    key = "occluded" if occluded else "clean"
    t = self.thresholds.get(key)
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))
                          or not math.isfinite(t) or not -1.0 <= t <= 1.0):
      return None, (f"none usable: the stored {key} threshold of {self.spec.name} is {t!r}, not "
                    "a cosine in [-1, 1] (run the 'evaluate' stage again)")
    what = (f"mean of the 10 fold thresholds of {self.spec.name}'s {key} verification"
            if t is not None else self.thresholds_note or "none measured")
    return t, what
