"""What made each stage's outputs: the config fields it depends on and the upstream stages'
records, in ``<workdir>/<stage>/provenance.json``, so a changed config never reuses stale
outputs and results are always labelled by the config that produced them.

The rule, applied when a stage starts (``begin``):
  1. Every upstream stage it reads must match the config (its fields, and recursively its own
     upstream): else the run stops naming the stage, the fields that changed, and the ways out.
  2. Its own outputs are reused (resumed or skipped) only if made with the same fields from the
     same upstream records.
     - Its own fields changed: the run stops naming them; ``--config.overwrite=<stage>`` moves
       the old outputs aside (``<stage>.replaced-<time>``) and the stage starts again.
     - Only an upstream record changed (that stage was made again): the old outputs are moved
       aside the same way, with a warning, and the stage starts again. So overwriting a stage
       retrains it and everything downstream that runs.
  3. A record is written twice: ``provenance.json`` and a hidden copy beside the outputs
     (``.provenance.json``). A deleted record is read from its copy, so the rule above still
     applies to it (a changed field refuses; unchanged, it is restored with its id). Outputs
     with neither are refused: nothing says what made them (``--config.overwrite`` remakes
     them).

A record carries a random ``id`` made when the stage first starts, so a stage trained again
under the same config still changes its fingerprint: downstream stages never pair with a
network they were not made from. Fields that change only logging or speed are left out
(``IGNORED``). Which fields each stage's record holds is its descriptor's (``stage.Stage``:
``depends_on`` less ``excluded``).
"""

import datetime
import hashlib
import json
import logging
import os
import uuid

import jax
import ml_collections

from pdsn_jax.train import distributed
from pdsn_jax.run import files
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.data import occlusion

RECORD = "provenance.json"
COPY = ".provenance.json"  # the record again, so deleting one file never relabels outputs
IGNORED = frozenset({"log_every", "checkpoint_every", "keep_checkpoints", "eval_every",
                     "num_workers", "cache", "eval_images", "bottom_cache_gib",
                     "forward_chunk", "weights_from"})
# Derived from the globs: whether any split has globs at all (``occlusion.splits_by_globs``;
# else every heldout_every-th file is a test file), which moves files into or out of the train
# split whichever split's globs make the switch; recorded instead of the test globs.
SPLIT_BY_GLOBS = "occlusion.split_by_globs"
# Fields a stage reads that are not in its record, and why that is safe. tests/reads_test.py
# runs every stage with a config that records what it reads and fails on any other field, so a
# new read is either recorded or explained here.
UNRECORDED = {
    "max_param_norm_growth": "a safety stop: it saves nothing past the last good checkpoint",
    "profile_steps": "a profiler trace only",
    "eval.batch_size": "speed only (the held-out verification while training)",
    "eval.num_pairs": "the held-out verification logged while training, not the network",
    "eval.seed": "the held-out verification logged while training, not the network",
    "detector.threshold": "the detector's held-out scores in its summary; its network never "
                          "depends on it",
    stage_lib.TEST_GLOBS: f"which files are test files: a stage that trains loads the train "
                          f"and select files, which their own globs and {SPLIT_BY_GLOBS} (both "
                          "recorded) decide",
}

# Fields added after runs were made, with the value that reproduces those runs: a record without
# one reads as holding it, so a finished run stays fresh until the field is set otherwise.
ADDED = {"pdsn.source": "online", "dictionary.source": "online", "detector.ar_share": 0.0,
         "detector.ar_root": "", "detector.ar_subjects": [], "detector.ar_alignment": "landmarks",
         "pdsn.mask_scale_init": 1.0, "pdsn.ema_decay": 0.0, "model.forward_chunk": 0,
         "pdsn.generator_statistics": "running", "pdsn.statistics_pairs": 512,
         "pdsn.plateau_decay": 0.0, "pdsn.plateau_gain": 0.05, "pdsn.sub_batches": 1}


class StaleStage(RuntimeError):
  """A stage's outputs, or an upstream stage's, were made under another config."""


def _flatten(node, prefix: str = "") -> dict:
  out = {}
  for key, value in node.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(_flatten(value, path + "."))
    elif key not in IGNORED:
      out[path] = json.loads(json.dumps(value, default=str))  # tuples -> lists
  return out


def fields(config, kind: str, overrides: dict | None = None) -> dict:
  """The dotted config fields ``kind``'s outputs depend on, with ``overrides`` applied."""
  flat = _flatten(config)
  flat.update({k: json.loads(json.dumps(v)) for k, v in (overrides or {}).items()})
  return _selected(flat, kind)


def _selected(flat: dict, kind: str) -> dict:
  """The entries of ``flat`` (dotted field -> value) that ``kind``'s outputs depend on (also
  applied to old records, so a field excluded later never reads as changed; an old record's
  ``SPLIT_BY_GLOBS`` is derived from the globs it still holds)."""
  if SPLIT_BY_GLOBS not in flat and any(k.startswith("occlusion.splits.") for k in flat):
    flat = {**flat, SPLIT_BY_GLOBS: occlusion.splits_by_globs(
        {k[len("occlusion.splits."):]: v for k, v in flat.items()
         if k.startswith("occlusion.splits.")})}
  flat = {k: v for k, v in {**ADDED, **flat}.items() if k.rsplit(".", 1)[-1] not in IGNORED}
  stage = stage_lib.get(kind)
  return {k: v for k, v in sorted(flat.items())
          if any(k == s or k.startswith(s + ".") for s in stage.depends_on)
          and k not in stage.excluded}


def _path(workdir: str, name: str) -> str:
  return workdir_lib.stage_file(workdir, name, RECORD)


def read(workdir: str, name: str) -> dict | None:
  """The stage's record, else its copy (the record was deleted), else None."""
  for path in (_path(workdir, name), workdir_lib.stage_file(workdir, name, COPY)):
    if os.path.isfile(path):
      return files.read_json(path, f"the '{name}' stage's provenance record",
                             f"restore it from {COPY} beside it, or remake the stage with "
                             f"--config.overwrite={_stage(name)}")
  return None


def _write(workdir: str, name: str, rec: dict) -> None:
  files.write_json(workdir_lib.stage_file(workdir, name, COPY), rec)
  files.write_json(_path(workdir, name), rec)


def has_outputs(workdir: str, name: str) -> bool:
  d = workdir_lib.stage_dir(workdir, name)
  return os.path.isdir(d) and any(f not in (RECORD, COPY) for f in os.listdir(d))


def _diff(old: dict, new: dict) -> list[str]:
  return [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def stale(config, workdir: str, name: str) -> list[str]:
  """Why ``name``'s outputs do not match ``config`` (empty when they do, or when they have no
  record): its changed fields, and recursively its upstream's."""
  rec = read(workdir, name)
  if rec is None:
    return []
  why = [f"{name}: {d}" for d in _diff(_selected(rec["fields"], rec["kind"]),
                                       fields(config, rec["kind"], rec.get("overrides")))]
  for up, fp in rec["upstream"].items():
    now = read(workdir, up)
    if now is not None and now["fingerprint"] != fp:
      why.append(f"{name}: made from another '{up}' (fingerprint {fp}, now {now['fingerprint']})")
    why += stale(config, workdir, up)
  return why


def _stage(folder: str) -> str:
  """The ``config.stages`` name that makes a stage folder (Table 3's "lambda0_*" -> lambda0)."""
  return stage_lib.owner(folder) or folder


def overwrite_names(config) -> list[str]:
  return [s.strip() for s in str(config.get("overwrite", "")).split(",") if s.strip()]


def _overwrite(config, name: str) -> bool:
  return _stage(name) in overwrite_names(config)


def _move_aside(workdir: str, name: str) -> str:
  """Renames the stage's folder to ``<name>.replaced-<time>``, and the results made from it
  (``results.md/json`` -> ``results.replaced-<time>.*``) so they never describe outputs that
  are gone."""
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
  dst = workdir_lib.replaced(workdir, name, stamp)
  if jax.process_index() == 0:
    if os.path.exists(dst):
      dst = f"{dst}-{os.getpid()}"
    os.rename(workdir_lib.stage_dir(workdir, name), dst)
    for f, path in zip(workdir_lib.RESULTS, workdir_lib.results_files(workdir)):
      if os.path.isfile(path):
        os.replace(path, workdir_lib.replaced(workdir, f, stamp))
  distributed.barrier(f"provenance: {name} moved aside")
  return dst


def _fingerprint(rec: dict) -> str:
  body = json.dumps({k: rec[k] for k in ("fields", "upstream", "id")}, sort_keys=True)
  return hashlib.sha256(body.encode()).hexdigest()[:16]


def require_fresh(config, workdir: str, upstream, needed_by: str) -> None:
  """Raises ``StaleStage`` if any of the ``upstream`` stages present was made under another
  config than ``config``, naming the fields and the ways out."""
  for up in upstream:
    why = stale(config, workdir, up)
    if why:
      raise StaleStage(
          f"stage '{needed_by}' reads '{up}', which was made under another config:\n  "
          + "\n  ".join(why) + f"\nmake it again: add '{_stage(up)}' to config.stages (and "
          f"--config.overwrite={_stage(up)} where its own fields changed), or use a new "
          "--workdir")


def begin(config, workdir: str, name: str, kind: str, upstream=(), overrides: dict | None = None,
          reuse: bool = True) -> dict:
  """Applies the module's rule before stage ``name`` (a folder of the registered stage
  ``kind``, whose descriptor says which fields the record holds) reads or writes anything;
  returns its record (written). ``reuse=False``: the stage remakes every output each run (the
  evaluation), so only rule 1 applies."""
  upstream = [u for u in upstream if has_outputs(workdir, u)]
  require_fresh(config, workdir, upstream, name)
  up = {}
  for u in upstream:
    r = read(workdir, u)
    up[u] = r["fingerprint"] if r is not None else "unrecorded"
  new = {"stage": name, "kind": kind, "fields": fields(config, kind, overrides),
         "overrides": dict(overrides or {}), "upstream": up}
  present = reuse and has_outputs(workdir, name)
  old = read(workdir, name) if present else None
  why = ""
  if present and old is None and not _overwrite(config, name):
    raise StaleStage(
        f"stage '{name}' in {workdir} has outputs but no provenance record ({RECORD} and its "
        f"copy {COPY} are both gone): nothing says which config made them; rerun with "
        f"--config.overwrite={_stage(name)} to move them aside and make the stage again, or "
        "use a new --workdir")
  if present and old is None:
    why = "outputs without a provenance record"
  elif present:
    changed = _diff(_selected(old["fields"], kind), new["fields"])
    moved = [u for u in up if old["upstream"].get(u) != up[u]]
    if changed and not _overwrite(config, name):
      raise StaleStage(
          f"stage '{name}' in {workdir} was made under another config:\n  "
          + "\n  ".join(changed) + f"\neither use a new --workdir, or rerun with "
          f"--config.overwrite={_stage(name)} to move the old outputs aside and make it again "
          "(and every stage downstream that runs)")
    if changed or moved:
      why = (f"config changed ({'; '.join(changed)})" if changed else
             f"upstream {', '.join(moved)} made again since")
  # every process has decided on the same files before process 0 changes any
  distributed.barrier(f"provenance: {name} checked")
  if why:
    dst = _move_aside(workdir, name)
    logging.warning("[%s] %s: old outputs moved to %s; starting the stage again", name, why, dst)
    old = None
  if old is not None:
    # reused as it was made: rewritten with a field added since (ADDED) its fingerprint would
    # move, and every record downstream, which holds the old one, would read as stale
    new = old
  else:
    new["id"] = uuid.uuid4().hex
    new["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    new["fingerprint"] = _fingerprint(new)
  if jax.process_index() == 0:
    os.makedirs(workdir_lib.stage_dir(workdir, name), exist_ok=True)
    _write(workdir, name, new)
  distributed.barrier(f"provenance: {name} recorded")
  return read(workdir, name)  # process 0's (its random id) in every process


def records(workdir: str, names) -> dict:
  """{stage: fingerprint} of the ``names`` that have a record and everything upstream of them
  (for labelling results)."""
  out, todo = {}, list(names)
  while todo:
    n = todo.pop(0)
    r = read(workdir, n) if n not in out and os.path.isdir(workdir_lib.stage_dir(workdir, n)) else None
    if r is not None:
      out[n] = r["fingerprint"]
      todo += list(r["upstream"])
  return out
