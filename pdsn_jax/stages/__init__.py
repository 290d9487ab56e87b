"""The method's stages, run in order by ``pdsn_jax.main``; each resumes from its own checkpoints."""

import ml_collections

from pdsn_jax.stages import detector, dictionary, evaluate, finetune, pdsn, trunk


def run_lambda0(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Table 3's ablation: generators without differential input (so lambda = 0) and their
  dictionary, in ``<workdir>/lambda0_pdsn`` and ``<workdir>/lambda0_dictionary``."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.pdsn.differential = False
  gens = f"{evaluate.LAMBDA0}_{pdsn.STAGE}"
  return {"pdsn": pdsn.run(c, workdir, name=gens),
          "dictionary": dictionary.run(c, workdir, name=f"{evaluate.LAMBDA0}_{dictionary.STAGE}",
                                       generators=gens)}


STAGES = {"trunk": trunk.run, "pdsn": pdsn.run, "dictionary": dictionary.run,
          "baseline": finetune.run_baseline, "finetune": finetune.run_finetune,
          evaluate.LAMBDA0: run_lambda0, "detector": detector.run, "evaluate": evaluate.run}


def parse_stages(spec: str) -> list[str]:
  """'trunk,pdsn' -> ['trunk', 'pdsn'], rejecting unknown names with the allowed ones."""
  names = [s.strip() for s in spec.split(",") if s.strip()]
  bad = [s for s in names if s not in STAGES]
  if bad or not names:
    raise ValueError(f"config.stages={spec!r}: unknown stage(s) {bad}; allowed: {list(STAGES)}")
  return names
