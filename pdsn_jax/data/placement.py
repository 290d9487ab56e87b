"""Occluders placed where they occur on real faces, for evaluation probes and fine-tuning.

On an aligned face the template's landmarks say where the eyes and mouth are,
so sunglasses go over the eyes, masks and scarves over nose, mouth and chin, a
hand over the lower or side face, an object anywhere, and "blocks" covers one
or two random generator blocks (the stage I occlusions). Every function takes
the ``np.random.Generator`` it draws from, so a protocol is reproducible from
its seed.
"""

import numpy as np
from PIL import Image, ImageFilter

from pdsn_jax.data import occlusion
from pdsn_jax.data.alignment import similarity_transform, template_for, warp_affine

CONDITIONS = ("sunglasses", "mask", "hand", "object", "blocks")
# categories whose place on an aligned face the template fixes (``category_region``): where a
# user who knows the occlusion, or the "category blocks" rows of the real AR protocol, put it
CATEGORY_REGIONS = ("sunglasses", "mask", "scarf")


def category_region(kind: str, image_size: tuple[int, int],
                    template: str = "arcface") -> tuple[float, float, float, float]:
  """(y0, x0, y1, x1) where ``kind`` sits on an aligned face of ``image_size``: sunglasses the
  box around both eyes (0.45 eye distances above and below them, 0.6 beyond each), a mask or
  scarf everything from 0.15 eye distances above the nose tip down. With the 112x96 template
  and coverage >= 0.5 these are the eye row of blocks (2,1)-(2,3) and the nose row
  (3,1)-(3,3)."""
  pts = template_for(image_size, template)
  h, w = image_size
  ed = float(np.linalg.norm(pts[1] - pts[0]))
  if kind == "sunglasses":
    ey = float(pts[:2, 1].mean())
    return (ey - 0.45 * ed, pts[0, 0] - 0.6 * ed, ey + 0.45 * ed, pts[1, 0] + 0.6 * ed)
  if kind in ("scarf", "mask"):
    return (float(pts[2, 1]) - 0.15 * ed, 0.0, float(h), float(w))
  raise ValueError(f"no category region for {kind!r}: one of {CATEGORY_REGIONS}")


def category_mask(kind: str, image_size: tuple[int, int], template: str = "arcface"):
  """(H, W) bool: the category's region as a pixel mask."""
  h, w = image_size
  y0, x0, y1, x1 = category_region(kind, image_size, template)
  yy, xx = np.mgrid[0:h, 0:w] + 0.5
  return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def category_flags(kind: str, image_size, min_overlap: float = 0.5, overlap: str = "coverage",
                   template: str = "arcface") -> np.ndarray:
  """The 9 generator-block flags of a category's region (``category_region``)."""
  return occlusion.block_flags(category_mask(kind, image_size, template), min_overlap, overlap)


def _paste_scaled(image, occ, rng, cy, cx, width, height=None, angle=8.0):
  aspect = occ.shape[1] / occ.shape[0]
  height = width / aspect if height is None else height
  return occlusion.paste(image, occ, (cy - height / 2, cx - width / 2, cy + height / 2,
                                      cx + width / 2), rng.uniform(-angle, angle))


def occlude(image: np.ndarray, rng: np.random.Generator, library: occlusion.OccluderLibrary,
            condition: str) -> tuple[np.ndarray, np.ndarray]:
  """Occludes an aligned face with ``condition`` (one of CONDITIONS): (image, HxW bool mask)."""
  if condition not in CONDITIONS:
    raise ValueError(f"occlusion condition {condition!r} is not one of {CONDITIONS}")
  h, w = image.shape[:2]
  pts = template_for((h, w), library.face_template)
  eyes, nose, mouth = pts[:2].mean(0), pts[2], pts[3:].mean(0)
  ed = float(np.linalg.norm(pts[1] - pts[0]))  # eye distance, the face's scale
  if condition == "blocks":
    block = occlusion.CENTRAL_BLOCKS[rng.integers(len(occlusion.CENTRAL_BLOCKS))]
    return occlusion.occlude_block(image, block, rng, library, neighbour_prob=0.5)
  if condition == "object":
    return occlusion.random_occlusion(image, rng, library, "object", area=(0.2, 0.45))
  _, occ = library.sample(rng, condition)
  if condition == "sunglasses":
    width = ed * rng.uniform(2.2, 2.6)
    cy = eyes[1] + rng.uniform(-0.08, 0.08) * ed
    return _paste_scaled(image, occ, rng, cy, eyes[0] + rng.uniform(-0.05, 0.05) * ed, width,
                         height=width * rng.uniform(0.33, 0.45))
  if condition == "mask":
    top = nose[1] - rng.uniform(0.1, 0.35) * ed
    bottom = min(h + 0.1 * ed, mouth[1] + rng.uniform(0.8, 1.1) * ed)
    width = ed * rng.uniform(2.1, 2.6)
    return _paste_scaled(image, occ, rng, (top + bottom) / 2, mouth[0], width,
                         height=bottom - top, angle=5.0)
  # hand: over the lower face or a cheek, palm-sized
  width = ed * rng.uniform(1.8, 2.4)
  cy = rng.uniform(nose[1], mouth[1] + 0.5 * ed)
  cx = mouth[0] + rng.choice([-1.0, 0.0, 1.0]) * rng.uniform(0.4, 0.9) * ed
  return _paste_scaled(image, occ, rng, cy, cx, width, height=width * rng.uniform(0.9, 1.2),
                       angle=25.0)


class RandomOcclusion:
  """grain transform for fine-tuning: with probability ``1 - clean_prob`` the face is occluded
  by a random condition; adds ``blocks`` (9 bool flags: all False for clean faces) and
  ``occluded_fraction``, and with ``keep_clean`` the unoccluded ``clean`` image (picklable).
  ``clean_fdm_prob``: the share of clean faces flagged with the blocks a random occlusion
  would cover, the image left clean: a gallery face embedded under a probe's FDM."""

  def __init__(self, library: occlusion.OccluderLibrary, clean_prob: float = 0.25,
               conditions=CONDITIONS, threshold: float = 0.5, overlap: str = "coverage",
               keep_clean: bool = False, clean_fdm_prob: float = 0.0):
    self.clean_fdm_prob = clean_fdm_prob
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad or not conditions:
      raise ValueError(f"finetune.conditions={tuple(conditions)!r}: allowed {CONDITIONS}")
    self.library, self.clean_prob, self.conditions = library, clean_prob, tuple(conditions)
    self.threshold, self.overlap, self.keep_clean = threshold, overlap, keep_clean

  def __call__(self, rec: dict, rng: np.random.Generator) -> dict:
    h, w = rec["image"].shape[:2]
    if self.keep_clean:
      rec["clean"] = rec["image"]
    mask = np.zeros((h, w), bool)
    if rng.uniform() >= self.clean_prob:
      cond = self.conditions[rng.integers(len(self.conditions))]
      rec["image"], mask = occlude(rec["image"], rng, self.library, cond)
      flags_from = mask
    elif self.clean_fdm_prob > 0 and rng.uniform() < self.clean_fdm_prob:
      cond = self.conditions[rng.integers(len(self.conditions))]
      _, flags_from = occlude(rec["image"], rng, self.library, cond)
    else:
      flags_from = mask
    rec["blocks"] = occlusion.block_flags(flags_from, self.threshold, self.overlap)
    rec["occluded_fraction"] = np.float32(mask.mean())
    return rec


def cloth(rng: np.random.Generator, size=(48, 96), knit: bool = False) -> np.ndarray:
  """A drawn RGBA piece of woven (checked) or striped cloth with a wavy top edge; ``knit``:
  half of them knitted wool instead (``knitted``)."""
  if knit and rng.uniform() < 0.5:  # drawn only when asked: older runs' draws stay the same
    return knitted(rng, size)
  h, w = size
  yy, xx = np.mgrid[0:h, 0:w]
  base = rng.uniform(10, 200, 3) * rng.uniform(0.3, 1.0)
  other = np.clip(base * rng.uniform(0.4, 1.6) + rng.normal(0, 25, 3), 0, 255)
  p1, p2 = rng.uniform(3, 14, 2)
  a = rng.uniform(-0.6, 0.6)
  u, v = (xx + a * yy) / p1, (yy - a * xx) / p2
  if rng.uniform() < 0.5:  # checked
    t = ((np.floor(u) + np.floor(v)) % 2)[..., None]
  else:  # stripes
    t = (np.sin(2 * np.pi * v) > rng.uniform(-0.5, 0.5))[..., None].astype(np.float32)
  rgba = np.zeros((h, w, 4), np.uint8)
  rgba[..., :3] = np.clip(base * (1 - t) + other * t + rng.normal(0, 8, (h, w, 3)), 0, 255)
  top = (0.12 * h * (1 + np.sin(xx[0] / w * np.pi * rng.uniform(1, 3) + rng.uniform(0, 6)))
         * rng.uniform(0.2, 1.0))
  rgba[..., 3] = np.where(yy >= top[None, :], 255, 0)
  return rgba


def knitted(rng: np.random.Generator, size=(48, 96)) -> np.ndarray:
  """A drawn RGBA piece of knitted wool: mostly dark or muted yarn, vertical ribs of
  V-shaped stitches, fuzz, a soft shading fold and a ragged top edge. A thick winter scarf
  over the mouth is dark and low in contrast, unlike a printed mask or a woven cloth."""
  h, w = size
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  dark = rng.uniform() < 0.6
  base = (rng.uniform(15, 70) if dark else rng.uniform(60, 200)) * rng.uniform(0.7, 1.0, 3)
  pitch = rng.uniform(2.5, 6.0)  # stitch width in px
  col = xx / pitch
  stitch = np.abs(((yy / pitch + np.abs((col % 1) - 0.5)) % 1) - 0.5) * 2  # chevrons
  rib = 0.5 + 0.5 * np.cos(2 * np.pi * col)  # the ribs' shading between columns
  fuzz = np.asarray(Image.fromarray(rng.uniform(0, 255, (h, w)).astype(np.uint8)).filter(
      ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))), np.float32) / 255 - 0.5
  fold = 1 + rng.uniform(0.1, 0.35) * np.sin(xx / w * np.pi * rng.uniform(1, 3)
                                              + rng.uniform(0, 6)) * np.cos(yy / h * np.pi)
  shade = (0.75 + 0.25 * stitch * rib + 0.3 * fuzz) * fold
  rgba = np.zeros((h, w, 4), np.uint8)
  rgba[..., :3] = np.clip(base[None, None] * shade[..., None]
                          + rng.normal(0, 4, (h, w, 3)), 0, 255)
  top = 0.1 * h * (1 + np.sin(xx[0] / w * np.pi * rng.uniform(1, 4) + rng.uniform(0, 6))) \
      * rng.uniform(0.2, 1.0) + rng.uniform(0, 2, w)
  rgba[..., 3] = np.where(yy >= top[None, :], 255, 0)
  return rgba


def scarf(image: np.ndarray, rng: np.random.Generator, library: occlusion.OccluderLibrary,
          drawn_cloth: bool = False, knit: bool = False, piece: np.ndarray | None = None):
  """A mask occluder (``drawn_cloth``: a drawn ``cloth``, ``knit`` as ``cloth`` takes it;
  ``piece``: this RGBA occluder) stretched like a scarf: from about the nose down past the
  chin, about the face's width or wider (what scarves over the mouth look like).
  (image, HxW bool mask)."""
  h, w = image.shape[:2]
  pts = template_for((h, w), library.face_template)
  ed = float(np.linalg.norm(pts[1] - pts[0]))
  occ = piece if piece is not None else (
      cloth(rng, knit=knit) if drawn_cloth else library.sample(rng, "mask")[1])
  top = pts[2, 1] - rng.uniform(-0.1, 0.4) * ed
  bottom = h + rng.uniform(0.0, 0.5) * ed
  width = w * rng.uniform(0.85, 1.3)
  return _paste_scaled(image, occ, rng, (top + bottom) / 2, pts[2, 0] + rng.uniform(-0.1, 0.1) * ed,
                       width, height=bottom - top, angle=4.0)


def eyeglasses(image: np.ndarray, rng: np.random.Generator, face_template: str = "arcface"):
  """Clear eyeglass frames drawn over the eyes (thin dark or light rims and a bridge). They
  are not an occlusion to discard: the detector learns them as face (no mask returned)."""
  h, w = image.shape[:2]
  pts = template_for((h, w), face_template)
  ed = float(np.linalg.norm(pts[1] - pts[0]))
  yy, xx = np.mgrid[0:h, 0:w] + 0.5
  ry, rx = ed * rng.uniform(0.22, 0.32), ed * rng.uniform(0.3, 0.42)
  thick = rng.uniform(0.06, 0.14)
  rim = np.zeros((h, w), bool)
  for cx, cy in pts[:2]:
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    rim |= (d <= 1.0) & (d >= (1 - thick) ** 2)
  y = pts[:2, 1].mean()
  rim |= (np.abs(yy - y + 0.1 * ry) < max(0.6, 0.05 * ed)) & (xx > pts[0, 0] + rx) & (
      xx < pts[1, 0] - rx)
  out = image.copy()
  out[rim] = np.clip(rng.choice([rng.uniform(10, 70), rng.uniform(150, 230)])
                     + rng.normal(0, 6, 3), 0, 255).astype(np.uint8)
  return out


def occlude_photo(photo: np.ndarray, points: np.ndarray, rng: np.random.Generator,
                  library: occlusion.OccluderLibrary, condition: str,
                  cloth_prob: float = 0.0) -> np.ndarray:
  """A raw photo with ``condition`` pasted on its face, in place: the face is aligned by its 5
  ``points`` (the landmarks-TSV order), occluded in the 112x96 frame as ``occlude`` does, and
  the occluder warped back into the photo (to test face finders on occluded photos).
  ``condition`` may also be "scarf" (``scarf``; with ``cloth_prob`` a drawn cloth, half of it
  knitted, instead of a mask file)."""
  m = similarity_transform(np.asarray(points, np.float64).reshape(5, 2),
                           template_for((112, 96), library.face_template))
  face = warp_affine(photo, m, (112, 96))
  if condition == "scarf":
    drawn = cloth_prob > 0 and rng.uniform() < cloth_prob  # no draw at 0: old streams kept
    occ, mask = scarf(face, rng, library, drawn, knit=True)
  else:
    occ, mask = occlude(face, rng, library, condition)
  inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
  back = warp_affine(occ, inv, photo.shape[:2])
  alpha = warp_affine(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, -1), inv,
                      photo.shape[:2])[..., :1] / 255.0
  return (photo * (1 - alpha) + back * alpha).astype(np.uint8)
