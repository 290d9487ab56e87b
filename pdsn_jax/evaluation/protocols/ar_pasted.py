"""AR-style identification with pasted occluders (the paper's AR protocols on any held-out
identities): per subject the first ``eval.ar_gallery_images`` faces are protocol 1's clean
gallery and the first one protocol 2's; the rest are probes, occluded with sunglasses and,
separately, a mask (``evaluation/sets.py``). Rank-1 per condition, the gallery embedded under
each probe's FDM."""

from typing import Callable

import numpy as np

from pdsn_jax.evaluation import evaluators
from pdsn_jax.gallery import search


def _ar(gallery_name: str) -> Callable[[evaluators.Context, evaluators.Model], dict]:
  key = gallery_name.replace("gallery_", "ar_")

  def ar(ctx: evaluators.Context, model: evaluators.Model) -> dict:
    sets = ctx.sets
    gallery = getattr(sets, gallery_name)
    probe_labels = sets.labels[sets.probes]
    res, hits = {}, {}
    faces = search.ArrayGallery(ctx.feats["faces"][gallery], sets.labels[gallery])
    for cond, fl in ctx.flags["probes"].items():
      arg = model.top1(ctx, faces, ctx.feats["probes"][cond], fl)
      hits[f"{key}/{cond}"] = sets.labels[gallery][arg] == probe_labels
      res[cond] = float(np.mean(hits[f"{key}/{cond}"]))
    return {key: res, evaluators.HITS: hits}
  return ar


P1 = evaluators.rank1_protocol("ar_p1", "AR-style (pasted) P1", _ar("gallery_p1"))
P2 = evaluators.rank1_protocol("ar_p2", "AR-style (pasted) P2", _ar("gallery_p2"))
