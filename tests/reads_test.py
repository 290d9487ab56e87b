"""Every config field a stage's code reads is in its provenance record, or explained
(``provenance.UNRECORDED``, the stage's ``through_upstream``): the session's tiny run is made
through ``tests/record_reads.py``, which records every field each stage reads, so a stage that
starts reading a new field cannot reuse outputs made under another value of it (issue 38:
detector.heldout_every decided every stage's occluder split and was in no PDSN stage's
record). The baseline stage is not in the tiny run; it is finetune's code with another
dictionary (``stages/finetune.py``)."""

import json
import os

import pytest

from pdsn_jax.run import provenance  # noqa: F401  (registers them)
from pdsn_jax import stages
from pdsn_jax.run import stage as stage_lib

STAGES = ("trunk", "bank", "pdsn", "dictionary", "finetune", "detector", "evaluate")


def _covered(field: str, kind: str) -> bool:
  stage = stage_lib.get(kind)
  sections = stage.depends_on + stage.through_upstream
  return (any(field == s or field.startswith(s + ".") for s in sections)
          and field not in stage.excluded
          or field.split(".")[-1] in provenance.IGNORED or field in provenance.UNRECORDED)


@pytest.fixture(scope="module")
def reads(tiny_run):
  with open(os.path.join(os.path.dirname(tiny_run), "reads.json"), encoding="utf-8") as f:
    return json.load(f)


def test_the_recorder_sees_what_a_stage_reads(reads):
  # the check below would pass vacuously if the recorder missed reads
  assert sorted(reads) == sorted(STAGES)
  assert "pdsn.lambda_l1" in reads["pdsn"] and "detector.heldout_every" in reads["pdsn"]
  assert "dictionary.tau" in reads["dictionary"] and "trunk.learning_rate" in reads["trunk"]
  assert not _covered("pdsn.lambda_l1", "trunk")  # an unrecorded read is caught


@pytest.mark.parametrize("stage", STAGES)
def test_every_field_a_stage_reads_is_in_its_record(reads, stage):
  missing = [f for f in reads[stage] if not _covered(f, stage)]
  assert not missing, (
      f"stage '{stage}' reads {missing}, which its provenance record does not hold: add them "
      "to its Stage's depends_on (or, when they cannot change its outputs, to "
      "provenance.UNRECORDED with the reason)")
