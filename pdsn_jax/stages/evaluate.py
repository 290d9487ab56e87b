"""Evaluation stage: the paper's protocols for the models of ``eval.models`` (by default Trunk,
Baseline, PDSN, PDSN + fine-tune) and the ablations (Table 1 tau sweep, Table 2 mask kinds,
Table 3 lambda), into results.md/.json.

Models (``evaluation.evaluators``), all evaluated on the same images: a stage's network with
plain embeddings F(U), or under the stage II dictionary's FDMs, F(M * U). A model whose stage
has not run is left out (logged). When the detector stage has run, every FDM model is also
scored with the occlusion located by the detector instead of the synthesizer's ground truth
("(detector)" rows). Top-conv features U are computed once per checkpoint (once for two
checkpoints that differ only in F) and reused by every protocol and ablation; checkpoints
that share the trunk's bottom (``finetune.trainable="top"``) compute it once (``_Bottoms``).
"""

import hashlib
import json
import logging
import os
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdsn_jax.method import builders, fdm, inference
from pdsn_jax.train import distributed, parallel
from pdsn_jax.run import files, provenance
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.data import occlusion, sources
from pdsn_jax.data.folders import FolderFaces
from pdsn_jax.evaluation import evaluators, masked, report, stats
from pdsn_jax.gallery import search
from pdsn_jax.evaluation import sets as sets_lib
from pdsn_jax.gallery import store as store_lib
from pdsn_jax.evaluation.segmentation import segmentation_metrics


def _dictionary(workdir: str, name: str):
  path = workdir_lib.dictionary_file(workdir, name)
  return fdm.load(path) if os.path.isfile(path) else None


def _eval_sets(config, plan: evaluators.Plan, library) -> sets_lib.EvalSets:
  """The shared sets, then what each protocol brings itself (``Protocol.inputs``)."""
  cfg = config.eval
  heldout, distractor_src = sources.build_eval(config.data, cfg.num_distractors)
  if cfg.identification_root:  # e.g. AR: its own subjects for the AR-style protocols
    heldout = FolderFaces(cfg.identification_root, cfg.identification_landmarks or None,
                          config.data.image_size, min_images=2, template=config.data.alignment)
  faces = np.stack([heldout[i]["image"] for i in range(len(heldout))])
  labels = np.asarray(heldout.labels)
  sets = sets_lib.build(faces, labels, distractor_src, library, seed=cfg.seed,
                        ar_gallery_images=cfg.ar_gallery_images)
  for name, p in plan.with_hook("inputs"):
    sets = p.inputs(config, sets, plan.settings[name])
  return sets


def _features(plan: evaluators.Plan, f, sets: sets_lib.EvalSets) -> dict:
  """U of every image any protocol uses, for one checkpoint (``f``: images -> U)."""
  out = {"faces": f(sets.faces),
         "second": {c: f(o.images) for c, o in sets.occluded_second.items()},
         "probes": {c: f(o.images) for c, o in sets.occluded_probes.items()}}
  out["pair_faces"] = out["faces"] if sets.pair_faces is sets.faces else f(sets.pair_faces)
  for _, p in plan.with_hook("features"):
    out.update(p.features(f, sets))
  return out


def _same_features(backbone, a: dict, b: dict, top: bool = False) -> bool:
  """Whether two checkpoints differ at most in F (then their U are the same); with ``top``, at
  most in F and the trunk's top (then their bottom V are the same)."""
  skip = set(backbone.head_params()) | (set(backbone.top_params()) if top else set())
  for coll in ("params", "batch_stats"):
    for k in set(a[coll]) | set(b[coll]):
      if k in skip:
        continue
      if k not in a[coll] or k not in b[coll]:
        return False
      la, lb = jax.tree.leaves(a[coll][k]), jax.tree.leaves(b[coll][k])
      if len(la) != len(lb) or not all(np.array_equal(x, y) for x, y in zip(la, lb)):
        return False
  return True


def _flags(config, sets: sets_lib.EvalSets, source: str, detector=None) -> dict:
  """Block flags of every occluded image, from masks located by ``source``; with a detector,
  also its segmentation scores against the ground truth per condition."""
  o = config.occlusion
  out = {"blocks": occlusion.NUM_GENERATORS, "second": {}, "probes": {}, "detector_scores": {}}
  for group, occs in (("second", sets.occluded_second), ("probes", sets.occluded_probes)):
    for c, occ in occs.items():
      masks = sets_lib.locate(occ, source, detector)
      out[group][c] = occlusion.block_flags(masks, o.min_overlap, o.overlap)
      if source == "detector":
        out["detector_scores"][f"{group}/{c}"] = segmentation_metrics(
            masks, occ.masks, o.min_overlap, o.overlap)
  return out


class _Bottoms:
  """The trunk's bottom V of each image batch, computed once for every checkpoint that shares
  the trunk's bottom (the Baseline and PDSN + fine-tune with ``finetune.trainable="top"``):
  their U is then only ``top`` of it. Kept up to ``eval.bottom_cache_gib`` (V is a quarter of
  U's size for MobileFaceNet); batches past that have their bottom computed again for each."""

  def __init__(self, embedder: masked.Embedder, variables, budget_gib: float):
    self.embedder, self.variables = embedder, variables
    self.left, self.cache, self.hits = int(budget_gib * 2**30), {}, 0

  def features(self, variables, images: np.ndarray) -> np.ndarray:
    """U of ``images`` for ``variables``, a checkpoint with the trunk's bottom."""
    images = np.ascontiguousarray(images)
    key = (images.shape, images.dtype.str, hashlib.blake2b(images.data).digest())
    v = self.cache.get(key)
    if v is None:
      v = self.embedder.features(self.variables, images, "bottom")
      if v.nbytes <= self.left:
        self.cache[key], self.left = v, self.left - v.nbytes
    else:
      self.hits += len(images)
    return self.embedder.features(variables, v, "top")


class _Networks:
  """The checkpoints' replicated variables, their U, and their distractor stores, each made
  once (a checkpoint that differs from another only in F shares its U and store; one that
  differs also in the trunk's top shares its bottom V: ``_Bottoms``)."""

  def __init__(self, config, plan: evaluators.Plan, workdir: str, embedder: masked.Embedder,
               sets, mesh):
    self.config, self.plan, self.workdir, self.embedder, self.sets, self.mesh = (
        config, plan, workdir, embedder, sets, mesh)
    self.backbone = builders.backbone(config, False)
    self.host, self.reps, self.feats, self.stores = {}, {}, {}, {}
    self.bottoms = None  # made with the trunk's replicated variables (``get``)
    self.searcher = search.Searcher(self.backbone, builders.u_shape(config),
                                    config.eval.batch_size, k=1, path=config.eval.search_path)

  def available(self, stage: str) -> bool:
    if stage not in self.host:
      self.host[stage] = workdir_lib.backbone_variables(self.workdir, stage)
    return self.host[stage] is not None

  def get(self, stage: str):
    """(replicated variables, U of every image) of a stage's network."""
    if stage not in self.feats:
      t = time.time()
      self.reps[stage] = parallel.put_replicated(self.host[stage], self.mesh)
      same = [c for c in self.feats if _same_features(self.backbone, self.host[c],
                                                      self.host[stage])]
      if same:  # only F was trained: same U
        self.feats[stage], self.stores[stage] = self.feats[same[0]], self.stores[same[0]]
        logging.info("[evaluate] %s differs from %s only in F: reusing its U", stage, same[0])
      else:
        f = self._feature_fn(stage)
        self.feats[stage] = _features(self.plan, f, self.sets)
        self.stores[stage] = self._store(stage, f)
        logging.info("[evaluate] features of the %s checkpoint (%.1fs)", stage, time.time() - t)
    return self.reps[stage], self.feats[stage]

  def _feature_fn(self, stage: str):
    """images -> U of ``stage``'s checkpoint: through the shared bottom when it has the
    trunk's (the trunk's own U then fills the cache), else the whole network."""
    variables = self.reps[stage]
    trunk = workdir_lib.TRUNK
    if (self.config.eval.bottom_cache_gib > 0 and hasattr(self.backbone, "top_params")
        and self.available(trunk)
        and _same_features(self.backbone, self.host[trunk], self.host[stage], top=True)):
      if self.bottoms is None:
        rep = self.reps.get(trunk) or parallel.put_replicated(self.host[trunk], self.mesh)
        self.bottoms = _Bottoms(self.embedder, rep, self.config.eval.bottom_cache_gib)
      if stage != trunk:
        logging.info("[evaluate] %s shares the trunk's bottom: only its top runs (%d images "
                     "from the cache so far)", stage, self.bottoms.hits)
      return lambda x: self.bottoms.features(variables, x)
    return lambda x: self.embedder.features(variables, x)

  def _store(self, stage: str, f):
    """U of the distractors on disk (``evaluate/distractors_<stage>/``), built or resumed;
    rebuilt when the checkpoint changed since."""
    cfg, src = self.config.eval, self.sets.distractors
    if not any(p.distractor_store for p in self.plan.protocols.values()) or not len(src):
      return None
    path = workdir_lib.distractor_store(self.workdir, stage)
    print_ = store_lib.fingerprint(builders.feature_variables(self.backbone, self.host[stage]))
    if os.path.isdir(path):
      try:
        old = store_lib.Store(path).meta
        why = [k for k, now in (("trunk", print_), ("dtype", cfg.gallery_dtype),
                                ("num_faces", len(src)), ("shard_size", cfg.gallery_shard_size),
                                ("source", _store_description(src)))
               if (old["trunk"]["fingerprint"] if k == "trunk" else old.get(k)) != now]
      except (FileNotFoundError, files.DamagedFile, ValueError, KeyError) as e:
        why = [f"unreadable ({e})"]
      distributed.barrier(f"{path} checked")  # every process read it before it goes
      if why:
        logging.info("[evaluate] %s: made with another %s; rebuilding", path, ", ".join(why))
        if jax.process_index() == 0:
          shutil.rmtree(path)
        distributed.barrier(f"{path} removed")
    out, stats = store_lib.build_from_source(
        path, src, f,
        u_shape=builders.u_shape(self.config), dtype=cfg.gallery_dtype,
        shard_size=cfg.gallery_shard_size, trunk_fingerprint=print_,
        trunk_checkpoint=workdir_lib.checkpoints(self.workdir, stage),
        description=_store_description(src))
    logging.info("[evaluate] distractor store %s: %d faces, %s; %s", path, out.num_faces,
                 cfg.gallery_dtype, stats)
    return out


def _store_description(src) -> str:
  return f"distractors: {getattr(src, 'description', '')}"


def _evaluate_models(config, plan: evaluators.Plan, nets: _Networks, sets, flags, flags_det,
                     dictionary, results) -> None:
  """Every model of the plan under every protocol of it, and the FDM models again with the
  detector's flags when given; into ``results["models"]``."""
  put = lambda x: parallel.put_replicated(np.asarray(x, np.float32), nets.mesh)  # noqa: E731
  specs = plan.models
  runs = [(m, flags, m.name) for m in specs]
  if flags_det is not None:
    # the "+trunk_when_clean" variants are compared where the occlusion is known only
    runs += [(m, flags_det, f"{m.name} (detector)") for m in specs
             if m.fdm and not m.trunk_when_clean]
  for spec, fl, row in runs:
    if not nets.available(spec.stage) or (spec.fdm and dictionary is None):
      if fl is flags:
        results["missing"].append(spec.name)
        logging.info("[evaluate] %s: not available (stage not run), left out", spec.name)
      continue
    t = time.time()
    variables, feats = nets.get(spec.stage)
    clean = nets.reps[workdir_lib.TRUNK] if spec.trunk_when_clean else None
    table = evaluators.mask_table(spec, dictionary[0] if spec.fdm else None,
                                  builders.u_shape(config))
    model = evaluators.Model(variables, put(table), clean)
    ctx = evaluators.Context(nets.embedder, sets, feats, fl, nets.searcher,
                             nets.stores[spec.stage], plan.settings)
    results["models"][row] = evaluators.run_protocols(ctx, model, plan.protocols)
    logging.info("[evaluate] %s: %s (%.1fs)", row, report.one_line(results["models"][row],
                                                            plan.protocols.values()),
                 time.time() - t)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every protocol for every available model and ablation; writes results.md/.json."""
  cfg, t0, plan = config.eval, time.time(), evaluators.plan(config)
  upstream = list(dict.fromkeys([m.stage for m in plan.models] + list(STAGE.upstream)))
  record = provenance.begin(config, workdir, STAGE.name, STAGE.name, upstream, reuse=False)
  mesh = parallel.make_mesh()
  sets = _eval_sets(config, plan, builders.test_occluders(config))
  det_vars = workdir_lib.load(workdir, workdir_lib.DETECTOR)
  if cfg.occlusion_source == "detector" and det_vars is None:
    workdir_lib.require(workdir, workdir_lib.DETECTOR, "eval.occlusion_source='detector'")
  predict = (inference.occlusion_predictor(config, det_vars, mesh) if det_vars is not None
             else None)
  flags = _flags(config, sets, cfg.occlusion_source, predict)
  flags_det = (_flags(config, sets, "detector", predict)
               if predict is not None and cfg.occlusion_source != "detector" else None)
  located = _locate(config, plan, sets, flags, predict, workdir)
  logging.info("[evaluate] %d held-out faces, %d pairs x %d conditions, %d AR probes x %d, "
               "%d distractors (%.1fs)", len(sets.faces), len(sets.pairs),
               len(sets.occluded_second), len(sets.probes), len(sets.occluded_probes),
               len(sets.distractors), time.time() - t0)
  embedder = masked.Embedder(builders.backbone(config, False), mesh, cfg.batch_size,
                             builders.normalize, builders.forward_chunk(config))
  nets = _Networks(config, plan, workdir, embedder, sets, mesh)
  if not nets.available(workdir_lib.TRUNK):
    workdir_lib.require(workdir, workdir_lib.TRUNK, needed_by=STAGE.name)
  dictionary = _dictionary(workdir, workdir_lib.DICTIONARY)
  results = {**_description(config, plan), "models": {}, "ablations": {}, "missing": [],
             "provenance": {"evaluate": record["fingerprint"],
                            "stages": provenance.records(workdir, upstream)}}
  two = [m.name for m in plan.models if m.trunk_when_clean]
  if two:
    results["notes"] = [f"{', '.join(two)}: the trunk's F (on the row's own U) for faces with "
                        "no occluded block (clean pairs, probes whose occlusion flags no block), "
                        "the fine-tuned F where the occlusion flags a block ('+trunk_when_clean' "
                        "in eval.models); where only F was fine-tuned (finetune.trainable="
                        "'head') U is the trunk's too, and their clean columns equal the "
                        "Trunk's. Every other row is one network for every face."]
  nets.get(workdir_lib.TRUNK)  # first: the other checkpoints reuse its U when they can
  _evaluate_models(config, plan, nets, sets, flags, flags_det, dictionary, results)
  if flags_det is not None:
    results["detector_on_probes"] = flags_det["detector_scores"]
  results.update(located)
  _paired(results, ("Baseline", "Trunk"), cfg.seed, workdir)
  if dictionary is not None and cfg.ablations:
    results["ablations"] = _ablations(config, plan, workdir, nets, sets, flags, dictionary)
  results["seconds"] = round(time.time() - t0, 1)
  thresholds = _thresholds(plan, results, nets, dictionary)
  summary = {"stage": STAGE.name, "results": workdir_lib.results_files(workdir)[0],
             "seconds": results["seconds"]}
  if jax.process_index() == 0:
    files.write_json(workdir_lib.thresholds_file(workdir), thresholds)
    files.write_json(workdir_lib.stage_file(workdir, STAGE.name, "config.json"),
                     json.loads(config.to_json_best_effort()))
    logging.info("[evaluate] wrote %s", ", ".join(report.write(
        results, sets, flags, workdir, plan.protocols)))
    print(report.summary(results, plan.protocols.values()), flush=True)
    workdir_lib.write_summary(workdir, STAGE.name, summary)
  return summary


def _thresholds(plan: evaluators.Plan, results: dict, nets: _Networks, dictionary) -> dict:
  """Takes the verification thresholds out of ``results``: per model, with the fingerprint of
  the network and dictionary they were measured on (``recognizer.Recognizer`` checks it)."""
  thresholds = evaluators.pop_thresholds(results["models"])
  for table in (results.get("ablations") or {}).values():
    if isinstance(table, dict):
      evaluators.pop_thresholds(table)
  for spec in plan.models:
    if spec.name in thresholds:
      thresholds[spec.name]["model_fingerprint"] = inference.model_fingerprint(
          nets.host[spec.stage], dictionary[0] if spec.fdm else None)
  return thresholds


def _ablations(config, plan: evaluators.Plan, workdir, nets: _Networks, sets, flags,
               dictionary) -> dict:
  """Tables 1-3 on the trunk's U under the plan's protocols that score them."""
  fdms, mean_masks, meta = dictionary
  variables, feats = nets.get(workdir_lib.TRUNK)
  ctx = evaluators.Context(nets.embedder, sets, feats, flags, nets.searcher,
                           settings=plan.settings)
  scoring = {n: p for n, p in plan.protocols.items() if p.ablations}
  put = lambda x: parallel.put_replicated(np.asarray(x, np.float32), nets.mesh)  # noqa: E731
  score = lambda table: _without_hits(evaluators.run_protocols(  # noqa: E731
      ctx, evaluators.Model(variables, put(table)), scoring))
  out: dict = {"tau": {}, "mask_kind": {}, "lambda": {}}
  t = time.time()
  for tau in config.eval.tau_sweep:
    out["tau"][f"{tau:g}"] = score(np.asarray(fdm.binarize(jnp.asarray(mean_masks), float(tau))))
  kinds = [("binary", fdms), ("soft", mean_masks), ("soft+binary", mean_masks * fdms),
           # a diagnostic, not the paper's: the same soft values with each item's kept entries
           # rescaled to mean 1, so that soft + binary differs from binary by its pattern
           # alone and not by how much it shrinks U (the frozen F is not scale-invariant)
           ("soft+binary, kept mean 1 (diagnostic)", kept_mean_one(mean_masks, fdms))]
  scores = fdm.load_change_scores(workdir_lib.dictionary_file(workdir))
  if scores is not None:  # what learning has to beat: the most changed elements, same tau
    kinds.append(("not learned: mean relative change, binary",
                  np.asarray(fdm.binarize(jnp.asarray(scores), float(meta["tau"])))))
  for kind, table in kinds:
    out["mask_kind"][kind] = score(table)
  trained = workdir_lib.read_summary(workdir, workdir_lib.PDSN)
  lam = trained.get("lambda_l1", config.pdsn.lambda_l1)
  rule = {"same_scale": "paper's same-scale rule"}.get(trained.get("lambda_rule"), "fixed")
  out["lambda"][f"lambda={lam:.3g} ({rule})"] = out["mask_kind"]["binary"]
  lam0 = _dictionary(workdir, workdir_lib.LAMBDA0_DICTIONARY)
  if lam0 is not None:
    out["lambda"]["no differential input, lambda=0"] = score(lam0[0])
  else:
    logging.info("[evaluate] Table 3 ablation left out: run the '%s' stage", workdir_lib.LAMBDA0)
  out["dictionary_tau"] = meta.get("tau")
  logging.info("[evaluate] ablations (%.1fs)", time.time() - t)
  return out


def kept_mean_one(mean_masks: np.ndarray, fdms: np.ndarray) -> np.ndarray:
  """soft + binary with each item's kept entries divided by their mean (items with nothing kept
  stay 0)."""
  table = np.asarray(mean_masks, np.float32) * np.asarray(fdms, np.float32)
  axes = tuple(range(1, table.ndim))
  kept = np.asarray(fdms, np.float32).sum(axes, keepdims=True)
  mean = table.sum(axes, keepdims=True) / np.maximum(kept, 1)
  return np.where(mean > 0, table / np.where(mean > 0, mean, 1), 0.0).astype(np.float32)


def _without_hits(res: dict) -> dict:
  res.pop(evaluators.HITS, None)
  return res


def _locate(config, plan: evaluators.Plan, sets, flags: dict, predict, workdir: str) -> dict:
  """The protocols' own block flags into ``flags``; what they report (e.g. the detector on the
  real AR photos) for results.json."""
  out = {}
  for name, p in plan.with_hook("locate"):
    out.update(p.locate(config, sets, flags, predict, workdir, plan.settings[name]))
  return out


def _paired(results: dict, references, seed: int, workdir: str) -> None:
  """Takes the per-probe hits out of every row (into ``evaluate/hits.npz``) and puts into
  ``results["paired"]`` each row against each reference row that exists (not itself): the
  paired bootstrap of the hits, per column (``stats.paired_bootstrap``)."""
  hits = {row: r.pop(evaluators.HITS) for row, r in results["models"].items()
          if evaluators.HITS in r}
  if not hits:
    return
  if jax.process_index() == 0:
    with files.atomic_path(workdir_lib.hits_file(workdir)) as tmp:
      np.savez_compressed(tmp, **{f"{row}|{k}": np.asarray(v, bool) for row, h in hits.items()
                                  for k, v in h.items()})
  out = results["paired"] = {}
  for ref in references:
    if ref not in hits:
      continue
    for row, h in hits.items():
      if row == ref:
        continue
      out.setdefault(row, {})[ref] = {
          k: stats.paired_bootstrap(v.astype(float), hits[ref][k].astype(float), seed=seed)
          for k, v in h.items() if k in hits[ref]}


def _description(config, plan: evaluators.Plan) -> dict:
  """What results.md says about the data: faces, where occlusions are located, occluders."""
  return {"data": _data_description(config, plan), "occlusion_source": config.eval.occlusion_source,
          "test_occluders": _test_occluders(config),
          "occluder_splits": builders.occluder_splits(config)}


def _test_occluders(config) -> str:
  cfg, o = config.eval, config.occlusion
  drawn = f"; built-in drawings of {', '.join(cfg.procedural_categories)}" if cfg.procedural else ""
  if cfg.occluder_dir:
    return cfg.occluder_dir + drawn
  if o.occluder_dir:
    n = len(builders.occluder_splits(config)[cfg.occluder_split])
    return (f"the {cfg.occluder_split} split of {o.occluder_dir} ({n} files, seen by no "
            f"training stage; listed below){drawn}")
  return "built-in" + drawn


def _data_description(config, plan: evaluators.Plan) -> str:
  """The faces, then what each protocol says about its own data (``Protocol.describe``)."""
  own = [p.describe(plan.settings[n]) for n, p in plan.with_hook("describe")]
  return _source_description(config) + "".join(f"; {d}" for d in own if d)


def _source_description(config) -> str:
  d = config.data
  if d.source == "synthetic":
    s = d.synthetic
    return (f"SYNTHETIC faces: trained on {s.num_identities} ids x {s.images_per_identity}, "
            f"evaluated on {s.eval_identities} unseen ids x {s.eval_images_per_identity}")
  if d.source == "recordio":
    return f"recordio: {d.recordio.path}"
  return f"folders: {d.folders.root}"


STAGE = stage_lib.Stage(
    name=workdir_lib.EVALUATE, run=run,
    depends_on=stage_lib.BASE + ("model", "eval", "detector.threshold") + stage_lib.OCCLUDERS,
    excluded=(),  # it reads the test occluder files
    # what it reads besides the networks eval.models names (Table 3's ablation too)
    upstream=(workdir_lib.DICTIONARY, workdir_lib.DETECTOR,
              workdir_lib.LAMBDA0_PDSN, workdir_lib.LAMBDA0_DICTIONARY),
    # it rebuilds the detector and reports the generators' lambda
    through_upstream=("detector.input_scale", "detector.widths", "pdsn.lambda_l1"))
