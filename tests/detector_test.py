"""Occlusion detector: shapes and range, overfitting a tiny batch, block assignment, resume, and
AR's development photos among its training records."""

import functools
import importlib.util
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from pdsn_jax.method import builders, inference
from pdsn_jax.run import checkpointing, provenance
from pdsn_jax.train import parallel, training
from pdsn_jax.data import occlusion, placement
from pdsn_jax.evaluation.segmentation import segmentation_metrics
from pdsn_jax.data.synthetic import SyntheticFaces
from pdsn_jax.stages import detector
from benchmarks import ar_real_detector
from pdsn_jax import config_validation
from tests import ar_real_test, helpers

FACES = np.stack([SyntheticFaces(4, 1, 0, 700)[i]["image"] for i in range(4)])


def _batch(n=8):
  t = detector.DetectorOcclusion(occlusion.OccluderLibrary("", True), clean_prob=0.0)
  recs = [t({"image": FACES[i % 4]}, np.random.default_rng(i)) for i in range(n)]
  return {"image": np.stack([r["image"] for r in recs]), "mask": np.stack([r["mask"] for r in recs])}


@pytest.mark.slow
def test_output_shape_and_range_at_full_resolution():
  config = tiny.get_config()
  model = builders.detector(config, False)
  v = detector.init_fn(config, model, optax.sgd(0.1))()
  logits = inference.detector_logits(model, {"params": v.params, "batch_stats": v.batch_stats},
                                     jnp.asarray(FACES), config.detector.input_scale)
  chex.assert_shape(logits, (4, 112, 96))
  assert logits.dtype == jnp.float32
  pred = inference.occlusion_predictor(config, {"params": v.params, "batch_stats": v.batch_stats})(FACES)
  assert pred.shape == (4, 112, 96) and pred.dtype == bool


@pytest.mark.slow
def test_loss_decreases_when_overfitting_a_tiny_batch():
  config = tiny.get_config()
  config.detector.update(widths=(8, 16), learning_rate=0.1, warmup_steps=0, schedule="constant")
  mesh = parallel.make_mesh(jax.devices()[:1])
  tx = training.sgd(config.detector, 40)
  state = jax.device_put(detector.init_fn(config, builders.detector(config, False), tx)(),
                         parallel.replicated(mesh))
  step = parallel.data_parallel(functools.partial(
      detector.train_step, model=builders.detector(config, True), tx=tx,
      schedule=training.learning_rate_schedule(config.detector, 40), scale=0.5), mesh)
  batch = parallel.put_batch(_batch(), mesh)
  losses = []
  for i in range(40):
    state, out = step(state, batch, jax.random.key(i))
    losses.append(float(out["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses[::8]
  assert float(out["pixel_accuracy"]) > 0.85


def test_block_flags_agree_on_numpy_and_jax():
  masks = _batch(16)["mask"] > 0
  ours = occlusion.block_flags(masks)
  traced = np.asarray(jax.jit(occlusion.block_flags)(jnp.asarray(masks)))
  np.testing.assert_array_equal(ours, traced)
  assert ours.any()
  m = segmentation_metrics(masks, masks)
  assert m["mean_iu"] == m["pixel_accuracy"] == m["block_accuracy"] == 1.0
  empty = segmentation_metrics(np.zeros_like(masks), masks)
  assert empty["iou_occluded"] == 0.0 and empty["block_accuracy"] < 1.0


def test_without_globs_every_fourth_file_is_test_and_the_one_before_select(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for k in range(8):
    os.makedirs(tmp_path / "mask", exist_ok=True)
    a = np.zeros((10, 10 + k, 4), np.uint8)
    a[1:, :, 3] = 255  # a cut-out: the first row transparent (opaque PNGs are refused)
    Image.fromarray(a).save(tmp_path / "mask" / f"m{k}.png")
  libs = {s: occlusion.OccluderLibrary(str(tmp_path), False, split=s, heldout_every=4)
          for s in ("train", "select", "test")}
  widths = {s: {im.shape[1] for im in lib.images["mask"]} for s, lib in libs.items()}
  assert widths == {"train": {10, 11, 14, 15}, "select": {12, 16}, "test": {13, 17}}


def test_appearance_changes_the_image_never_the_mask():
  rec = _batch(1)
  t = detector.DetectorOcclusion(occlusion.OccluderLibrary(), 0.0, detector.AUGMENTS)
  out = t({"image": rec["image"][0]}, np.random.default_rng(3))
  mask = out["mask"].copy()
  changed = [not np.array_equal(detector.appearance(out["image"], np.random.default_rng(s),
                                                    detector.AUGMENTS), out["image"])
             for s in range(6)]
  assert any(changed) and out["mask"].shape == rec["image"].shape[1:3]
  np.testing.assert_array_equal(out["mask"], mask)
  grey = detector.appearance(out["image"], np.random.default_rng(0), ("grey",))
  # with only "grey" drawn: either unchanged or equal channels
  assert np.array_equal(grey, out["image"]) or (np.array_equal(grey[..., 0], grey[..., 1]) and
                                                np.array_equal(grey[..., 1], grey[..., 2]))


def test_eyeglasses_are_drawn_but_not_labelled():
  face = _batch(1)["image"][0]
  t = detector.DetectorOcclusion(occlusion.OccluderLibrary(), 1.0, ("eyeglasses",))
  outs = [t({"image": face}, np.random.default_rng(s)) for s in range(12)]
  drawn = [o for o in outs if not np.array_equal(o["image"], face)]
  assert drawn and all(not o["mask"].any() for o in outs)


def test_knitted_scarves_are_labelled_and_unknown_parts_named():
  face = _batch(1)["image"][0]
  lib = occlusion.OccluderLibrary("", True)
  knit = placement.knitted(np.random.default_rng(0))
  chex.assert_shape(knit, (48, 96, 4))
  assert knit[-1, :, 3].all() and not knit[0, :, 3].all()  # opaque below a ragged top edge
  # the knitted half of the drawn cloth is drawn only when asked: older runs' streams stay
  same = [np.array_equal(placement.cloth(np.random.default_rng(s)),
                         placement.cloth(np.random.default_rng(s), knit=False)) for s in range(4)]
  differs = [not np.array_equal(placement.cloth(np.random.default_rng(s)),
                                placement.cloth(np.random.default_rng(s), knit=True))
             for s in range(8)]
  assert all(same) and any(differs)
  image, mask = placement.scarf(face, np.random.default_rng(1), lib, True, knit=True)
  assert mask[-10:].mean() > 0.9 and not mask[:30].any()  # nose to chin, not the eyes
  assert not np.array_equal(image, face)
  with pytest.raises(ValueError, match=r"detector.augment: unknown part\(s\) \['wool'\]"):
    detector.DetectorOcclusion(lib, 0.0, ("scarf", "wool"))


def test_select_rule_keeps_clean_area_and_prefers_the_committed_then_the_default_on_a_tie():
  spec = importlib.util.spec_from_file_location(
      "detector_select", os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                                      "detector_select.py"))
  rule = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(rule)

  def row(acc, area, threshold):
    return ({**{k: {"block_accuracy": acc} for k in rule.SELECT},
             **{k: {"predicted_area": area} for k in rule.CLEAN}}, threshold)

  scores, chosen = rule.verdicts({"a@0.5": row(0.95, 0.005, 0.5), "a@0.3": row(0.954, 0.005, 0.3),
                                  "b@0.5": row(0.952, 0.005, 0.5),
                                  "a@0.2": row(0.99, 0.011, 0.2)})
  assert scores["a@0.2"].startswith("out") and chosen == "a@0.5"  # a tie: committed, then 0.5
  assert rule.verdicts({"a@0.5": row(0.95, 0.005, 0.5), "b@0.3": row(0.96, 0.005, 0.3)})[1] == (
      "b@0.3")
  assert rule.verdicts({"a@0.4": row(0.95, 0.005, 0.4), "a@0.2": row(0.952, 0.005, 0.2),
                        "b@0.5": row(0.951, 0.005, 0.5)})[1] == "a@0.4"
  assert rule.verdicts({"c@0.5": row(0.99, 0.03, 0.5)})[1] is None


@pytest.mark.slow
def test_detector_stage_resumes_after_sigkill(tmp_path):
  args = ("--config.stages=detector", "--config.detector.num_steps=6")
  ref = str(tmp_path / "ref")
  helpers.run_main(ref, *args)
  wd = str(tmp_path / "killed")
  helpers.run_until(wd, "[detector] step 5/6", *args)
  resumed = helpers.run_main(wd, *args)
  assert "(checkpoint)" in resumed.stderr and "mean IU" in resumed.stderr
  a = checkpointing.load_variables(os.path.join(ref, "detector", "checkpoints"))
  b = checkpointing.load_variables(os.path.join(wd, "detector", "checkpoints"))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert os.path.getsize(os.path.join(wd, "detector", "detections.png")) > 1000


def _ar_config(root, **detector_fields):
  config = tiny.get_config()
  config.detector.update({"ar_root": str(root), "ar_alignment": "centre", **detector_fields})
  return config


def test_ar_photos_join_the_records_with_their_masks_and_mirrors(tmp_path):
  ar_real_test.make_ar_folder(str(tmp_path), subjects=4)
  photos = detector.ar_training_photos(_ar_config(tmp_path, ar_share=0.3, ar_subjects=(1, 3)))
  assert sorted(set(photos.subjects.tolist())) == [1, 3]  # the fold, nothing else
  assert len(photos.images) == 2 * 26
  occluded = np.isin(photos.kinds, ("sunglasses", "scarf"))
  assert photos.masks[occluded].any((1, 2)).all() and not photos.masks[~occluded].any()
  t = detector.ArPhotos(photos, share=1.0)
  mirrored = 0
  for i in range(40):
    rec = t({"image": FACES[0], "mask": np.zeros(FACES.shape[1:3], np.uint8), "label": 7},
            np.random.default_rng(i))
    plain = [k for k in range(len(photos.images))
             if np.array_equal(rec["image"], photos.images[k])
             and np.array_equal(rec["mask"], photos.masks[k])]
    flipped = [k for k in range(len(photos.images))
               if np.array_equal(rec["image"], photos.images[k][:, ::-1])
               and np.array_equal(rec["mask"], photos.masks[k][:, ::-1])]
    assert plain or flipped, f"draw {i} is no AR photo with its own mask"
    mirrored += bool(flipped) and not plain
    assert rec["label"] == 7 and rec["mask"].dtype == np.uint8
  assert 8 < mirrored < 32
  untouched = detector.ArPhotos(photos, share=0.0)({"image": FACES[1]}, np.random.default_rng(0))
  chex.assert_trees_all_equal(untouched, {"image": FACES[1]})
  # the default reads no AR photo (and so adds no transform: its draws are the old ones)
  assert detector.ar_training_photos(tiny.get_config()) is None


def test_only_development_subjects_may_train_the_detector(tmp_path):
  for fields, message in (({"ar_subjects": (2, 27)}, r"ar_subjects has \[27\]"),
                          ({"ar_share": 1.0}, r"ar_share=1.0 must be in \[0, 1\)"),
                          ({"ar_share": 0.2, "ar_root": ""}, "needs config.detector.ar_root"),
                          ({"ar_alignment": "eyes"}, "ar_alignment='eyes' is not one of")):
    with pytest.raises(ValueError, match=message):
      config_validation.validate(_ar_config(tmp_path, **fields))


def test_cross_validation_scores_the_subjects_a_detector_did_not_train_on(tmp_path):
  dev = tuple(range(1, 27))
  odd = tuple(range(1, 27, 2))
  fold = _ar_config(tmp_path, ar_share=0.1, ar_subjects=odd)
  assert ar_real_detector.scored_subjects(fold, True, dev) == tuple(range(2, 27, 2))
  assert ar_real_detector.scored_subjects(fold, False, dev) == dev
  assert ar_real_detector.scored_subjects(tiny.get_config(), True, dev) == dev  # no AR: all
  with pytest.raises(Exception, match="nothing is held out"):
    ar_real_detector.scored_subjects(_ar_config(tmp_path, ar_share=0.1), True, dev)


@pytest.mark.slow
def test_detector_stage_trains_on_ar_development_photos(tmp_path):
  ar_real_test.make_ar_folder(str(tmp_path / "ar"), subjects=3)
  args = ("--config.stages=detector", "--config.detector.ar_share=0.5",
          f"--config.detector.ar_root={tmp_path / 'ar'}", "--config.detector.ar_alignment=centre",
          "--config.detector.ar_subjects=(1, 2)")
  proc = helpers.run_main(str(tmp_path / "run"), *args)
  assert "52 AR development photos of 2 subjects (24 occluded)" in proc.stderr
  record = provenance.read(str(tmp_path / "run"), "detector")["fields"]
  assert record["detector.ar_share"] == 0.5 and record["detector.ar_subjects"] == [1, 2]
