"""AR's own photos of real sunglasses and scarves (the paper's Table 6), aligned to the template.

The folder (``labels.tsv``: ``relative_path subject session index kind``, kind one of
``KINDS``) holds tight grey crops (42x30 in ``../shared/data/ar_real``) with no landmarks.

Alignment. The crops of one subject and session are registered, so their five template
points are measured once per (subject, session): dlib's 68-point model on each clean,
non-expression image (neutral and the three lighting ones) upscaled ``UPSCALE`` times, the
median of those points, then the same similarity transform for every image of that session,
occluded ones included. ``alignment="centre"`` is the old centre crop, kept for comparison.
Grey is replicated to three channels.

Ground-truth occlusion masks (to score a detector on real occluders). For an occluded image,
the pixels that differ from the same session's neutral image by more than ``DIFF_THRESHOLD``
grey levels, inside its category's region (``placement.category_region``), cleaned up.
Sunglasses: on the raw pixels (the nose between the lenses is 1-2 px wide in a 42x30 crop),
also any pixel darker than ``DARK_LEVEL``; components under ``MIN_COMPONENT`` pixels dropped;
the holes the frame encloses (lens highlights) filled. Scarf: after a 3x3 smoothing of both
images and a morphological closing; small components dropped; each row filled between its
leftmost and rightmost occluded pixel (a scarf is one band). Computed on the native crop,
then warped like the image.

Category blocks: ``placement.category_flags`` (the eye row for sunglasses, the nose row for
scarves).
"""

import csv
import dataclasses
import functools
import os

import numpy as np
from PIL import Image

from pdsn_jax.run import files
from pdsn_jax.data import alignment
from pdsn_jax.data.placement import category_mask

KINDS = ("neutral", "expression", "light", "sunglasses", "scarf")
OCCLUDED_KINDS = ("sunglasses", "scarf")
ALIGNMENTS = ("landmarks", "centre")
UPSCALE = 6
DIFF_THRESHOLD = 28.0
DARK_LEVEL = 60.0
MIN_COMPONENT = 12
# The paper's split (../shared/data/ar_real/README.md): development subjects may train the
# detector and be scored by any selection rule; test subjects are read by the evaluation's
# ar_real protocol alone, and only for an adopted configuration.
DEVELOPMENT_SUBJECTS = tuple(range(1, 27))
TEST_SUBJECTS = tuple(range(27, 51))


@dataclasses.dataclass
class ArReal:
  """Aligned AR photos: images (N, H, W, 3) uint8, subject, session, kind, and ground-truth
  pixel masks (N, H, W) bool (all False for clean images)."""

  images: np.ndarray
  subjects: np.ndarray
  sessions: np.ndarray
  kinds: np.ndarray
  masks: np.ndarray
  paths: list
  points_source: dict  # (subject, session) -> "dlib" or "fallback"

  def select(self, session: int | None = None, kinds=KINDS, first: bool = False) -> np.ndarray:
    """Indices of the images of ``kinds`` (of ``session``); ``first``: only the first such image
    per subject (the neutral one of protocol 2)."""
    ok = np.isin(self.kinds, kinds)
    if session is not None:
      ok &= self.sessions == session
    idx = np.flatnonzero(ok)
    if first:
      _, keep = np.unique(self.subjects[idx], return_index=True)
      idx = idx[np.sort(keep)]
    return idx


def read_labels(root: str, subjects=None) -> list[dict]:
  """The rows of ``labels.tsv`` (of ``subjects`` only, when given: the other subjects' files
  are never opened)."""
  path = os.path.join(root, "labels.tsv")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"eval.protocols.ar_real.root={root!r}: no labels.tsv there "
                            "(expected the AR real-occlusion folder, see docs/data.md)")
  with open(path, encoding="utf-8") as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
  for i, r in enumerate(rows, 2):
    if r.get("kind") not in KINDS or not r.get("relative_path"):
      raise ValueError(f"{path} line {i}: kind {r.get('kind')!r} is not one of {KINDS} (or the "
                       "path is empty)")
    files.inside(root, r["relative_path"], f"{path} line {i}")
  if subjects is not None:
    keep = {int(s) for s in subjects}
    rows = [r for r in rows if int(r["subject"]) in keep]
  return rows


# ------------------------------------------------------------------ morphology (tiny, numpy)


def _shifts(m: np.ndarray, op) -> np.ndarray:
  p = np.pad(m, 1, constant_values=op is np.logical_and)
  out = m.copy()
  for dy in (0, 1, 2):
    for dx in (0, 1, 2):
      out = op(out, p[dy:dy + m.shape[0], dx:dx + m.shape[1]])
  return out


def _close(m: np.ndarray) -> np.ndarray:
  return _shifts(_shifts(m, np.logical_or), np.logical_and)


def _components(m: np.ndarray) -> list[np.ndarray]:
  """4-connected components of a small bool image, as index arrays."""
  seen, out = np.zeros_like(m), []
  h, w = m.shape
  for y, x in zip(*np.nonzero(m)):
    if seen[y, x]:
      continue
    stack, comp = [(y, x)], []
    seen[y, x] = True
    while stack:
      cy, cx = stack.pop()
      comp.append((cy, cx))
      for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
        if 0 <= ny < h and 0 <= nx < w and m[ny, nx] and not seen[ny, nx]:
          seen[ny, nx] = True
          stack.append((ny, nx))
    out.append(np.array(comp))
  return out


def _smooth(x: np.ndarray) -> np.ndarray:
  p = np.pad(x.astype(np.float32), 1, mode="edge")
  return sum(p[dy:dy + x.shape[0], dx:dx + x.shape[1]] for dy in range(3) for dx in range(3)) / 9


def truth_mask(image: np.ndarray, neutral: np.ndarray, kind: str, region: np.ndarray):
  """Ground-truth mask of a grey occluded crop against its session's neutral crop (module
  docstring); ``region``: the category's (H, W) bool region in the crop's frame."""
  if kind == "sunglasses":  # unsmoothed: the nose between the lenses is 1-2 px wide
    a, b = image.astype(np.float32), neutral.astype(np.float32)
    m = ((np.abs(a - b) > DIFF_THRESHOLD) | (a < DARK_LEVEL)) & region
  else:
    m = _close((np.abs(_smooth(image) - _smooth(neutral)) > DIFF_THRESHOLD) & region) & region
  keep = np.zeros_like(m)
  for comp in _components(m):
    if len(comp) >= MIN_COMPONENT:
      keep[comp[:, 0], comp[:, 1]] = True
  if kind == "sunglasses":  # two lenses and a bridge: fill what they enclose (highlights)
    h, w = keep.shape
    for comp in _components(~keep):
      if not ((comp[:, 0] == 0) | (comp[:, 0] == h - 1) | (comp[:, 1] == 0) |
              (comp[:, 1] == w - 1)).any():
        keep[comp[:, 0], comp[:, 1]] = True
    return keep
  for y in np.flatnonzero(keep.any(1)):  # a scarf is one band
    xs = np.flatnonzero(keep[y])
    keep[y, xs[0]:xs[-1] + 1] = True
  return keep


# ------------------------------------------------------------------ loading


def _grey(path: str) -> np.ndarray:
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("L"))
  except OSError as e:
    raise ValueError(f"cannot read AR image {path}: {e}") from None


@functools.lru_cache(maxsize=1)
def _dlib():
  try:
    import dlib  # pylint: disable=g-import-not-at-top
    import face_recognition_models as frm  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("aligning the AR crops by landmarks needs dlib and its model files: pip "
                      "install dlib-bin face_recognition_models (or "
                      "eval.protocols.ar_real.alignment='centre')") from e
  return dlib.get_frontal_face_detector(), dlib.shape_predictor(
      frm.pose_predictor_model_location())


def crop_points(grey: np.ndarray) -> np.ndarray | None:
  """Five template points of a tight grey crop (its own pixel frame), or None."""
  from pdsn_jax.faces.finding import five_points  # pylint: disable=g-import-not-at-top
  detect, shape = _dlib()
  h, w = grey.shape
  up = np.asarray(Image.fromarray(grey).resize((w * UPSCALE, h * UPSCALE), Image.BICUBIC))
  pad = h * UPSCALE // 2  # the crop is tight: the detector needs context around the face
  rgb = np.ascontiguousarray(np.repeat(np.pad(up, pad, mode="edge")[..., None], 3, 2))
  rects = detect(rgb, 0)
  if not rects:
    return None
  rect = max(rects, key=lambda r: r.width() * r.height())
  s = shape(rgb, rect)
  pts = five_points(np.array([[s.part(i).x, s.part(i).y] for i in range(68)], np.float64))
  return (pts - pad + 0.5) / UPSCALE - 0.5


def load(root: str, image_size: tuple[int, int], template: str = "arcface",
         how: str = "landmarks", subjects=None) -> ArReal:
  """Every image of the folder (of ``subjects`` only, when given), aligned (``how``:
  "landmarks" or "centre"), with ground truth."""
  if how not in ALIGNMENTS:
    raise ValueError(f"eval.protocols.ar_real.alignment={how!r} is not one of {ALIGNMENTS}")
  rows = read_labels(root, subjects)
  if not rows:
    raise ValueError(f"{root}: no image of subjects {subjects}")
  greys = [_grey(os.path.join(root, r["relative_path"])) for r in rows]
  subj = np.array([int(r["subject"]) for r in rows])
  sess = np.array([int(r["session"]) for r in rows])
  kinds = np.array([r["kind"] for r in rows])
  shapes = {g.shape for g in greys}
  if len(shapes) != 1:
    raise ValueError(f"{root}: the crops differ in size ({sorted(shapes)}); expected one size")
  crop_hw = greys[0].shape
  keys = list(zip(subj.tolist(), sess.tolist()))
  neutral = {}  # (subject, session) -> its first neutral image
  for i, key in enumerate(keys):
    if kinds[i] == "neutral":
      neutral.setdefault(key, i)
  # the points of each (subject, session): median over its neutral and lighting images
  points, source = {}, {}
  if how == "landmarks":
    for key in sorted(set(keys)):
      found = [p for p in (crop_points(greys[i]) for i in range(len(keys))
                           if keys[i] == key and kinds[i] in ("neutral", "light"))
               if p is not None]
      if found:
        points[key], source[key] = np.median(np.stack(found), 0), "dlib"
    if not points:
      raise ValueError(f"{root}: dlib found no face in any clean AR crop")
    fallback = np.median(np.stack(list(points.values())), 0)
    for key in set(keys) - set(points):
      points[key], source[key] = fallback, "fallback"  # the median face of the others
  images, masks = [], []
  for i, g in enumerate(greys):
    key = keys[i]
    if how == "landmarks":
      m = alignment.similarity_transform(points[key], alignment.template_for(image_size,
                                                                             template))
    else:
      m = alignment.centre_crop_matrix(crop_hw, image_size)
    images.append(np.repeat(alignment.warp_affine(g, m, image_size), 3, -1))
    truth = np.zeros(image_size, bool)
    if kinds[i] in OCCLUDED_KINDS and key in neutral:
      # the category's region mapped back into the crop's frame
      inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
      region = alignment.warp_affine(category_mask(kinds[i], image_size, template)
                                     .astype(np.uint8) * 255, inv, crop_hw)[..., 0] > 127
      t = truth_mask(g, greys[neutral[key]], kinds[i], region)
      truth = alignment.warp_affine(t.astype(np.uint8) * 255, m, image_size)[..., 0] > 127
    masks.append(truth)
  return ArReal(np.stack(images), subj, sess, kinds, np.stack(masks),
                [r["relative_path"] for r in rows], source)
