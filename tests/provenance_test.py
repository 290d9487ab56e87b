"""Provenance: a changed config never reuses stale outputs (issue 22's first probe), the
rule of ``pdsn_jax.run.provenance`` on a workdir of placeholder outputs, then end to end."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from configs import tiny
from pdsn_jax import stages  # noqa: F401  (registers the built-in stages the records name)
from pdsn_jax.method import fdm
from pdsn_jax.run import files, provenance
from tests import helpers


def _make(workdir, name):
  """A stage folder with an output in it (what ``has_outputs`` looks for)."""
  os.makedirs(os.path.join(workdir, name), exist_ok=True)
  with open(os.path.join(workdir, name, "out.bin"), "w") as f:
    f.write(name)


def _chain(config, wd):
  """trunk -> pdsn -> dictionary, as the stages call ``begin``."""
  recs = {}
  for name, kind, up in (("trunk", "trunk", ()), ("pdsn", "pdsn", ("trunk",)),
                         ("dictionary", "dictionary", ("pdsn",))):
    recs[name] = provenance.begin(config, wd, name, kind, up)
    _make(wd, name)
  return recs


def test_same_config_reuses_and_ignores_logging_fields(tmp_path):
  wd, c = str(tmp_path), tiny.get_config()
  first = _chain(c, wd)
  c.trunk.log_every = 7  # logging only: not part of what the outputs depend on
  c.data.num_workers = 3
  c.model.forward_chunk = 5  # speed only (same outputs), and in provenance.ADDED too
  again = _chain(c, wd)
  assert all("model.forward_chunk" not in r["fields"] for r in again.values())
  assert {k: r["fingerprint"] for k, r in again.items()} == {
      k: r["fingerprint"] for k, r in first.items()}
  assert sorted(os.listdir(wd)) == ["dictionary", "pdsn", "trunk"]  # nothing moved aside


def test_changed_field_refuses_naming_it_and_overwrite_remakes_downstream(tmp_path):
  wd, c = str(tmp_path), tiny.get_config()
  first = _chain(c, wd)
  c.pdsn.lambda_l1 = 50.0
  with pytest.raises(provenance.StaleStage,
                     match=r"'pdsn'.*\n  pdsn.lambda_l1: 10.0 -> 50.0\n.*overwrite=pdsn"):
    provenance.begin(c, wd, "pdsn", "pdsn", ("trunk",))
  assert os.path.isfile(os.path.join(wd, "pdsn", "out.bin"))  # untouched
  # a stage that reads the stale one refuses too, naming the field
  with pytest.raises(provenance.StaleStage, match=r"(?s)reads .pdsn.*pdsn.lambda_l1"):
    provenance.begin(c, wd, "dictionary", "dictionary", ("pdsn",))
  c.overwrite = "pdsn"
  rec = provenance.begin(c, wd, "pdsn", "pdsn", ("trunk",))
  assert rec["fields"]["pdsn.lambda_l1"] == 50.0 and rec["id"] != first["pdsn"]["id"]
  assert not os.path.exists(os.path.join(wd, "pdsn", "out.bin"))
  _make(wd, "pdsn")
  # downstream: its own fields are the same, its upstream was made again -> moved aside
  rec = provenance.begin(c, wd, "dictionary", "dictionary", ("pdsn",))
  assert rec["upstream"] == {"pdsn": provenance.read(wd, "pdsn")["fingerprint"]}
  moved = sorted(d for d in os.listdir(wd) if ".replaced-" in d)
  assert [d.split(".")[0] for d in moved] == ["dictionary", "pdsn"]
  assert os.path.isfile(os.path.join(wd, moved[1], "out.bin"))  # the old outputs are kept


def test_overrides_keep_table3s_stages_fresh_under_the_run_config(tmp_path):
  wd, c = str(tmp_path), tiny.get_config()
  _chain(c, wd)
  c0 = tiny.get_config()
  c0.pdsn.differential = False
  provenance.begin(c0, wd, "lambda0_pdsn", "pdsn", ("trunk",), {"pdsn.differential": False})
  _make(wd, "lambda0_pdsn")
  assert provenance.stale(c, wd, "lambda0_pdsn") == []
  c.trunk.learning_rate = 0.5  # and a change upstream is seen through it
  why = provenance.stale(c, wd, "lambda0_pdsn")
  assert why == ["trunk: trunk.learning_rate: 0.1 -> 0.5"]
  with pytest.raises(provenance.StaleStage, match=r"add .lambda0. to config.stages"):
    provenance.require_fresh(c, wd, ["lambda0_pdsn"], "evaluate")


def test_the_detectors_threshold_is_the_evaluations_field_not_the_detectors(tmp_path):
  wd, c = str(tmp_path), tiny.get_config()
  det = provenance.begin(c, wd, "detector", "detector")
  _make(wd, "detector")
  # a record made while the threshold was one of the detector's fields (older versions)
  old = provenance.read(wd, "detector")
  old["fields"]["detector.threshold"] = 0.5
  files.write_json(os.path.join(wd, "detector", provenance.RECORD), old)
  c.detector.threshold = 0.3  # chosen at inference: the trained detector stays
  assert provenance.stale(c, wd, "detector") == []
  again = provenance.begin(c, wd, "detector", "detector")
  assert again["id"] == det["id"] and os.path.isfile(os.path.join(wd, "detector", "out.bin"))
  assert provenance.fields(c, "evaluate")["detector.threshold"] == 0.3
  c.detector.num_epochs = 2.0  # a training field still refuses
  with pytest.raises(provenance.StaleStage, match=r"detector.num_epochs"):
    provenance.begin(c, wd, "detector", "detector")


def test_a_deleted_record_is_read_from_its_copy_and_never_relabels(tmp_path):
  """The probe: delete pdsn/provenance.json, rerun with a changed lambda: the old stage was
  adopted and its record then claimed the new lambda."""
  wd, c = str(tmp_path), tiny.get_config()
  first = _chain(c, wd)
  os.remove(os.path.join(wd, "pdsn", provenance.RECORD))
  c.pdsn.lambda_l1 = 50.0
  with pytest.raises(provenance.StaleStage, match=r"pdsn.lambda_l1: 10.0 -> 50.0"):
    provenance.begin(c, wd, "pdsn", "pdsn", ("trunk",))
  assert not os.path.isfile(os.path.join(wd, "pdsn", provenance.RECORD))
  # under the config that made it, the record comes back with its id: downstream stays fresh
  c.pdsn.lambda_l1 = 10.0
  again = provenance.begin(c, wd, "pdsn", "pdsn", ("trunk",))
  assert again["fingerprint"] == first["pdsn"]["fingerprint"]
  assert os.path.isfile(os.path.join(wd, "pdsn", provenance.RECORD))
  assert provenance.stale(c, wd, "dictionary") == []


def test_outputs_with_no_record_at_all_are_refused_until_overwritten(tmp_path):
  wd, c = str(tmp_path), tiny.get_config()
  _make(wd, "trunk")
  with pytest.raises(provenance.StaleStage, match=r"no provenance record.*"
                                                   r"--config.overwrite=trunk"):
    provenance.begin(c, wd, "trunk", "trunk")
  c.overwrite = "trunk"
  rec = provenance.begin(c, wd, "trunk", "trunk")
  assert rec["fields"]["trunk.num_steps"] == 6
  assert not os.path.isfile(os.path.join(wd, "trunk", "out.bin"))  # moved aside
  assert any(d.startswith("trunk.replaced-") for d in os.listdir(wd))


@pytest.mark.slow
def test_a_rerun_with_a_changed_field_never_reuses_or_mislabels(tmp_path, tiny_run):
  """The probe: a finished run rerun with --config.pdsn.lambda_l1=50 trained nothing, skipped
  the dictionary, overwrote config.json and labelled lambda=10 numbers as lambda=50."""
  wd = str(tmp_path / "run")
  shutil.copytree(tiny_run, wd, ignore=shutil.ignore_patterns("export"))  # every stage ran
  results = open(os.path.join(wd, "results.md")).read()
  npz = os.path.join(wd, "dictionary", "dictionary.npz")
  before = (files.sha256(npz), files.sha256(os.path.join(wd, "config.json")))
  proc = subprocess.run(helpers.main_cmd(wd, "--config.stages=pdsn,dictionary",
                                         "--config.pdsn.lambda_l1=50"),
                        cwd=helpers.REPO, env=helpers.env_with_devices(1), capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode != 0
  assert "pdsn.lambda_l1: 10.0 -> 50.0" in proc.stderr and "Traceback" not in proc.stderr
  assert (files.sha256(npz), files.sha256(os.path.join(wd, "config.json"))) == before
  assert open(os.path.join(wd, "results.md")).read() == results
  helpers.run_main(wd, "--config.stages=pdsn,dictionary", "--config.pdsn.lambda_l1=50",
                   "--config.overwrite=pdsn")
  assert json.load(open(os.path.join(wd, "config.json")))["pdsn"]["lambda_l1"] == 50.0
  hist = os.path.join(wd, "config_history", "0000.json")
  assert json.load(open(hist))["pdsn"]["lambda_l1"] == 10.0
  assert files.sha256(npz) != before[0]  # made again from the new generators
  # the old results described the old generators: moved aside with them, never relabelled
  assert not os.path.exists(os.path.join(wd, "results.md"))
  assert [f for f in os.listdir(wd) if f.startswith("results.replaced-") and f.endswith(".md")]
  # the fine-tuned network read the old dictionary: evaluating it now is refused
  proc = subprocess.run(helpers.main_cmd(wd, "--config.stages=evaluate",
                                         "--config.pdsn.lambda_l1=50"),
                        cwd=helpers.REPO, env=helpers.env_with_devices(1), capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode != 0 and "reads 'finetune', which was made under another" in proc.stderr
  assert provenance.read(wd, "dictionary")["upstream"]["pdsn"] == provenance.read(
      wd, "pdsn")["fingerprint"]
  # a damaged dictionary.npz is named and made again by its stage (same provenance)
  good = fdm.load(npz)[0]
  with open(npz, "r+b") as f:
    f.truncate(100)
  with pytest.raises(files.DamagedFile, match=r"dictionary.npz \(the FDM dictionary\)"):
    fdm.load(npz)
  proc = helpers.run_main(wd, "--config.stages=dictionary", "--config.pdsn.lambda_l1=50")
  assert "building it again" in proc.stderr
  np.testing.assert_array_equal(fdm.load(npz)[0], good)


@pytest.mark.parametrize("kind", ["pdsn", "dictionary", "baseline", "finetune", "face_finder",
                                  "evaluate"])
def test_the_occluder_split_is_in_every_record_that_pastes_occluders(kind):
  """The probe: detector.heldout_every decides every stage's occluder split (builders.occluders)
  but was in no PDSN stage's record, so changing it reused their stale outputs."""
  c = tiny.get_config()
  before = provenance.fields(c, kind)
  c.detector.heldout_every = 5
  assert provenance.fields(c, kind)["detector.heldout_every"] == 5 != before[
      "detector.heldout_every"]


def test_a_record_from_before_split_by_globs_stays_fresh_and_still_sees_the_switch(tmp_path):
  """Records written before the test globs left the training stages' fields hold
  occlusion.splits.* and no occlusion.split_by_globs: they are read as they were made."""
  wd, c = str(tmp_path), tiny.get_config()
  _chain(c, wd)
  for name in ("pdsn", "dictionary"):  # rewrite the records as the older code wrote them
    for f in (provenance.RECORD, provenance.COPY):
      path = os.path.join(wd, name, f)
      rec = json.load(open(path))
      del rec["fields"][provenance.SPLIT_BY_GLOBS]
      rec["fields"]["occlusion.splits.test"] = []
      json.dump(rec, open(path, "w"))
  assert provenance.stale(c, wd, "dictionary") == []
  c.occlusion.splits.test = ("sunglasses/*",)  # the first glob: the train split changes
  assert any(provenance.SPLIT_BY_GLOBS in w for w in provenance.stale(c, wd, "pdsn"))


def test_a_record_from_before_a_field_was_added_keeps_its_fingerprint_and_its_downstream(
    tmp_path):
  """A reused stage whose record lacks a field added since (``provenance.ADDED``) must keep its
  record: rewriting it with the field would move its fingerprint, and every stage downstream
  would then read as made from another upstream and be made again (as the headline run's
  dictionary was, once ``pdsn.mask_scale_init`` was added)."""
  wd, c = str(tmp_path), tiny.get_config()
  _chain(c, wd)
  old = {}
  for name, field in (("pdsn", "pdsn.mask_scale_init"), ("dictionary", "pdsn.mask_scale_init")):
    path = os.path.join(wd, name, provenance.RECORD)
    rec = json.load(open(path))
    rec["fields"].pop(field, None)
    if name == "dictionary":
      rec["upstream"]["pdsn"] = old["pdsn"]
    rec["fingerprint"] = provenance._fingerprint(rec)  # pylint: disable=protected-access
    old[name] = rec["fingerprint"]
    for f in (provenance.RECORD, provenance.COPY):
      json.dump(rec, open(os.path.join(wd, name, f), "w"))
  assert c.pdsn.mask_scale_init == provenance.ADDED["pdsn.mask_scale_init"]
  again = _chain(c, wd)
  assert sorted(os.listdir(wd)) == ["dictionary", "pdsn", "trunk"]  # nothing moved aside
  assert again["pdsn"]["fingerprint"] == old["pdsn"]
  assert again["dictionary"]["fingerprint"] == old["dictionary"]
  c.pdsn.mask_scale_init = 2.0  # and the field still counts once it is set otherwise
  assert any("pdsn.mask_scale_init: 1.0 -> 2.0" in w for w in provenance.stale(c, wd, "pdsn"))
