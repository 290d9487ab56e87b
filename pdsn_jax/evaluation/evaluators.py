"""Evaluators built from the config, as big_vision's ``config.evals``: which models are compared
(``eval.models``) and which protocols each one runs (``eval.protocols``).

A model is ``"Name=stage"`` (the stage's network, plain embeddings F(U)) or
``"Name=stage+fdm"`` (the same under the probe's FDM from the stage II dictionary,
F(M * U)). A protocol is a function ``(ctx, model) -> results`` registered in
``PROTOCOLS``; adding one is a function and a line there.
"""

import dataclasses
from typing import Any, Callable

import numpy as np

from pdsn_jax.evaluation import masked, protocols, search, verification


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str  # the row's name in the tables
  stage: str  # the workdir stage whose network embeds
  fdm: bool  # embed under the dictionary's FDMs


def parse_models(specs) -> list[ModelSpec]:
  """``("Trunk=trunk", "PDSN=trunk+fdm", ...)`` -> ModelSpecs, naming a malformed entry."""
  out = []
  for spec in specs:
    name, sep, target = str(spec).partition("=")
    stage, plus, masks = target.strip().partition("+")
    if not sep or not name.strip() or not stage or (plus and masks != "fdm"):
      raise ValueError(f"config.eval.models entry {spec!r}: expected 'Name=stage' or "
                       "'Name=stage+fdm' (e.g. 'PDSN + fine-tune=finetune+fdm')")
    out.append(ModelSpec(name.strip(), stage.strip(), bool(plus)))
  names = [m.name for m in out]
  if len(set(names)) != len(names):
    raise ValueError(f"config.eval.models has repeated names: {names}")
  return out


@dataclasses.dataclass
class Context:
  """What every protocol reads: the images, their U, the block flags, the embedding engine."""

  embedder: masked.Embedder
  sets: protocols.EvalSets
  feats: dict  # U per image group (see evaluate's ``_features``)
  flags: dict  # block flags per occluded group ("second", "probes")
  searcher: search.Searcher | None = None  # streaming top-k over a gallery store
  distractors: Any = None  # the distractors' gallery store (``evaluation.store.Store``)


@dataclasses.dataclass
class Model:
  """One row: replicated network variables, the mask table (ones: no masks), and the network
  for rows with no occluded block (``finetune.trunk_head_when_clean``), or None."""

  variables: Any
  table: Any
  clean_variables: Any = None

  def embed(self, ctx: Context, u: np.ndarray, flags: np.ndarray) -> np.ndarray:
    return ctx.embedder.embed(self.variables, self.table, u, flags, self.clean_variables)

  def top1(self, ctx: Context, gallery, probe_u: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Best gallery index per probe under the probe's FDM (the streaming search)."""
    _, idx = search.identify(ctx.searcher, self.variables, self.table,
                             self.embed(ctx, probe_u, flags), flags, gallery,
                             self.clean_variables)
    return idx[:, 0]


def _verification(scores, issame, hits: dict, key: str) -> dict:
  r = verification.ten_fold_accuracy(scores, issame)
  hits[key] = r["correct"]
  return {"accuracy": r["accuracy"], "std": r["std"],
          "tar_at_far_1e-3": verification.tar_at_far(scores, issame, 1e-3),
          "negatives": int(np.sum(~np.asarray(issame, bool))),
          # taken out into evaluate/thresholds.json (the commands' decision thresholds)
          THRESHOLDS: float(np.mean(r["thresholds"]))}


def pair_verification(ctx: Context, model: Model) -> dict:
  """10-fold verification of the pairs clean, and with the second image occluded per
  condition; both faces under the FDM of the blocks occluded in either (the first is clean)."""
  sets, u = ctx.sets, ctx.feats["pair_faces"]
  pa, pb = sets.pairs[:, 0], sets.pairs[:, 1]
  none = np.zeros((len(pa), ctx.flags["blocks"]), bool)
  ea, eb = model.embed(ctx, u[pa], none), model.embed(ctx, u[pb], none)
  hits: dict = {}
  out = {"clean": _verification(np.sum(ea * eb, 1), sets.issame, hits, "verification/clean"),
         "occluded": {}, HITS: hits}
  for cond, fl in ctx.flags["second"].items():
    ea, eb = model.embed(ctx, u[pa], fl), model.embed(ctx, ctx.feats["second"][cond], fl)
    out["occluded"][cond] = _verification(np.sum(ea * eb, 1), sets.issame, hits,
                                          f"verification/{cond}")
  return out


def _ar(gallery_name: str) -> Callable[[Context, Model], dict]:
  def ar(ctx: Context, model: Model) -> dict:
    """AR-style (pasted) rank-1: probes with pasted occluders against a clean gallery, per
    condition."""
    sets = ctx.sets
    gallery = getattr(sets, gallery_name)
    probe_labels = sets.labels[sets.probes]
    res, hits = {}, {}
    name = gallery_name.replace("gallery_", "ar_")
    faces = search.ArrayGallery(ctx.feats["faces"][gallery], sets.labels[gallery])
    for cond, fl in ctx.flags["probes"].items():
      arg = model.top1(ctx, faces, ctx.feats["probes"][cond], fl)
      hits[f"{name}/{cond}"] = sets.labels[gallery][arg] == probe_labels
      res[cond] = float(np.mean(hits[f"{name}/{cond}"]))
    return {name: res, HITS: hits}
  return ar


def distractor_identification(ctx: Context, model: Model) -> dict:
  """MegaFace-style rank-1: protocol 2's gallery plus the distractors, streamed from their
  gallery store; clean and occluded probes."""
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
  return {"distractors": res, HITS: hits}


# the real AR protocol (the paper's Table 6): galleries from session 1, probes of both sessions
AR_REAL_CLEAN = ("neutral", "expression", "light")
HITS = "_hits"  # per pair / probe right or wrong, taken out by evaluate for paired statistics


def ar_real_sets(ar) -> tuple[dict, dict]:
  """(galleries, probes) of the real AR protocol as index arrays: protocol 1's gallery is every
  clean session-1 photo (neutral, expressions, lighting: 7 per subject), protocol 2's the
  session-1 neutral one; probes are the 6 sunglasses and the 6 scarf photos of each subject and
  the 7 clean session-2 ones."""
  galleries = {"p1": ar.select(1, AR_REAL_CLEAN), "p2": ar.select(1, ("neutral",), first=True)}
  probes = {"sunglasses": ar.select(None, ("sunglasses",)), "scarf": ar.select(None, ("scarf",)),
            "clean": ar.select(2, AR_REAL_CLEAN)}
  return galleries, probes


def real_ar(ctx: Context, model: Model) -> dict:
  """Rank-1 on AR's photos of real sunglasses and scarves, per way of locating the occlusion
  (``protocols.AR_REAL_LOCATIONS``) and gallery protocol; the gallery is embedded under each
  probe's FDM. Also the clean probes of the centre-cropped photos (alignment check)."""
  ar = ctx.sets.ar_real
  if ar is None or "ar_real" not in ctx.flags:  # e.g. the "(detector)" rows: located inside
    return {}
  u = ctx.feats["ar_real"]
  galleries, probes = ar_real_sets(ar)
  res, hits = {}, {}
  for loc, fl in ctx.flags["ar_real"].items():
    for p, g in galleries.items():
      gallery = search.ArrayGallery(u[g], ar.subjects[g])
      for cond, idx in probes.items():
        h = ar.subjects[g][model.top1(ctx, gallery, u[idx], fl[idx])] == ar.subjects[idx]
        res.setdefault(loc, {}).setdefault(p, {})[cond] = float(np.mean(h))
        hits[f"ar_real/{loc}/{p}/{cond}"] = h
  if "ar_real_centre" in ctx.feats:
    uc, none = ctx.feats["ar_real_centre"], np.zeros((len(ar.kinds), ctx.flags["blocks"]), bool)
    idx = probes["clean"]
    for p, g in galleries.items():
      top = model.top1(ctx, search.ArrayGallery(uc[g], ar.subjects[g]), uc[idx], none[idx])
      res.setdefault("centre_crop", {})[p] = {"clean": float(np.mean(
          ar.subjects[g][top] == ar.subjects[idx]))}
  return {"ar_real": res, HITS: hits}


THRESHOLDS = "mean_fold_threshold"


def pop_thresholds(models: dict) -> dict:
  """Removes every verification entry's mean fold threshold from ``models`` (results.json
  keeps its columns) and returns them: model -> {"clean": t, "occluded": t (mean over the
  conditions), "conditions": {condition: t}}."""
  out = {}
  for name, r in models.items():
    if "clean" not in r:
      continue
    # pop(..., None): an ablation row may be the same dict as another's
    conds = {c: v.pop(THRESHOLDS, None) for c, v in r["occluded"].items()}
    out[name] = {"clean": r["clean"].pop(THRESHOLDS, None),
                 "occluded": (float(np.mean([t for t in conds.values() if t is not None]))
                              if any(t is not None for t in conds.values()) else None),
                 "conditions": conds}
  return out


PROTOCOLS = {"verification": pair_verification, "ar_p1": _ar("gallery_p1"),
             "ar_p2": _ar("gallery_p2"), "distractors": distractor_identification,
             "ar_real": real_ar}


def run_protocols(ctx: Context, model: Model, names) -> dict:
  """Every protocol of ``names`` (``eval.protocols``) for one model, merged into one dict;
  their per-item hits (``HITS``, "protocol/column" -> bool per pair or probe) merged too."""
  res: dict = {HITS: {}}
  for name in names:
    out = PROTOCOLS[name](ctx, model)
    res[HITS].update(out.pop(HITS, {}))
    res.update(out)
  return res
