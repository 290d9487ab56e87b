"""MegaFace's curve on real faces: rank-1 of LFW probes, clean and occluded, against 0 to every
distractor no stage trains on.

* Probes (FaceScrub-like): every ``probe_every``-th LFW identity with at least 2
  images (sorted by name); its first image is the clean gallery, the others are probes, clean
  and with the test occluder files' sunglasses and masks pasted in place.
* Distractors: every other LFW image (the other identities, whatever their count) and the
  distractor pool of the evaluation (``eval.num_distractors`` of the training source's
  distractor identities), shuffled once (``eval.seed``) into the evaluation's int8 store, so
  every curve point is a prefix of the same faces: rank-1 can only fall along the curve.
* A probe is right at N distractors when its best gallery face is its identity and scores above
  the best of the first N distractors, both embedded under the probe's FDM. The occlusion is
  located by the detector (what a user gets) and by the ground truth (oracle location).

LFW's images are named ``<Identity_Name>_<NNNN>.<ext>`` in one folder (``../shared/data/lfw``);
its ``landmarks`` TSV aligns them. The curve is drawn to ``evaluate/lfw_distractors.png``.
"""

import dataclasses
import os
import re

import numpy as np

from pdsn_jax import visualize
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.data import occlusion
from pdsn_jax.data.alignment import align_face
from pdsn_jax.faces.finding import list_images
from pdsn_jax.data.folders import load_rgb, read_landmarks
from pdsn_jax.data.sources import Subset
from pdsn_jax.evaluation import evaluators, tables
from pdsn_jax.gallery import search
from pdsn_jax.evaluation import sets as sets_lib

KEY = "lfw_distractors"
CONDITIONS = ("clean", "sunglasses", "mask")
_LOCATIONS = {"detector": "detector", "ground_truth": "ground truth (oracle location)"}
_NAME = re.compile(r"^(.+)_\d+$")


@dataclasses.dataclass(frozen=True)
class Settings:
  root: str = ""  # LFW's flat image folder (<Identity_Name>_<NNNN>.jpg)
  landmarks: str = ""  # its landmarks TSV
  probe_every: int = 2  # every this-th identity with >= 2 images is probed
  sizes: tuple = (10, 100, 1000)  # rank-1 at these distractor counts (and 0 and all)

  def check(self, where: str) -> None:
    for key in ("root", "landmarks"):
      if not getattr(self, key):
        raise ValueError(f"{where}.{key} is empty: set it (see configs/real_mobilefacenet.py)")
    if int(self.probe_every) < 1 or any(int(n) <= 0 for n in self.sizes):
      raise ValueError(f"{where}: probe_every={self.probe_every!r} and every size "
                       f"{tuple(self.sizes)!r} must be > 0")


def _points(marks: dict, path: str):
  """The landmarks TSV's points of a photo (its keys are absolute paths), None: centre crop."""
  return marks.get(os.path.normpath(os.path.abspath(path)))


class AlignedFaces:
  """Photos aligned by their landmarks on access (a random-access source: ``[i]["image"]``)."""

  def __init__(self, paths, labels, marks: dict, size, template: str, description: str):
    self.paths, self.labels = list(paths), np.asarray(labels, np.int32)
    self.marks, self.size, self.template = marks, tuple(size), template
    self.num_classes, self.description = len(np.unique(self.labels)), description

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, i: int) -> dict:
    p = self.paths[int(i)]
    return {"image": align_face(load_rgb(p), _points(self.marks, p), self.size, self.template),
            "label": self.labels[int(i)]}


class Concat:
  """Sources one after the other, labels kept apart."""

  def __init__(self, parts):
    self.parts = [p for p in parts if len(p)]
    self._starts = np.cumsum([0] + [len(p) for p in self.parts])
    offsets = np.cumsum([0] + [int(np.max(p.labels)) + 1 for p in self.parts])
    self.labels = np.concatenate([np.asarray(p.labels) + o
                                  for p, o in zip(self.parts, offsets)]).astype(np.int32)
    self.num_classes = int(offsets[-1])
    self.description = " + ".join(getattr(p, "description", "") for p in self.parts)

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __getitem__(self, i: int) -> dict:
    k = int(np.searchsorted(self._starts, int(i), side="right")) - 1
    return self.parts[k][int(i) - int(self._starts[k])]


def split(paths: list[str], every: int) -> tuple[list[int], list[int], list[int], np.ndarray]:
  """(gallery, probes, distractors) indices into ``paths`` and each path's identity number."""
  names = []
  for p in paths:
    m = _NAME.match(os.path.splitext(os.path.basename(p))[0])
    if m is None:
      raise ValueError(f"{p}: LFW names its images <Identity_Name>_<NNNN>.jpg")
    names.append(m.group(1))
  _, label = np.unique(np.asarray(names), return_inverse=True)
  order = np.argsort(label, kind="stable")
  groups = np.split(order, np.flatnonzero(np.diff(label[order])) + 1)
  probed = {id(g) for g in [g for g in groups if len(g) >= 2][::every]}
  gallery, probes, distractors = [], [], []
  for g in groups:
    if id(g) in probed:
      gallery.append(int(g[0]))
      probes += [int(i) for i in g[1:]]
    else:
      distractors += [int(i) for i in g]
  return gallery, probes, distractors, label


def _inputs(config, sets, settings: Settings):
  cfg, d = config.eval, config.data
  paths = list_images(settings.root)
  marks = read_landmarks(settings.landmarks)
  gallery, probes, others, label = split(paths, int(settings.probe_every))
  align = lambda idx: np.stack([align_face(load_rgb(paths[i]), _points(marks, paths[i]),  # noqa: E731
                                           tuple(d.image_size), d.alignment) for i in idx])
  probe_faces = align(probes)
  occluded = {c: sets_lib.occlude_all(probe_faces, c, sets.library, cfg.seed, 300 + k)
              for k, c in enumerate(CONDITIONS[1:])}
  lfw_others = AlignedFaces([paths[i] for i in others], label[others], marks, d.image_size,
                            d.alignment, f"LFW ({len(others)} images of identities not probed)")
  pool = Concat([lfw_others, sets.distractors])
  shuffled = Subset(pool, np.random.default_rng([cfg.seed, 31]).permutation(len(pool)))
  mine = {"gallery": align(gallery), "gallery_labels": label[gallery],
          "probes": probe_faces, "probe_labels": label[probes], "occluded": occluded,
          "lfw_distractors": len(others),
          "sizes": tuple(int(n) for n in settings.sizes)}
  return dataclasses.replace(sets, distractors=shuffled, extra={**sets.extra, KEY: mine})


def _features(features, sets) -> dict:
  mine = sets.extra[KEY]
  out = {f"{KEY}/gallery": features(mine["gallery"]),
         f"{KEY}/clean": features(mine["probes"])}
  out.update({f"{KEY}/{c}": features(o.images) for c, o in mine["occluded"].items()})
  return out


def _locate(config, sets, flags: dict, predict, workdir: str, settings: Settings) -> dict:
  del workdir, settings
  o, mine = config.occlusion, sets.extra[KEY]
  none = np.zeros((len(mine["probes"]), occlusion.NUM_GENERATORS), bool)
  sources = ["ground_truth"] + (["detector"] if predict is not None else [])
  flags[KEY] = {}
  for source in sorted(sources, key=list(_LOCATIONS).index):
    flags[KEY][source] = {"clean": none, **{
        c: occlusion.block_flags(sets_lib.locate(occ, source, predict), o.min_overlap,
                                 o.overlap) for c, occ in mine["occluded"].items()}}
  return {}


def _sizes(ctx) -> list[int]:
  n = ctx.distractors.num_faces
  return [0] + [s for s in ctx.sets.extra[KEY]["sizes"] if s < n] + [n]


def _run(ctx: evaluators.Context, model: evaluators.Model) -> dict:
  if KEY not in ctx.flags or ctx.distractors is None:  # "(detector)" rows: located inside
    return {}
  mine, feats = ctx.sets.extra[KEY], ctx.feats
  gallery = search.ArrayGallery(feats[f"{KEY}/gallery"], mine["gallery_labels"])
  sizes = _sizes(ctx)
  res = {"sizes": sizes, "probes": len(mine["probes"]),
         "lfw_distractors": mine["lfw_distractors"]}
  hits = {}
  for loc, by_cond in ctx.flags[KEY].items():
    for cond, fl in by_cond.items():
      emb = model.embed(ctx, feats[f"{KEY}/{cond}"], fl)
      ask = lambda g: search.identify(ctx.searcher, model.variables, model.table,  # noqa: E731
                                      emb, fl, g, model.clean_variables)
      g_score, g_idx = ask(gallery)
      right = mine["gallery_labels"][g_idx[:, 0]] == mine["probe_labels"]
      for n in sizes:
        d_score = ask(search.Prefix(ctx.distractors, n))[0][:, 0] if n else -np.inf
        h = right & (g_score[:, 0] > d_score)
        hits[f"{KEY}/{loc}/{n}/{cond}"] = h
        res.setdefault(loc, {}).setdefault(cond, []).append(float(np.mean(h)))
  return {KEY: res, evaluators.HITS: hits}


def _section(results: dict) -> list[str]:
  rows = {n: r[KEY] for n, r in results["models"].items() if KEY in r}
  if not rows:
    return []
  paired, first = results.get("paired", {}), next(iter(rows.values()))
  sizes, pct = first["sizes"], tables.pct
  lines = [f"## Real distractors: MegaFace's curve on LFW ({first['probes']} probes, up to "
           f"{sizes[-1]:,} distractors)", "",
           f"Rank-1 of LFW probes against one clean gallery image per identity plus the first N "
           f"of {sizes[-1]:,} real distractors no stage trains on ({first['lfw_distractors']:,} "
           f"LFW images of other identities, the rest from the training source's distractor "
           f"identities), both under the probe's FDM. Last column: the difference to the "
           f"Baseline at every distractor, with its paired bootstrap 95% interval (points). "
           f"Figure: `evaluate/lfw_distractors.png`.", ""]
  for loc, title in _LOCATIONS.items():
    if loc not in first:
      continue
    body = []
    for name, r in rows.items():
      for cond in CONDITIONS:
        iv = paired.get(name, {}).get("Baseline", {}).get(f"{KEY}/{loc}/{sizes[-1]}/{cond}")
        body.append([name, cond] + [pct(v) for v in r[loc][cond]]
                    + [tables.interval(iv) if iv else ""])
    lines += [f"Occlusion located by: **{title}**", ""]
    lines += tables.table(["Model", "probes"] + [f"{n:,}" for n in sizes]
                          + ["vs Baseline, all"], body) + [""]
  return lines


def _figures(results: dict, workdir: str, sets, flags: dict) -> list[str]:
  del sets, flags
  rows = {n: r[KEY] for n, r in results["models"].items() if KEY in r}
  if not rows:
    return []
  first = next(iter(rows.values()))
  loc = "detector" if "detector" in first else "ground_truth"
  panels = {c: {n: r[loc][c] for n, r in rows.items()} for c in CONDITIONS}
  path = workdir_lib.stage_file(workdir, workdir_lib.EVALUATE, f"{KEY}.png")
  return [visualize.curve_figure(panels, first["sizes"], path,
                                 f"LFW rank-1 against the number of distractors (occlusion "
                                 f"located by {_LOCATIONS[loc]})")]


PROTOCOL = evaluators.Protocol(
    run=_run, section=_section, title="LFW distractors", settings=Settings,
    inputs=_inputs, features=_features,
    locate=_locate, ablations=False, distractor_store=True, paired_in_section=True,
    figures=_figures)
