"""A finished run's recognition pipeline for aligned faces (``Recognizer``: the run's detector,
dictionary and network, checked against the run's config) and its face finder
(``face_finder``), used by the Python API (``api.py``), and so by the embed / verify /
identify commands, and by the gallery and export commands."""

import logging
import math
import os

import numpy as np

from pdsn_jax.method import builders, fdm, inference
from pdsn_jax.run import files, provenance
from pdsn_jax.train import parallel
from pdsn_jax import run_config
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.faces import finding as faces_lib
from pdsn_jax.data import occlusion
from pdsn_jax.evaluation import evaluators, masked


def trained_models(config, workdir: str) -> list:
  """The run's ``eval.models`` (``evaluators.ModelSpec``) whose network and dictionary exist,
  in config order: the last is the commands' default model."""
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
    self.config = config = run_config.load_config(workdir)
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
    inference.check_shapes(self.net, host, config.data.image_size,
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
                                    builders.normalize, builders.forward_chunk(config))
    det = workdir_lib.load(workdir, workdir_lib.DETECTOR)
    self.detector_variables = det
    self.predict = inference.occlusion_predictor(config, det, self.mesh) if det is not None else None
    self.note = "" if det is not None else ("the run has no detector stage: every face is "
                                            "taken as unoccluded")
    self.thresholds, self.thresholds_note = self._thresholds(workdir, host, table)

  def _thresholds(self, workdir: str, host: dict, table: np.ndarray) -> tuple[dict, str]:
    """The evaluation's thresholds for this model, only if they were measured on the very
    network and dictionary loaded here (a fallback to an older checkpoint has none)."""
    path = workdir_lib.thresholds_file(workdir)
    if not os.path.isfile(path):
      return {}, "none: run the 'evaluate' stage to store thresholds"
    mine = files.read_json(path, "the evaluation's decision thresholds",
                           "run the 'evaluate' stage again to rewrite it").get(self.spec.name, {})
    fp = inference.model_fingerprint(host, table.astype(np.uint8) if self.spec.fdm else None)
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
      masks = inference.occlusion_masks("none" if where == "auto" else where, len(faces),
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


def finder_run(workdir: str) -> str:
  """The run folder whose tuned face-finder weights the photo commands of ``workdir`` use: its
  own (its ``face_finder`` stage), else the one its config's ``face_finder.weights_from``
  names (``configs/real_mobilefacenet.py``: the run of ``configs/face_finder.py``), else
  ``workdir`` (no tuned weights: the shipped ones). A named run without weights is an error,
  never a silent fall back to the shipped weights."""
  if not workdir or os.path.exists(workdir_lib.face_finder_weights(workdir)):
    return workdir
  config = workdir_lib.config_file(workdir)
  if not os.path.isfile(config):
    return workdir
  other = (files.read_json(config, "the run's config").get("face_finder") or {}).get(
      "weights_from", "")
  if other and not os.path.exists(workdir_lib.face_finder_weights(other)):
    raise FileNotFoundError(
        f"{config} reads its face finder from {other!r} (face_finder.weights_from, here "
        f"{os.path.abspath(other)}), which has no {workdir_lib.FACE_FINDER_FILE}: make it with "
        f"`python -m pdsn_jax.main --config=configs/face_finder.py --workdir={other}`, or use "
        "--face_finder_weights=shipped")
  return other or workdir


def face_finder(detector: str, workdir: str, weights: str = "run",
                fallback: float | None = None) -> faces_lib.FaceFinder:
  """The finder the photo commands use: with ``weights="run"`` and ``detector="blazeface"``,
  the run's tuned short-range weights (``finder_run``) when it has them, with the run's last
  try (``face_finder.fallback_score``) unless ``fallback`` is given; else the shipped ones."""
  if weights not in faces_lib.WEIGHTS:
    raise ValueError(f"--face_finder_weights={weights!r} is not one of {faces_lib.WEIGHTS}")
  if weights == "run" and detector == "blazeface":
    workdir = finder_run(workdir)
  path = workdir_lib.face_finder_weights(workdir) if workdir else ""
  params = None
  if weights == "run" and detector == "blazeface" and os.path.exists(path):
    fix = ("use --face_finder_weights=shipped, or make the run's finder again "
           "(--config.stages=face_finder --config.overwrite=face_finder)")
    try:
      with np.load(path, allow_pickle=False) as z:
        params = dict(z)
    except Exception as e:  # noqa: BLE001  (not a zip, truncated, a pickled payload)
      raise files.DamagedFile(f"{path} (the run's tuned face-finder weights) cannot be read: "
                              f"{type(e).__name__}: {e}; {fix}") from None
    settings = workdir_lib.face_finder_settings(workdir)
    if fallback is None and os.path.exists(settings):
      fallback = files.read_json(settings, "the run's face-finder settings",
                                 "delete it for no last try").get("fallback_score")
    logging.info("faces found by BlazeFace with the run's tuned short-range weights (%s), "
                 "last try: %s", path, fallback or "none")
  try:
    return faces_lib.FaceFinder(detector, fallback=fallback, short_params=params)
  except ValueError as e:
    if params is None:
      raise
    raise files.DamagedFile(f"{path} (the run's tuned face-finder weights) cannot be used: {e}; "
                            f"{fix}") from None
