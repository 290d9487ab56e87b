"""Every config file builds and passes validation; bad values name the key."""

import glob
import importlib
import os

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
  c.eval.conditions = ("sunglasses", "rain")
  with pytest.raises(ValueError, match=r"eval.conditions.*allowed"):
    validate(c)
  c = pdsn.get_config()
  c.model.kind = "vgg"
  with pytest.raises(ValueError, match=r"model.kind='vgg'.*iresnet"):
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
  c.eval.protocols = ("ar_p1", "nope")
  with pytest.raises(ValueError, match=r"eval.protocols.*allowed values .*'ar_real'"):
    validate(c)
  c.eval.protocols = ("ar_p1",)  # verification is not required
  validate(c)
  c.eval.protocols = ("verification", "ar_real")  # a protocol's own config key, named
  with pytest.raises(ValueError, match=r"names 'ar_real' but config.eval.ar_real_root is empty"):
    validate(c)


def test_real_mobilefacenet_variants():
  from configs import real_mobilefacenet  # pylint: disable=g-import-not-at-top
  sel = real_mobilefacenet.get_config("select")
  validate(sel)
  assert not sel.eval.pairs_file and sel.eval.num_distractors == 0
  with pytest.raises(ValueError, match=":select"):
    real_mobilefacenet.get_config("lfw")


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
  c.eval.ar_real_alignment = "centre"  # aligned without landmarks: nothing more to install
  packages.check(c)
  assert packages.needed(importlib.import_module("configs.tiny").get_config()) == {}
