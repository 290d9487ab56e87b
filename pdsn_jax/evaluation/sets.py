"""The evaluation sets, built once from a held-out source (numpy, seeded), that the protocols
share (each protocol may add its own: ``evaluators.Protocol.inputs``).

* Verification pairs (the verification protocol's inputs, ``with_pairs``): generated, or from
  a ``pairs.txt``, of clean faces, and the same pairs with the second image occluded (the FROM
  protocol), one copy per condition of ``placement.CONDITIONS``.
* AR-style identification: per held-out subject the first images are the clean
  gallery (protocol 1: ``ar_gallery_images`` per subject; protocol 2: one), the
  rest are probes, each occluded with sunglasses and, separately, a mask/scarf.
  Both protocols use the same probes, so only the gallery differs.
* Distractors (MegaFace style): the protocol 2 gallery plus N faces of other
  identities; probes clean, with sunglasses and with masks.

Every occluded image keeps its ground-truth pixel mask; where the occlusion is
*located* at test time (ground truth, or a detector) is decided later by
``locate``, so the sets do not depend on it.
"""

import dataclasses
from typing import Any

import numpy as np

from pdsn_jax.data import occlusion, placement
from pdsn_jax.data.pairs import generate_pairs

AR_CONDITIONS = ("sunglasses", "mask")
OCCLUSION_SOURCES = ("ground_truth", "detector")  # where test-time occlusion masks come from


@dataclasses.dataclass
class Occluded:
  """Occluded copies of some faces: images (N, H, W, 3) uint8, ground-truth masks (N, H, W)."""

  images: np.ndarray
  masks: np.ndarray


@dataclasses.dataclass
class EvalSets:
  faces: np.ndarray  # (N, H, W, 3) clean held-out faces
  labels: np.ndarray  # (N,)
  pairs: np.ndarray  # (P, 2) indices into pair_faces (none until ``with_pairs``)
  issame: np.ndarray  # (P,)
  occluded_second: dict[str, Occluded]  # condition -> copies of pair_faces[pairs[:, 1]]
  gallery_p1: np.ndarray  # indices into faces
  gallery_p2: np.ndarray
  probes: np.ndarray  # indices into faces
  occluded_probes: dict[str, Occluded]  # "sunglasses"/"mask" -> copies of faces[probes]
  # random-access source (``[i]['image']``, ``len``) of faces of identities not among the
  # probes; read shard by shard into a gallery store, never held in memory at once
  distractors: Any
  pair_faces: np.ndarray  # the faces ``pairs`` index: ``faces`` itself unless from a pairs file
  # what protocols bring themselves (``evaluators.Protocol.inputs``), by name
  extra: dict = dataclasses.field(default_factory=dict)
  # the test occluders the sets were occluded with, for the protocols' own occluded images
  library: Any = None


def occlude_all(faces: np.ndarray, condition: str, library: occlusion.OccluderLibrary,
                seed: int, stream: int) -> Occluded:
  """Occludes every face with ``condition``; face i uses the generator [seed, stream, i]."""
  out, masks = [], []
  for i, face in enumerate(faces):
    o, m = placement.occlude(face, np.random.default_rng([seed, stream, i]), library, condition)
    out.append(o)
    masks.append(m)
  return Occluded(np.stack(out), np.stack(masks))


def ar_split(labels: np.ndarray, gallery_images: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(gallery protocol 1, gallery protocol 2, probes): per subject the first ``gallery_images``
  (at most all but one) are gallery in protocol 1, the first one in protocol 2; the rest probes."""
  g1, g2, probes = [], [], []
  for label in np.unique(labels):
    idx = np.flatnonzero(labels == label)
    if len(idx) < 2:
      continue
    k = max(1, min(gallery_images, len(idx) - 1))
    g1 += list(idx[:k])
    g2.append(idx[0])
    probes += list(idx[k:])
  if not probes:
    raise ValueError("AR-style identification needs subjects with >= 2 images")
  return np.asarray(g1), np.asarray(g2), np.asarray(probes)


def build(faces: np.ndarray, labels: np.ndarray, distractors,
          library: occlusion.OccluderLibrary, *, seed: int, ar_gallery_images: int) -> EvalSets:
  """The shared sets: the faces, the AR-style galleries and occluded probes, the distractors
  (no pairs: ``with_pairs``)."""
  labels = np.asarray(labels)
  g1, g2, probes = ar_split(labels, ar_gallery_images)
  occluded_probes = {c: occlude_all(faces[probes], c, library, seed, 200 + k)
                     for k, c in enumerate(AR_CONDITIONS)}
  return EvalSets(faces, labels, np.zeros((0, 2), np.int64), np.zeros((0,), bool), {}, g1, g2,
                  probes, occluded_probes, distractors, faces, library=library)


def generated_pairs(sets: EvalSets, num_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(pair indices into ``sets.faces``, issame): ``num_pairs`` pairs of the held-out faces."""
  pair_idx, issame = generate_pairs(sets.labels, num_pairs, seed)
  return pair_idx, np.asarray(issame, bool)


def with_pairs(sets: EvalSets, pair_faces: np.ndarray, pair_idx: np.ndarray, issame: np.ndarray,
               library: occlusion.OccluderLibrary, seed: int,
               conditions=placement.CONDITIONS) -> EvalSets:
  """The sets with verification pairs of ``pair_faces`` (``sets.faces`` itself, or a pairs
  file's own images) and their second images occluded per condition."""
  second = pair_faces[pair_idx[:, 1]]
  occluded_second = {c: occlude_all(second, c, library, seed, 100 + k)
                     for k, c in enumerate(conditions)}
  return dataclasses.replace(sets, pairs=pair_idx, issame=np.asarray(issame, bool),
                             occluded_second=occluded_second, pair_faces=pair_faces)


def locate(occluded: Occluded, source: str = "ground_truth", detector=None) -> np.ndarray:
  """Pixel masks of where the faces are occluded, as the recognizer will be told at test time.

  ``ground_truth`` uses the synthesizer's masks; ``detector`` calls
  ``detector(images) -> (N, H, W) bool``.
  """
  if source == "ground_truth":
    return occluded.masks
  if source == "detector":
    if detector is None:
      raise ValueError("eval.occlusion_source='detector' needs a trained detector")
    return np.asarray(detector(occluded.images), bool)
  raise ValueError(f"eval.occlusion_source={source!r} is not one of {OCCLUSION_SOURCES}")
