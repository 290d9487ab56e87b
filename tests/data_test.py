"""Synthetic faces, alignment, folder sources and the grain pipeline."""

import os

import numpy as np
import pytest
from PIL import Image

from pdsn_jax.data import alignment, pipeline
from pdsn_jax.data.folders import FolderFaces, read_landmarks
from pdsn_jax.data.synthetic import SyntheticFaces


def test_synthetic_faces_deterministic_per_seed():
  a, b = SyntheticFaces(5, 3, seed=7), SyntheticFaces(5, 3, seed=7)
  for i in (0, 4, 14):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    assert a[i]["label"] == b[i]["label"] == i // 3
  c = SyntheticFaces(5, 3, seed=8)
  assert np.abs(a[0]["image"].astype(int) - c[0]["image"].astype(int)).mean() > 5
  img = a[0]["image"]
  assert img.shape == (112, 96, 3) and img.dtype == np.uint8


def test_synthetic_images_of_one_identity_differ_but_resemble():
  s = SyntheticFaces(20, 4, seed=0)
  x = np.stack([s[i]["image"] for i in range(len(s))]).astype(np.float32)
  # per-image jitter: no two images identical
  assert np.abs(x[0] - x[1]).mean() > 1
  # hair/skin colours are identity traits: mean face-centre colour closer within identity
  centre = x[:, 45:80, 30:66].mean(axis=(1, 2))
  within = np.mean([np.linalg.norm(centre[4 * k] - centre[4 * k + 1]) for k in range(20)])
  between = np.mean([np.linalg.norm(centre[4 * k] - centre[4 * (k + 1) + 1]) for k in range(19)])
  assert within < between


def test_synthetic_parts_sit_in_template_blocks():
  """Eyes (dark pupils) in block row 2, mouth (lips) in block row 4 of the 5x5 grid."""
  s = SyntheticFaces(30, 1, seed=3)
  x = np.stack([s[i]["image"] for i in range(len(s))]).astype(np.float32).mean(-1)
  rows = np.array_split(np.arange(112), 5)
  # the darkest pixel of the eye region (pupils) lies in rows 44.8..67.2
  eye_band = x[:, 30:80, 20:40]
  ys = np.argmin(eye_band.reshape(len(x), -1), axis=1) // 20 + 30
  assert np.mean((ys >= rows[2][0]) & (ys <= rows[2][-1])) > 0.8


def test_synthetic_bad_sizes_fail():
  with pytest.raises(ValueError, match="num_identities"):
    SyntheticFaces(0, 3)


def test_similarity_maps_template_landmarks_within_half_pixel():
  rng = np.random.default_rng(0)
  tpl = alignment.TEMPLATE_112x96
  angle = 0.3
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  src = (tpl @ rot.T) * 1.7 + np.array([40.0, 25.0]) + rng.normal(0, 0.2, tpl.shape)
  m = alignment.similarity_transform(src, tpl)
  mapped = src @ m[:, :2].T + m[:, 2]
  assert np.abs(mapped - tpl).max() < 0.5
  # And the warp moves image content with it: a bright dot at each source point.
  img = np.zeros((300, 300, 3), np.uint8)
  for x, y in src:
    img[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2] = 255
  out = alignment.warp_affine(img, m, (112, 96))
  for x, y in tpl:
    assert out[int(round(y)), int(round(x))].max() > 100


def test_align_without_landmarks_keeps_aspect():
  img = np.zeros((300, 200, 3), np.uint8)
  out = alignment.align_face(img, None, (112, 96))
  assert out.shape == (112, 96, 3)


def _write_tree(root, n_ids=3, n_imgs=2):
  paths = []
  for i in range(n_ids):
    d = os.path.join(root, f"id{i}")
    os.makedirs(d)
    for k in range(n_imgs):
      p = os.path.join(d, f"{k}.png")
      Image.fromarray(np.full((60, 50, 3), 40 * i + k, np.uint8)).save(p)
      paths.append(p)
  return paths


def test_folder_source_reads_and_aligns(tmp_path):
  _write_tree(str(tmp_path / "faces"))
  tsv = tmp_path / "landmarks.tsv"
  lm = " ".join(f"{v:.1f}" for v in (alignment.TEMPLATE_112x96 * 0.5).reshape(-1))
  tsv.write_text("relative_path\tlandmarks_5pt\tbbox\n"
                 f"faces/id0/0.png\t{lm}\t0 0 1 1\nfaces/id1/1.png\tNA\t0 0 1 1\n")
  src = FolderFaces(str(tmp_path / "faces"), str(tsv))
  assert len(src) == 6 and src.num_classes == 3
  rec = src[0]
  assert rec["image"].shape == (112, 96, 3) and rec["label"] == 0
  lms = read_landmarks(str(tsv))
  assert len(lms) == 2 and sum(v is None for v in lms.values()) == 1


def test_folder_errors_name_the_culprit(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    FolderFaces(str(tmp_path / "nowhere"))
  _write_tree(str(tmp_path / "f"))
  os.makedirs(tmp_path / "f" / "empty_id")
  with pytest.raises(ValueError, match="empty_id"):
    FolderFaces(str(tmp_path / "f"))
  os.rmdir(tmp_path / "f" / "empty_id")
  bad = tmp_path / "f" / "id1" / "broken.jpg"
  bad.write_bytes(b"not an image")
  src = FolderFaces(str(tmp_path / "f"))
  idx = src.paths.index(str(bad))
  with pytest.raises(ValueError, match="broken.jpg"):
    src[idx]
  skipping = FolderFaces(str(tmp_path / "f"), skip_bad_images=True)
  assert skipping.skipped_images == 1 and len(skipping) == 6
  tsv = tmp_path / "lm.tsv"
  tsv.write_text("f/id0/0.png\t1 2 3 4 5\n")
  with pytest.raises(ValueError, match=r"lm.tsv:1: .* 5 values"):
    read_landmarks(str(tsv))
  with pytest.raises(FileNotFoundError, match="missing.tsv"):
    read_landmarks(str(tmp_path / "missing.tsv"))


class _Src:
  labels = np.arange(20) % 5
  num_classes = 5

  def __len__(self):
    return 20

  def __getitem__(self, i):
    return {"image": np.full((4, 4, 3), i, np.uint8), "label": np.int32(i)}


def test_global_batches_do_not_depend_on_process_count():
  one = pipeline.train_dataset(_Src(), 8, seed=3)
  two = [pipeline.train_dataset(_Src(), 8, seed=3, process_index=p, process_count=2)
         for p in range(2)]
  for step in range(6):  # crosses epochs (2 batches per epoch of 20)
    joined = np.concatenate([two[0][step]["label"], two[1][step]["label"]])
    np.testing.assert_array_equal(one[step]["label"], joined)
  # each epoch is a fresh permutation without repeats
  ep0 = np.concatenate([one[0]["label"], one[1]["label"]])
  ep1 = np.concatenate([one[2]["label"], one[3]["label"]])
  assert len(set(ep0)) == 16 and len(set(ep1)) == 16 and not np.array_equal(ep0, ep1)


def test_flip_is_seeded_by_stream_position():
  a = pipeline.train_dataset(_Src(), 8, seed=1, transforms=(pipeline.RandomFlip(),))
  b = pipeline.train_dataset(_Src(), 8, seed=1, transforms=(pipeline.RandomFlip(),))
  np.testing.assert_array_equal(a[3]["image"], b[3]["image"])


def test_iterator_state_resumes_exactly():
  ds = pipeline.train_dataset(_Src(), 4, seed=0)
  it = pipeline.to_iterator(ds)
  next(it), next(it)
  state = it.get_state()
  expected = [next(it)["label"] for _ in range(3)]
  it2 = pipeline.to_iterator(ds)
  it2.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(it2)["label"], e)


def test_too_small_dataset_fails_clearly():
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.train_dataset(_Src(), 32, seed=0)


_CELEBA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir,
                       "shared", "data", "celeba")


@pytest.mark.skipif(not os.path.isdir(_CELEBA), reason=f"real data not present at {_CELEBA}")
def test_real_celeba_folder_aligns_to_template():
  src = FolderFaces(os.path.join(_CELEBA, "images"), os.path.join(_CELEBA, "landmarks.tsv"))
  assert src.num_classes == 299 and len(src) == 6283
  tpl = alignment.TEMPLATE_112x96
  residuals = []
  for i in range(0, len(src), 100):
    lm = src.landmarks[os.path.normpath(src.paths[i])]
    m = alignment.similarity_transform(lm, tpl)
    residuals.append(lm @ m[:, :2].T + m[:, 2] - tpl)
    if i % 1000 == 0:
      assert src[i]["image"].shape == (112, 96, 3)
  mean = np.mean(residuals, axis=0)
  # Eyes land on the template within a pixel on average. (These MediaPipe landmarks put
  # the nose tip ~5 px lower and the mouth corners ~3 px higher than the MTCNN-style
  # template, measured over 2000 faces; the least-squares fit shares that out.)
  assert np.abs(mean[:2]).max() < 1.0, mean
  assert np.median([np.abs(r).max() for r in residuals]) < 10.0


def test_distractors_are_never_training_images(tmp_path):
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data import sources  # pylint: disable=g-import-not-at-top
  _write_tree(str(tmp_path / "faces"), n_ids=5, n_imgs=2)
  c = tiny.get_config().data
  c.source = "folders"
  c.folders.update(root=str(tmp_path / "faces"), heldout_identities=1, distractor_identities=0)
  with pytest.raises(ValueError, match="distractor_identities > 0"):
    sources.build_eval(c, 3)
  c.folders.distractor_identities = 2
  train, heldout = sources.build(c)
  heldout_eval, distractors = sources.build_eval(c, 3)
  names = lambda s: {s.source.paths[i].split(os.sep)[-2] for i in s.indices}  # noqa: E731
  assert names(train) == {"id0", "id1"} and names(heldout) == names(heldout_eval) == {"id4"}
  assert len(distractors) == 3 and names(distractors) <= {"id2", "id3"}


def test_truncated_jpeg_is_skipped_and_counted(tmp_path):
  paths = _write_tree(str(tmp_path / "f"), n_ids=2, n_imgs=3)
  bad = os.path.join(tmp_path, "f", "id1", "2.jpg")
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 60, 3), np.uint8)).save(bad)
  data = open(bad, "rb").read()
  open(bad, "wb").write(data[:len(data) // 2])  # the header is intact: verify() passes it
  src = FolderFaces(str(tmp_path / "f"), skip_bad_images=True)
  assert src.skipped_images == 1 and len(src) == len(paths)
  assert bad not in src.paths


def test_landmark_rows_and_images_are_reconciled(tmp_path):
  _write_tree(str(tmp_path / "faces"), n_ids=2, n_imgs=2)
  lm = "30 40 66 40 48 60 34 80 62 80"  # any face's five points (one point five times is refused)
  tsv = tmp_path / "lm.tsv"
  tsv.write_text(f"faces/id0/0.png\t{lm}\nfaces/id0/1.png\t{lm}\nfaces/id1/0.png\t{lm}\n"
                 f"faces/id9/gone.png\t{lm}\n")
  src = FolderFaces(str(tmp_path / "faces"), str(tsv))
  assert src.images_without_landmarks == 1 and src.rows_for_missing_files == 1
  with pytest.raises(ValueError, match=r"1 of 4 images .* have no row in .*lm.tsv"):
    FolderFaces(str(tmp_path / "faces"), str(tsv), require_landmarks=True)
  with pytest.raises(ValueError, match=r"1 rows of .*lm.tsv name files that do not exist"):
    FolderFaces(str(tmp_path / "faces"), str(tsv), strict_landmarks=True)


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "P", "CMYK", "LA", "RGBA", "1", "L",
                                  "YCbCr"])
def test_images_of_every_mode_are_converted_by_value(tmp_path, mode):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.folders import load_rgb  # pylint: disable=g-import-not-at-top
  grey = np.tile(np.linspace(0, 255, 32).round().astype(np.uint8), (20, 1))  # 0 -> 255 ramp
  if mode in ("I;16", "I"):  # 16-bit grey scanner output; 32-bit integer grey
    im = Image.fromarray((grey.astype(np.uint32) * 257).astype(
        np.uint16 if mode == "I;16" else np.int32))
  elif mode == "F":
    im = Image.fromarray((grey / 255.0).astype(np.float32))
  elif mode == "1":
    im = Image.fromarray(grey).convert("1", dither=Image.Dither.NONE)
  elif mode == "P":
    im = Image.fromarray(np.repeat(grey[..., None], 3, -1)).convert(
        "P", palette=Image.Palette.ADAPTIVE)
  else:
    im = Image.fromarray(np.repeat(grey[..., None], 3, -1)).convert(mode)
  path = str(tmp_path / ("x.tiff" if mode in ("F", "I", "CMYK", "YCbCr") else "x.png"))
  im.save(path)
  with Image.open(path) as back:
    assert back.mode == ("I;16" if mode == "I;16" else back.mode)
  rgb = load_rgb(path)
  assert rgb.shape == (20, 32, 3) and rgb.dtype == np.uint8
  if mode == "1":  # black or white at the ramp's middle
    np.testing.assert_array_equal(rgb[..., 0] > 127, grey > 127)
  else:  # the ramp, within palette / colour-space rounding, never clipped white or black
    assert np.abs(rgb.astype(int) - grey[..., None]).max() <= 3, (mode, rgb[0, :, 0])


def test_a_photo_too_small_for_a_face_is_skipped_with_the_reason(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from pdsn_jax.faces import finding as faces  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
  found = faces.find([str(tmp_path / "dot.png")], (112, 96))
  assert found[0].face is None and found[0].note.startswith("too small: 1x1 px")
