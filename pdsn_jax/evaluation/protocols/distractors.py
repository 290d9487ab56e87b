"""MegaFace-style identification: protocol 2's gallery (``ar_pasted``) plus the distractor pool
(``eval.num_distractors`` faces of identities no probe has), streamed from the evaluation's
gallery store; probes clean, with sunglasses and with masks."""

import numpy as np

from pdsn_jax.evaluation import evaluators
from pdsn_jax.gallery import search


def _run(ctx: evaluators.Context, model: evaluators.Model) -> dict:
  sets, feats = ctx.sets, ctx.feats
  if ctx.distractors is None:
    return {}
  g = sets.gallery_p2
  gallery = search.ConcatGallery([search.ArrayGallery(feats["faces"][g], sets.labels[g]),
                                  ctx.distractors])
  gallery_labels = np.concatenate([sets.labels[g], np.full(ctx.distractors.num_faces, -1)])
  probe_labels = sets.labels[sets.probes]
  res = {"num_distractors": int(ctx.distractors.num_faces)}
  probe_sets = {"clean": (feats["faces"][sets.probes],
                          np.zeros((len(sets.probes), ctx.flags["blocks"]), bool))}
  probe_sets.update({c: (feats["probes"][c], fl) for c, fl in ctx.flags["probes"].items()})
  hits = {}
  for cond, (pu, fl) in probe_sets.items():
    hits[f"distractors/{cond}"] = gallery_labels[model.top1(ctx, gallery, pu, fl)] == probe_labels
    res[cond] = float(np.mean(hits[f"distractors/{cond}"]))
  return {"distractors": res, evaluators.HITS: hits}


PROTOCOL = evaluators.rank1_protocol("distractors", "distractors", _run, ablations=False,
                                     distractor_store=True)
