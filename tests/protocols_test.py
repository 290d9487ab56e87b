"""A new protocol is one module and one registry line (issues 23, 37): a toy protocol registered
here brings its own settings (checked by the config validation), its own images, their U and
its section of results.md, and the evaluate stage, the report and the config validation run it
without naming it."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from configs import tiny
from pdsn_jax import config_validation, recognizer, stages
from pdsn_jax.evaluation import evaluators, tables
from pdsn_jax.gallery import search


@dataclasses.dataclass(frozen=True)
class _Settings:
  axis: str = "horizontal"  # how the faces are mirrored: "horizontal" or "vertical"

  def check(self, where):
    if self.axis not in ("horizontal", "vertical"):
      raise ValueError(f"{where}.axis={self.axis!r}: horizontal or vertical")


def _inputs(config, sets, settings):
  del config
  mirrored = sets.faces[:, :, ::-1] if settings.axis == "horizontal" else sets.faces[:, ::-1]
  return type(sets)(**{**sets.__dict__, "extra": {**sets.extra, "mirrored": mirrored}})


def _features(features, sets):
  return {"mirrored": features(sets.extra["mirrored"])}


def _run(ctx, model):
  """Rank-1 of every held-out face mirrored against the unmirrored faces but itself."""
  sets, u = ctx.sets, ctx.feats["mirrored"]
  none = np.zeros((len(sets.faces), ctx.flags["blocks"]), bool)
  probe = model.embed(ctx, u, none)
  gallery = model.embed(ctx, ctx.feats["faces"], none)
  scores = probe @ gallery.T
  np.fill_diagonal(scores, -np.inf)
  hits = sets.labels[np.argmax(scores, 1)] == sets.labels
  return {"mirrored": {"rank1": float(hits.mean()), "axis": ctx.settings["mirrored"].axis},
          evaluators.HITS: {"mirrored/rank1": hits}}


def _columns(row):
  return {"mirrored rank-1": row["mirrored"]["rank1"]} if "mirrored" in row else {}


def _section(results):
  rows = [[n, tables.pct(r["mirrored"]["rank1"])] for n, r in results["models"].items()
          if "mirrored" in r]
  return ["## Mirrored faces", ""] + tables.table(["Model", "rank-1"], rows) + [""]


@pytest.fixture
def mirrored():
  evaluators.register("mirrored", evaluators.Protocol(  # the one registry line
      run=_run, section=_section, columns=_columns, title="mirrored", settings=_Settings,
      inputs=_inputs, features=_features))
  try:
    yield
  finally:
    evaluators.PROTOCOLS.pop("mirrored")


def test_a_toy_protocols_settings_are_checked_by_the_config_validation(mirrored):
  config = tiny.get_config()
  config.eval.protocols = {"ar_p2": {}, "mirrored": {"axis": "diagonal"}}
  with pytest.raises(ValueError, match=r"config.eval.protocols.mirrored.axis='diagonal': "
                                       r"horizontal or vertical"):
    config_validation.validate(config)
  config.eval.protocols = {"ar_p2": {}, "mirrored": {"axes": "vertical"}}
  with pytest.raises(ValueError, match=r"config.eval.protocols.mirrored: unknown key\(s\) "
                                       r"\['axes'\]; allowed: \['axis'\]"):
    config_validation.validate(config)
  config.eval.protocols = {"mirrored": {}, "ar_p2": {}}
  plan = evaluators.plan(config)
  assert list(plan.protocols) == ["ar_p2", "mirrored"]  # the registry's order
  assert plan.settings["mirrored"] == _Settings("horizontal")  # the defaults
  assert plan.settings["ar_p2"] is None


@pytest.mark.slow
def test_a_registered_toy_protocol_runs_in_the_evaluate_stage(tmp_path, tiny_run, mirrored):
  wd = str(tmp_path / "run")
  shutil.copytree(tiny_run, wd, ignore=shutil.ignore_patterns("export"))
  config = tiny.get_config()
  config.stages = "evaluate"
  # no verification: not required
  config.eval.protocols = {"ar_p2": {}, "mirrored": {"axis": "vertical"}}
  config.eval.batch_size = 8
  config_validation.validate(config)
  stages.evaluate.STAGE.run(config, wd)
  res = json.load(open(os.path.join(wd, "results.json")))
  md = open(os.path.join(wd, "results.md")).read()
  assert set(res["models"]) >= {"Trunk", "PDSN", "PDSN + fine-tune"}
  for name, row in res["models"].items():
    assert 0 <= row["mirrored"]["rank1"] <= 1 and "clean" not in row, name
    assert row["mirrored"]["axis"] == "vertical"
    assert f"| {name} | {tables.pct(row['mirrored']['rank1'])} |" in md
  assert "## Mirrored faces" in md and "## Verification" not in md
  # its columns join the ablation tables and its hits the paired differences
  assert "| tau | AR-style (pasted) P2 sunglasses | AR-style (pasted) P2 mask | mirrored rank-1 |" in md
  assert "mirrored/rank1" in res["paired"]["PDSN + fine-tune"]["Trunk"]
  assert "mirrored rank1" in md


def _lfw_like(root) -> tuple[str, str]:
  """A flat folder named like LFW: 6 identities with 3 images, 6 with one (drawn faces)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.synthetic import SyntheticFaces  # pylint: disable=g-import-not-at-top
  folder = root / "lfw"
  folder.mkdir()
  multi, single = SyntheticFaces(6, 3, 7, 500), SyntheticFaces(6, 1, 7, 600)
  for src, tag in ((multi, "Multi"), (single, "Single")):
    for i in range(len(src)):
      ident, num = divmod(i, len(src) // src.num_classes)
      Image.fromarray(src[i]["image"]).save(folder / f"{tag}_Person_{ident}_{num + 1:04d}.png")
  tsv = root / "landmarks.tsv"
  tsv.write_text("relative_path\tlandmarks_5pt\n")  # no rows: the drawn faces are aligned
  return str(folder), str(tsv)


@pytest.mark.slow
def test_lfw_distractors_split_and_curve(tmp_path, tiny_run):
  from pdsn_jax.evaluation.protocols import lfw_distractors  # pylint: disable=g-import-not-at-top
  from pdsn_jax.gallery import store  # pylint: disable=g-import-not-at-top
  root, tsv = _lfw_like(tmp_path)
  paths = sorted(os.path.join(root, f) for f in os.listdir(root))
  gallery, probes, others, label = lfw_distractors.split(paths, every=2)
  # identities with >= 2 images, by name: Multi_Person_0..5; every second one is probed
  probed = {os.path.basename(paths[i]).rsplit("_", 1)[0] for i in gallery}
  assert probed == {"Multi_Person_0", "Multi_Person_2", "Multi_Person_4"}
  assert len(probes) == 6 and len(others) == 18 - 9 + 6
  assert set(label[probes]) == set(label[gallery]) and not set(label[others]) & set(label[gallery])
  wd = str(tmp_path / "run")
  shutil.copytree(tiny_run, wd, ignore=shutil.ignore_patterns("export"))
  config = tiny.get_config()
  config.stages = "evaluate"
  config.eval.protocols = {"lfw_distractors": {"root": root, "landmarks": tsv, "sizes": (4, 100)},
                           "distractors": {}}
  config.eval.update(batch_size=8, ablations=False)
  config_validation.validate(config)
  stages.evaluate.STAGE.run(config, wd)
  res = json.load(open(os.path.join(wd, "results.json")))
  row = res["models"]["PDSN + fine-tune"]["lfw_distractors"]
  n = 15 + config.eval.num_distractors  # LFW images not probed + the tiny run's pool
  assert row["sizes"] == [0, 4, n] and row["probes"] == 6 and row["lfw_distractors"] == 15
  assert store.Store(os.path.join(wd, "evaluate", "distractors_trunk")).num_faces == n
  for loc in ("ground_truth", "detector"):
    for cond in lfw_distractors.CONDITIONS:
      curve = row[loc][cond]  # nested prefixes of the same distractors: never rising
      assert all(a >= b for a, b in zip(curve, curve[1:])), (loc, cond, curve)
  # the AR-style distractor protocol searches the same, larger store
  assert res["models"]["Trunk"]["distractors"]["num_distractors"] == n
  md = open(os.path.join(wd, "results.md")).read()
  assert "## Real distractors: MegaFace's curve on LFW (6 probes" in md
  assert os.path.isfile(os.path.join(wd, "evaluate", "lfw_distractors.png"))
  # by hand at no distractor: the Trunk's clean probes against the gallery by cosine
  from pdsn_jax.data.folders import load_rgb  # pylint: disable=g-import-not-at-top
  rec = recognizer.Recognizer(wd, "Trunk")
  emb = lambda idx: rec.embed(rec.analyse(np.stack([load_rgb(paths[i]) for i in idx]),  # noqa: E731
                                          "none")["u"], np.zeros((len(idx), 9), bool))
  top = np.argmax(emb(probes) @ emb(gallery).T, axis=1)
  want = np.mean(label[np.asarray(gallery)[top]] == label[probes])
  assert res["models"]["Trunk"]["lfw_distractors"]["ground_truth"]["clean"][0] == want
