"""Occlusion synthesis on aligned faces: occluders, block grid, pasting with a pixel mask.

Everything is numpy and seeded by the ``np.random.Generator`` the pipeline hands
each element, so occlusions are deterministic per (seed, stream position) and
the transforms pickle for grain workers.

Block overlap. The paper marks a block occluded when its "IoU" with the occluded
area is >= 0.5. Taken literally (intersection over union), a pair of sunglasses
spanning three blocks would mark none, so the default here is the fraction of
the block that is covered (intersection over the block's area);
``overlap="iou"`` gives the literal definition.
"""

import fnmatch
import functools
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image

GRID = 5
CENTRAL_BLOCKS = tuple(r * GRID + c for r in (1, 2, 3) for c in (1, 2, 3))  # the 9 generators
NUM_GENERATORS = len(CENTRAL_BLOCKS)
CATEGORIES = ("sunglasses", "mask", "hand", "object")
# occluder folder names counted as a protocol category
ALIASES = {"glasses": "sunglasses", "hat": "object", "scarf": "mask"}
OVERLAPS = ("coverage", "iou")


@functools.lru_cache(maxsize=16)
def _block_masks_cached(image_size: tuple[int, int], grid: int) -> np.ndarray:
  out = block_pixel_masks(image_size, grid)
  out.flags.writeable = False
  return out


def block_boxes(image_size: tuple[int, int], grid: int = GRID) -> np.ndarray:
  """(grid*grid, 4) float boxes (y0, x0, y1, x1), row-major."""
  h, w = image_size
  ys, xs = np.linspace(0, h, grid + 1), np.linspace(0, w, grid + 1)
  return np.array([(ys[r], xs[c], ys[r + 1], xs[c + 1]) for r in range(grid)
                   for c in range(grid)])


def block_pixel_masks(image_size: tuple[int, int], grid: int = GRID) -> np.ndarray:
  """(grid*grid, H, W) float32 membership of each pixel centre in each block."""
  h, w = image_size
  yy, xx = np.mgrid[0:h, 0:w] + 0.5
  out = []
  for y0, x0, y1, x1 in block_boxes(image_size, grid):
    out.append((yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1))
  return np.asarray(out, np.float32)


def blocks_occluded(mask, blocks, threshold: float = 0.5, overlap: str = "coverage"):
  """(..., num_blocks) bool: overlap >= threshold, compared as ``inter >= t * denominator``
  so that numpy and XLA agree exactly on integer pixel counts (a quotient may round
  differently on either side of the threshold)."""
  xp = np if isinstance(mask, np.ndarray) else jnp
  m = mask.astype(xp.float32)
  inter = xp.einsum("...hw,khw->...k", m, blocks)
  area = blocks.sum(axis=(1, 2))
  if overlap == "coverage":
    return inter >= xp.float32(threshold) * area
  if overlap == "iou":
    union = m.sum(axis=(-2, -1))[..., None] + area - inter
    return (inter >= xp.float32(threshold) * union) & (union > 0)
  raise ValueError(f"occlusion.overlap={overlap!r} is not one of {OVERLAPS}")


def block_flags(masks, threshold: float = 0.5, overlap: str = "coverage",
                blocks=CENTRAL_BLOCKS):
  """The one way from pixel masks to block flags: (..., H, W) bool -> (..., len(blocks)) bool,
  which of ``blocks`` (default: the 9 generator blocks) the occlusion marks. numpy in, numpy
  out; jnp in (traceable), jnp out."""
  px = _block_masks_cached(tuple(masks.shape[-2:]), GRID)[np.asarray(blocks)]
  if not isinstance(masks, np.ndarray):
    px = jnp.asarray(px)
  return blocks_occluded(masks, px, threshold, overlap)


def block_coverage(masks: np.ndarray, blocks=CENTRAL_BLOCKS) -> np.ndarray:
  """(..., H, W) bool -> (..., len(blocks)) float: the share of each block's pixels the mask
  covers (what ``block_flags`` compares with its threshold under "coverage"; for reports)."""
  px = _block_masks_cached(tuple(masks.shape[-2:]), GRID)[np.asarray(blocks)]
  return np.einsum("...hw,khw->...k", masks.astype(np.float32), px) / px.sum(axis=(1, 2))


# ---------------------------------------------------------------- occluders


def _ellipse(h, w, cy, cx, ry, rx):
  yy, xx = np.mgrid[0:h, 0:w] + 0.5
  return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def procedural_occluder(category: str, rng: np.random.Generator, size=(48, 64)) -> np.ndarray:
  """A built-in RGBA occluder (uint8, HxWx4) of ``category``, drawn from ``rng``."""
  h, w = size
  rgba = np.zeros((h, w, 4), np.uint8)
  if category == "sunglasses":
    lens = rng.uniform(0, 60, 3)
    a = np.zeros((h, w), bool)
    for cx in (0.27 * w, 0.73 * w):
      a |= _ellipse(h, w, 0.5 * h, cx, 0.42 * h, 0.23 * w)
    a[int(0.4 * h):int(0.52 * h), int(0.45 * w):int(0.55 * w)] = True  # bridge
    rgba[..., :3] = lens
  elif category == "mask":
    colour = rng.choice([[235, 240, 245], [120, 170, 220], [40, 40, 45], [200, 80, 90]])
    colour = np.clip(colour + rng.normal(0, 10, 3), 0, 255)
    a = _ellipse(h, w, 0.5 * h, 0.5 * w, 0.55 * h, 0.52 * w)
    rgba[..., :3] = colour
    stripes = (np.arange(h) % 8 < 1)[:, None] & a
    rgba[stripes, :3] = np.clip(colour * 0.85, 0, 255)
  elif category == "hand":
    skin = np.clip(np.array([224, 172, 125]) * rng.uniform(0.5, 1.1) + rng.normal(0, 8, 3), 0, 255)
    a = _ellipse(h, w, 0.62 * h, 0.5 * w, 0.38 * h, 0.42 * w)
    for k in range(4):
      a |= _ellipse(h, w, 0.3 * h, (0.2 + 0.2 * k) * w, 0.3 * h, 0.08 * w)
    rgba[..., :3] = skin
    shade = (np.arange(w)[None, :] % 12 == 0) & a
    rgba[shade, :3] = skin * 0.8
  elif category == "object":
    base = rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    period = rng.uniform(4, 12)
    tex = 0.5 + 0.5 * np.sin((xx * rng.uniform(-1, 1) + yy) / period)
    rgba[..., :3] = np.clip(base[None, None] * (0.6 + 0.4 * tex[..., None]), 0, 255)
    a = np.ones((h, w), bool)
  else:
    raise ValueError(f"occluder category {category!r} is not one of {CATEGORIES}")
  rgba[..., 3] = np.where(a, 255, 0)
  return rgba


class OccluderLibrary:
  """Transparent PNG occluders in ``<root>/<category>/**/*.png``, plus the procedural set.

  Categories from folders are mapped onto the protocol's names where obvious
  (``glasses`` -> sunglasses, ``hat`` -> object); unknown folder names are kept.
  """

  SPLITS = ("all", "train", "select", "test")

  def __init__(self, root: str = "", procedural: bool = True, categories=CATEGORIES,
               split: str = "all", heldout_every: int = 4, face_template: str = "arcface",
               splits: dict | None = None):
    """``split``: which files of ``root`` to load: "train" (stages I-III and the detector),
    "select" (where settings are chosen) or "test" (the evaluation), never two at once, or
    "all". ``splits`` maps each split to globs (relative to ``root``, e.g.
    "sunglasses/tryon_rayban/*"); a file no glob names is in no split, a file two splits name
    is an error. Without globs, every ``heldout_every``-th file of each folder (sorted by
    path) is a test file, the one before it a select file (``file_split``).
    ``categories``: the procedural occluders' categories (with ``procedural``)."""
    if split not in self.SPLITS:
      raise ValueError(f"occluder split {split!r} is not one of {self.SPLITS}")
    bad = [c for c in categories if c not in CATEGORIES]
    if bad:
      raise ValueError(f"procedural occluder categories {bad} are not among {CATEGORIES}")
    self.images: dict[str, list[np.ndarray]] = {}
    self.files: list[str] = []  # the loaded files, relative to root
    self.names: dict[str, list[str]] = {}  # per category, the file of each of its images
    self.face_template = face_template  # the alignment of the faces it occludes (placement.py)
    self.procedural = procedural
    self.categories = tuple(categories)
    if root:
      for cat, pngs in list_files(root, split, splits, heldout_every).items():
        self._load(root, cat, pngs)
      if not self.images and not (split == "train" and procedural):
        raise ValueError(f"no PNG occluders under {root} (split {split!r}, globs: "
                         f"{dict(splits or {}) or f'every {heldout_every}th file'})")
    if not procedural and not self.images:
      raise ValueError("an occluder library needs occluder_dir or procedural=True")

  def _load(self, root: str, cat: str, pngs: list[str]) -> None:
    for full in pngs:
      try:
        with Image.open(full) as im:
          has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
          rgba = np.asarray(im.convert("RGBA"))
      except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot read occluder {full}: {e}") from None
      if not has_alpha or rgba[..., 3].min() == 255:
        raise ValueError(f"occluder {full} has no transparent pixels (mode {im.mode}): it "
                         "would paste as an opaque rectangle; cut it out with an alpha "
                         "channel")
      self.images.setdefault(cat, []).append(_crop_to_alpha(rgba))
      self.files.append(os.path.relpath(full, root))
      self.names.setdefault(cat, []).append(self.files[-1])

  def available(self) -> tuple[str, ...]:
    cats = set(self.images)
    if self.procedural:
      cats |= set(self.categories)
    return tuple(sorted(cats))

  def sample(self, rng: np.random.Generator, category: str | None = None) -> tuple[str, np.ndarray]:
    cat, _, image = self.sample_named(rng, category)
    return cat, image

  def sample_named(self, rng: np.random.Generator,
                   category: str | None = None) -> tuple[str, str, np.ndarray]:
    """(category, source, RGBA image): the source is the file under the root, or
    "drawn:<category>" for a procedural drawing. Draws what ``sample`` draws."""
    cats = self.available()
    cat = category if category is not None else cats[rng.integers(len(cats))]
    files = self.images.get(cat, [])
    if not files and not (self.procedural and cat in self.categories):
      raise ValueError(f"no occluder of category {cat!r}: no files of it here and its "
                       f"procedural drawing is off (procedural categories {self.categories})")
    use_file = files and (not self.procedural or cat not in self.categories or rng.uniform() < 0.5)
    if use_file:
      k = rng.integers(len(files))
      return cat, self.names[cat][k], files[k]
    return cat, f"drawn:{cat}", procedural_occluder(cat, rng)


def splits_by_globs(splits: dict | None) -> bool:
  """Whether ``occlusion.splits`` names files by globs (any split has one); else every
  ``heldout_every``-th file is a test file (``file_split``)."""
  return bool(splits) and any(splits.get(k) for k in ("train", "select", "test"))


def file_split(rel: str, index: int, splits: dict | None, heldout_every: int = 4) -> str | None:
  """The split of one occluder file (``rel``: its path under the root, ``index``: its place in
  its category folder's sorted list): the split whose globs match it (None: no split), or,
  without globs, "test" / "select" / "train" by ``index`` modulo ``heldout_every``."""
  if splits_by_globs(splits):
    hits = [k for k in ("train", "select", "test")
            if any(fnmatch.fnmatch(rel, g) for g in (splits.get(k) or ()))]
    if len(hits) > 1:
      raise ValueError(f"occluder file {rel} matches the globs of two splits {hits} "
                       "(occlusion.splits): a file may be in one split only")
    return hits[0] if hits else None
  r = index % heldout_every
  if r == heldout_every - 1:
    return "test"
  if heldout_every >= 3 and r == heldout_every - 2:
    return "select"
  return "train"


def list_files(root: str, split: str, splits: dict | None = None,
               heldout_every: int = 4) -> dict[str, list[str]]:
  """category -> the PNG paths of ``split`` under ``root`` (nothing is opened)."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"occlusion.occluder_dir not found: {root}")
  out: dict[str, list[str]] = {}
  for folder in sorted(os.listdir(root)):
    path = os.path.join(root, folder)
    if not os.path.isdir(path):
      continue
    cat = ALIASES.get(folder, folder)
    pngs = sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                  if f.lower().endswith(".png"))
    keep = [p for i, p in enumerate(pngs)
            if split == "all" or file_split(os.path.relpath(p, root), i, splits,
                                            heldout_every) == split]
    if keep:
      out.setdefault(cat, []).extend(keep)
  return out


def _crop_to_alpha(rgba: np.ndarray) -> np.ndarray:
  ys, xs = np.nonzero(rgba[..., 3] > 0)
  if len(ys) == 0:
    return rgba
  return rgba[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


# ---------------------------------------------------------------- pasting


def paste(image: np.ndarray, occluder: np.ndarray, box: tuple[float, float, float, float],
          angle_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """Pastes an RGBA occluder scaled into ``box`` = (y0, x0, y1, x1), rotated about its centre.

  Alpha is binarised at 0.5, so the returned bool mask is exactly the set of
  pixels whose value was replaced. Returns (occluded uint8 image, HxW bool mask).
  """
  h, w = image.shape[:2]
  y0, x0, y1, x1 = box
  bh, bw = max(y1 - y0, 1.0), max(x1 - x0, 1.0)
  cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
  oh, ow = occluder.shape[:2]
  yy, xx = np.mgrid[0:h, 0:w] + 0.5
  t = np.deg2rad(angle_deg)
  dy, dx = yy - cy, xx - cx
  u = np.cos(t) * dx + np.sin(t) * dy  # rotate back into the box frame
  v = -np.sin(t) * dx + np.cos(t) * dy
  sx = (u / bw + 0.5) * ow
  sy = (v / bh + 0.5) * oh
  inside = (sx >= 0) & (sx < ow) & (sy >= 0) & (sy < oh)
  ix = np.clip(sx.astype(np.int64), 0, ow - 1)
  iy = np.clip(sy.astype(np.int64), 0, oh - 1)
  src = occluder[iy, ix]
  mask = inside & (src[..., 3] >= 128)
  out = image.copy()
  out[mask] = src[mask][:, :3]
  return out, mask


def intended_blocks(block: int, rng: np.random.Generator, neighbour_prob: float,
                    grid: int = GRID) -> list[int]:
  """[block] and, with probability ``neighbour_prob``, one of its 4-neighbours (drawn)."""
  targets = [block]
  if neighbour_prob > 0 and rng.uniform() < neighbour_prob:
    r, c = divmod(block, grid)
    nbrs = [(r + dr) * grid + c + dc for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
            if 0 <= r + dr < grid and 0 <= c + dc < grid]
    targets.append(nbrs[rng.integers(len(nbrs))])
  return targets


def occlude_block(image: np.ndarray, block: int, rng: np.random.Generator,
                  library: OccluderLibrary, neighbour_prob: float = 0.0,
                  min_overlap: float = 0.5, overlap: str = "coverage",
                  grid: int = GRID, category: str | None = None, max_tries: int = 8,
                  exact: bool = True, return_targets: bool = False,
                  placements: list | None = None):
  """Covers ``block`` (overlap >= ``min_overlap``) and, with ``neighbour_prob``, one 4-neighbour.

  ``exact``: a placement is kept only if no other generator block reaches ``min_overlap``,
  so that the sample flags exactly the intended blocks under the FDM rule (an occluder
  up to 1.6x a block's height and 2.5x its width otherwise covers a second central block
  in about 30% of samples, and item j would learn its neighbours' corruption too).
  Returns (image, bool mask) [, the intended blocks]. If no random placement qualifies
  in ``max_tries``, a textured rectangle is pasted on the block itself. ``placements``: a
  list to which each pasted occluder's ``{block, source, box (y0, x0, y1, x1 px), angle}`` is
  appended (the random draws are the same with or without it).
  """
  size = image.shape[:2]
  boxes = block_boxes(size, grid)
  blocks = _block_masks_cached(tuple(size), grid)  # per face x 9 blocks: build once
  targets = intended_blocks(block, rng, neighbour_prob, grid)
  others = np.asarray([b for b in (CENTRAL_BLOCKS if grid == GRID else range(grid * grid))
                       if b not in targets])
  out, mask = image, np.zeros(size, bool)
  for b in targets:
    y0, x0, y1, x1 = boxes[b]
    bh, bw = y1 - y0, x1 - x0
    placed = False
    for _ in range(max_tries):
      _, source, occ = library.sample_named(rng, category)
      scale = rng.uniform(1.0, 1.6)
      aspect = occ.shape[1] / occ.shape[0]
      hh = bh * scale
      ww = float(np.clip(hh * aspect, bw * 1.0, bw * 2.5))
      cy = (y0 + y1) / 2 + rng.uniform(-0.25, 0.25) * bh
      cx = (x0 + x1) / 2 + rng.uniform(-0.25, 0.25) * bw
      box, angle = (cy - hh / 2, cx - ww / 2, cy + hh / 2, cx + ww / 2), rng.uniform(-15, 15)
      cand, m = paste(out, occ, box, angle)
      if not blocks_occluded(m, blocks[b:b + 1], min_overlap, overlap)[0]:
        continue
      if exact and blocks_occluded(mask | m, blocks[others], min_overlap, overlap).any():
        continue
      out, mask, placed = cand, mask | m, True
      break
    if not placed:
      source, box, angle = "fallback:object", (y0, x0, y1, x1), 0.0
      out, m = paste(out, procedural_occluder("object", rng), box)
      mask = mask | m
    if placements is not None:
      placements.append({"block": int(b), "source": source,
                         "box": [round(float(v), 2) for v in box], "angle": round(float(angle), 2)})
  return (out, mask, targets) if return_targets else (out, mask)


def random_occlusion(image: np.ndarray, rng: np.random.Generator, library: OccluderLibrary,
                     category: str | None = None, area=(0.1, 0.4)):
  """An occluder of random size and position anywhere on the face (not block aligned)."""
  h, w = image.shape[:2]
  _, occ = library.sample(rng, category)
  frac = rng.uniform(*area)
  aspect = occ.shape[1] / occ.shape[0]
  bh = np.sqrt(frac * h * w / aspect)
  bw = bh * aspect
  cy, cx = rng.uniform(0.2 * h, 0.85 * h), rng.uniform(0.2 * w, 0.8 * w)
  return paste(image, occ, (cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2),
               rng.uniform(-15, 15))


class OccludeEveryBlock:
  """grain transform: adds ``occluded`` (num_blocks, H, W, 3) and ``occlusion_mask`` copies,
  one per generator block, to a record with a clean ``image`` (picklable)."""

  def __init__(self, library: OccluderLibrary, blocks=CENTRAL_BLOCKS, neighbour_prob=0.5,
               min_overlap=0.5, overlap="coverage", exact=True):
    self.library, self.blocks = library, tuple(blocks)
    self.neighbour_prob, self.min_overlap, self.overlap = neighbour_prob, min_overlap, overlap
    self.exact = exact

  def __call__(self, rec: dict, rng: np.random.Generator) -> dict:
    occ, masks = [], []
    for b in self.blocks:
      o, m = occlude_block(rec["image"], b, rng, self.library, self.neighbour_prob,
                           self.min_overlap, self.overlap, exact=self.exact)
      occ.append(o)
      masks.append(m)
    rec["occluded"] = np.stack(occ)
    rec["occlusion_mask"] = np.stack(masks)
    return rec
