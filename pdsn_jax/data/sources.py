"""Builds the training and held-out evaluation sources named by ``config.data``."""

import logging
import time

import numpy as np
import ml_collections

from pdsn_jax.data.folders import FolderFaces
from pdsn_jax.data.synthetic import SyntheticFaces

SOURCES = ("synthetic", "folders", "recordio")
_RENDERED: dict = {}  # data config JSON -> rendered synthetic (train, held-out) sources


class Subset:
  """The records of ``source`` at ``indices``, labels renumbered 0..K-1 (picklable)."""

  def __init__(self, source, indices: np.ndarray):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    old = np.asarray(source.labels)[self.indices]
    uniq, self.labels = np.unique(old, return_inverse=True)
    self.labels = self.labels.astype(np.int32)
    self.num_classes = len(uniq)
    self.description = getattr(source, "description", "")

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict:
    rec = dict(self.source[int(self.indices[int(i)])])
    rec["label"] = self.labels[int(i)]
    return rec


def split_identities(source, num_heldout: int, num_distractor: int = 0):
  """(train, held-out, distractor) subsets: the last ``num_heldout`` identities are held out,
  the ``num_distractor`` before them are distractors; no stage trains on either."""
  labels = np.asarray(source.labels)
  k = source.num_classes
  if not 0 < num_heldout or not 0 <= num_distractor or num_heldout + num_distractor >= k:
    raise ValueError(f"data.*.heldout_identities={num_heldout} and distractor_identities="
                     f"{num_distractor} must be >= 1 and >= 0 and leave training identities in "
                     f"a set of {k}")
  cut = k - num_heldout
  train_cut = cut - num_distractor
  return (Subset(source, np.flatnonzero(labels < train_cut)),
          Subset(source, np.flatnonzero(labels >= cut)),
          Subset(source, np.flatnonzero((labels >= train_cut) & (labels < cut))))


def build(cfg: ml_collections.ConfigDict, raw: bool = False):
  """(train source, held-out evaluation source) for ``cfg`` = config.data. ``raw``: folder
  records hold the photo as read and its landmarks (``points``) rather than the aligned face
  (other sources have aligned faces only)."""
  size = tuple(cfg.image_size)
  if cfg.source == "synthetic":
    s = cfg.synthetic
    key = cfg.to_json()
    if s.cache and key in _RENDERED:  # later stages of the same run reuse the rendering
      return _RENDERED[key]
    train = SyntheticFaces(s.num_identities, s.images_per_identity, s.seed, 0, size)
    heldout = SyntheticFaces(s.eval_identities, s.eval_images_per_identity, s.seed,
                             s.num_identities, size)
    if s.cache:
      t = time.time()
      train.cache()
      logging.info("rendered %d SYNTHETIC training faces in %.1fs", len(train), time.time() - t)
      _RENDERED.clear()  # keep one set
      _RENDERED[key] = (train, heldout)
    return train, heldout
  if cfg.source == "folders":
    f = cfg.folders
    if not f.root:
      raise ValueError("data.source='folders' needs data.folders.root")
    src = FolderFaces(f.root, f.landmarks or None, size, f.skip_bad_images, f.min_images,
                      cfg.alignment, f.require_landmarks, f.strict_landmarks, raw)
    return split_identities(src, f.heldout_identities, f.distractor_identities)[:2]
  if cfg.source == "recordio":
    from pdsn_jax.data.insightface import RecordIOFaces  # pylint: disable=g-import-not-at-top
    r = cfg.recordio
    if not r.path:
      raise ValueError("data.source='recordio' needs data.recordio.path (a train.rec)")
    src = RecordIOFaces(r.path, r.index or None, size)
    return split_identities(src, r.heldout_identities, r.distractor_identities)[:2]
  raise ValueError(f"data.source={cfg.source!r} is not one of {SOURCES}")


def build_eval(cfg: ml_collections.ConfigDict, num_distractors: int):
  """(held-out source, distractor source) for the evaluation protocols.

  Synthetic: the held-out identities, and ``num_distractors`` further identities
  (one image each) past every training and held-out one. Folders / RecordIO: the held-out
  identities, and up to ``num_distractors`` images spread over the
  ``distractor_identities`` set aside from training (never training images).
  """
  size = tuple(cfg.image_size)
  if cfg.source == "synthetic":
    s = cfg.synthetic
    heldout = SyntheticFaces(s.eval_identities, s.eval_images_per_identity, s.seed,
                             s.num_identities, size)
    distractors = SyntheticFaces(max(1, num_distractors), 1, s.seed,
                                 s.num_identities + s.eval_identities, size)
    return heldout, (distractors if num_distractors > 0 else Subset(distractors, []))
  train, heldout = build(cfg)
  sub = cfg.folders if cfg.source == "folders" else cfg.recordio
  pool = split_identities(train.source, sub.heldout_identities, sub.distractor_identities)[2]
  if num_distractors > 0 and len(pool) == 0:
    raise ValueError(f"eval.num_distractors={num_distractors} needs faces no stage trains on: "
                     f"set data.{cfg.source}.distractor_identities > 0 (or num_distractors=0)")
  pick = np.linspace(0, len(pool) - 1, min(num_distractors, len(pool))).astype(np.int64)
  return heldout, Subset(pool.source, pool.indices[np.unique(pick)] if num_distractors > 0
                         else pick[:0])


def load_pair_images(pairs: list[tuple[str, str]], root: str, landmarks: str,
                     image_size, template: str = "arcface") -> tuple[np.ndarray, np.ndarray]:
  """Aligned faces of every image a pairs file names, and (P, 2) indices into them."""
  import os  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.alignment import align_face  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.folders import load_rgb, read_landmarks  # pylint: disable=g-import-not-at-top
  marks = read_landmarks(landmarks) if landmarks else {}
  names = sorted({p for pair in pairs for p in pair})
  index = {n: i for i, n in enumerate(names)}
  faces = []
  for n in names:
    path = os.path.normpath(os.path.join(os.path.abspath(root), n))
    faces.append(align_face(load_rgb(path), marks.get(path), tuple(image_size), template))
  return np.stack(faces), np.asarray([(index[a], index[b]) for a, b in pairs], np.int64)
