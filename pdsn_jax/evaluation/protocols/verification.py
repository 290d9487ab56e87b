"""Pair verification (10-fold), clean and with the second face occluded per condition (the
FROM protocol): its accuracies, TAR@FAR=1e-3 and the mean fold thresholds the ``verify``
command decides with (``evaluators.pop_thresholds``).

Its pairs are generated from the held-out faces (``eval.num_pairs``, ``eval.seed``), or read
from an insightface ``.bin`` (``pairs_bin``) or an LFW-format ``pairs.txt`` (``pairs_file``
with ``pairs_root``, ``pairs_pattern``, ``pairs_landmarks``).
"""

import dataclasses

import numpy as np

from pdsn_jax import visualize
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.data import insightface, pairs as pairs_lib, placement, sources
from pdsn_jax.evaluation import evaluators, tables, verification
from pdsn_jax.evaluation import sets as sets_lib

KEY = "verification"


@dataclasses.dataclass(frozen=True)
class Settings:
  # the occluded copies of each pair's second face (placement.CONDITIONS)
  conditions: tuple = ("sunglasses", "mask", "hand", "object", "blocks")
  pairs_file: str = ""  # an LFW-format pairs.txt (data.source="folders"); "" = generated pairs
  pairs_root: str = ""  # folder the pairs file's images are under; "" = data.folders.root
  pairs_pattern: str = "{name}/{name}_{num:04d}.jpg"  # image path of (name, number)
  pairs_landmarks: str = ""  # landmarks TSV of the pairs' images; "" = data.folders.landmarks
  pairs_bin: str = ""  # an insightface verification .bin (lfw.bin, cfp_fp.bin, agedb_30.bin)

  def check(self, where: str) -> None:
    bad = [c for c in self.conditions if c not in placement.CONDITIONS]
    if bad or not self.conditions:
      raise ValueError(f"{where}.conditions={tuple(self.conditions)!r}: allowed values "
                       f"{placement.CONDITIONS}")



def _inputs(config, sets: sets_lib.EvalSets, settings: Settings) -> sets_lib.EvalSets:
  cfg, d, conditions = config.eval, config.data, tuple(settings.conditions)
  if settings.pairs_bin:
    faces, idx, issame = insightface.read_verification_bin(settings.pairs_bin, d.image_size)
  elif settings.pairs_file:
    named, issame = pairs_lib.read_lfw_pairs(settings.pairs_file, settings.pairs_pattern)
    faces, idx = sources.load_pair_images(
        named, settings.pairs_root or d.folders.root,
        settings.pairs_landmarks or d.folders.landmarks, d.image_size, d.alignment)
  else:
    faces, (idx, issame) = sets.faces, sets_lib.generated_pairs(sets, cfg.num_pairs, cfg.seed)
  return sets_lib.with_pairs(sets, faces, idx, issame, sets.library, cfg.seed, conditions)


def _verification(scores, issame, hits: dict, key: str) -> dict:
  r = verification.report(scores, issame)
  hits[key] = r["correct"]
  return {"accuracy": r["accuracy"], "std": r["std"], "tar_at_far_1e-3": r["tar_at_far_1e-3"],
          "negatives": r["negatives"],
          # taken out into evaluate/thresholds.json (the commands' decision thresholds)
          evaluators.THRESHOLDS: float(np.mean(r["thresholds"]))}


def _run(ctx: evaluators.Context, model: evaluators.Model) -> dict:
  """10-fold verification of the pairs clean, and with the second image occluded per
  condition; both faces under the FDM of the blocks occluded in either (the first is clean)."""
  sets, u = ctx.sets, ctx.feats["pair_faces"]
  pa, pb = sets.pairs[:, 0], sets.pairs[:, 1]
  none = np.zeros((len(pa), ctx.flags["blocks"]), bool)
  ea, eb = model.embed(ctx, u[pa], none), model.embed(ctx, u[pb], none)
  hits: dict = {}
  out = {"clean": _verification(np.sum(ea * eb, 1), sets.issame, hits, f"{KEY}/clean"),
         "occluded": {}, evaluators.HITS: hits}
  for cond, fl in ctx.flags["second"].items():
    ea, eb = model.embed(ctx, u[pa], fl), model.embed(ctx, ctx.feats["second"][cond], fl)
    out["occluded"][cond] = _verification(np.sum(ea * eb, 1), sets.issame, hits,
                                          f"{KEY}/{cond}")
  return out


def _occluded_mean(r: dict) -> float:
  return float(np.mean([v["accuracy"] for v in r["occluded"].values()]))


def _section(results: dict) -> list[str]:
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


def _columns(r: dict) -> dict:
  if "clean" not in r:
    return {}
  return {"clean": r["clean"]["accuracy"], "occluded mean": _occluded_mean(r),
          **{c: v["accuracy"] for c, v in r["occluded"].items()}}


def _figures(results: dict, workdir: str, sets, flags: dict) -> list[str]:
  """A few pairs with the blocks counted as occluded, and the accuracies as bars."""
  figure = lambda name: workdir_lib.stage_file(workdir, workdir_lib.EVALUATE, name)  # noqa: E731
  paths = [visualize.probes_figure(sets, flags, figure("probes.png"))] if len(sets.pairs) else []
  rows = {n: r for n, r in results["models"].items() if "clean" in r}
  if rows:
    paths.append(visualize.bar_figure(rows, figure("occluded_verification.png")))
  return paths


def _describe(settings: Settings) -> str:
  pairs = settings.pairs_bin or settings.pairs_file
  return f"verification pairs from {pairs}" if pairs else ""


PROTOCOL = evaluators.Protocol(run=_run, section=_section, columns=_columns, title=KEY,
                               settings=Settings, inputs=_inputs, figures=_figures,
                               describe=_describe)
