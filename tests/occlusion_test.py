"""Occlusion synthesis, block assignment and FDM composition."""

import chex
import jax
import numpy as np
import pytest

from pdsn_jax.method import fdm
from pdsn_jax.data import occlusion
from pdsn_jax.data.synthetic import SyntheticFaces

SIZE = (112, 96)


def _coverage(mask, blocks):
  """Share of each block's pixels the mask covers, counted directly."""
  return np.array([(mask & (b > 0)).sum() / (b > 0).sum() for b in blocks])


def test_occlusion_is_deterministic_and_mask_is_exactly_the_changed_pixels():
  face = SyntheticFaces(2, 1, seed=0)[0]["image"]
  lib = occlusion.OccluderLibrary()
  t = occlusion.OccludeEveryBlock(lib, neighbour_prob=0.5)
  a = t({"image": face}, np.random.default_rng(5))
  b = t({"image": face}, np.random.default_rng(5))
  np.testing.assert_array_equal(a["occluded"], b["occluded"])
  np.testing.assert_array_equal(a["occlusion_mask"], b["occlusion_mask"])
  c = t({"image": face}, np.random.default_rng(6))
  assert not np.array_equal(a["occluded"], c["occluded"])
  blocks = occlusion.block_pixel_masks(SIZE)
  for j, blk in enumerate(occlusion.CENTRAL_BLOCKS):
    img, mask = a["occluded"][j], a["occlusion_mask"][j]
    changed = np.any(img != face, axis=-1)
    assert not np.any(changed & ~mask)  # nothing changed outside the mask
    assert changed[mask].mean() > 0.95  # and (colour coincidences aside) all of it changed
    assert _coverage(mask, blocks[blk:blk + 1])[0] >= 0.5


def test_neighbour_augmentation_covers_a_4_neighbour():
  face = SyntheticFaces(1, 1)[0]["image"]
  lib = occlusion.OccluderLibrary()
  blocks = occlusion.block_pixel_masks(SIZE)
  _, mask = occlusion.occlude_block(face, 12, np.random.default_rng(0), lib, neighbour_prob=1.0)
  cov = _coverage(mask, blocks)
  assert cov[12] >= 0.5 and max(cov[7], cov[17], cov[11], cov[13]) >= 0.5


def test_block_assignment_on_hand_made_masks():
  h, w = SIZE
  none = np.zeros(SIZE, bool)
  assert not occlusion.block_flags(none).any()
  # block (2,2) is rows 44.8..67.2, cols 38.4..57.6 -> pixel rows 45..66, cols 38..57
  half = np.zeros(SIZE, bool)
  half[45:67, 38:48] = True  # ~half of the central block
  flags = np.asarray(occlusion.block_flags(half, threshold=0.5))
  cov = _coverage(half, occlusion.block_pixel_masks(SIZE))[12]
  assert flags[4] == (cov >= 0.5)
  two = np.zeros(SIZE, bool)
  two[45:67, 19:58] = True  # blocks (2,1) and (2,2) fully
  flags = np.asarray(occlusion.block_flags(two))
  np.testing.assert_array_equal(np.flatnonzero(flags), [3, 4])
  # literal IoU: each of the two blocks has IoU ~0.5 with the two-block mask, none with 4 blocks
  four = np.zeros(SIZE, bool)
  four[23:67, 19:58] = True
  assert np.asarray(occlusion.block_flags(four)).sum() == 4
  assert np.asarray(occlusion.block_flags(four, overlap="iou")).sum() == 0


def test_fdm_composition_is_and_of_items_and_all_ones_without_occlusion():
  rng = np.random.default_rng(0)
  items = rng.integers(0, 2, (9, 7, 6, 4)).astype(np.uint8)
  flags = np.zeros((3, 9), bool)
  flags[1, 2] = True
  flags[2, [0, 4, 8]] = True
  out = np.asarray(jax.jit(fdm.compose)(flags, items))
  np.testing.assert_array_equal(out[0], 1)
  np.testing.assert_array_equal(out[1], items[2])
  np.testing.assert_array_equal(out[2], items[0] & items[4] & items[8])
  masks = np.zeros((2, *SIZE), bool)
  masks[1, 45:67, 38:58] = True
  f = fdm.compose(occlusion.block_flags(masks), items)
  chex.assert_shape(f, (2, 7, 6, 4))
  np.testing.assert_array_equal(np.asarray(f[1]), items[4])


def test_occluder_library_reads_pngs_and_names_bad_dir(tmp_path):
  from PIL import Image
  d = tmp_path / "occ" / "glasses" / "src"
  d.mkdir(parents=True)
  rgba = np.zeros((10, 20, 4), np.uint8)
  rgba[2:8, 3:17] = [10, 20, 30, 255]
  Image.fromarray(rgba).save(d / "a.png")
  lib = occlusion.OccluderLibrary(str(tmp_path / "occ"), procedural=False)
  assert lib.available() == ("sunglasses",)
  cat, img = lib.sample(np.random.default_rng(0))
  assert cat == "sunglasses" and img.shape == (6, 14, 4)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    occlusion.OccluderLibrary(str(tmp_path / "nowhere"))


def test_block_samples_flag_exactly_the_intended_blocks():
  faces = SyntheticFaces(6, 1)
  lib = occlusion.OccluderLibrary()
  central = occlusion.block_pixel_masks(SIZE)[np.asarray(occlusion.CENTRAL_BLOCKS)]
  inexact = {True: 0, False: 0}
  for exact in (True, False):
    for i in range(len(faces)):
      for k, b in enumerate(occlusion.CENTRAL_BLOCKS):
        _, m, targets = occlusion.occlude_block(faces[i]["image"], b,
                                                np.random.default_rng([i, k]), lib, 0.5,
                                                exact=exact, return_targets=True)
        got = {c for c, f in zip(occlusion.CENTRAL_BLOCKS, occlusion.blocks_occluded(m, central))
               if f}
        assert b in got
        inexact[exact] += got != {t for t in targets if t in occlusion.CENTRAL_BLOCKS}
  assert inexact[True] == 0
  assert inexact[False] > 0  # the unconstrained placement does spill onto other blocks


def _png(path, alpha: bool):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path.parent.mkdir(parents=True, exist_ok=True)
  rgba = np.zeros((10, 20, 4), np.uint8)
  rgba[2:8, 3:17] = [10, 20, 30, 255]
  Image.fromarray(rgba if alpha else rgba[..., :3]).save(path)


def test_split_globs_split_files_and_alpha_is_required(tmp_path):
  root = tmp_path / "occ"
  for name in ("mask/a/surgical.png", "mask/a/kn95.png", "sunglasses/b/avi.png",
               "mask/c/cloth.png"):
    _png(root / name, alpha=True)
  splits = {"train": ("mask/a/kn95*",), "select": ("mask/c/*",),
            "test": ("sunglasses/*", "mask/*/surgical*")}
  train = occlusion.OccluderLibrary(str(root), procedural=True, categories=("mask",),
                                    split="train", splits=splits)
  test = occlusion.OccluderLibrary(str(root), procedural=False, split="test", splits=splits)
  assert {k: len(v) for k, v in train.images.items()} == {"mask": 1}
  assert {k: len(v) for k, v in test.images.items()} == {"mask": 1, "sunglasses": 1}
  assert sorted(test.files) == ["mask/a/surgical.png", "sunglasses/b/avi.png"]
  with pytest.raises(ValueError, match=r"no occluder of category 'hand'"):
    train.sample(np.random.default_rng(0), "hand")
  with pytest.raises(ValueError, match=r"mask/a/kn95.png matches the globs of two splits"):
    occlusion.OccluderLibrary(str(root), split="test", splits={**splits, "test": ("mask/*",)})
  _png(root / "hat" / "c" / "flat.png", alpha=False)
  with pytest.raises(ValueError, match=r"flat.png has no transparent pixels"):
    occlusion.OccluderLibrary(str(root))


def test_select_never_opens_a_test_file(tmp_path, monkeypatch):
  root = tmp_path / "occ"
  names = ("mask/s1/a.png", "mask/s2/b.png", "sunglasses/s2/c.png", "sunglasses/s3/d.png")
  for name in names:
    _png(root / name, alpha=True)
  splits = {"train": ("*/s1/*",), "select": ("*/s3/*",), "test": ("*/s2/*",)}
  from PIL import Image  # pylint: disable=g-import-not-at-top
  opened, real_open = [], Image.open
  monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(
      p, *a, **k))
  lib = occlusion.OccluderLibrary(str(root), procedural=False, split="select", splits=splits)
  assert lib.files == ["sunglasses/s3/d.png"]
  assert opened == [str(root / "sunglasses/s3/d.png")]


@pytest.mark.real_data
def test_real_config_splits_are_disjoint_by_source_and_cover_the_evaluated_categories():
  import os  # pylint: disable=g-import-not-at-top
  from configs import real_mobilefacenet  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders  # pylint: disable=g-import-not-at-top
  c = real_mobilefacenet.get_config()
  if not os.path.isdir(c.occlusion.occluder_dir):
    pytest.skip(f"the shared occluder files are not at {c.occlusion.occluder_dir}")
  files = {s: occlusion.list_files(c.occlusion.occluder_dir, s, builders.split_globs(c))
           for s in ("train", "select", "test")}
  flat = {s: {p for v in f.values() for p in v} for s, f in files.items()}
  sources = {s: {os.path.relpath(p, c.occlusion.occluder_dir).split(os.sep)[1] for p in v}
             for s, v in flat.items()}
  for a, b in (("train", "select"), ("train", "test"), ("select", "test")):
    assert not flat[a] & flat[b] and not sources[a] & sources[b], (a, b)
  file_conditions = [k for k in c.eval.protocols.verification.conditions
                     if k not in c.eval.procedural_categories
                     and k != "blocks"]
  assert file_conditions and all(files["test"].get(k) for k in file_conditions)
  assert all(files["train"].get(k) for k in c.occlusion.procedural_categories)
  # hands and objects stay categories no training stage sees: no training file of theirs
  assert set(files["train"]) == set(c.occlusion.procedural_categories) == {"sunglasses", "mask"}
  sel = real_mobilefacenet.get_config("select")
  assert sel.eval.occluder_split == "select" and "ar_real" not in sel.eval.protocols
