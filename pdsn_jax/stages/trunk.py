"""Stage 0: the trunk CNN trained with the large-margin cosine loss (CosFace), or a pretrained
trunk (``trunk.init_from``) whose CosFace classifier alone is fitted (``freeze_backbone``)."""

import ml_collections

from pdsn_jax import loop, recognition
from pdsn_jax import workdir as workdir_lib

STAGE = workdir_lib.TRUNK


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the trunk; returns and writes ``<workdir>/trunk/summary.json``."""
  return loop.run_stage(config, workdir, STAGE, config.trunk, lambda ctx: recognition.plan(
      ctx, init_from=config.trunk.init_from))
