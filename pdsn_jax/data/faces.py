"""Faces in raw photos: dlib's face detector and 68-point predictor give the five template
points (eye centres, nose tip, mouth corners), which align the face like the landmarks TSV.

dlib (``dlib-bin``) and its model files (``face_recognition_models``, CC0) are optional: the
error says what to install. Every photo gets a result, never an exception: a face (several:
the largest, and the note says so), or the reason there is none.
"""

import dataclasses
import os

import numpy as np

from pdsn_jax.data.alignment import align_face
from pdsn_jax.data.folders import load_rgb

DETECTORS = ("hog", "cnn")
MIN_FACE_PX = 16  # a photo smaller than this on either side holds no usable face
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm")

# 68-point indices (iBUG 300-W, 0-based): eyes 36-41 (image left) and 42-47, nose tip 30,
# mouth corners 48 (image left) and 54 - in the TSV's order.
_LEFT_EYE, _RIGHT_EYE, _NOSE, _MOUTH_L, _MOUTH_R = range(36, 42), range(42, 48), 30, 48, 54


def five_points(shape68: np.ndarray) -> np.ndarray:
  """(68, 2) landmarks -> (5, 2): eye centres (image left, right), nose tip, mouth corners."""
  p = np.asarray(shape68, np.float64)
  return np.stack([p[list(_LEFT_EYE)].mean(0), p[list(_RIGHT_EYE)].mean(0), p[_NOSE],
                   p[_MOUTH_L], p[_MOUTH_R]])


@dataclasses.dataclass
class Found:
  """One photo: the aligned face (None when there is none), its 5 points, and a note."""

  path: str
  face: np.ndarray | None
  points: np.ndarray | None
  note: str  # "ok", "3 faces, the largest taken", "no face found", "unreadable: ..."


class FaceFinder:
  """dlib's HOG (fast, frontal) or CNN (MMOD, slower, more poses) detector + 68-point model."""

  def __init__(self, detector: str = "hog", upsample: int = 1):
    if detector not in DETECTORS:
      raise ValueError(f"face detector {detector!r} is not one of {DETECTORS}")
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
    """(5, 2) points of the largest face in an RGB uint8 image, and a note."""
    rects = self._detect(np.ascontiguousarray(image))
    if not rects:
      return None, "no face found"
    rect = max(rects, key=lambda r: r.width() * r.height())
    s = self._shape(np.ascontiguousarray(image), rect)
    pts = five_points(np.array([[s.part(i).x, s.part(i).y] for i in range(68)]))
    return pts, "ok" if len(rects) == 1 else f"{len(rects)} faces, the largest taken"


def find(paths, image_size, template: str = "arcface", landmarks: dict | None = None,
         finder: FaceFinder | None = None) -> list[Found]:
  """Aligned faces of ``paths``: points from ``landmarks`` (path -> (5, 2)) when it has the
  photo, else from ``finder``; with neither, a centre crop (noted)."""
  out = []
  for p in paths:
    try:
      image = load_rgb(p)
    except (OSError, ValueError) as e:
      out.append(Found(p, None, None, f"unreadable: {e}"))
      continue
    if min(image.shape[:2]) < MIN_FACE_PX:
      out.append(Found(p, None, None, f"too small: {image.shape[1]}x{image.shape[0]} px, "
                       f"a face needs at least {MIN_FACE_PX}x{MIN_FACE_PX}"))
      continue
    key = os.path.normpath(os.path.abspath(p))
    pts, note = None, "ok"
    if landmarks is not None and (key in landmarks or os.path.realpath(p) in landmarks):
      pts = landmarks.get(key, landmarks.get(os.path.realpath(p)))
    elif finder is not None:
      pts, note = finder.points(image)
      if pts is None:
        out.append(Found(p, None, None, note))
        continue
    else:  # an aligned crop already (or the caller accepts a centre crop)
      note = "ok" if image.shape[:2] == tuple(image_size) else "no landmarks: centre crop"
    out.append(Found(p, align_face(image, pts, tuple(image_size), template), pts, note))
  return out


def list_images(root: str) -> list[str]:
  """Every image file under ``root`` (sorted), or an error naming the folder."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder not found: {root}")
  paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  if not paths:
    raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
  return paths
