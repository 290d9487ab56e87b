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
CosFace on a small set would damage). ``finetune.trainable``: "all", "top" (the trunk's
layers at U's resolution and F; the layers below run once, without a backward pass) or
"head" (only F). ``finetune.clean_fdm_prob``: clean faces flagged with a random occlusion's
blocks (the image stays clean), as a gallery face under a probe's FDM; the Baseline sees
the same faces and ignores the flags.
"""

import ml_collections

from pdsn_jax.method import builders, fdm, recognition
from pdsn_jax.train import loop
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.data import placement


def occlusion_transform(config: ml_collections.ConfigDict) -> placement.RandomOcclusion:
  o = config.occlusion
  return placement.RandomOcclusion(builders.training_occluders(config),
                                   config.finetune.clean_prob, tuple(config.finetune.conditions),
                                   o.min_overlap, o.overlap,
                                   keep_clean=config.finetune.loss == "distill",
                                   clean_fdm_prob=config.finetune.clean_fdm_prob)


def _run(config, workdir: str, stage: stage_lib.Stage, dictionary=None) -> dict:
  start = workdir_lib.require(workdir, workdir_lib.TRUNK, needed_by=stage.name)
  return loop.run_stage(config, workdir, stage, lambda ctx: recognition.plan(
      ctx, transforms=(occlusion_transform(config),), dictionary=dictionary, init_from=start))


def run_finetune(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage III: fine-tunes the trunk on (face, FDM) pairs."""
  path = workdir_lib.dictionary_file(workdir)
  try:
    fdms = fdm.load(path)[0]
  except FileNotFoundError:
    raise FileNotFoundError(f"stage 'finetune' needs the FDM dictionary: {path} does not "
                            "exist; run the 'dictionary' stage first (config.stages)") from None
  return _run(config, workdir, FINETUNE, fdms)


def run_baseline(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The paper's Baseline: the trunk fine-tuned on occluded faces without masks."""
  return _run(config, workdir, BASELINE)


# the same code, section and stream (so the same faces in the same order); only the masks differ
_SHARED = dict(section="finetune", stream=recognition.STREAM, network=True,
               depends_on=stage_lib.BASE + ("model", "cosface", "finetune") + stage_lib.OCCLUDERS)
BASELINE = stage_lib.Stage(name=workdir_lib.BASELINE, run=run_baseline,
                           upstream=(workdir_lib.TRUNK,), **_SHARED)
FINETUNE = stage_lib.Stage(name=workdir_lib.FINETUNE, run=run_finetune,
                           upstream=(workdir_lib.TRUNK, workdir_lib.DICTIONARY), **_SHARED)
