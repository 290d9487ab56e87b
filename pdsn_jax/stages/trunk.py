"""Stage 0: the trunk CNN trained with the large-margin cosine loss (CosFace), or a pretrained
trunk (``trunk.init_from``) whose CosFace classifier alone is fitted (``freeze_backbone``)."""

import ml_collections

from pdsn_jax.train import loop
from pdsn_jax.method import recognition
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the trunk; returns and writes ``<workdir>/trunk/summary.json``."""
  return loop.run_stage(config, workdir, STAGE, lambda ctx: recognition.plan(
      ctx, init_from=config.trunk.init_from))


STAGE = stage_lib.Stage(
    name=workdir_lib.TRUNK, run=run, section="trunk", stream=recognition.STREAM, network=True,
    depends_on=stage_lib.BASE + ("model", "cosface", "trunk"))
