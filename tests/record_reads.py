"""``python tests/record_reads.py OUT.json <pdsn_jax.main flags>``: runs ``pdsn_jax.main`` with a
config that records every field each stage's code reads, into OUT.json as {stage: [dotted
fields]} (the session's tiny run is made this way; ``tests/reads_test.py`` checks the fields
against the stages' provenance records). The records' own reading of the whole config is left
out: it is not the stage's code."""

import dataclasses
import json
import os
import runpy
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pdsn_jax.run import provenance  # noqa: E402,F401  (after the path; registers them)
from pdsn_jax import stages
from pdsn_jax.run import stage as stage_lib  # noqa: E402


class Recorder:
  """The dotted leaf fields read from one config tree (nodes known by identity)."""

  def __init__(self):
    self.paths, self.reads, self.on = {}, None, False

  def walk(self, node, prefix=""):
    self.paths[id(node)] = prefix
    for key in node._fields:  # pylint: disable=protected-access
      value = node._fields[key]  # pylint: disable=protected-access
      if isinstance(value, ml_collections.ConfigDict):
        self.walk(value, f"{prefix}{key}.")

  def seen(self, node, key, value):
    if self.on and isinstance(key, str) and not isinstance(value, ml_collections.ConfigDict):
      prefix = self.paths.get(id(node))
      if prefix is not None:
        self.reads.add(prefix + key)


def install(rec: Recorder, out: dict) -> None:
  """Patches ConfigDict reads, the records' whole-config walk and every stage's entry."""
  getitem = ml_collections.ConfigDict.__getitem__

  def recording_getitem(self, key):
    value = getitem(self, key)
    rec.seen(self, key, value)
    return value

  flatten = provenance._flatten  # pylint: disable=protected-access

  def whole_config(*a, **k):
    on, rec.on = rec.on, False
    try:
      return flatten(*a, **k)
    finally:
      rec.on = on

  def recorded(name, fn):
    def run(config, workdir):
      if not rec.paths:
        rec.walk(config)
      rec.reads, rec.on = set(), True
      try:
        return fn(config, workdir)
      finally:
        rec.on = False
        out[name] = sorted(rec.reads)
    return run

  ml_collections.ConfigDict.__getitem__ = recording_getitem
  provenance._flatten = whole_config  # pylint: disable=protected-access
  for name, s in stage_lib.registered().items():
    stage_lib._REGISTRY[name] = dataclasses.replace(s, run=recorded(name, s.run))  # pylint: disable=protected-access


if __name__ == "__main__":
  target, sys.argv = sys.argv[1], ["pdsn_jax.main"] + sys.argv[2:]
  reads = {}
  install(Recorder(), reads)
  try:
    runpy.run_module("pdsn_jax.main", run_name="__main__")
  finally:
    with open(target, "w", encoding="utf-8") as f:
      json.dump(reads, f, indent=1)
