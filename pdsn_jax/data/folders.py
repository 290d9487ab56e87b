"""Real faces from folder-per-identity image trees, aligned by 5-point landmarks."""

import logging
import os

import numpy as np
from PIL import Image, ImageOps

from pdsn_jax.data.alignment import align_face

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


def read_landmarks(path: str) -> dict[str, np.ndarray | None]:
  """Reads ``path<TAB>x1 y1 ... x5 y5[<TAB>...]`` rows; a ``relative_path`` header is skipped.

  Keys are absolute paths (relative ones are taken from the TSV's folder);
  ``NA`` gives None. A row without exactly 10 numbers raises with file and line.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"landmarks file not found: {path}")
  base = os.path.dirname(os.path.abspath(path))
  out: dict[str, np.ndarray | None] = {}
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      line = line.rstrip("\n\r")
      if not line.strip() or line.startswith("#"):
        continue
      fields = line.split("\t")
      if lineno == 1 and fields[0] == "relative_path":
        continue
      if len(fields) < 2:
        raise ValueError(f"{path}:{lineno}: expected 'path<TAB>x1 y1 ... x5 y5', got {line!r}")
      rel, values = fields[0], fields[1].split()
      key = os.path.normpath(os.path.join(base, rel))
      if values == ["NA"]:
        out[key] = None
        continue
      if len(values) != 10:
        raise ValueError(f"{path}:{lineno}: landmarks for {rel!r} have {len(values)} values, "
                         "expected 10 (x1 y1 ... x5 y5) or NA")
      try:
        pts = np.array([float(v) for v in values], np.float64).reshape(5, 2)
      except ValueError as e:
        raise ValueError(f"{path}:{lineno}: non-numeric landmark in {rel!r}: {e}") from None
      if not np.isfinite(pts).all():
        raise ValueError(f"{path}:{lineno}: landmarks for {rel!r} are not finite ({fields[1]}); "
                         "write NA for a photo without points")
      if np.ptp(pts, axis=0).max() < 1.0:  # one point five times: no face to align to
        raise ValueError(f"{path}:{lineno}: landmarks for {rel!r} are degenerate (the 5 points "
                         "lie within one pixel); write NA for a photo without points")
      out[key] = pts
  return out


def _readable(path: str) -> bool:
  """Decodes the whole image: ``verify()`` reads headers only and passes truncated JPEGs."""
  try:
    with Image.open(path) as im:
      im.load()
    return True
  except Exception:  # noqa: BLE001 - any decoder error means unreadable
    return False


def to_rgb(im: Image.Image) -> np.ndarray:
  """uint8 HxWx3 of an image of any mode Pillow decodes, converted by value: 16- and 32-bit
  integer grey scaled from their range (65535, or the maximum when larger), float grey from
  [0, 1] when it fits there (else clipped to [0, 255]); palette, CMYK, YCbCr, 1-bit, grey and
  alpha modes through Pillow's own conversion (alpha dropped). Grey is replicated."""
  if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    a = np.asarray(im, np.float64)
    top = 65535.0 if a.max(initial=0) <= 65535 else float(a.max())
    g = np.clip(np.rint(np.maximum(a, 0) * 255.0 / top), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, -1)
  if im.mode == "F":
    a = np.asarray(im, np.float64)
    a = a * 255.0 if a.size and a.min() >= 0 and a.max() <= 1 else a
    return np.repeat(np.clip(np.rint(a), 0, 255).astype(np.uint8)[..., None], 3, -1)
  return np.asarray(im.convert("RGB"))


def load_photo(path: str, max_pixels: int | None = None) -> tuple[np.ndarray, float]:
  """(uint8 HxWx3, scale): the image as a person sees it (its EXIF orientation applied, the
  first frame of an animated or multi-page file), shrunk by ``scale`` <= 1 when it has more
  than ``max_pixels`` pixels (so memory follows the number of photos, not their size; a JPEG
  is decoded at the reduced size directly). Errors name the file."""
  try:
    with Image.open(path) as im:
      im.seek(0)
      scale = 1.0
      w, h = im.size
      if max_pixels and w * h > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
        target = (max(1, int(w * scale)), max(1, int(h * scale)))
        im.draft("RGB", target)  # JPEG: decode at 1/2, 1/4 or 1/8 of the size
        im = im.resize(target, Image.BILINEAR, reducing_gap=2.0)
      im = ImageOps.exif_transpose(im)
      return to_rgb(im), scale
  except FileNotFoundError:
    raise FileNotFoundError(f"image not found: {path}") from None
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"cannot read image {path}: {e}") from None


def load_rgb(path: str) -> np.ndarray:
  """Decodes an image file to uint8 HxWx3 (``load_photo``: upright, first frame), naming the
  file on error."""
  return load_photo(path)[0]


class FolderFaces:
  """grain random-access source over ``root/<identity>/<image>``; labels by sorted folder name.

  Args:
    root: folder with one sub-folder per identity.
    landmarks: optional TSV (see ``read_landmarks``); images listed there are
      aligned to the 112x96 template, others centre-cropped and resized.
    image_size: (height, width) of the aligned output.
    skip_bad_images: decode every image at start-up and drop unreadable ones
      (logging the count) instead of failing on first use.
    min_images: identities with fewer images are dropped (logged).
    require_landmarks: with a landmarks TSV, an image without a row is an error
      (otherwise it is centre-cropped; the count is logged either way);
    strict_landmarks: a TSV row naming a file that does not exist is an error
      (otherwise the count is logged).
    raw: a photo with landmarks comes as read, with its 5 points (``points``), not aligned
      (the face finder's training sees the head around the face).
  """

  def __init__(self, root: str, landmarks: str | None = None,
               image_size: tuple[int, int] = (112, 96), skip_bad_images: bool = False,
               min_images: int = 1, template: str = "arcface", require_landmarks: bool = False,
               strict_landmarks: bool = False, raw: bool = False):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"face folder root not found: {root}")
    self.root = os.path.abspath(root)
    self.image_size = tuple(image_size)
    self.template, self.raw = template, raw
    self.landmarks = read_landmarks(landmarks) if landmarks else {}
    names = sorted(d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d)))
    if not names:
      raise ValueError(f"{self.root} has no identity sub-folders")
    paths, labels, self.identities, dropped = [], [], [], 0
    for name in names:
      folder = os.path.join(self.root, name)
      files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
      if not files:
        raise ValueError(f"identity folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")
      files = [os.path.join(folder, f) for f in files]
      if skip_bad_images:
        good = [f for f in files if _readable(f)]
        dropped += len(files) - len(good)
        files = good
      if len(files) < min_images:
        continue
      label = len(self.identities)
      self.identities.append(name)
      paths += files
      labels += [label] * len(files)
    if dropped:
      logging.warning("skipped %d unreadable images under %s", dropped, self.root)
    self.skipped_images = dropped
    if landmarks:
      self._check_landmarks(landmarks, paths, require_landmarks, strict_landmarks)
    self.paths = paths
    self.labels = np.asarray(labels, np.int32)
    self.description = f"folders:{self.root}"

  def _check_landmarks(self, tsv: str, paths: list[str], require: bool, strict: bool) -> None:
    known = {os.path.normpath(p) for p in paths}
    no_row = [p for p in known if p not in self.landmarks]
    under_root = [k for k in self.landmarks if k.startswith(self.root + os.sep)]
    missing = [k for k in under_root if not os.path.exists(k)]
    self.images_without_landmarks, self.rows_for_missing_files = len(no_row), len(missing)
    if no_row:
      msg = (f"{len(no_row)} of {len(known)} images under {self.root} have no row in {tsv} "
             f"(e.g. {sorted(no_row)[0]})")
      if require:
        raise ValueError(msg + "; data.folders.require_landmarks=True makes this an error")
      logging.warning("%s: they are centre-cropped, not aligned", msg)
    if missing:
      msg = f"{len(missing)} rows of {tsv} name files that do not exist (e.g. {sorted(missing)[0]})"
      if strict:
        raise ValueError(msg + "; data.folders.strict_landmarks=True makes this an error")
      logging.warning(msg)

  @property
  def num_classes(self) -> int:
    return len(self.identities)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    path = self.paths[int(index)]
    image = load_rgb(path)
    marks = self.landmarks.get(os.path.normpath(path))
    if self.raw and marks is not None:
      return {"image": image, "points": np.asarray(marks, np.float32).reshape(5, 2),
              "label": self.labels[int(index)]}
    return {"image": align_face(image, self.landmarks.get(os.path.normpath(path)), self.image_size,
                                self.template),
            "label": self.labels[int(index)]}

  def __repr__(self) -> str:
    return f"FolderFaces({self.root}, {self.num_classes} ids, {len(self)} images)"
