"""Every config field a stage's code reads is in its provenance record, or explained
(``provenance.UNRECORDED``, ``provenance.THROUGH_UPSTREAM``): each stage of the tiny config runs
in this process with a config that records every field read, so a stage that starts reading a
new field cannot reuse outputs made under another value of it (issue 38: detector.heldout_every
decided every stage's occluder split and was in no PDSN stage's record)."""

import contextlib

import ml_collections
import pytest

from configs import tiny
from pdsn_jax import config_validation, provenance, stages

# the stages of the tiny run, each with the kind of record it writes
STAGES = ("trunk", "pdsn", "dictionary", "baseline", "finetune", "detector", "evaluate")


class _Reads:
  """Records the dotted leaf fields read from one config tree (by node identity)."""

  def __init__(self, config):
    self.paths, self.reads, self.on = {}, set(), False
    self._walk(config, "")

  def _walk(self, node, prefix):
    self.paths[id(node)] = prefix
    for key in node._fields:  # pylint: disable=protected-access
      value = node._fields[key]  # pylint: disable=protected-access
      if isinstance(value, ml_collections.ConfigDict):
        self._walk(value, f"{prefix}{key}.")

  def seen(self, node, key, value):
    if self.on and isinstance(key, str) and not isinstance(value, ml_collections.ConfigDict):
      prefix = self.paths.get(id(node))
      if prefix is not None:
        self.reads.add(prefix + key)

  @contextlib.contextmanager
  def paused(self):
    on, self.on = self.on, False
    try:
      yield
    finally:
      self.on = on


def _covered(field: str, kind: str) -> bool:
  sections = provenance.SECTIONS[kind] + provenance.THROUGH_UPSTREAM.get(kind, ())
  return (any(field == s or field.startswith(s + ".") for s in sections)
          or field.split(".")[-1] in provenance.IGNORED or field in provenance.UNRECORDED)


@pytest.fixture(scope="module")
def reads(tmp_path_factory, monkeypatch_module):
  config = tiny.get_config()
  config_validation.validate(config)
  rec = _Reads(config)
  getitem = ml_collections.ConfigDict.__getitem__

  def recording_getitem(self, key):
    value = getitem(self, key)
    rec.seen(self, key, value)
    return value

  flatten = provenance._flatten  # pylint: disable=protected-access

  def whole_config(*a, **k):  # the record itself reads every field: not the stage's code
    with rec.paused():
      return flatten(*a, **k)

  monkeypatch_module.setattr(ml_collections.ConfigDict, "__getitem__", recording_getitem)
  monkeypatch_module.setattr(provenance, "_flatten", whole_config)
  wd = str(tmp_path_factory.mktemp("reads") / "run")
  out = {}
  for name in STAGES:
    rec.reads, rec.on = set(), True
    stages.STAGES[name](config, wd)
    rec.on = False
    out[name] = sorted(rec.reads)
  return out


@pytest.fixture(scope="module")
def monkeypatch_module():
  mp = pytest.MonkeyPatch()
  yield mp
  mp.undo()


@pytest.mark.slow
def test_the_recorder_sees_what_a_stage_reads(reads):
  # the check below would pass vacuously if the recorder missed reads
  assert "pdsn.lambda_l1" in reads["pdsn"] and "detector.heldout_every" in reads["pdsn"]
  assert "dictionary.tau" in reads["dictionary"] and "trunk.learning_rate" in reads["trunk"]
  assert not _covered("pdsn.lambda_l1", "trunk")  # an unrecorded read is caught


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_every_field_a_stage_reads_is_in_its_record(reads, stage):
  missing = [f for f in reads[stage] if not _covered(f, stage)]
  assert not missing, (
      f"stage '{stage}' reads {missing}, which its provenance record does not hold: add them "
      "to provenance.SECTIONS (or, when they cannot change its outputs, to "
      "provenance.UNRECORDED with the reason)")
