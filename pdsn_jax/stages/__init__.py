"""The method's stages, run in order by ``pdsn_jax.main``; each resumes from its own checkpoints.

Each module declares its ``Stage`` (``pdsn_jax/run/stage.py``); the registry line below is the one
place a stage is added. The order is the order ``config.stages`` lists them in the docs, and a
stage's upstream comes before it.
"""

import ml_collections

from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.stages import bank, detector, dictionary, evaluate, face_finder, finetune, pdsn, trunk


def run_lambda0(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Table 3's ablation: generators without differential input (so lambda = 0) and their
  dictionary, in ``<workdir>/lambda0_pdsn`` and ``<workdir>/lambda0_dictionary``."""
  c = ml_collections.ConfigDict(config.to_dict())
  overrides = {"pdsn.differential": False}
  c.pdsn.differential = False
  return {"pdsn": pdsn.run(c, workdir, name=workdir_lib.LAMBDA0_PDSN, overrides=overrides),
          "dictionary": dictionary.run(c, workdir, name=workdir_lib.LAMBDA0_DICTIONARY,
                                       generators=workdir_lib.LAMBDA0_PDSN, overrides=overrides)}


# its folders hold a pdsn and a dictionary stage's outputs (those kinds' records)
LAMBDA0 = stage_lib.Stage(
    name=workdir_lib.LAMBDA0, run=run_lambda0, depends_on=(), upstream=(workdir_lib.TRUNK,),
    folders=(workdir_lib.LAMBDA0_PDSN, workdir_lib.LAMBDA0_DICTIONARY))

stage_lib.register(
    trunk.STAGE, bank.STAGE, pdsn.STAGE, dictionary.STAGE, finetune.BASELINE, finetune.FINETUNE, LAMBDA0,
    detector.STAGE, face_finder.STAGE, evaluate.STAGE)


def parse_stages(spec: str) -> list[str]:
  """'trunk,pdsn' -> ['trunk', 'pdsn'], rejecting unknown names (and none) with the allowed
  ones."""
  names = stage_lib.parse(spec)
  if not names:
    raise ValueError(f"config.stages={spec!r}: name at least one of "
                     f"{list(stage_lib.registered())}")
  return names
