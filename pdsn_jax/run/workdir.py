"""The workdir: the one place that knows its layout, and one run at a time (a lock per process).

  <workdir>/config.json                  the config of the last run (earlier ones in
                                         config_history/)
  <workdir>/<stage>/provenance.json      the config fields and upstream records that made the
                                         stage's outputs (``provenance``)
  <workdir>/<stage>/checkpoints/<step>/  orbax: train state + grain iterator (training stages)
  <workdir>/<stage>/logs/                tensorboard events + metrics.jsonl
  <workdir>/<stage>/summary.json         what the stage measured
  <workdir>/<stage>/stopped.json         the step a stopping rule ended the stage (complete)
  <workdir>/bank/bank.json               the feature bank's manifest, beside its shards (marks it
                                         complete; ``data/feature_bank.py``)
  <workdir>/dictionary/dictionary.npz    the FDMs (stage II's output; marks it complete)
  <workdir>/face_finder/short_range.npz  the tuned BlazeFace weights the photo commands use
  <workdir>/results.{md,json}            every protocol and ablation (figures, thresholds.json,
                                         the config that made them, distractor stores:
                                         evaluate/)
  <workdir>/<stage>.replaced-<time>/     a stage moved aside by ``--config.overwrite``
  <workdir>/export/                      ``python -m pdsn_jax.cli.export``'s functions
  <workdir>/evaluations/<name>/          the run evaluated on other data (``pdsn_jax.cli.evaluate``)

A stage reads what earlier stages left only through the functions here, and every path under a
workdir is built here (``tests/architecture_test.py`` checks it).
"""

import os

from pdsn_jax.run import checkpointing, files

# The folders of the built-in stages, for the code that reads a particular one's outputs. A
# stage's descriptor (``stage.Stage``, in its module) is what makes it a stage; a new stage
# needs no name here.
TRUNK, PDSN, DICTIONARY = "trunk", "pdsn", "dictionary"
BASELINE, FINETUNE, DETECTOR, EVALUATE = "baseline", "finetune", "detector", "evaluate"
FACE_FINDER = "face_finder"
BANK = "bank"  # the frozen trunk's features of the training faces (stages I and II read it)
LAMBDA0 = "lambda0"  # Table 3's ablation: its generators and its dictionary
LAMBDA0_PDSN, LAMBDA0_DICTIONARY = f"{LAMBDA0}_{PDSN}", f"{LAMBDA0}_{DICTIONARY}"
DICTIONARY_FILE = "dictionary.npz"
FACE_FINDER_FILE = "short_range.npz"
STOPPED_FILE = "stopped.json"  # a training stage ended by its stopping rule, at this step
RESULTS = ("results.md", "results.json")
EVALUATIONS = "evaluations"


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage)


def face_finder_weights(workdir: str) -> str:
  """The run's tuned short-range BlazeFace weights (may not exist: the stage is optional)."""
  return os.path.join(workdir, FACE_FINDER, FACE_FINDER_FILE)


def face_finder_settings(workdir: str) -> str:
  """The run's face-finder settings the photo commands read with its weights (the last try's
  score), next to them."""
  return os.path.join(workdir, FACE_FINDER, "finder.json")


def stage_file(workdir: str, stage: str, name: str) -> str:
  """A file (or folder) of a stage's own: figures, records, stores."""
  return os.path.join(workdir, stage, name)


def results_files(workdir: str) -> tuple[str, str]:
  """(results.md, results.json) of the evaluate stage, at the workdir's root."""
  return tuple(os.path.join(workdir, f) for f in RESULTS)


def replaced(workdir: str, name: str, stamp: str) -> str:
  """Where ``name`` (a stage folder or a results file) goes when it is moved aside."""
  base, ext = os.path.splitext(name)
  return os.path.join(workdir, f"{base}.replaced-{stamp}{ext}")


def distractor_store(workdir: str, stage: str) -> str:
  """The evaluate stage's gallery store of the distractors' U under ``stage``'s network."""
  return stage_file(workdir, EVALUATE, f"distractors_{stage}")


def evaluation_dir(workdir: str, name: str) -> str:
  """A finished run evaluated on other data (``python -m pdsn_jax.cli.evaluate --name=NAME``): a
  workdir of its own, its config and results, reading the run's stages through links."""
  return os.path.join(workdir, EVALUATIONS, name)


def write_evaluation_record(out: str, record: dict) -> str:
  """``evaluation.json`` of an evaluation folder: the run it scored and the changes."""
  return files.write_json(os.path.join(out, "evaluation.json"), record)


def export_dir(workdir: str) -> str:
  return os.path.join(workdir, "export")


def checkpoints(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage, "checkpoints")


def logs(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage, "logs")


def dictionary_file(workdir: str, stage: str = DICTIONARY) -> str:
  return os.path.join(workdir, stage, DICTIONARY_FILE)


def hits_file(workdir: str) -> str:
  """Per model row and protocol column, each pair's or probe's right / wrong (``.npz``, keys
  "<row>|<column>"): what the paired intervals are computed from, kept so that runs of other
  training seeds can be pooled (``benchmarks/seeds.py``)."""
  return stage_file(workdir, EVALUATE, "hits.npz")


def thresholds_file(workdir: str) -> str:
  """Per model, the mean of the 10 fold thresholds of clean and occluded verification and the
  fingerprint of the network they were measured on: what ``verify`` decides with."""
  return stage_file(workdir, EVALUATE, "thresholds.json")


def latest_step(workdir: str, stage: str) -> int | None:
  """The stage's latest finished checkpoint step (orbax's listing), None if it has none."""
  path = checkpoints(workdir, stage)
  if not os.path.isdir(path):
    return None
  return max(checkpointing.finished_steps(path), default=None)


def stopped_at(workdir: str, stage: str) -> int | None:
  """The step where a training stage's stopping rule ended it (``loop.Plan.on_checkpoint``),
  None if it never stopped early."""
  path = stage_file(workdir, stage, STOPPED_FILE)
  if not os.path.isfile(path):
    return None
  return int(files.read_json(path, "where the stage stopped", "delete it to train on")["step"])


def mark_stopped(workdir: str, stage: str, step: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    os.makedirs(stage_dir(workdir, stage), exist_ok=True)
    files.write_json(stage_file(workdir, stage, STOPPED_FILE), {"step": int(step)})


def final_step(workdir: str, stage: str, steps: int) -> int:
  """The step a training stage of ``steps`` ends at: earlier where its stopping rule ended it."""
  stopped = stopped_at(workdir, stage)
  return steps if stopped is None else min(steps, stopped)


def is_complete(workdir: str, stage: str, steps: int | None = None) -> bool:
  """Every stage's "am I done?": a training stage (``steps`` given) has a finished checkpoint at
  its last step, or at the step its stopping rule ended it; a dictionary stage has its
  ``dictionary.npz`` (written last). The evaluate stage is never complete: it reruns every
  time (cheap next to training, and always current)."""
  if steps is not None:
    return (latest_step(workdir, stage) or 0) >= final_step(workdir, stage, steps)
  if stage == EVALUATE:
    return False
  return os.path.isfile(dictionary_file(workdir, stage))


def require(workdir: str, stage: str, needed_by: str) -> str:
  """The stage's checkpoint folder; FileNotFoundError saying which stage to run if it has none."""
  if latest_step(workdir, stage) is None:
    raise FileNotFoundError(f"stage '{needed_by}' needs the '{stage}' stage: no checkpoint "
                            f"under {checkpoints(workdir, stage)}; run it first (config.stages)")
  return checkpoints(workdir, stage)


def load(workdir: str, stage: str, keys=("params", "batch_stats")) -> dict | None:
  """Host numpy ``{key: tree}`` of the stage's latest checkpoint, None if it has none."""
  if latest_step(workdir, stage) is None:
    return None
  return checkpointing.load_variables(checkpoints(workdir, stage), keys)


def backbone_variables(workdir: str, stage: str) -> dict | None:
  """Inference variables (``params``, ``batch_stats``) of a recognition stage's network."""
  v = load(workdir, stage)
  return None if v is None else checkpointing.backbone_of(v)


def config_file(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def save_config(workdir: str, text: str) -> str:
  """Writes ``config.json``; a different earlier one is kept as ``config_history/<n>.json``
  (each stage's ``provenance.json`` holds the fields its outputs were made with)."""
  path = config_file(workdir)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      old = f.read()
    if old.strip() != text.strip():
      hist = os.path.join(workdir, "config_history")
      os.makedirs(hist, exist_ok=True)
      n = len([f for f in os.listdir(hist) if f.endswith(".json")])
      files.atomic_write(os.path.join(hist, f"{n:04d}.json"), old)
  return files.atomic_write(path, text)


def read_summary(workdir: str, stage: str) -> dict:
  """The stage's ``summary.json``, {} if it has none."""
  path = stage_file(workdir, stage, "summary.json")
  if not os.path.isfile(path):
    return {}
  return files.read_json(path, f"the '{stage}' stage's summary", "rerun the stage to rewrite it")


def write_summary(workdir: str, stage: str, summary: dict) -> str:
  path = stage_file(workdir, stage, "summary.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return files.write_json(path, summary)


class WorkdirInUse(RuntimeError):
  pass


def locked(workdir: str, process_index: int = 0):
  """Holds ``<workdir>/.lock.<process_index>`` (flock) for the run; a second run on the same
  workdir fails at once naming the pid that holds it. The lock dies with its process, so a
  killed run never leaves the workdir locked."""
  return files.locked(workdir, "workdir", f".lock.{process_index}", "another --workdir",
                      WorkdirInUse)
