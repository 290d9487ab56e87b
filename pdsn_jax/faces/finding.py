"""Faces in raw photos, found and given the points that align them like the landmarks TSV.

* ``blazeface`` (default): MediaPipe's BlazeFace in JAX (``faces.blazeface``), batched, the
  short-range model and then the full-range one on the photos where it found none
  (``blazeface_full``: the full-range model alone, for small, far faces); its 4 keypoints (eyes, nose tip, mouth centre) align
  with ``alignment.BLAZEFACE_112x96``, so a mask over the mouth does not move the face.
  ``fallback``: a last try, both models at that lower score, on the photos still without a
  face (off by default: it also finds faces where there are none,
  ``benchmarks/blazeface_fallback.py``).
* ``hog`` / ``cnn``: dlib's detectors and 68-point predictor, giving the five template points
  (eye centres, nose tip, mouth corners).

Each finder's files come in an optional package; the error says what to install. Every photo
gets a result, never an exception: a face (several: the largest, and the note says so), or
the reason there is none.
"""

import dataclasses
import logging
import os
import time

import numpy as np

from pdsn_jax.data.alignment import align_face
from pdsn_jax.data.folders import load_photo

DETECTORS = ("blazeface", "blazeface_full", "hog", "cnn")
WEIGHTS = ("run", "shipped")  # --face_finder_weights
FINDERS = DETECTORS + ("none",)  # --face_finder: "none" takes the photos as aligned crops
_BLAZEFACE = {"blazeface": ("short", "full"), "blazeface_full": ("full",)}  # tried in order
MIN_FACE_PX = 16  # a photo smaller than this on either side holds no usable face
# every format Pillow reads that photos come in (animated / multi-page: the first frame)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".gif", ".tif", ".tiff",
                    ".webp")
# a photo larger than this is shrunk as it is decoded (4096x4096: a face in it still has far
# more pixels than the 112x96 crop); the finder runs on at most CHUNK_PIXELS at once, so memory
# follows the number of photos, never their size
MAX_PHOTO_PIXELS = 4096 * 4096
CHUNK_PIXELS = 4 * MAX_PHOTO_PIXELS

# 68-point indices (iBUG 300-W, 0-based): eyes 36-41 (image left) and 42-47, nose tip 30,
# mouth corners 48 (image left) and 54 - in the TSV's order.
_LEFT_EYE, _RIGHT_EYE, _NOSE, _MOUTH_L, _MOUTH_R = range(36, 42), range(42, 48), 30, 48, 54


def five_points(shape68: np.ndarray) -> np.ndarray:
  """(68, 2) landmarks -> (5, 2): eye centres (image left, right), nose tip, mouth corners."""
  p = np.asarray(shape68, np.float64)
  return np.stack([p[list(_LEFT_EYE)].mean(0), p[list(_RIGHT_EYE)].mean(0), p[_NOSE],
                   p[_MOUTH_L], p[_MOUTH_R]])


FACES = ("largest", "all")  # which faces of a photo ``find`` returns


@dataclasses.dataclass
class Detected:
  """One face a finder found in a photo, in the photo's pixels."""

  box: np.ndarray  # (4,) x0, y0, x1, y1
  points: np.ndarray  # (4, 2) BlazeFace (eyes, nose tip, mouth centre) or (5, 2) dlib
  score: float  # the detector's confidence (dlib's HOG has none: 1.0)

  @property
  def area(self) -> float:
    return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


@dataclasses.dataclass
class Found:
  """One face of one photo: the aligned face (None when the photo has none), its points (in the
  photo's pixels, before any shrinking), and a note; ``index`` is the photo's place in the
  input, ``box`` / ``score`` where a finder found it (None for landmarks from a TSV or a
  centre crop)."""

  path: str
  face: np.ndarray | None
  points: np.ndarray | None
  note: str  # "ok", "3 faces, the largest taken", "no face found", "unreadable: ..."
  index: int = 0
  box: np.ndarray | None = None
  score: float | None = None


class FaceFinder:
  """BlazeFace (short or full range; 4 points), or dlib's HOG (fast, frontal) or CNN (MMOD,
  slower, more poses) detector + 68-point model (5 points)."""

  def __init__(self, detector: str = "blazeface", upsample: int = 1,
               fallback: float | None = None, short_params: dict | None = None):
    """``short_params``: weights for the short-range BlazeFace model instead of the shipped
    ones (a run's fine-tuned finder, ``faces.tuning``)."""
    if detector not in DETECTORS:
      raise ValueError(f"face detector {detector!r} is not one of {DETECTORS}")
    if fallback is not None and (detector not in _BLAZEFACE or not 0 < fallback < 1):
      raise ValueError(f"a fallback score ({fallback}) needs a BlazeFace detector and a value "
                       f"in (0, 1); got --face_finder={detector}")
    if short_params is not None and "short" not in _BLAZEFACE.get(detector, ()):
      raise ValueError(f"short-range BlazeFace weights need --face_finder=blazeface, not "
                       f"{detector!r}")
    self.name, self._blaze, self.fallback = detector, None, fallback
    if detector in _BLAZEFACE:
      from pdsn_jax.faces import blazeface  # pylint: disable=g-import-not-at-top
      self._blaze = [blazeface.BlazeFace(m, params=short_params if m == "short" else None)
                     for m in _BLAZEFACE[detector]]
      return
    try:
      import dlib  # pylint: disable=g-import-not-at-top
      import face_recognition_models as frm  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("finding faces in raw photos needs dlib and its model files: "
                        "pip install dlib-bin face_recognition_models (or pass a landmarks TSV)"
                        ) from e
    self.upsample = upsample
    if detector == "cnn":
      cnn = dlib.cnn_face_detection_model_v1(frm.cnn_face_detector_model_location())
      self._detect = lambda img: [d.rect for d in cnn(img, upsample)]
    else:
      hog = dlib.get_frontal_face_detector()
      self._detect = lambda img: list(hog(img, upsample))
    self._shape = dlib.shape_predictor(frm.pose_predictor_model_location())

  def points(self, image: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The points of the largest face in an RGB uint8 image ((4, 2) BlazeFace, (5, 2) dlib),
    and a note."""
    return self.points_batch([image])[0]

  def points_batch(self, images) -> list[tuple[np.ndarray | None, str]]:
    """``points`` of every image; BlazeFace runs them as batches."""
    out = []
    for dets in self.detect_batch(images):
      out.append((None, "no face found") if not dets else (dets[0].points, (
          "ok" if len(dets) == 1 else f"{len(dets)} faces, the largest taken")))
    return out

  def detect_batch(self, images, min_faces=None,
                   faces: str = "largest") -> list[list[Detected]]:
    """Every face of every RGB uint8 image, largest first; BlazeFace runs them as batches.
    ``min_faces`` (one width in pixels per image, 0: none; BlazeFace): also faces down to that
    width, searched in overlapping tiles (``tiles``) of every such photo (``faces="all"``) or
    of those where the whole photo showed no face that wide (``"largest"``)."""
    found = self._whole(images)
    if min_faces is None or self._blaze is None:
      return found
    todo = [i for i, dets in enumerate(found) if min_faces[i] and (
        faces == "all" or not any(d.box[2] - d.box[0] >= min_faces[i] for d in dets))]
    crops, where = [], []
    for i in todo:
      for x0, y0, side in tiles(images[i].shape[:2], min_faces[i]):
        crops.append(images[i][y0:y0 + side, x0:x0 + side])
        where.append((i, x0, y0))
    if not crops:
      return found
    model = self._blaze[0]
    extra: dict[int, list] = {}
    for (i, x0, y0), crop, dets in zip(where, crops, model.detect(crops)):
      shift = np.array([x0, y0], np.float64)
      h, w = images[i].shape[:2]
      side = crop.shape[0]
      # a face cut by a tile's inner edge is a part of a face: the half-overlapping
      # neighbour (or a larger tile) holds it whole
      inner = [x0 > 0, y0 > 0, x0 + side < w, y0 + side < h]
      whole = [d for d in dets if not any(
          cut and edge for cut, edge in zip(inner, (d.box[0] < 1, d.box[1] < 1,
                                                    d.box[2] > side - 1, d.box[3] > side - 1)))]
      extra.setdefault(i, []).extend(
          Detected(d.box + np.tile(shift, 2), d.keypoints[:4] + shift, float(d.score))
          for d in whole)
    for i, more in extra.items():
      found[i] = _suppress(found[i] + more)
    return found

  def _whole(self, images) -> list[list[Detected]]:
    if self._blaze is None:
      return [self._dlib_faces(im) for im in images]
    found = self._blaze[0].detect(images)
    tries = [(m, None) for m in self._blaze[1:]]
    if self.fallback is not None:  # a last try, every model at the lower threshold
      tries += [(m, self.fallback) for m in self._blaze]
    for model, threshold in tries:  # the next try on the photos still without a face
      todo = [i for i, d in enumerate(found) if not d]
      for i, d in zip(todo, model.detect([images[i] for i in todo], threshold) if todo else []):
        found[i] = d
    return [sorted((Detected(np.asarray(d.box, np.float64), d.keypoints[:4], float(d.score))
                    for d in dets), key=lambda d: -d.area) for dets in found]

  def _dlib_faces(self, image: np.ndarray) -> list[Detected]:  # noqa: D102
    image = np.ascontiguousarray(image)
    out = []
    for r in self._detect(image):
      s = self._shape(image, r)
      pts = five_points(np.array([[s.part(i).x, s.part(i).y] for i in range(68)]))
      out.append(Detected(np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64),
                          pts, 1.0))
    return sorted(out, key=lambda d: -d.area)


# BlazeFace's short-range model finds faces of about a fifth of its input and more: a face of
# ``min_face`` pixels is searched in tiles of TILE_PER_FACE * min_face pixels and in each tile
# size twice as large up to half the photo, consecutive tiles overlapping by half
TILE_PER_FACE = 5
# the same face seen by two tiles (or a tile and the whole photo): boxes overlapping by this
# much of the smaller one
TILE_OVERLAP = 0.5


def tiles(size, min_face: int) -> list[tuple[int, int, int]]:
  """(x0, y0, side) of the square tiles a photo of ``size`` (h, w) is searched in for faces
  down to ``min_face`` pixels wide: sides from TILE_PER_FACE * min_face doubling while below
  half the photo's short side, each size laid over the photo with half-tile strides (the last
  tile of a row or column flush with the edge)."""
  h, w = size
  out, side = [], TILE_PER_FACE * max(int(min_face), 1)
  while side <= min(h, w) // 2:
    step = side // 2
    xs = sorted({*range(0, w - side + 1, step), w - side})
    ys = sorted({*range(0, h - side + 1, step), h - side})
    out += [(x, y, side) for y in ys for x in xs]
    side *= 2
  return out


def _suppress(dets: list[Detected]) -> list[Detected]:
  """One detection per face (the best scoring of those overlapping by more than TILE_OVERLAP
  of the smaller box), largest first."""
  kept: list[Detected] = []
  for d in sorted(dets, key=lambda d: -d.score):
    if all(_overlap(d.box, k.box) <= TILE_OVERLAP for k in kept):
      kept.append(d)
  return sorted(kept, key=lambda d: -d.area)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over the smaller box's area."""
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
  return float(iw * ih / max(small, 1e-12))


def find(inputs, image_size, template: str = "arcface", landmarks: dict | None = None,
         finder: FaceFinder | None = None, chunk: int = 64, faces: str = "largest",
         min_face: int = 0) -> list[Found]:
  """Aligned faces of ``inputs`` (paths, or images in memory: ``as_image``): points from
  ``landmarks`` (path -> (5, 2)) when it has the photo, else from ``finder``; with neither, a
  centre crop (noted). ``faces="all"``: every face the finder sees, one ``Found`` each (same
  ``index``), else the largest; ``min_face``: faces whose box is narrower (pixels of the photo)
  are left out, and BlazeFace looks for faces down to that width in tiles
  (``FaceFinder.detect_batch``; slower: ``benchmarks/small_faces.py``). A photo without a
  face still gets one ``Found`` (``face`` None, the reason in ``note``). Photos are read and searched ``chunk`` at a time, with a progress line (found,
  skipped, photos/s) per chunk."""
  if faces not in FACES:
    raise ValueError(f"faces={faces!r}: allowed values {FACES}")
  if min_face < 0:
    raise ValueError(f"min_face={min_face}: a width in pixels, >= 0")
  out, t0, done = [], time.time(), 0
  for start in range(0, len(inputs), chunk):
    out += _find_chunk(inputs[start:start + chunk], start, tuple(image_size), template,
                       landmarks, finder, faces, min_face)
    done = min(start + chunk, len(inputs))
    if len(inputs) > chunk:
      logging.info("[faces] %d/%d photos: %d faces, %d skipped | %.1f photos/s", done,
                   len(inputs), sum(f.face is not None for f in out),
                   sum(f.face is None for f in out), done / max(time.time() - t0, 1e-9))
  return out


def as_image(x, what: str) -> tuple[np.ndarray, float]:
  """(uint8 HxWx3, scale) of a photo given as a path (``load_photo``: upright, first frame,
  shrunk past ``MAX_PHOTO_PIXELS``), a PIL image (its EXIF orientation applied) or an array
  (HxW grey, HxWx1, HxWx3 RGB or HxWx4 RGBA, uint8). Errors name ``what``."""
  if isinstance(x, (str, os.PathLike)):
    return load_photo(os.fspath(x), MAX_PHOTO_PIXELS)
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.folders import to_rgb  # pylint: disable=g-import-not-at-top
  if isinstance(x, Image.Image):
    return to_rgb(ImageOps.exif_transpose(x)), 1.0
  a = np.asarray(x) if hasattr(x, "__array__") else None
  if a is None:
    raise TypeError(f"{what}: expected a path, a PIL image or a numpy array, got "
                    f"{type(x).__name__}")
  if a.dtype != np.uint8:
    raise ValueError(f"{what}: a {a.dtype} array; images are uint8 in [0, 255] (from floats "
                     "in [0, 1]: (x * 255).round().astype(np.uint8))")
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, -1)
  if a.ndim != 3 or a.shape[-1] not in (3, 4):
    raise ValueError(f"{what}: shape {a.shape}; expected (H, W), (H, W, 1), (H, W, 3) RGB or "
                     "(H, W, 4) RGBA")
  return np.ascontiguousarray(a[..., :3]), 1.0


def _name(x, i: int) -> str:
  return os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>"


def _find_chunk(inputs, offset, image_size, template, landmarks, finder, faces,
                min_face) -> list[Found]:
  found: dict[int, list[Found]] = {}
  search = []  # (index, image, scale) for the finder, at most CHUNK_PIXELS of them held at once

  def run_finder():
    # min_face is in the photo's pixels; the finder sees each photo shrunk by its scale
    widths = [max(1, int(min_face * scale)) if min_face else 0 for _, _, scale in search]
    for (i, image, scale), dets in zip(search, finder.detect_batch(
        [s[1] for s in search], widths, faces)):
      name = _name(inputs[i], offset + i)
      small = [d for d in dets if (d.box[2] - d.box[0]) / scale < min_face]
      dets = [d for d in dets if (d.box[2] - d.box[0]) / scale >= min_face]
      if not dets:
        note = (f"no face found ({len(small)} narrower than min_face={min_face} px)" if small
                else "no face found")
        found[i] = [Found(name, None, None, note, offset + i)]
        continue
      keep = dets if faces == "all" else dets[:1]
      note = ("ok" if len(dets) == 1 else f"{len(dets)} faces, the largest taken"
              if faces == "largest" else None)
      found[i] = [Found(name, align_face(image, d.points, image_size, template),
                        d.points / scale, note or f"face {k + 1} of {len(dets)}", offset + i,
                        d.box / scale, d.score)
                  for k, d in enumerate(keep)]
    search.clear()

  for i, x in enumerate(inputs):
    name = _name(x, offset + i)
    try:
      image, scale = as_image(x, name)
    except (OSError, ValueError) as e:
      if not isinstance(x, (str, os.PathLike)):
        raise  # an array of the wrong kind is the caller's mistake, not a damaged file
      found[i] = [Found(name, None, None, f"unreadable: {e}", offset + i)]
      continue
    if min(image.shape[:2]) < MIN_FACE_PX:
      found[i] = [Found(name, None, None, f"too small: {image.shape[1]}x{image.shape[0]} px, "
                        f"a face needs at least {MIN_FACE_PX}x{MIN_FACE_PX}", offset + i)]
      continue
    key = os.path.normpath(os.path.abspath(name)) if isinstance(x, (str, os.PathLike)) else None
    if key is not None and landmarks is not None and (
        key in landmarks or os.path.realpath(name) in landmarks):
      pts = landmarks.get(key, landmarks.get(os.path.realpath(name)))
      pts = None if pts is None else np.asarray(pts, np.float64)
      found[i] = [Found(name, align_face(image, None if pts is None else pts * scale,
                                         image_size, template), pts, "ok", offset + i)]
    elif finder is not None:
      if sum(s[1].shape[0] * s[1].shape[1] for s in search) + image.size // 3 > CHUNK_PIXELS:
        run_finder()
      search.append((i, image, scale))
    else:  # an aligned crop already (or the caller accepts a centre crop)
      note = "ok" if image.shape[:2] == image_size else "no landmarks: centre crop"
      found[i] = [Found(name, align_face(image, None, image_size, template), None, note,
                        offset + i)]
  if search:
    run_finder()
  return [f for i in range(len(inputs)) for f in found[i]]


def list_images(root: str) -> list[str]:
  """Every image file under ``root`` (sorted), or an error naming the folder."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder not found: {root}")
  paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  if not paths:
    raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
  return paths
