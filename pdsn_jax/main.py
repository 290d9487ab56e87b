"""Entry point: ``python -m pdsn_jax.main --config=configs/pdsn.py [--workdir=DIR]``.

Runs the stages listed in ``config.stages`` in order; each resumes from its own
checkpoints under the workdir and is skipped quickly when already complete. ``run(config,
workdir)`` does the same from Python (importing this module defines no flag).
"""

import json
import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

_FLAGS = {}  # defined by ``cli`` only


def _define_flags() -> None:
  _FLAGS.update(
      config=config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                             lock_config=True),
      workdir=flags.DEFINE_string("workdir", None,
                                  "Output folder (default: ./runs/<config file name>)."),
      coordinator_address=flags.DEFINE_string("coordinator_address", "",
                                              "host:port of process 0 (multi-process)."),
      num_processes=flags.DEFINE_integer("num_processes", 0,
                                         "Number of processes (multi-process)."),
      process_id=flags.DEFINE_integer("process_id", -1, "This process's index (multi-process)."))
  flags.mark_flags_as_required(["config"])


def config_root(argv) -> str | None:
  """The folder above the ``--config`` file's folder: config files import their siblings as
  ``configs.X`` (``from configs import common``), and ``configs`` is not an installed package,
  so the loader finds it beside the file wherever the command starts. None without --config."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    else:
      continue
    return os.path.dirname(os.path.dirname(os.path.abspath(path.split(":")[0])))
  return None


def find_configs(argv) -> None:
  """Puts ``config_root(argv)`` on the import path (after everything else on it)."""
  root = config_root(argv)
  if root is not None and root not in sys.path:
    sys.path.append(root)


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
  return os.path.join("runs", name)


def run(config, workdir: str) -> dict:
  """Runs the stages of ``config.stages`` in order into ``workdir``; returns their summaries.
  Raises ``provenance.StaleStage`` when a stage's outputs were made under another config."""
  import jax  # pylint: disable=g-import-not-at-top
  from pdsn_jax import packages, stages  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders  # pylint: disable=g-import-not-at-top
  from pdsn_jax.run import stage as stage_lib  # pylint: disable=g-import-not-at-top
  from pdsn_jax.run import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from pdsn_jax.config_validation import validate  # pylint: disable=g-import-not-at-top

  validate(config)
  packages.check(config)  # before an hour of training, not when a stage reaches the import
  os.makedirs(workdir, exist_ok=True)
  summaries = {}
  with workdir_lib.locked(workdir, jax.process_index()):
    # config.json describes the workdir's outputs: written now on a first run, else only once
    # every stage has passed (a refused rerun leaves it as it was; earlier ones are kept)
    first = not os.path.isfile(workdir_lib.config_file(workdir))
    if first and jax.process_index() == 0:
      workdir_lib.save_config(workdir, config.to_json_best_effort(indent=2))
    logging.info("workdir %s; devices: %s", os.path.abspath(workdir), jax.devices())
    for split, names in builders.occluder_splits(config).items():
      logging.info("occluder files, %s split (%d): %s", split, len(names), ", ".join(names))
    for name in stages.parse_stages(config.stages):
      summaries[name] = stage_lib.get(name).run(config, workdir)
    if not first and jax.process_index() == 0:
      workdir_lib.save_config(workdir, config.to_json_best_effort(indent=2))
  return summaries


def main(argv):
  del argv
  # Imported here so --help is fast and jax starts after flags (device count flags, etc.).
  import jax  # pylint: disable=g-import-not-at-top
  from pdsn_jax.run import files, provenance  # pylint: disable=g-import-not-at-top
  from pdsn_jax.train import distributed  # pylint: disable=g-import-not-at-top

  # orbax and grain log every save at INFO through absl; keep the console to our progress lines.
  logging.getLogger("absl").setLevel(logging.WARNING)
  f = {k: v.value for k, v in _FLAGS.items()}
  config = f["config"]
  distributed.maybe_initialize(f["coordinator_address"], f["num_processes"], f["process_id"])
  workdir = f["workdir"] or default_workdir(flags.FLAGS["config"].config_filename)
  try:
    summaries = run(config, workdir)
  except provenance.StaleStage as e:  # the fields and the ways out, without a traceback
    logging.error("%s", e)
    raise SystemExit(1) from None
  except Exception as e:  # noqa: BLE001  (a full disk, from any writer, in one line)
    line = files.disk_full(e)
    if line is None:
      raise
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # orbax's thread noise
    logging.error("%s", line)
    raise SystemExit(1) from None
  if jax.process_index() == 0:
    print(json.dumps(summaries, indent=2))


def cli():
  """``pdsn-train``: the console script of ``pip install -e .``."""
  from pdsn_jax.cli import runner as cli_lib  # pylint: disable=g-import-not-at-top
  find_configs(sys.argv)
  _define_flags()
  cli_lib.run(main, sys.modules[__name__])


if __name__ == "__main__":
  cli()
