"""A finished run's config (``<workdir>/config.json``) read back and checked by the validator
``main`` uses: the commands' way in. It sits above the stages (the validator knows every stage's
fields), so ``workdir.py`` stays a leaf that stages can import."""

import os

import ml_collections

from pdsn_jax import config_validation, files
from pdsn_jax import workdir as workdir_lib


def load_config(workdir: str):
  """The config a run was made with (``config.json``), as a ConfigDict, checked by the same
  validator as ``main`` (an error names the file and the key)."""
  path = workdir_lib.config_file(workdir)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: --workdir must be a run folder of "
                            "python -m pdsn_jax.main")
  config = ml_collections.ConfigDict(files.read_json(path, "the run's config"))
  try:
    config_validation.validate(config)
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: {e}") from None
  return config
