"""A finished run's config (``<workdir>/config.json``) read back and checked by the validator
``main`` uses: the commands' way in. It sits above the stages (the validator knows every stage's
fields), so ``workdir.py`` stays a leaf that stages can import."""

import os

import ml_collections

from pdsn_jax import config_validation
from pdsn_jax.run import files
from pdsn_jax.run import provenance
from pdsn_jax.run import workdir as workdir_lib

# Before each protocol carried its own settings (eval.protocols was a list of names), these
# eval fields held them: old field -> (protocol, its setting).
_MOVED = {
    **{k: ("verification", k) for k in ("conditions", "pairs_file", "pairs_root", "pairs_pattern",
                                        "pairs_landmarks", "pairs_bin")},
    "ar_real_root": ("ar_real", "root"), "ar_real_alignment": ("ar_real", "alignment"),
    "lfw_root": ("lfw_distractors", "root"), "lfw_landmarks": ("lfw_distractors", "landmarks"),
    "lfw_probe_every": ("lfw_distractors", "probe_every"),
    "distractor_sizes": ("lfw_distractors", "sizes"),
}


def _added(raw: dict) -> dict:
  """``raw`` with every field added since (``provenance.ADDED``) that its section lacks, at the
  value that reproduces what such a run did."""
  out = dict(raw)
  for dotted, value in provenance.ADDED.items():
    section, key = dotted.split(".")
    if isinstance(out.get(section), dict) and key not in out[section]:
      out[section] = {**out[section], key: value}
  return out


def upgrade(raw: dict) -> dict:
  """A run's config as written before protocols carried their settings, in today's layout
  (the moved ``eval`` fields into ``eval.protocols.<name>``), and with the fields added since
  at their old behaviour's values; a current one unchanged. The AR protocol of such a run
  scored every subject, so its ``subjects`` says "all"."""
  raw = _added(raw)
  ev = raw.get("eval")
  if not isinstance(ev, dict) or not isinstance(ev.get("protocols"), list):
    return raw
  ev = dict(ev)
  protocols = {name: {} for name in ev["protocols"]}
  for old, (name, key) in _MOVED.items():
    value = ev.pop(old, None)
    if name in protocols and value is not None:
      protocols[name][key] = value
  if "ar_real" in protocols:
    protocols["ar_real"]["subjects"] = "all"
  ev["protocols"] = protocols
  return {**raw, "eval": ev}


def load_config(workdir: str):
  """The config a run was made with (``config.json``), as a ConfigDict, checked by the same
  validator as ``main`` (an error names the file and the key)."""
  path = workdir_lib.config_file(workdir)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: --workdir must be a run folder of "
                            "python -m pdsn_jax.main")
  config = ml_collections.ConfigDict(upgrade(files.read_json(path, "the run's config")))
  try:
    config_validation.validate(config)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: {e}") from None
  return config
