"""Builds the training and held-out evaluation sources named by ``config.data``."""

import logging
import time

import numpy as np
import ml_collections

from pdsn_jax.data.folders import FolderFaces
from pdsn_jax.data.synthetic import SyntheticFaces

SOURCES = ("synthetic", "folders")


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
    train = SyntheticFaces(s.num_identities, s.images_per_identity, s.seed, 0, size)
    heldout = SyntheticFaces(s.eval_identities, s.eval_images_per_identity, s.seed,
                             s.num_identities, size)
    if s.cache:
      t = time.time()
      train.cache()
      logging.info("rendered %d SYNTHETIC training faces in %.1fs", len(train), time.time() - t)
    return train, heldout
  if cfg.source == "folders":
    f = cfg.folders
    if not f.root:
      raise ValueError("data.source='folders' needs data.folders.root")
    src = FolderFaces(f.root, f.landmarks or None, size, f.skip_bad_images, f.min_images)
    return split_identities(src, f.heldout_identities)
  raise ValueError(f"data.source={cfg.source!r} is not one of {SOURCES}")
