"""Scores a finished run on other data without retraining: its own results beside the run.

  python -m pdsn_jax.cli.evaluate --workdir=RUN --name=NAME [--pairs=pairs.txt --pairs_root=DIR
      [--pairs_landmarks=TSV] [--pairs_pattern=...]] [--occluders=DIR] [--test_globs=G1,G2]
      [--identification=DIR [--identification_landmarks=TSV]] [--ar_real=DIR]
      [--protocols=verification,ar_p1,...] [--set=eval.num_pairs=300 ...]

Example (the run's networks on your own pairs, occluded by your own occluder files):
  python -m pdsn_jax.cli.evaluate --workdir=runs/real_mobilefacenet --name=my_pairs \\
      --pairs=my/pairs.txt --pairs_root=my/images --occluders=my/occluders

The run's evaluate stage runs under the run's config with these changes, in
``RUN/evaluations/NAME/`` (results.md, results.json, the thresholds, figures and distractor
stores of this evaluation, its config.json and ``evaluation.json`` naming the run and the
changes); the run's own results are never touched, and no stage trains. Only fields the
evaluation alone reads can change (``eval.*``, ``occlusion.splits.test``,
``detector.threshold``): a field a trained stage's record holds is refused, naming the stage.
Cost: that of the run's evaluate stage (its summary.json has the seconds).
"""

import ast
import datetime
import logging
import os
import re
import sys

import dataclasses

from absl import flags
import ml_collections

from pdsn_jax.run import provenance
from pdsn_jax import run_config, stages
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.config_validation import validate
from pdsn_jax.evaluation import evaluators

_FLAGS = {}  # defined by ``cli`` only: importing this module (the tests do) defines no flag


def _define_flags() -> None:
  """The command's flags, by the names ``overrides_from_flags`` reads."""
  d = flags
  _FLAGS.update(
      workdir=d.DEFINE_string("workdir", None, "A finished run of python -m pdsn_jax.main."),
      name=d.DEFINE_string("name", None, "This evaluation's folder: RUN/evaluations/NAME."),
      pairs=d.DEFINE_string("pairs", "", "An LFW-format pairs.txt "
                            "(eval.protocols.verification.pairs_file)."),
      pairs_root=d.DEFINE_string("pairs_root", "", "Its images' folder (pairs_root)."),
      pairs_landmarks=d.DEFINE_string("pairs_landmarks", "",
                                      "Their landmarks TSV (pairs_landmarks)."),
      pairs_pattern=d.DEFINE_string(
          "pairs_pattern", "", "Image path of (name, number) under --pairs_root (pairs_pattern)."),
      occluders=d.DEFINE_string(
          "occluders", "", "Folder of <category>/**/*.png occluders for the test faces, every "
          "file (eval.occluder_dir)."),
      test_globs=d.DEFINE_list(
          "test_globs", None, "Other test files of the run's occluder folder, as globs "
          "(occlusion.splits.test); they may not name a train or select file."),
      identification=d.DEFINE_string(
          "identification", "", "One folder per person for the AR-style protocols "
          "(eval.identification_root)."),
      identification_landmarks=d.DEFINE_string(
          "identification_landmarks", "", "Its landmarks TSV (eval.identification_landmarks)."),
      ar_real=d.DEFINE_string("ar_real", "", "An AR-style set of real occlusions (labels.tsv; "
                              "eval.protocols.ar_real.root)."),
      protocols=d.DEFINE_list("protocols", None, "The protocols to run (the names of "
                              "eval.protocols; each keeps the run's settings, else its "
                              "defaults)."),
      set=d.DEFINE_multi_string(
          "set", [], "Any other field the evaluation alone reads, as FIELD=VALUE (e.g. "
          "eval.num_pairs=300, eval.protocols.verification.conditions=sunglasses,mask, "
          "detector.threshold=0.4)."))


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PROTOCOLS = "eval.protocols"


def _parse(field: str, old, text: str):
  """``text`` as the type of the field's current value ``old`` (a sequence: comma-separated,
  or a Python literal)."""
  if isinstance(old, bool):
    low = text.strip().lower()
    if low not in ("true", "false", "1", "0"):
      raise ValueError(f"--set {field}={text!r}: expected true or false")
    return low in ("true", "1")
  if isinstance(old, (int, float)):
    try:
      value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      value = None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
        or isinstance(old, int) and not float(value).is_integer()):
      raise ValueError(f"--set {field}={text!r}: expected a number like {old!r}")
    return type(old)(value)
  if isinstance(old, (tuple, list)):
    stripped = text.strip()
    if stripped[:1] in "([":
      try:
        return tuple(ast.literal_eval(stripped))
      except (ValueError, SyntaxError) as e:
        raise ValueError(f"--set {field}={text!r}: not a sequence literal ({e})") from None
    items = [t.strip() for t in stripped.split(",") if t.strip()]
    kind = type(old[0]) if old and isinstance(old[0], (int, float)) else str
    try:
      return tuple(kind(t) for t in items)
    except ValueError:
      raise ValueError(f"--set {field}={text!r}: expected {kind.__name__}s like {old!r}") from None
  return text


def overrides_from_flags() -> dict:
  """{dotted field: text} of the flags given, the named flags first, then every ``--set``."""
  f = {k: v.value for k, v in _FLAGS.items()}
  v = "eval.protocols.verification."
  named = {v + "pairs_file": f["pairs"], v + "pairs_root": f["pairs_root"],
           v + "pairs_landmarks": f["pairs_landmarks"], v + "pairs_pattern": f["pairs_pattern"],
           "eval.occluder_dir": f["occluders"], "eval.identification_root": f["identification"],
           "eval.identification_landmarks": f["identification_landmarks"],
           "eval.protocols.ar_real.root": f["ar_real"]}
  out = {}
  if f["protocols"] is not None:  # first: the settings below go into the protocols chosen
    out[PROTOCOLS] = ",".join(f["protocols"])
  out.update({k: v for k, v in named.items() if v})
  if f["test_globs"] is not None:
    out["occlusion.splits.test"] = ",".join(f["test_globs"])
  for item in f["set"]:
    field, sep, value = item.partition("=")
    if not sep or not field.strip():
      raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. eval.num_pairs=300")
    out[field.strip()] = value
  return out


def _apply_protocols(config, field: str, value) -> None:
  """``eval.protocols=a,b`` (those protocols, each with the run's settings, else its defaults)
  or ``eval.protocols.NAME.KEY=value`` (a registered protocol, added when the run lacks it; the
  value typed like the key's default)."""
  given = config.eval.protocols
  if field == PROTOCOLS:
    names = [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else value
    config.eval.protocols = ml_collections.ConfigDict(
        {n: given[n] if n in given else {} for n in names})
    return
  name, _, key = field[len(PROTOCOLS) + 1:].partition(".")
  if name not in evaluators.PROTOCOLS:
    raise KeyError(f"{field}: no protocol {name!r}; registered: {tuple(evaluators.PROTOCOLS)}")
  if name not in given:
    given[name] = ml_collections.ConfigDict()
  cls = evaluators.get(name).settings
  allowed = [f.name for f in dataclasses.fields(cls)] if cls is not None else []
  if key not in allowed:
    raise KeyError(f"{field}: the {name!r} protocol has no setting {key!r}; allowed: {allowed}")
  old = given[name].get(key, getattr(cls(), key))
  given[name][key] = _parse(field, old, value) if isinstance(value, str) else value


def apply(config, changes: dict):
  """``config`` with ``changes`` ({dotted field: text or value}) applied, each typed like the
  field it replaces; an unknown field is refused naming its section's fields."""
  config = config.copy_and_resolve_references()
  for field, value in changes.items():
    if field == PROTOCOLS or field.startswith(PROTOCOLS + "."):
      _apply_protocols(config, field, value)
      continue
    *parents, leaf = field.split(".")
    node = config
    for i, key in enumerate(parents):
      if key not in node:
        raise KeyError(f"{field}: config has no section {'.'.join(parents[:i + 1])!r}")
      node = node[key]
    if leaf not in node:
      raise KeyError(f"{field}: config has no such field; {'.'.join(parents) or 'config'} has "
                     f"{sorted(node.keys())}")
    old = node[leaf]
    node[leaf] = _parse(field, old, value) if isinstance(value, str) else value
  return config


def trained_stages(run_dir: str) -> list[str]:
  """The run's stage folders with a provenance record (every one but the evaluation)."""
  return sorted(d for d in os.listdir(run_dir)
                if d != workdir_lib.EVALUATE and ".replaced-" not in d
                and os.path.isdir(workdir_lib.stage_dir(run_dir, d))
                and provenance.read(run_dir, d) is not None)


def refuse_training_fields(config, run_dir: str, changes: dict) -> None:
  """A change that a trained stage's record holds would describe networks it did not make."""
  why = [w for s in trained_stages(run_dir) for w in provenance.stale(config, run_dir, s)]
  if why:
    raise ValueError(
        f"these changes ({', '.join(changes)}) are read by stages the run trained, so their "
        "networks were not made under them:\n  " + "\n  ".join(dict.fromkeys(why))
        + "\nthis command changes only what the evaluation alone reads (eval.*, "
        "occlusion.splits.test, detector.threshold); train a new run for the rest")


def plan(run_dir: str, name: str, changes: dict):
  """The run's config with ``changes``, checked: valid, and read by no trained stage."""
  if not name or not _NAME_RE.match(name):
    raise ValueError(f"--name={name!r}: a folder name of letters, digits, '.', '_' and '-'")
  config = apply(run_config.load_config(run_dir), changes)
  try:
    validate(config)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"with {', '.join(changes) or 'no changes'}: {e}") from None
  refuse_training_fields(config, run_dir, changes)
  return config


def evaluate(run_dir: str, name: str, changes: dict) -> dict:
  """Runs the run's evaluate stage under its config with ``changes`` in
  ``RUN/evaluations/<name>/``; returns the stage's summary."""
  config = plan(run_dir, name, changes)
  out = workdir_lib.evaluation_dir(run_dir, name)
  with workdir_lib.locked(run_dir), workdir_lib.locked(out):
    for stage in trained_stages(run_dir):  # read through links: nothing is copied or retrained
      link = workdir_lib.stage_dir(out, stage)
      target = os.path.relpath(workdir_lib.stage_dir(run_dir, stage), out)
      if os.path.islink(link) and os.readlink(link) != target:
        os.remove(link)
      if not os.path.lexists(link):
        os.symlink(target, link)
    workdir_lib.save_config(out, config.to_json_best_effort(indent=2))
    workdir_lib.write_evaluation_record(out, {
        "run": os.path.abspath(run_dir), "name": name,
        "changes": {k: v if isinstance(v, str) else repr(v) for k, v in changes.items()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    summary = stages.evaluate.STAGE.run(config, out)
  logging.info("the run %s evaluated as %r: %s", run_dir, name, ", ".join(
      workdir_lib.results_files(out)))
  return summary


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}; see --help")
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:  # a wrong flag is one line naming it, before anything is written
    changes = overrides_from_flags()
    plan(_FLAGS["workdir"].value, _FLAGS["name"].value, changes)
  except (ValueError, KeyError, FileNotFoundError) as e:
    logging.error("%s", e.args[0] if e.args else e)
    sys.exit(1)
  evaluate(_FLAGS["workdir"].value, _FLAGS["name"].value, changes)


def cli():
  """``pdsn-evaluate``: the console script of ``pip install -e .``."""
  from pdsn_jax.cli import runner as cli_lib  # pylint: disable=g-import-not-at-top
  _define_flags()
  flags.mark_flags_as_required(["workdir", "name"])
  cli_lib.run(main, sys.modules[__name__], [f.name for f in _FLAGS.values()])


if __name__ == "__main__":
  cli()
