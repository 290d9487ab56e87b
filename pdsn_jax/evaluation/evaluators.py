"""Evaluators built from the config, as big_vision's ``config.evals``: which models are compared
(``eval.models``) and which protocols each one runs (``eval.protocols``).

A model is ``"Name=stage"`` (the stage's network, plain embeddings F(U)) or
``"Name=stage+fdm"`` (the same under the probe's FDM from the stage II dictionary,
F(M * U)). A protocol is a ``Protocol``: it runs per model, may bring its own inputs, their U
and their block flags, and writes its own section of results.md. Adding one is a module with a
``PROTOCOL`` and its line in ``PROTOCOLS`` (e.g. ``evaluation/real_ar.py``); nothing in the
evaluate stage, the report or the config validation names a protocol.
"""

import dataclasses
import importlib
from typing import Any, Callable

import numpy as np

from pdsn_jax import workdir as workdir_lib
from pdsn_jax.data import occlusion
from pdsn_jax.evaluation import masked, protocols, search, tables, verification

HITS = "_hits"  # per pair / probe right or wrong, taken out by evaluate for paired statistics
THRESHOLDS = "mean_fold_threshold"  # taken out into evaluate/thresholds.json


MODIFIERS = ("fdm", "trunk_when_clean")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str  # the row's name in the tables
  stage: str  # the workdir stage whose network embeds
  fdm: bool  # embed under the dictionary's FDMs
  # faces with no occluded block use the trunk's F on this row's U (a two-head variant; the
  # paper's Baseline and PDSN are one network for every face)
  trunk_when_clean: bool = False


def parse_models(specs) -> list[ModelSpec]:
  """``("Trunk=trunk", "PDSN=trunk+fdm", ...)`` -> ModelSpecs, naming a malformed entry.
  After the stage, ``+fdm`` and ``+trunk_when_clean`` (``MODIFIERS``) in any order."""
  out = []
  for spec in specs:
    name, sep, target = str(spec).partition("=")
    stage, *mods = [p.strip() for p in target.split("+")]
    bad = [m for m in mods if m not in MODIFIERS] + [m for m in set(mods) if mods.count(m) > 1]
    if not sep or not name.strip() or not stage or bad:
      raise ValueError(f"config.eval.models entry {spec!r}: expected 'Name=stage' with optional "
                       f"'+modifier's from {MODIFIERS} (e.g. 'PDSN + fine-tune=finetune+fdm')")
    if "trunk_when_clean" in mods and stage == workdir_lib.TRUNK:
      raise ValueError(f"config.eval.models entry {spec!r}: '+trunk_when_clean' switches "
                       "another stage's F to the trunk's; the trunk is the trunk already")
    out.append(ModelSpec(name.strip(), stage, "fdm" in mods, "trunk_when_clean" in mods))
  names = [m.name for m in out]
  if len(set(names)) != len(names):
    raise ValueError(f"config.eval.models has repeated names: {names}")
  return out


def mask_table(spec: ModelSpec, items, u_shape) -> np.ndarray:
  """The model's (9, *U) mask table: the dictionary's FDM items, or all ones (no masks)."""
  if spec.fdm:
    return np.asarray(items, np.float32)
  return np.ones((occlusion.NUM_GENERATORS, *u_shape), np.float32)


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
  for rows with no occluded block (``ModelSpec.trunk_when_clean``), or None."""

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


def _no_columns(row: dict) -> dict:
  del row
  return {}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One evaluation protocol. Each hook is optional but ``run`` and ``section``.

  run(ctx, model) -> {key: results, HITS: {"key/column": bool per pair or probe}}: one row.
  section(results) -> results.md lines of its own section (rows: ``results["models"]``).
  columns(row) -> {header: fraction}: the row's headline numbers (the console line and the
    ablation tables).
  title: names its columns in the paired-difference tables ("<key>/..." hits).
  config_keys: ``eval.*`` fields it needs set (the config validation says which is empty).
  inputs(config, sets) -> sets: its own images, added to ``sets.extra``.
  features(embed, sets) -> {name: U}: U of those images, into ``ctx.feats`` (per checkpoint).
  locate(config, sets, flags, predict, workdir) -> dict: adds its block flags to ``flags``
    (``predict``: the occlusion detector or None); what it returns goes into results.json.
  figures(results, workdir) -> paths: its figures, written with results.md.
  ablations: it also scores Tables 1-3; distractor_store: it searches the distractors' store
  (``ctx.distractors``, built from ``sets.distractors``, which ``inputs`` may extend: every
  such protocol searches the same store); paired_in_section: its section prints its paired
  differences itself.
  """

  run: Callable[[Context, Model], dict]
  section: Callable[[dict], list[str]]
  columns: Callable[[dict], dict] = _no_columns
  title: str = ""
  config_keys: tuple[str, ...] = ()
  inputs: Callable | None = None
  features: Callable | None = None
  locate: Callable | None = None
  figures: Callable | None = None
  ablations: bool = True
  distractor_store: bool = False
  paired_in_section: bool = False


def _verification(scores, issame, hits: dict, key: str) -> dict:
  r = verification.report(scores, issame)
  hits[key] = r["correct"]
  return {"accuracy": r["accuracy"], "std": r["std"], "tar_at_far_1e-3": r["tar_at_far_1e-3"],
          "negatives": r["negatives"],
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


def _occluded_mean(r: dict) -> float:
  return float(np.mean([v["accuracy"] for v in r["occluded"].values()]))


def _verification_section(results: dict) -> list[str]:
  rows = {n: r for n, r in results["models"].items() if "clean" in r}
  if not rows:
    return []
  pct, conds = tables.pct, list(next(iter(rows.values()))["occluded"])
  body = []
  for name, r in rows.items():
    body.append([name, f"{pct(r['clean']['accuracy'])} ± {pct(r['clean']['std'])}",
                 verification.format_tar(r["clean"]["tar_at_far_1e-3"], r["clean"]["negatives"])]
                + [f"{pct(r['occluded'][c]['accuracy'])} ± {pct(r['occluded'][c]['std'])}"
                   for c in conds] + [pct(_occluded_mean(r))])
  return (["## Verification", ""] + tables.table(
      ["Model", "clean", "clean TAR@FAR=1e-3"] + conds + ["occluded mean"], body) + [""])


def _verification_columns(r: dict) -> dict:
  if "clean" not in r:
    return {}
  return {"clean": r["clean"]["accuracy"], "occluded mean": _occluded_mean(r),
          **{c: v["accuracy"] for c, v in r["occluded"].items()}}


def _rank1_protocol(key: str, title: str, run, **kw) -> Protocol:
  """A protocol whose row is ``{key: {column: rank-1}}``, in a table of its own."""
  def columns(r: dict) -> dict:
    return {f"{title} {c}": v for c, v in r.get(key, {}).items() if c != "num_distractors"}

  def section(results: dict) -> list[str]:
    rows = {n: columns(r) for n, r in results["models"].items() if key in r}
    if not rows:
      return []
    first = next(r[key] for r in results["models"].values() if key in r)
    n = first.get("num_distractors")
    head = list(next(iter(rows.values())))
    return ([f"## {title[0].upper()}{title[1:]} rank-1"
             + (f" (+{n} distractors)" if n is not None else ""), ""]
            + tables.table(["Model"] + head, [[name] + [tables.pct(c[h]) for h in head]
                                              for name, c in rows.items()]) + [""])
  return Protocol(run=run, section=section, columns=columns, title=title, **kw)


# name -> Protocol, or "module:attribute" of one (imported on first use)
PROTOCOLS: dict[str, Any] = {
    "verification": Protocol(run=pair_verification, section=_verification_section,
                             columns=_verification_columns, title="verification"),
    "ar_p1": _rank1_protocol("ar_p1", "AR-style (pasted) P1", _ar("gallery_p1")),
    "ar_p2": _rank1_protocol("ar_p2", "AR-style (pasted) P2", _ar("gallery_p2")),
    "distractors": _rank1_protocol("distractors", "distractors", distractor_identification,
                                   ablations=False, distractor_store=True),
    "ar_real": "pdsn_jax.evaluation.real_ar:PROTOCOL",
    "lfw_distractors": "pdsn_jax.evaluation.lfw_distractors:PROTOCOL",
}


def get(name: str) -> Protocol:
  """The protocol registered as ``name``; ValueError naming the registered ones."""
  if name not in PROTOCOLS:
    raise ValueError(f"protocol {name!r} is not one of {tuple(PROTOCOLS)}")
  p = PROTOCOLS[name]
  if isinstance(p, str):
    module, _, attr = p.partition(":")
    p = PROTOCOLS[name] = getattr(importlib.import_module(module), attr)
  return p


def register(name: str, protocol: Protocol) -> None:
  """Adds a protocol at run time (a test's, a user's): ``eval.protocols`` may then name it."""
  PROTOCOLS[name] = protocol


def run_protocols(ctx: Context, model: Model, names) -> dict:
  """Every protocol of ``names`` (``eval.protocols``) for one model, merged into one dict;
  their per-item hits (``HITS``, "protocol/column" -> bool per pair or probe) merged too."""
  res: dict = {HITS: {}}
  for name in names:
    out = get(name).run(ctx, model)
    res[HITS].update(out.pop(HITS, {}))
    res.update(out)
  return res
