"""The real AR protocol (the paper's Table 6): rank-1 on AR's own photos of people wearing
sunglasses and scarves, per way of locating the occlusion, and among real distractors.

A protocol in one module: its inputs (the photos of its ``root``, of the paper's test subjects
27-50 unless ``subjects`` says otherwise, aligned by landmarks, and centre-cropped for the
alignment check), their U, their block flags per way of locating (the detector, the category's
fixed blocks, the ground-truth masks), the rank-1 search, and its section of results.md.

MegaFace-style (``distractor_sizes``): the galleries joined by every distractor of the
evaluation's store (the distractor pool, and LFW's other identities when the
``lfw_distractors`` protocol is on: 5,918 real faces in the real config); a probe is right at N
distractors when its best gallery face is its subject and scores above the best of the first N
distractors, both under the probe's FDM. AR's scarf columns are saturated without them.
"""

import dataclasses
import logging
import time

import jax
import numpy as np

from pdsn_jax import visualize
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.data import ar_photos as ar_lib, occlusion, placement
from pdsn_jax.evaluation import evaluators, tables
from pdsn_jax.gallery import search
from pdsn_jax.evaluation.segmentation import segmentation_metrics

KEY = "ar_real"
# how the occlusions are located: the detector, the category's fixed blocks (data/ar_photos.py),
# the ground-truth masks (oracle location)
LOCATIONS = ("detector", "category", "ground_truth")
_LOCATION_NAMES = {"detector": "detector", "category": "category blocks",
                   "ground_truth": "ground truth (oracle location)"}
# galleries from session 1, probes of both sessions
CLEAN_KINDS = ("neutral", "expression", "light")
# the paper's split (data/ar_photos.py): "development" subjects may be scored by selection rules;
# "test" subjects only for an adopted configuration
SUBJECTS = {"test": ar_lib.TEST_SUBJECTS, "development": ar_lib.DEVELOPMENT_SUBJECTS,
            "all": None}


@dataclasses.dataclass(frozen=True)
class Settings:
  root: str = ""  # AR's real-occlusion folder (labels.tsv; docs/data.md)
  alignment: str = "landmarks"  # by dlib's landmarks, or "centre" (a centre crop)
  subjects: str = "test"  # "test" (27-50), "development" (1-26) or "all"
  # rank-1 also at these numbers of distractors (and all of them), when the evaluation has a
  # distractor store; () = without distractors
  distractor_sizes: tuple = (100, 1000)

  def check(self, where: str) -> None:
    if not self.root:
      raise ValueError(f"{where}.root is empty: set it to AR's real-occlusion folder (see "
                       "configs/real_mobilefacenet.py, docs/data.md)")
    if self.alignment not in ar_lib.ALIGNMENTS:
      raise ValueError(f"{where}.alignment={self.alignment!r} is not one of "
                       f"{ar_lib.ALIGNMENTS}")
    if self.subjects not in SUBJECTS:
      raise ValueError(f"{where}.subjects={self.subjects!r} is not one of {tuple(SUBJECTS)}")
    if any(int(n) <= 0 for n in self.distractor_sizes):
      raise ValueError(f"{where}.distractor_sizes={tuple(self.distractor_sizes)!r}: each > 0")


def ar_real_sets(ar) -> tuple[dict, dict]:
  """(galleries, probes) as index arrays: protocol 1's gallery is every clean session-1 photo
  (neutral, expressions, lighting: 7 per subject), protocol 2's the session-1 neutral one;
  probes are the 6 sunglasses and the 6 scarf photos of each subject and the 7 clean session-2
  ones."""
  galleries = {"p1": ar.select(1, CLEAN_KINDS), "p2": ar.select(1, ("neutral",), first=True)}
  probes = {"sunglasses": ar.select(None, ("sunglasses",)), "scarf": ar.select(None, ("scarf",)),
            "clean": ar.select(2, CLEAN_KINDS)}
  return galleries, probes


def ar_real_flags(ar, min_overlap: float, overlap: str, detector=None,
                  template: str = "arcface"):
  """(flags, scores, predicted masks): block flags of every photo per way of locating
  (``LOCATIONS``; the detector's only with one), the detector's scores against the ground
  truth (per occluded kind the segmentation metrics, on clean photos the predicted area, i.e.
  false alarms), and its pixel masks (None without a detector)."""
  size = ar.images.shape[1:3]
  cat = np.zeros((len(ar.kinds), len(occlusion.CENTRAL_BLOCKS)), bool)
  for kind in ar_lib.OCCLUDED_KINDS:
    cat[ar.kinds == kind] = placement.category_flags(kind, size, min_overlap, overlap,
                                                     template)
  flags = {"category": cat,
           "ground_truth": occlusion.block_flags(ar.masks, min_overlap, overlap)}
  scores, pred = {}, None
  if detector is not None:
    pred = np.asarray(detector(ar.images), bool)
    flags["detector"] = occlusion.block_flags(pred, min_overlap, overlap)
    for kind in ar_lib.OCCLUDED_KINDS:
      k = ar.kinds == kind
      scores[kind] = segmentation_metrics(pred[k], ar.masks[k], min_overlap, overlap)
      scores[kind]["category_block_accuracy"] = float(np.mean(cat[k] == flags["ground_truth"][k]))
    clean = ~np.isin(ar.kinds, ar_lib.OCCLUDED_KINDS)
    scores["clean"] = {"predicted_area": float(pred[clean].mean()),
                       "any_block_flagged": float(flags["detector"][clean].any(1).mean())}
  return {k: flags[k] for k in LOCATIONS if k in flags}, scores, pred


def _inputs(config, sets, settings: Settings):
  d, t, subjects = config.data, time.time(), SUBJECTS[settings.subjects]
  ar = ar_lib.load(settings.root, d.image_size, d.alignment, settings.alignment, subjects)
  centre = (ar_lib.load(settings.root, d.image_size, d.alignment, "centre", subjects)
            if settings.alignment != "centre" else None)
  fallback = sorted(k for k, v in ar.points_source.items() if v != "dlib")
  logging.info("[evaluate] real AR photos: %d of %d subjects (%s), aligned by %s (%d "
               "subject-sessions without dlib points: %s) (%.1fs)", len(ar.kinds),
               len(np.unique(ar.subjects)), settings.subjects, settings.alignment,
               len(fallback), fallback, time.time() - t)
  return dataclasses.replace(sets, extra={**sets.extra, KEY: ar, f"{KEY}_centre": centre})


def _features(features, sets) -> dict:
  return {k: features(sets.extra[k].images) for k in (KEY, f"{KEY}_centre")
          if sets.extra.get(k) is not None}


def _locate(config, sets, flags: dict, predict, workdir: str, settings: Settings) -> dict:
  """Adds the photos' flags per way of locating to ``flags``; returns the detector's scores on
  them for results.json, and draws its contact sheet (research-only: it stays in the run)."""
  del settings
  o, ar = config.occlusion, sets.extra[KEY]
  flags[KEY], scores, pred = ar_real_flags(ar, o.min_overlap, o.overlap, predict,
                                           config.data.alignment)
  if pred is not None and jax.process_index() == 0:
    pick = np.concatenate([np.flatnonzero(ar.kinds == k)[::97][:4]
                           for k in ("sunglasses", "scarf", "neutral", "light")])
    visualize.detection_sheet(ar.images[pick], pred[pick], workdir_lib.stage_file(
        workdir, workdir_lib.EVALUATE, "ar_real_detections.png"),
                              true_masks=ar.masks[pick], min_overlap=o.min_overlap,
                              overlap=o.overlap, names=[ar.paths[i] for i in pick])
  return {"detector_on_ar_real": scores} if scores else {}


def _sizes(ctx: evaluators.Context) -> list[int]:
  """The distractor counts of the curve (all of them last); [] without a distractor store."""
  settings = ctx.settings[KEY]
  if ctx.distractors is None or not settings.distractor_sizes:
    return []
  n = ctx.distractors.num_faces
  return [int(s) for s in settings.distractor_sizes if int(s) < n] + [n]


def _run(ctx: evaluators.Context, model: evaluators.Model) -> dict:
  """Rank-1 per way of locating and gallery protocol, the gallery embedded under each probe's
  FDM; the same among the first N distractors (``_sizes``); the clean probes of the
  centre-cropped photos (alignment check)."""
  ar = ctx.sets.extra.get(KEY)
  if ar is None or KEY not in ctx.flags:  # e.g. the "(detector)" rows: located inside
    return {}
  u = ctx.feats[KEY]
  galleries, probes = ar_real_sets(ar)
  sizes = _sizes(ctx)
  res = {"subjects": {"split": ctx.settings[KEY].subjects,
                      "count": int(len(np.unique(ar.subjects)))}}
  hits = {}
  ask = lambda emb, fl, g: search.identify(  # noqa: E731
      ctx.searcher, model.variables, model.table, emb, fl, g, model.clean_variables)
  for loc, fl in ctx.flags[KEY].items():
    for cond, idx in probes.items():
      emb = model.embed(ctx, u[idx], fl[idx])
      best = {n: ask(emb, fl[idx], search.Prefix(ctx.distractors, n))[0][:, 0] for n in sizes}
      for p, g in galleries.items():
        score, top = ask(emb, fl[idx], search.ArrayGallery(u[g], ar.subjects[g]))
        right = ar.subjects[g][top[:, 0]] == ar.subjects[idx]
        res.setdefault(loc, {}).setdefault(p, {})[cond] = float(np.mean(right))
        hits[f"{KEY}/{loc}/{p}/{cond}"] = right
        for n in sizes:
          h = right & (score[:, 0] > best[n])
          hits[f"{KEY}/{loc}/{p}/{cond}/{n}"] = h
          res.setdefault("distractors", {"sizes": sizes}).setdefault(loc, {}).setdefault(
              p, {}).setdefault(cond, []).append(float(np.mean(h)))
  if f"{KEY}_centre" in ctx.feats:
    uc, none = ctx.feats[f"{KEY}_centre"], np.zeros((len(ar.kinds), ctx.flags["blocks"]), bool)
    idx = probes["clean"]
    for p, g in galleries.items():
      top = model.top1(ctx, search.ArrayGallery(uc[g], ar.subjects[g]), uc[idx], none[idx])
      res.setdefault("centre_crop", {})[p] = {"clean": float(np.mean(
          ar.subjects[g][top] == ar.subjects[idx]))}
  return {KEY: res, evaluators.HITS: hits}


def _distractor_lines(rows: dict, paired: dict) -> list[str]:
  """Per way of locating, rank-1 at 0 to all distractors, each cell with its paired difference
  to the Baseline (points, 95% interval)."""
  first = next(iter(rows.values()))
  if "distractors" not in first:
    return []
  sizes, pct = [0] + first["distractors"]["sizes"], tables.pct
  lines = [f"### Among {sizes[-1]:,} real distractors", "",
           "The galleries joined by every distractor of the evaluation's store; a probe is right "
           "at N distractors when its best gallery face is its subject and scores above the "
           "best of the first N distractors, both under the probe's FDM. In brackets: the "
           "difference to the Baseline at that size, paired bootstrap 95% interval (points). "
           "Figure: `evaluate/ar_real_distractors.png`.", ""]
  for loc in [k for k in _LOCATION_NAMES if k in first["distractors"]]:
    body = []
    for name, r in rows.items():
      for p in ("p1", "p2"):
        for cond in ("sunglasses", "scarf", "clean"):
          values = [r[loc][p][cond]] + r["distractors"][loc][p][cond]
          keys = [f"{KEY}/{loc}/{p}/{cond}"] + [f"{KEY}/{loc}/{p}/{cond}/{n}" for n in sizes[1:]]
          ivs = [paired.get(name, {}).get("Baseline", {}).get(k) for k in keys]
          body.append([name, f"{p.upper()} {cond}"] + [
              pct(v) + (f" ({tables.interval(iv)})" if iv else "") for v, iv in zip(values, ivs)])
    lines += [f"Occlusion located by: **{_LOCATION_NAMES[loc]}**", ""]
    lines += tables.table(["Model", "probes"] + [f"{n:,}" for n in sizes], body) + [""]
  return lines


def _figures(results: dict, workdir: str, sets, flags: dict) -> list[str]:
  del sets, flags
  rows = {n: r[KEY] for n, r in results["models"].items() if KEY in r and "distractors" in r[KEY]}
  if not rows:
    return []
  first = next(iter(rows.values()))["distractors"]
  loc = "detector" if "detector" in first else "ground_truth"
  panels = {f"{p.upper()} {c}": {n: [r[loc][p][c]] + r["distractors"][loc][p][c]
                                 for n, r in rows.items()}
            for p in ("p1", "p2") for c in ("sunglasses", "scarf", "clean")}
  path = workdir_lib.stage_file(workdir, workdir_lib.EVALUATE, "ar_real_distractors.png")
  return [visualize.curve_figure(panels, [0] + first["sizes"], path,
                                 f"AR real occlusions: rank-1 against the number of distractors "
                                 f"(occlusion located by {_LOCATION_NAMES[loc]})")]


def _section(results: dict) -> list[str]:
  """One table per way of locating the occlusion, each row with its paired difference to the
  Baseline; the alignment check; the detector's scores on the photos."""
  pct, m, paired = tables.pct, results["models"], results.get("paired", {})
  rows_with = {n: r[KEY] for n, r in m.items() if KEY in r}
  if not rows_with:
    return []
  first = next(iter(rows_with.values()))
  lines = ["## Real occlusions: AR sunglasses and scarves (paper Table 6)", "",
           f"Rank-1 of AR's own photos of {first['subjects']['count']} subjects "
           f"({first['subjects']['split']} subjects of the paper's split) wearing sunglasses and "
           "scarves (6 + 6 per subject) and of clean session-2 photos (7 per subject); gallery protocol 1: the 7 "
           "clean session-1 photos per subject, protocol 2: the session-1 neutral photo. The "
           "gallery is embedded under each probe's FDM. In brackets: the difference to the "
           "Baseline with its paired bootstrap 95% interval (points).", ""]
  cols = [(p, c) for p in ("p1", "p2") for c in ("sunglasses", "scarf", "clean")]
  for loc in [k for k in _LOCATION_NAMES if k in first]:
    lines += [f"Occlusion located by: **{_LOCATION_NAMES[loc]}**", ""]
    body = []
    for name, r in rows_with.items():
      cells = []
      for p, c in cols:
        iv = paired.get(name, {}).get("Baseline", {}).get(f"{KEY}/{loc}/{p}/{c}")
        cells.append(pct(r[loc][p][c]) + (f" ({tables.interval(iv)})" if iv else ""))
      body.append([name] + cells)
    lines += tables.table(["Model"] + [f"{p.upper()} {c}" for p, c in cols], body) + [""]
  if "centre_crop" in first:
    lines += ["Alignment check, rank-1 of the clean session-2 probes (P1 / P2): "
              + "; ".join(f"{n}: centre crop {pct(r['centre_crop']['p1']['clean'])} / "
                          f"{pct(r['centre_crop']['p2']['clean'])}, aligned by landmarks "
                          f"{pct(r['ground_truth']['p1']['clean'])} / "
                          f"{pct(r['ground_truth']['p2']['clean'])}"
                          for n, r in rows_with.items() if "PDSN" not in n)
              + ".", ""]
  det = results.get("detector_on_ar_real")
  if det:
    lines += ["The detector on the real AR photos, against the ground-truth masks "
              "(data/ar_photos.py):", ""]
    lines += tables.table(
        ["photos", "mean IU", "block accuracy", "whole pattern right",
         "category blocks' block accuracy"],
        [[k, pct(det[k]["mean_iu"]), pct(det[k]["block_accuracy"]),
          pct(det[k]["image_block_pattern_accuracy"]), pct(det[k]["category_block_accuracy"])]
         for k in ("sunglasses", "scarf")])
    c = det["clean"]
    lines += ["", f"Clean AR photos: predicted occluded area {pct(c['predicted_area'])}%, "
              f"some block flagged on {pct(c['any_block_flagged'])}% of them. Contact sheet: "
              "`evaluate/ar_real_detections.png` (research-only data: keep it in the run).", ""]
  return lines + _distractor_lines(rows_with, paired)


PROTOCOL = evaluators.Protocol(
    run=_run, section=_section, title="AR real", settings=Settings, inputs=_inputs,
    features=_features, locate=_locate, figures=_figures, ablations=False,
    distractor_store=True, paired_in_section=True)
