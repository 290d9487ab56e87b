"""The method's stages, run in order by ``pdsn_jax.main``; each resumes from its own checkpoints."""

import ml_collections

from pdsn_jax import workdir as workdir_lib
from pdsn_jax.stages import detector, dictionary, evaluate, face_finder, finetune, pdsn, trunk


def run_lambda0(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Table 3's ablation: generators without differential input (so lambda = 0) and their
  dictionary, in ``<workdir>/lambda0_pdsn`` and ``<workdir>/lambda0_dictionary``."""
  c = ml_collections.ConfigDict(config.to_dict())
  overrides = {"pdsn.differential": False}
  c.pdsn.differential = False
  gens = f"{workdir_lib.LAMBDA0}_{workdir_lib.PDSN}"
  return {"pdsn": pdsn.run(c, workdir, name=gens, overrides=overrides),
          "dictionary": dictionary.run(c, workdir,
                                       name=f"{workdir_lib.LAMBDA0}_{workdir_lib.DICTIONARY}",
                                       generators=gens, overrides=overrides)}


STAGES = {workdir_lib.TRUNK: trunk.run, workdir_lib.PDSN: pdsn.run,
          workdir_lib.DICTIONARY: dictionary.run, workdir_lib.BASELINE: finetune.run_baseline,
          workdir_lib.FINETUNE: finetune.run_finetune, workdir_lib.LAMBDA0: run_lambda0,
          workdir_lib.DETECTOR: detector.run, workdir_lib.FACE_FINDER: face_finder.run,
          workdir_lib.EVALUATE: evaluate.run}


def parse_stages(spec: str) -> list[str]:
  """'trunk,pdsn' -> ['trunk', 'pdsn'], rejecting unknown names with the allowed ones."""
  names = [s.strip() for s in spec.split(",") if s.strip()]
  bad = [s for s in names if s not in STAGES]
  if bad or not names:
    raise ValueError(f"config.stages={spec!r}: unknown stage(s) {bad}; allowed: {list(STAGES)}")
  return names
