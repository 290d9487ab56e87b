"""Stage III fine-tuning and the paper's "Baseline": the trunk trained further on occluded faces.

Both start from the trunk stage's checkpoint and see the same stream of faces:
with probability ``finetune.clean_prob`` a clean face, otherwise one occluded
by a random condition of ``pdsn_jax.data.placement`` (sunglasses, mask, hand,
object, blocks; about a quarter of the face covered on average). They differ
only in the masks:

* ``finetune`` (paper, training stage 3): the loss on F(M * U(x)), M the FDM of
  the face's occluded blocks from the stage II dictionary (all ones when clean);
* ``baseline``: the loss on F(U(x)), no masks - the occlusion-augmented trunk
  the paper compares against, with the same budget, loss and trainable set.

``finetune.loss``: "cosface" (the paper's, on identity labels) or "distill" (label-free:
the embedding of the occluded face is pulled, by cosine, toward the frozen starting
network's embedding of the same face clean - for a pretrained trunk whose metric
CosFace on a small set would damage). ``finetune.trainable``: "all" or "head" (only F).
"""

import os

import ml_collections

from pdsn_jax.data import placement
from pdsn_jax.stages import dictionary as dictionary_stage
from pdsn_jax.stages import pdsn as pdsn_stage
from pdsn_jax.stages import trunk as trunk_stage


def _trunk_checkpoints(workdir: str, stage: str) -> str:
  path = os.path.join(workdir, trunk_stage.STAGE, "checkpoints")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"stage '{stage}' starts from the trunk: {path} does not exist; "
                            "run the 'trunk' stage first (config.stages)")
  return path


def occlusion_transform(config: ml_collections.ConfigDict) -> placement.RandomOcclusion:
  o = config.occlusion
  return placement.RandomOcclusion(pdsn_stage.occluder_library(config),
                                   config.finetune.clean_prob, tuple(config.finetune.conditions),
                                   o.min_overlap, o.overlap,
                                   keep_clean=config.finetune.loss == "distill")


def run_finetune(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage III: fine-tunes the trunk on (face, FDM) pairs."""
  path = os.path.join(workdir, dictionary_stage.STAGE, dictionary_stage.EXPORT)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"stage 'finetune' needs the FDM dictionary: {path} does not exist; "
                            "run the 'dictionary' stage first (config.stages)")
  fdms, _, _ = dictionary_stage.load_dictionary(path)
  return trunk_stage.train(config, workdir, stage="finetune", cfg=config.finetune,
                           transforms=(occlusion_transform(config),), dictionary=fdms,
                           init_from=_trunk_checkpoints(workdir, "finetune"))


def run_baseline(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The paper's Baseline: the trunk fine-tuned on occluded faces without masks."""
  return trunk_stage.train(config, workdir, stage="baseline", cfg=config.finetune,
                           transforms=(occlusion_transform(config),),
                           init_from=_trunk_checkpoints(workdir, "baseline"))
