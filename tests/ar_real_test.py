"""The real AR protocol: ground-truth masks, category blocks, the paired bootstrap, and the
protocol end to end on a tiny run with an AR-shaped folder of drawn faces."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

from pdsn_jax.data import ar_photos, occlusion, placement
from pdsn_jax.data.synthetic import SyntheticFaces
from pdsn_jax.evaluation import stats
from tests import helpers

CROP = (42, 30)
KINDS = (["neutral"] + ["expression"] * 3 + ["light"] * 3 + ["sunglasses"] * 3 +
         ["scarf"] * 3) * 2  # the 26 AR images of a subject, in AR's order


def _grey_face(face: np.ndarray) -> np.ndarray:
  return np.asarray(Image.fromarray(face).convert("L").resize(CROP[::-1], Image.BILINEAR))


def _lenses(h: int, w: int) -> np.ndarray:
  """Two lens ellipses over the crop's eyes, apart by a 2-pixel nose gap."""
  yy, xx = np.mgrid[0:h, 0:w] + 0.5
  m = np.zeros((h, w), bool)
  for cx in (0.3 * w, 0.7 * w):
    m |= ((yy - 0.4 * h) / (0.09 * h)) ** 2 + ((xx - cx) / (0.17 * w)) ** 2 <= 1
  return m


def _occlude(grey: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
  h, w = grey.shape
  out, m = grey.copy(), np.zeros((h, w), bool)
  if kind == "sunglasses":
    m = _lenses(h, w)
    out[m] = 15
  elif kind == "scarf":
    m[int(0.68 * h):] = True
    out[m] = np.where((np.arange(w) // 3) % 2, 40, 90)[None].repeat(m.sum() // w, 0).ravel()
  return out, m


def make_ar_folder(root, subjects: int = 4) -> dict:
  """An AR-shaped folder (labels.tsv, sSSS/sSSS_KK_kind.png) of drawn grey faces; returns the
  drawn occluder masks by relative path."""
  src = SyntheticFaces(subjects, 7, seed=3, first_identity=50)
  drawn = {}
  rows = []
  for s in range(subjects):
    clean = [_grey_face(src[s * 7 + k]["image"]) for k in range(7)]
    for idx, kind in enumerate(KINDS, 1):
      session = 1 if idx <= 13 else 2
      base = clean[(idx - 1) % 13 % 7] if kind not in ar_photos.OCCLUDED_KINDS else clean[0]
      img, m = _occlude(base, kind)
      rel = f"s{s + 1:03d}/s{s + 1:03d}_{idx:02d}_{kind}.png"
      os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
      Image.fromarray(img).save(os.path.join(root, rel))
      rows.append([rel, s + 1, session, idx, kind])
      drawn[rel] = m
  with open(os.path.join(root, "labels.tsv"), "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, delimiter="\t")
    w.writerow(["relative_path", "subject", "session", "index", "kind"])
    w.writerows(rows)
  return drawn


def test_truth_masks_find_drawn_sunglasses_and_scarves(tmp_path):
  drawn = make_ar_folder(str(tmp_path), subjects=2)
  ar = ar_photos.load(str(tmp_path), CROP, how="centre")  # same frame as the crops
  for kind in ar_photos.OCCLUDED_KINDS:
    for i in np.flatnonzero(ar.kinds == kind):
      true = drawn[ar.paths[i]] & placement.category_mask(kind, CROP)
      inter, union = (ar.masks[i] & true).sum(), (ar.masks[i] | true).sum()
      assert inter / union > 0.8, (ar.paths[i], inter / union)
  sun = ar.masks[ar.kinds == "sunglasses"]
  w = CROP[1]
  # the nose between the lenses stays face below the lens centres
  assert not sun[:, int(0.45 * CROP[0]), w // 2 - 1: w // 2 + 1].any()
  clean = ~np.isin(ar.kinds, ar_photos.OCCLUDED_KINDS)
  assert not ar.masks[clean].any() and clean.sum() == 2 * 14


def test_category_blocks_are_the_eye_row_and_the_nose_row():
  eye_row = [occlusion.CENTRAL_BLOCKS.index(2 * 5 + c) for c in (1, 2, 3)]
  nose_row = [occlusion.CENTRAL_BLOCKS.index(3 * 5 + c) for c in (1, 2, 3)]
  sun = placement.category_flags("sunglasses", (112, 96))
  scarf = placement.category_flags("scarf", (112, 96))
  assert list(np.flatnonzero(sun)) == eye_row and list(np.flatnonzero(scarf)) == nose_row
  with pytest.raises(ValueError, match="no category region for 'hat'"):
    placement.category_region("hat", (112, 96))


def test_labels_are_checked(tmp_path):
  with pytest.raises(FileNotFoundError, match="no labels.tsv"):
    ar_photos.read_labels(str(tmp_path))
  (tmp_path / "labels.tsv").write_text("relative_path\tsubject\tsession\tindex\tkind\n"
                                       "a.png\t1\t1\t1\tbeard\n")
  with pytest.raises(ValueError, match=r"line 2: kind 'beard'"):
    ar_photos.read_labels(str(tmp_path))


def test_paired_bootstrap_known_answers():
  b = np.zeros(200)
  iv = stats.paired_bootstrap(b + 1, b)
  assert iv["diff"] == iv["lo"] == iv["hi"] == 1.0 and stats.verdict(iv) == "ahead"
  # a wins on 30% of 4000 items, never loses: the mean difference is 0.3 and its standard
  # error sqrt(0.3 * 0.7 / 4000) = 0.00725, so the 95% interval is 0.3 +- 0.0142
  a = (np.arange(4000) % 10 < 3).astype(float)
  iv = stats.paired_bootstrap(a, np.zeros(4000), seed=1)
  assert iv["diff"] == pytest.approx(0.3)
  assert iv["lo"] == pytest.approx(0.3 - 0.0142, abs=0.003)
  assert iv["hi"] == pytest.approx(0.3 + 0.0142, abs=0.003)
  # the same items either way: no difference, an interval around 0
  rng = np.random.default_rng(0)
  x = (rng.uniform(size=500) < 0.5).astype(float)
  iv = stats.paired_bootstrap(x, x[::-1])
  assert iv["lo"] < 0 < iv["hi"] and stats.verdict(iv) == "within noise"
  with pytest.raises(ValueError, match="two equal 1-D"):
    stats.paired_bootstrap([1, 0], [1])


@pytest.mark.skipif(not os.path.isfile(os.path.join(helpers.SHARED_DATA, "ar_real",
                                                    "labels.tsv")),
                    reason="../shared/data/ar_real (research-only AR photos) is not present")
@pytest.mark.real_data
@pytest.mark.slow
def test_real_ar_photos_align_by_landmarks_and_their_truth_marks_the_category_rows():
  pytest.importorskip("dlib", reason="dlib-bin is not installed")
  ar = ar_photos.load(os.path.join(helpers.SHARED_DATA, "ar_real"), (112, 96))
  assert len(ar.kinds) == 1300
  assert sum(v == "dlib" for v in ar.points_source.values()) >= 95  # of 100 subject-sessions
  flags = occlusion.block_flags(ar.masks)
  for kind in ar_photos.OCCLUDED_KINDS:
    cat = placement.category_flags(kind, (112, 96))
    assert np.mean(np.all(flags[ar.kinds == kind] == cat, axis=1)) > 0.8


def test_a_subject_filter_never_opens_the_other_subjects_files(tmp_path):
  """The paper's split: a benchmark asking for the development subjects gets no test subject's
  row, so their files are never read."""
  assert set(ar_photos.DEVELOPMENT_SUBJECTS) == set(range(1, 27))
  assert set(ar_photos.TEST_SUBJECTS) == set(range(27, 51))
  (tmp_path / "labels.tsv").write_text(
      "relative_path\tsubject\tsession\tindex\tkind\n"
      "s001/a.png\t1\t1\t1\tneutral\ns026/b.png\t26\t1\t1\tscarf\ns027/c.png\t27\t1\t1\tneutral\n")
  rows = ar_photos.read_labels(str(tmp_path), ar_photos.DEVELOPMENT_SUBJECTS)
  assert [r["subject"] for r in rows] == ["1", "26"]
  assert len(ar_photos.read_labels(str(tmp_path))) == 3  # the evaluation's protocol: every row
  with pytest.raises(ValueError, match="no image of subjects"):
    ar_photos.load(str(tmp_path), (112, 96), how="centre", subjects=(40,))
