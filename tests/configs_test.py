"""Every config file builds and passes validation; bad values name the key."""

import glob
import importlib
import json
import os
import re

import ml_collections
import pytest

from pdsn_jax.config_validation import validate
from tests import helpers

CONFIGS = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(helpers.REPO, "configs", "*.py"))
                 if os.path.basename(p) not in ("__init__.py", "common.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid(name):
  validate(importlib.import_module(f"configs.{name}").get_config())


def test_bad_values_name_key_and_allowed_values():
  from configs import pdsn  # pylint: disable=g-import-not-at-top
  c = pdsn.get_config()
  c.eval.protocols.verification.conditions = ("sunglasses", "rain")
  with pytest.raises(ValueError, match=r"eval.protocols.verification.conditions.*allowed"):
    validate(c)
  c = pdsn.get_config()
  c.model.kind = "vgg"
  with pytest.raises(ValueError, match=r"model.kind='vgg'.*iresnet"):
    validate(c)
  c = pdsn.get_config()
  c.pdsn.plateau_decay = 0.1  # without the overlap rule's checks
  with pytest.raises(ValueError, match=r"pdsn.plateau_decay=0.1.*pdsn.converge_pairs > 0"):
    validate(c)
  c = pdsn.get_config()
  c.pdsn.generator_statistics = "frozen"
  with pytest.raises(ValueError, match=r"pdsn.generator_statistics='frozen'.*recomputed"):
    validate(c)
  c = pdsn.get_config()
  c.pdsn.sub_batches = 3  # the default batch of 16 in 3 updates
  with pytest.raises(ValueError, match=r"pdsn.sub_batches=3 must divide config.pdsn.batch_size=16"):
    validate(c)
  c = pdsn.get_config()
  c.eval.tau_sweep = (0.25, 1.5)
  with pytest.raises(ValueError, match="tau_sweep"):
    validate(c)


@pytest.mark.parametrize("key,value,want", [
    ("pdsn.log_every", 0, "> 0"), ("pdsn.learning_rate", -1.0, ">= 0"),
    ("detector.learning_rate", -0.003, ">= 0"), ("dictionary.log_every", 0, "> 0"),
    ("detector.checkpoint_every", 0, "> 0"), ("finetune.batch_size", 0, "> 0")])
def test_every_stage_field_is_checked_by_name(key, value, want):
  from configs import pdsn  # pylint: disable=g-import-not-at-top
  c = pdsn.get_config()
  section, field = key.split(".")
  c[section][field] = value
  with pytest.raises(ValueError, match=rf"config.{key}={value!r} must be {want}"):
    validate(c)


def test_eval_models_and_protocols_are_checked():
  from configs import pdsn  # pylint: disable=g-import-not-at-top
  c = pdsn.get_config()
  c.eval.models = ("Trunk=trunk", "PDSN=trunk+masks")
  with pytest.raises(ValueError, match=r"eval.models entry 'PDSN=trunk\+masks'"):
    validate(c)
  c.eval.models = ("Trunk=trunk+trunk_when_clean",)
  with pytest.raises(ValueError, match="the trunk is the trunk already"):
    validate(c)
  from pdsn_jax.evaluation import evaluators  # pylint: disable=g-import-not-at-top
  two, one = evaluators.parse_models(("Two=finetune+trunk_when_clean+fdm", "One=finetune+fdm"))
  assert (two.fdm, two.trunk_when_clean, one.fdm, one.trunk_when_clean) == (True, True, True,
                                                                            False)
  c = pdsn.get_config()
  c.eval.protocols = {"ar_p1": {}, "nope": {}}
  with pytest.raises(ValueError, match=r"eval.protocols has \['ar_p1', 'nope'\]: allowed names "
                                       r".*'ar_real'"):
    validate(c)
  c.eval.protocols = {"ar_p1": {}}  # verification is not required
  validate(c)
  # a config file written with the old list of names is told what to write now
  c.eval = ml_collections.ConfigDict({**c.eval.to_dict(), "protocols": ("verification", "ar_p1")})
  with pytest.raises(ValueError, match=r"a dict of protocol name -> its settings"):
    validate(c)


@pytest.mark.parametrize("protocols, message", [
    ({"verification": {}, "ar_real": {}},
     r"config.eval.protocols.ar_real.root is empty: set it"),
    ({"ar_real": {"root": "x", "subjects": "first"}},
     r"config.eval.protocols.ar_real.subjects='first' is not one of \('test', 'development', "
     r"'all'\)"),
    ({"ar_real": {"root": "x", "rot": "y"}},
     r"config.eval.protocols.ar_real: unknown key\(s\) \['rot'\]; allowed: \['root', "
     r"'alignment', 'subjects', 'distractor_sizes'\]"),
    ({"lfw_distractors": {"root": "x", "landmarks": "y", "sizes": (10, 0)}},
     r"config.eval.protocols.lfw_distractors: probe_every=2 and every size \(10, 0\)"),
    ({"ar_p1": {"gallery_images": 2}},
     r"config.eval.protocols.ar_p1 has \['gallery_images'\]; the 'ar_p1' protocol takes no "
     r"settings"),
])
def test_each_protocol_checks_its_own_settings(protocols, message):
  from configs import pdsn  # pylint: disable=g-import-not-at-top
  c = pdsn.get_config()
  c.eval.protocols = protocols
  with pytest.raises(ValueError, match=message):
    validate(c)


def test_a_run_made_before_protocols_had_settings_loads_in_todays_layout(tmp_path):
  from configs import real_mobilefacenet  # pylint: disable=g-import-not-at-top
  from pdsn_jax import run_config  # pylint: disable=g-import-not-at-top
  old = real_mobilefacenet.get_config().to_dict()
  ev = old["eval"]
  v, ar, lfw = (ev["protocols"][k] for k in ("verification", "ar_real", "lfw_distractors"))
  ev.update(pairs_file=v["pairs_file"], pairs_root=v["pairs_root"],
            pairs_pattern=v["pairs_pattern"], pairs_landmarks=v["pairs_landmarks"], pairs_bin="",
            conditions=list(v["conditions"]), ar_real_root=ar["root"],
            ar_real_alignment="landmarks", lfw_root=lfw["root"], lfw_landmarks=lfw["landmarks"],
            lfw_probe_every=2, distractor_sizes=[10, 100, 1000],
            protocols=["verification", "ar_p1", "ar_p2", "distractors", "ar_real",
                       "lfw_distractors"])
  (tmp_path / "config.json").write_text(json.dumps(old))
  c = run_config.load_config(str(tmp_path))
  assert "pairs_file" not in c.eval and "ar_real_root" not in c.eval
  assert c.eval.protocols.verification.pairs_file == v["pairs_file"]
  assert tuple(c.eval.protocols.verification.conditions) == tuple(v["conditions"])
  # it scored every AR subject then
  assert c.eval.protocols.ar_real.to_dict() == {"root": ar["root"], "alignment": "landmarks",
                                                "subjects": "all"}
  assert tuple(c.eval.protocols.lfw_distractors.sizes) == (10, 100, 1000)


def test_real_mobilefacenet_variants():
  from configs import real_mobilefacenet  # pylint: disable=g-import-not-at-top
  sel = real_mobilefacenet.get_config("select")
  validate(sel)
  assert list(sel.eval.protocols.keys()) == ["ar_p1", "ar_p2", "verification"]
  assert not sel.eval.protocols.verification.get("pairs_file") and sel.eval.num_distractors == 0
  with pytest.raises(ValueError, match=r"variants are \['bank', 'headline', 'select'\]"):
    real_mobilefacenet.get_config("lfw")
  default, both = real_mobilefacenet.get_config(), real_mobilefacenet.get_config("bank,select")
  validate(both)
  assert (default.pdsn.source, default.dictionary.source) == ("online", "online")
  assert "bank" not in default.stages.split(",")
  assert both.stages.split(",")[:3] == ["trunk", "bank", "pdsn"]
  assert (both.pdsn.source, both.dictionary.source, both.pdsn.reuse) == ("bank", "bank", 1)
  assert list(both.eval.protocols.keys()) == list(sel.eval.protocols.keys())
  # the face finder is its own config's run, which the real config's runs read
  from configs import face_finder  # pylint: disable=g-import-not-at-top
  finder = face_finder.get_config()
  validate(finder)
  assert finder.stages == "face_finder" and not finder.face_finder.weights_from
  assert "face_finder" not in default.stages.split(",")
  assert default.face_finder.weights_from == "runs/face_finder"
  assert finder.face_finder.to_dict() == {**default.face_finder.to_dict(), "weights_from": ""}
  # the seeds' headline: AR's test subjects among the real distractors
  head = real_mobilefacenet.get_config("headline")
  validate(head)
  assert sorted(head.eval.protocols.keys()) == ["ar_real", "lfw_distractors"]
  assert head.eval.protocols.ar_real.subjects == "test"
  assert "face_finder" not in head.stages and head.stages.endswith("detector,evaluate")
  assert [m.split("=")[0] for m in head.eval.models] == ["Trunk", "Baseline", "PDSN",
                                                         "PDSN + fine-tune"]
  with pytest.raises(ValueError, match="pick one"):
    real_mobilefacenet.get_config("headline,select")


def test_main_names_a_missing_optional_package_before_any_stage(monkeypatch):
  """The probe (issue 39): the real config without dlib failed when the evaluation reached AR,
  after about an hour of training."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from configs import real_mobilefacenet  # pylint: disable=g-import-not-at-top
  from pdsn_jax import packages  # pylint: disable=g-import-not-at-top
  c = real_mobilefacenet.get_config()
  find = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "dlib" else find(name, *a))
  with pytest.raises(ImportError, match=r"dlib: needed because eval.protocols has 'ar_real'.*"
                                        r"pip install dlib-bin"):
    packages.check(c)
  c.eval.protocols.ar_real.alignment = "centre"
  with pytest.raises(ImportError, match=r"dlib: needed because detector.ar_share > 0"):
    packages.check(c)  # the detector's AR development photos are aligned by landmarks too
  c.detector.ar_alignment = "centre"  # without landmarks: nothing more to install
  packages.check(c)
  assert packages.needed(importlib.import_module("configs.tiny").get_config()) == {}


def _docstring_cost(name: str) -> str:
  doc = importlib.import_module(f"configs.{name}").__doc__ or ""
  found = [" ".join(m.split()) for m in re.findall(r"^Cost: (.*?)(?:\n\n|\Z)", doc, re.S | re.M)]
  assert len(found) == 1, f"configs/{name}.py: its docstring needs one 'Cost: ...' paragraph"
  return found[0]


def test_the_readme_gives_each_configs_cost_as_its_docstring_does():
  """One cost per config: the docstring's ``Cost:`` paragraph, repeated in the README's table."""
  readme = open(os.path.join(helpers.REPO, "README.md"), encoding="utf-8").read()
  rows = dict(re.findall(r"^\| `configs/(\w+)\.py` \| .*? \| ([^|]*) \|$", readme, re.M))
  assert set(rows) == set(CONFIGS), sorted(set(rows) ^ set(CONFIGS))
  for name in CONFIGS:
    assert rows[name].strip() == _docstring_cost(name), name


def test_a_run_made_before_a_field_existed_reads_it_at_its_old_behaviour(tmp_path):
  """The probe: a run's config.json without pdsn.mask_scale_init (or the detector's AR fields)
  failed validation with a bare KeyError, so no command could read that run."""
  from configs import real_mobilefacenet  # pylint: disable=g-import-not-at-top
  from pdsn_jax import run_config  # pylint: disable=g-import-not-at-top
  from pdsn_jax.run import provenance  # pylint: disable=g-import-not-at-top
  old = real_mobilefacenet.get_config().to_dict()
  for dotted in provenance.ADDED:
    section, key = dotted.split(".")
    del old[section][key]
  (tmp_path / "config.json").write_text(json.dumps(old))
  c = run_config.load_config(str(tmp_path))
  assert c.pdsn.mask_scale_init == 1.0 and c.pdsn.source == "online"
  assert c.detector.ar_share == 0.0 and tuple(c.detector.ar_subjects) == ()
