"""Evaluators built from the config, as big_vision's ``config.evals``: which models are compared
(``eval.models``) and which protocols each one runs, with each protocol's own settings
(``eval.protocols``, a dict: protocol name -> its settings).

A model is ``"Name=stage"`` (the stage's network, plain embeddings F(U)) or
``"Name=stage+fdm"`` (the same under the probe's FDM from the stage II dictionary,
F(M * U)). A protocol is a ``Protocol``: it runs per model, may bring its own inputs, their U
and their block flags, and writes its own section of results.md; its ``settings`` dataclass
names its keys, their defaults and their checks. Adding one is a module in
``evaluation/protocols/`` with a ``PROTOCOL`` and its line in ``PROTOCOLS``; nothing in the
evaluate stage, the report or the config validation names a protocol. ``plan(config)`` is what
the evaluation runs (models x protocols), built once.
"""

import dataclasses
import importlib
from typing import Any, Callable

import numpy as np

from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.data import occlusion
from pdsn_jax.evaluation import masked, tables
from pdsn_jax.gallery import search
from pdsn_jax.evaluation import sets as sets_lib

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
  sets: sets_lib.EvalSets
  feats: dict  # U per image group (see evaluate's ``_features``)
  flags: dict  # block flags per occluded group ("second", "probes")
  searcher: search.Searcher | None = None  # streaming top-k over a gallery store
  distractors: Any = None  # the distractors' gallery store (``evaluation.store.Store``)
  settings: dict = dataclasses.field(default_factory=dict)  # protocol name -> its settings


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
  settings: a dataclass whose fields (with defaults) are the keys ``eval.protocols.<name>``
    may set; its ``check(where)`` (optional) raises ValueError naming a bad value. The hooks read
    their instance as ``ctx.settings[name]`` or their ``settings`` argument.
  inputs(config, sets, settings) -> sets: its own images, added to ``sets.extra``.
  features(embed, sets) -> {name: U}: U of those images, into ``ctx.feats`` (per checkpoint).
  locate(config, sets, flags, predict, workdir, settings) -> dict: adds its block flags to ``flags``
    (``predict``: the occlusion detector or None); what it returns goes into results.json.
  figures(results, workdir, sets, flags) -> paths: its figures, written with results.md.
  describe(settings) -> str: what results.md's data line says of its own data ("" nothing).
  ablations: it also scores Tables 1-3; distractor_store: it searches the distractors' store
  (``ctx.distractors``, built from ``sets.distractors``, which ``inputs`` may extend: every
  such protocol searches the same store); paired_in_section: its section prints its paired
  differences itself.
  """

  run: Callable[[Context, Model], dict]
  section: Callable[[dict], list[str]]
  columns: Callable[[dict], dict] = _no_columns
  title: str = ""
  settings: type | None = None
  inputs: Callable | None = None
  features: Callable | None = None
  locate: Callable | None = None
  figures: Callable | None = None
  describe: Callable | None = None
  ablations: bool = True
  distractor_store: bool = False
  paired_in_section: bool = False


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


def rank1_protocol(key: str, title: str, run, **kw) -> Protocol:
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


# name -> Protocol, or "module:attribute" of one (imported on first use); the order is the order
# of their sections in results.md
PROTOCOLS: dict[str, Any] = {
    "verification": "pdsn_jax.evaluation.protocols.verification:PROTOCOL",
    "ar_p1": "pdsn_jax.evaluation.protocols.ar_pasted:P1",
    "ar_p2": "pdsn_jax.evaluation.protocols.ar_pasted:P2",
    "distractors": "pdsn_jax.evaluation.protocols.distractors:PROTOCOL",
    "ar_real": "pdsn_jax.evaluation.protocols.ar_real:PROTOCOL",
    "lfw_distractors": "pdsn_jax.evaluation.protocols.lfw_distractors:PROTOCOL",
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


def settings(name: str, given) -> Any:
  """The protocol's settings from ``given`` (its ``eval.protocols`` entry; None or {}: its
  defaults), checked; ValueError naming an unknown key with the allowed ones, or a bad value."""
  where = f"config.eval.protocols.{name}"
  given = {} if given is None else dict(given)
  cls = get(name).settings
  if cls is None:
    if given:
      raise ValueError(f"{where} has {sorted(given)}; the {name!r} protocol takes no settings")
    return None
  allowed = [f.name for f in dataclasses.fields(cls)]
  bad = sorted(set(given) - set(allowed))
  if bad:
    raise ValueError(f"{where}: unknown key(s) {bad}; allowed: {allowed}")
  out = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
  if hasattr(out, "check"):
    out.check(where)
  return out


def protocol_names(config) -> list[str]:
  """The protocols ``config.eval.protocols`` turns on, in ``PROTOCOLS`` order; ValueError naming
  an unknown one, or none."""
  given = config.eval.protocols
  if not hasattr(given, "keys"):
    raise ValueError(
        f"config.eval.protocols={given!r}: a dict of protocol name -> its settings, e.g. "
        "{'verification': {}, 'ar_real': {'root': '../shared/data/ar_real'}} (on the command "
        "line: --config.eval.protocols=\"{'verification': {}}\"); allowed names: "
        f"{tuple(PROTOCOLS)}")
  bad = [n for n in given.keys() if n not in PROTOCOLS]
  if bad or not len(given):
    raise ValueError(f"config.eval.protocols has {sorted(given.keys())}: allowed names "
                     f"{tuple(PROTOCOLS)} (at least one)")
  return [n for n in PROTOCOLS if n in given]


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the evaluation runs, built once from the config: the models (rows) and the protocols
  (with their settings) each one runs."""

  models: tuple[ModelSpec, ...]
  protocols: dict[str, Protocol]
  settings: dict[str, Any]

  def with_hook(self, hook: str) -> list[tuple[str, Protocol]]:
    """(name, protocol) of the protocols that have ``hook``."""
    return [(n, p) for n, p in self.protocols.items() if getattr(p, hook) is not None]


def plan(config) -> Plan:
  """The evaluation plan of ``config`` (``eval.models`` x ``eval.protocols``), checked."""
  names = protocol_names(config)
  return Plan(tuple(parse_models(config.eval.models)), {n: get(n) for n in names},
              {n: settings(n, config.eval.protocols[n]) for n in names})


def run_protocols(ctx: Context, model: Model, protocols) -> dict:
  """Every protocol of ``protocols`` ({name: Protocol}) for one model, merged into one dict;
  their per-item hits (``HITS``, "protocol/column" -> bool per pair or probe) merged too."""
  res: dict = {HITS: {}}
  for p in protocols.values():
    out = p.run(ctx, model)
    res[HITS].update(out.pop(HITS, {}))
    res.update(out)
  return res
