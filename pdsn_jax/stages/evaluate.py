"""Evaluation stage: the paper's protocols for Trunk / Baseline / PDSN / PDSN + fine-tune, and the
ablations (Table 1 tau sweep, Table 2 mask kinds, Table 3 lambda), into results.md/.json.

Models, all evaluated on the same images:
  Trunk             trunk checkpoint, plain F(U)
  Baseline          baseline checkpoint (occlusion-augmented trunk), plain F(U)
  PDSN              trunk checkpoint, F(M * U) with the stage II dictionary
  PDSN + fine-tune  finetune checkpoint, F(M * U)
A model whose stage has not run is left out (logged). When the detector stage
has run, PDSN and PDSN + fine-tune are also scored with the occlusion located
by the detector instead of the synthesizer's ground truth ("(detector)" rows). Top-conv features U are
computed once per checkpoint and reused by every protocol and ablation.
"""

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdsn_jax import checkpointing, parallel
from pdsn_jax.data import occlusion, pairs as pairs_lib, placement, sources
from pdsn_jax.evaluation import masked, protocols, report, verification
from pdsn_jax.stages import detector as detector_stage
from pdsn_jax.stages import dictionary as dictionary_stage
from pdsn_jax.stages import pdsn as pdsn_stage
from pdsn_jax.stages import trunk as trunk_stage

STAGE = "evaluate"
LAMBDA0 = "lambda0"  # the stage (and folder prefix) of Table 3's ablation


def _inference_vars(workdir: str, stage: str) -> dict | None:
  path = os.path.join(workdir, stage, "checkpoints")
  if not os.path.isdir(path) or not any(d.isdigit() for d in os.listdir(path)):
    return None
  v = checkpointing.load_variables(path)
  return {"params": v["params"]["backbone"], "batch_stats": v["batch_stats"]}


def _dictionary(workdir: str, name: str):
  path = os.path.join(workdir, name, dictionary_stage.EXPORT)
  return dictionary_stage.load_dictionary(path) if os.path.isfile(path) else None


def _eval_sets(config, library) -> protocols.EvalSets:
  cfg = config.eval
  heldout, distractor_src = sources.build_eval(config.data, cfg.num_distractors)
  if cfg.identification_root:  # e.g. AR: its own subjects for the AR-style protocols
    from pdsn_jax.data.folders import FolderFaces  # pylint: disable=g-import-not-at-top
    heldout = FolderFaces(cfg.identification_root, cfg.identification_landmarks or None,
                          config.data.image_size, min_images=2, template=config.data.alignment)
  faces = np.stack([heldout[i]["image"] for i in range(len(heldout))])
  labels = np.asarray(heldout.labels)
  distractors = (np.stack([distractor_src[i]["image"] for i in range(len(distractor_src))])
                 if len(distractor_src) else np.zeros((0, *faces.shape[1:]), np.uint8))
  sets = protocols.build(faces, labels, distractors, library, num_pairs=cfg.num_pairs,
                         seed=cfg.seed, ar_gallery_images=cfg.ar_gallery_images,
                         conditions=tuple(cfg.conditions))
  if cfg.pairs_bin:
    from pdsn_jax.data import insightface  # pylint: disable=g-import-not-at-top
    images, idx, issame = insightface.read_verification_bin(cfg.pairs_bin, config.data.image_size)
    sets = protocols.with_pairs(sets, images, idx, issame, library, cfg.seed,
                                tuple(cfg.conditions))
  elif cfg.pairs_file:
    f = config.data.folders
    named, issame = pairs_lib.read_lfw_pairs(cfg.pairs_file, cfg.pairs_pattern)
    pair_faces, idx = sources.load_pair_images(named, cfg.pairs_root or f.root,
                                               cfg.pairs_landmarks or f.landmarks,
                                               config.data.image_size, config.data.alignment)
    sets = protocols.with_pairs(sets, pair_faces, idx, issame, library, cfg.seed,
                                tuple(cfg.conditions))
  return sets


def _features(embedder, variables, sets: protocols.EvalSets) -> dict:
  """U of every image any protocol uses, for one checkpoint."""
  f = lambda x: embedder.features(variables, x)  # noqa: E731
  out = {"faces": f(sets.faces),
         "second": {c: f(o.images) for c, o in sets.occluded_second.items()},
         "probes": {c: f(o.images) for c, o in sets.occluded_probes.items()},
         "distractors": f(sets.distractors) if len(sets.distractors) else None}
  out["pair_faces"] = out["faces"] if sets.pair_faces is sets.faces else f(sets.pair_faces)
  return out


def _verification(scores, issame) -> dict:
  r = verification.ten_fold_accuracy(scores, issame)
  return {"accuracy": r["accuracy"], "std": r["std"],
          "tar_at_far_1e-3": verification.tar_at_far(scores, issame, 1e-3),
          "negatives": int(np.sum(~np.asarray(issame, bool)))}


def evaluate_model(embedder, variables, table, feats: dict, sets: protocols.EvalSets,
                   flags: dict, with_distractors: bool, clean_variables=None) -> dict:
  """Every protocol for one (checkpoint, mask table); ``table`` of ones means no masks.
  ``clean_variables``: the network for rows with no occluded block (see ``Embedder``)."""
  res: dict = {}
  pa, pb = sets.pairs[:, 0], sets.pairs[:, 1]
  none = np.zeros((len(pa), flags["blocks"]), bool)
  embed = lambda u, fl: embedder.embed(variables, table, u, fl, clean_variables)  # noqa: E731
  ea, eb = embed(feats["pair_faces"][pa], none), embed(feats["pair_faces"][pb], none)
  res["clean"] = _verification(np.sum(ea * eb, 1), sets.issame)
  res["occluded"] = {}
  for cond, fl in flags["second"].items():
    # the same FDM on both faces: the blocks occluded in either (the first is clean)
    ea, eb = embed(feats["pair_faces"][pa], fl), embed(feats["second"][cond], fl)
    res["occluded"][cond] = _verification(np.sum(ea * eb, 1), sets.issame)
  probe_labels = sets.labels[sets.probes]
  for proto, gallery in (("ar_p1", sets.gallery_p1), ("ar_p2", sets.gallery_p2)):
    res[proto] = {}
    for cond, fl in flags["probes"].items():
      _, arg = masked.top1_search(embedder, variables, table, feats["faces"][gallery],
                                  feats["probes"][cond], fl, clean_variables)
      res[proto][cond] = float(np.mean(sets.labels[gallery][arg] == probe_labels))
  if with_distractors and feats["distractors"] is not None:
    g = sets.gallery_p2
    gallery_u = np.concatenate([feats["faces"][g], feats["distractors"]])
    gallery_labels = np.concatenate([sets.labels[g], np.full(len(feats["distractors"]), -1)])
    res["distractors"] = {"num_distractors": int(len(feats["distractors"]))}
    probe_sets = {"clean": (feats["faces"][sets.probes],
                            np.zeros((len(sets.probes), flags["blocks"]), bool))}
    probe_sets.update({c: (feats["probes"][c], fl) for c, fl in flags["probes"].items()})
    for cond, (pu, fl) in probe_sets.items():
      _, arg = masked.top1_search(embedder, variables, table, gallery_u, pu, fl,
                                  clean_variables)
      res["distractors"][cond] = float(np.mean(gallery_labels[arg] == probe_labels))
  return res


def _same_features(backbone, a: dict, b: dict) -> bool:
  """Whether two checkpoints differ at most in F (then their U are the same)."""
  head = set(backbone.head_params())
  for coll in ("params", "batch_stats"):
    for k in set(a[coll]) | set(b[coll]):
      if k in head:
        continue
      if k not in a[coll] or k not in b[coll]:
        return False
      la, lb = jax.tree.leaves(a[coll][k]), jax.tree.leaves(b[coll][k])
      if len(la) != len(lb) or not all(np.array_equal(x, y) for x, y in zip(la, lb)):
        return False
  return True


def _flags(config, sets: protocols.EvalSets, source: str, detector=None) -> dict:
  """Block flags of every occluded image, from masks located by ``source``; with a detector,
  also its segmentation scores against the ground truth per condition."""
  o = config.occlusion
  out = {"blocks": 9, "second": {}, "probes": {}, "detector_scores": {}}
  for group, occs in (("second", sets.occluded_second), ("probes", sets.occluded_probes)):
    for c, occ in occs.items():
      masks = protocols.locate(occ, source, detector)
      out[group][c] = placement.occluded_block_flags(masks, o.min_overlap, o.overlap)
      if source == "detector":
        out["detector_scores"][f"{group}/{c}"] = detector_stage.segmentation_metrics(
            masks, occ.masks, o.min_overlap, o.overlap)
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every protocol for every available model and ablation; writes results.md/.json."""
  cfg = config.eval
  t0 = time.time()
  stage_dir = os.path.join(workdir, STAGE)
  os.makedirs(stage_dir, exist_ok=True)
  mesh = parallel.make_mesh()
  o = config.occlusion
  if cfg.occluder_dir:  # test occluders that training never saw
    library = occlusion.OccluderLibrary(cfg.occluder_dir, cfg.procedural,
                                        tuple(cfg.procedural_categories),
                                        face_template=config.data.alignment)
  elif o.heldout:  # the files every training stage left out
    library = occlusion.OccluderLibrary(o.occluder_dir, cfg.procedural,
                                        tuple(cfg.procedural_categories), split="heldout",
                                        face_template=config.data.alignment,
                                        heldout=tuple(o.heldout))
  else:
    library = pdsn_stage.occluder_library(config)
  sets = _eval_sets(config, library)
  det_vars = detector_stage.load_variables(workdir)
  if cfg.occlusion_source == "detector" and det_vars is None:
    raise FileNotFoundError("eval.occlusion_source='detector' needs the 'detector' stage: no "
                            f"checkpoint under {os.path.join(workdir, 'detector', 'checkpoints')}")
  predict = detector_stage.predictor(config, det_vars, mesh) if det_vars is not None else None
  flags = _flags(config, sets, cfg.occlusion_source, predict)
  flags_det = (_flags(config, sets, "detector", predict)
               if predict is not None and cfg.occlusion_source != "detector" else None)
  logging.info("[evaluate] %d held-out faces, %d pairs x %d conditions, %d AR probes x %d, "
               "%d distractors (%.1fs)", len(sets.faces), len(sets.pairs),
               len(sets.occluded_second), len(sets.probes), len(sets.occluded_probes),
               len(sets.distractors), time.time() - t0)
  trunk_vars = _inference_vars(workdir, trunk_stage.STAGE)
  if trunk_vars is None:
    raise FileNotFoundError(f"stage '{STAGE}' needs the trunk: no checkpoint under "
                            f"{os.path.join(workdir, 'trunk', 'checkpoints')}")
  dictionary = _dictionary(workdir, dictionary_stage.STAGE)
  backbone = trunk_stage.build_backbone(config, False)
  pipeline_batch = cfg.batch_size
  embedder = masked.Embedder(backbone, mesh, pipeline_batch, trunk_stage.normalize)
  u_shape = pdsn_stage.u_shape(config)
  ones = parallel.put_replicated(np.ones((9, *u_shape), np.float32), mesh)
  put = lambda x: parallel.put_replicated(np.asarray(x, np.float32), mesh)  # noqa: E731

  checkpoints = {"trunk": trunk_vars, "baseline": _inference_vars(workdir, "baseline"),
                 "finetune": _inference_vars(workdir, "finetune")}
  models = [("Trunk", "trunk", None), ("Baseline", "baseline", None),
            ("PDSN", "trunk", "binary"), ("PDSN + fine-tune", "finetune", "binary")]
  results = {"data": _data_description(config), "occlusion_source": cfg.occlusion_source,
             "test_occluders": _test_occluders(config),
             "models": {}, "ablations": {}, "missing": []}
  feats, reps = {}, {}
  trunk_head_when_clean = bool(config.finetune.trunk_head_when_clean)
  if trunk_head_when_clean:
    results["notes"] = ["Baseline and PDSN + fine-tune embed faces with no occluded block "
                        "(clean pairs, probes whose occlusion flags no block) with the trunk's "
                        "own F, and use their fine-tuned F only where the occlusion flags a "
                        "block (finetune.trunk_head_when_clean): their clean columns equal "
                        "the Trunk's by construction."]
  for name, ckpt, masks in models:
    if checkpoints[ckpt] is None or (masks and dictionary is None):
      results["missing"].append(name)
      logging.info("[evaluate] %s: not available (stage not run), left out", name)
      continue
    if ckpt not in feats:
      t = time.time()
      reps[ckpt] = parallel.put_replicated(checkpoints[ckpt], mesh)
      same = [c for c in feats if _same_features(backbone, checkpoints[c], checkpoints[ckpt])]
      if same:  # only F was trained: same U
        feats[ckpt] = feats[same[0]]
        logging.info("[evaluate] %s differs from %s only in F: reusing its U", ckpt, same[0])
      else:
        feats[ckpt] = _features(embedder, reps[ckpt], sets)
        logging.info("[evaluate] features of the %s checkpoint (%.1fs)", ckpt, time.time() - t)
    t = time.time()
    table = put(dictionary[0]) if masks else ones
    clean = reps["trunk"] if ckpt != "trunk" and trunk_head_when_clean else None
    results["models"][name] = evaluate_model(embedder, reps[ckpt], table, feats[ckpt], sets,
                                             flags, True, clean)
    logging.info("[evaluate] %s: %s (%.1fs)", name, report.one_line(results["models"][name]),
                 time.time() - t)

  if flags_det is not None:  # the same masked models, occlusion located by the detector
    results["detector_on_probes"] = flags_det["detector_scores"]
    for name, ckpt in (("PDSN", "trunk"), ("PDSN + fine-tune", "finetune")):
      if name in results["models"]:
        t = time.time()
        row = f"{name} (detector)"
        results["models"][row] = evaluate_model(
            embedder, reps[ckpt], put(dictionary[0]), feats[ckpt], sets, flags_det, True,
            reps["trunk"] if ckpt != "trunk" and trunk_head_when_clean else None)
        logging.info("[evaluate] %s: %s (%.1fs)", row, report.one_line(results["models"][row]),
                     time.time() - t)
  if dictionary is not None and cfg.ablations:
    results["ablations"] = _ablations(config, workdir, embedder, reps["trunk"], feats["trunk"],
                                      sets, flags, dictionary, put)
  results["seconds"] = round(time.time() - t0, 1)
  if jax.process_index() == 0:
    paths = report.write(results, sets, flags, workdir)
    logging.info("[evaluate] wrote %s", ", ".join(paths))
    print(report.summary(results), flush=True)
  return {"stage": STAGE, "results": os.path.join(workdir, report.RESULTS_MD),
          "seconds": results["seconds"]}


def _ablations(config, workdir, embedder, variables, feats, sets, flags, dictionary, put) -> dict:
  fdms, mean_masks, meta = dictionary
  out: dict = {"tau": {}, "mask_kind": {}, "lambda": {}}
  t = time.time()
  for tau in config.eval.tau_sweep:
    table = np.asarray(dictionary_stage.binarize(jnp.asarray(mean_masks), float(tau)))
    out["tau"][f"{tau:g}"] = evaluate_model(embedder, variables, put(table), feats, sets, flags,
                                            False)
  kinds = [("binary", fdms), ("soft", mean_masks), ("soft+binary", mean_masks * fdms)]
  scores = dictionary_stage.load_change_scores(
      os.path.join(workdir, dictionary_stage.STAGE, dictionary_stage.EXPORT))
  if scores is not None:  # what learning has to beat: the most changed elements, same tau
    kinds.append(("not learned: mean relative change, binary",
                  np.asarray(dictionary_stage.binarize(jnp.asarray(scores), float(meta["tau"])))))
  for kind, table in kinds:
    out["mask_kind"][kind] = evaluate_model(embedder, variables, put(table), feats, sets, flags,
                                            False)
  out["lambda"][f"lambda={config.pdsn.lambda_l1:g} (paper)"] = out["mask_kind"]["binary"]
  lam0 = _dictionary(workdir, f"{LAMBDA0}_{dictionary_stage.STAGE}")
  if lam0 is not None:
    out["lambda"]["no differential input, lambda=0"] = evaluate_model(
        embedder, variables, put(lam0[0]), feats, sets, flags, False)
  else:
    logging.info("[evaluate] Table 3 ablation left out: run the '%s' stage", LAMBDA0)
  out["dictionary_tau"] = meta.get("tau")
  logging.info("[evaluate] ablations (%.1fs)", time.time() - t)
  return out


def _test_occluders(config) -> str:
  cfg, o = config.eval, config.occlusion
  drawn = f"; built-in drawings of {', '.join(cfg.procedural_categories)}" if cfg.procedural else ""
  if cfg.occluder_dir:
    return cfg.occluder_dir + drawn
  if o.heldout:
    return (f"files of {o.occluder_dir} held out of every training stage "
            f"({', '.join(o.heldout)}){drawn}")
  return o.occluder_dir or "built-in"


def _data_description(config) -> str:
  d = config.data
  pairs = config.eval.pairs_bin or config.eval.pairs_file
  suffix = f"; verification pairs from {pairs}" if pairs else ""
  return _source_description(config) + suffix


def _source_description(config) -> str:
  d = config.data
  if d.source == "synthetic":
    s = d.synthetic
    return (f"SYNTHETIC faces: trained on {s.num_identities} ids x {s.images_per_identity}, "
            f"evaluated on {s.eval_identities} unseen ids x {s.eval_images_per_identity}")
  if d.source == "recordio":
    return f"recordio: {d.recordio.path}"
  return f"folders: {d.folders.root}"
