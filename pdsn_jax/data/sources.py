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


def split_identities(source, num_heldout: int):
  """(train, held-out) subsets: the last ``num_heldout`` identities are held out."""
  labels = np.asarray(source.labels)
  k = source.num_classes
  if not 0 < num_heldout < k:
    raise ValueError(f"data.folders.heldout_identities={num_heldout} must be in [1, {k - 1}] "
                     f"for a set of {k} identities")
  cut = k - num_heldout
  return (Subset(source, np.flatnonzero(labels < cut)),
          Subset(source, np.flatnonzero(labels >= cut)))


def build(cfg: ml_collections.ConfigDict):
  """(train source, held-out evaluation source) for ``cfg`` = config.data."""
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
                      cfg.alignment)
    return split_identities(src, f.heldout_identities)
  if cfg.source == "recordio":
    from pdsn_jax.data.insightface import RecordIOFaces  # pylint: disable=g-import-not-at-top
    r = cfg.recordio
    if not r.path:
      raise ValueError("data.source='recordio' needs data.recordio.path (a train.rec)")
    src = RecordIOFaces(r.path, r.index or None, size)
    return split_identities(src, r.heldout_identities)
  raise ValueError(f"data.source={cfg.source!r} is not one of {SOURCES}")


def build_eval(cfg: ml_collections.ConfigDict, num_distractors: int):
  """(held-out source, distractor source) for the evaluation protocols.

  Synthetic: the held-out identities, and ``num_distractors`` further identities
  (one image each) past every training and held-out one. Folders: the held-out
  identities, and up to ``num_distractors`` images spread over the training identities.
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
  pick = np.linspace(0, len(train) - 1, min(num_distractors, len(train))).astype(np.int64)
  return heldout, Subset(train, np.unique(pick) if num_distractors > 0 else pick[:0])


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
