"""Faces in raw photos, found and given the points that align them like the landmarks TSV.

* ``blazeface`` (default): MediaPipe's BlazeFace in JAX (``data.blazeface``), batched, the
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
FINDERS = DETECTORS + ("none",)  # --face_detector: "none" takes the photos as aligned crops
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


def for_run(detector: str, workdir: str, weights: str = "run",
            fallback: float | None = None) -> "FaceFinder":
  """The finder the photo commands use: with ``weights="run"`` and ``detector="blazeface"``,
  the run's tuned short-range weights (its ``face_finder`` stage) when it has them, with the
  run's last try (``face_finder.fallback_score``) unless ``fallback`` is given; else the
  shipped ones."""
  from pdsn_jax import files, workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if weights not in WEIGHTS:
    raise ValueError(f"--face_finder_weights={weights!r} is not one of {WEIGHTS}")
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
    return FaceFinder(detector, fallback=fallback, short_params=params)
  except ValueError as e:
    if params is None:
      raise
    raise files.DamagedFile(f"{path} (the run's tuned face-finder weights) cannot be used: {e}; "
                            f"{fix}") from None


@dataclasses.dataclass
class Found:
  """One photo: the aligned face (None when there is none), its 5 points, and a note."""

  path: str
  face: np.ndarray | None
  points: np.ndarray | None
  note: str  # "ok", "3 faces, the largest taken", "no face found", "unreadable: ..."


class FaceFinder:
  """BlazeFace (short or full range; 4 points), or dlib's HOG (fast, frontal) or CNN (MMOD,
  slower, more poses) detector + 68-point model (5 points)."""

  def __init__(self, detector: str = "blazeface", upsample: int = 1,
               fallback: float | None = None, short_params: dict | None = None):
    """``short_params``: weights for the short-range BlazeFace model instead of the shipped
    ones (a run's fine-tuned finder, ``data.face_tuning``)."""
    if detector not in DETECTORS:
      raise ValueError(f"face detector {detector!r} is not one of {DETECTORS}")
    if fallback is not None and (detector not in _BLAZEFACE or not 0 < fallback < 1):
      raise ValueError(f"a fallback score ({fallback}) needs a BlazeFace detector and a value "
                       f"in (0, 1); got --face_detector={detector}")
    if short_params is not None and "short" not in _BLAZEFACE.get(detector, ()):
      raise ValueError(f"short-range BlazeFace weights need --face_detector=blazeface, not "
                       f"{detector!r}")
    self.name, self._blaze, self.fallback = detector, None, fallback
    if detector in _BLAZEFACE:
      from pdsn_jax.data import blazeface  # pylint: disable=g-import-not-at-top
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
    if self._blaze is None:
      return [self._dlib_points(im) for im in images]
    found = self._blaze[0].detect(images)
    tries = [(m, None) for m in self._blaze[1:]]
    if self.fallback is not None:  # a last try, every model at the lower threshold
      tries += [(m, self.fallback) for m in self._blaze]
    for model, threshold in tries:  # the next try on the photos still without a face
      todo = [i for i, d in enumerate(found) if not d]
      for i, d in zip(todo, model.detect([images[i] for i in todo], threshold) if todo else []):
        found[i] = d
    out = []
    for dets in found:
      if not dets:
        out.append((None, "no face found"))
        continue
      best = max(dets, key=lambda d: d.area)
      out.append((best.keypoints[:4], "ok" if len(dets) == 1 else
                  f"{len(dets)} faces, the largest taken"))
    return out

  def _dlib_points(self, image: np.ndarray) -> tuple[np.ndarray | None, str]:
    rects = self._detect(np.ascontiguousarray(image))
    if not rects:
      return None, "no face found"
    rect = max(rects, key=lambda r: r.width() * r.height())
    s = self._shape(np.ascontiguousarray(image), rect)
    pts = five_points(np.array([[s.part(i).x, s.part(i).y] for i in range(68)]))
    return pts, "ok" if len(rects) == 1 else f"{len(rects)} faces, the largest taken"


def find(paths, image_size, template: str = "arcface", landmarks: dict | None = None,
         finder: FaceFinder | None = None, chunk: int = 64) -> list[Found]:
  """Aligned faces of ``paths``: points from ``landmarks`` (path -> (5, 2)) when it has the
  photo, else from ``finder``; with neither, a centre crop (noted). Photos are read and
  searched ``chunk`` at a time, with a progress line (found, skipped, photos/s) per chunk."""
  out, t0 = [], time.time()
  for start in range(0, len(paths), chunk):
    out += _find_chunk(paths[start:start + chunk], tuple(image_size), template, landmarks,
                       finder)
    if len(paths) > chunk:
      done = len(out)
      logging.info("[faces] %d/%d photos: %d faces, %d skipped | %.1f photos/s", done,
                   len(paths), sum(f.face is not None for f in out),
                   sum(f.face is None for f in out), done / max(time.time() - t0, 1e-9))
  return out


def _find_chunk(paths, image_size, template, landmarks, finder) -> list[Found]:
  found: dict[int, Found] = {}
  search = []  # (index, image) for the finder, at most CHUNK_PIXELS of them held at once

  def run_finder():
    for (i, image), (pts, note) in zip(search, finder.points_batch([im for _, im in search])):
      found[i] = Found(paths[i], None if pts is None else align_face(
          image, pts, image_size, template), pts, note)
    search.clear()

  for i, p in enumerate(paths):
    try:
      image, scale = load_photo(p, MAX_PHOTO_PIXELS)
    except (OSError, ValueError) as e:
      found[i] = Found(p, None, None, f"unreadable: {e}")
      continue
    if min(image.shape[:2]) < MIN_FACE_PX:
      found[i] = Found(p, None, None, f"too small: {image.shape[1]}x{image.shape[0]} px, "
                       f"a face needs at least {MIN_FACE_PX}x{MIN_FACE_PX}")
      continue
    key = os.path.normpath(os.path.abspath(p))
    if landmarks is not None and (key in landmarks or os.path.realpath(p) in landmarks):
      pts = landmarks.get(key, landmarks.get(os.path.realpath(p)))
      pts = None if pts is None else np.asarray(pts, np.float64) * scale
      found[i] = Found(p, align_face(image, pts, image_size, template), pts, "ok")
    elif finder is not None:
      if sum(im.shape[0] * im.shape[1] for _, im in search) + image.size // 3 > CHUNK_PIXELS:
        run_finder()
      search.append((i, image))
    else:  # an aligned crop already (or the caller accepts a centre crop)
      note = "ok" if image.shape[:2] == image_size else "no landmarks: centre crop"
      found[i] = Found(p, align_face(image, None, image_size, template), None, note)
  if search:
    run_finder()
  return [found[i] for i in range(len(paths))]


def list_images(root: str) -> list[str]:
  """Every image file under ``root`` (sorted), or an error naming the folder."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder not found: {root}")
  paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  if not paths:
    raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
  return paths
