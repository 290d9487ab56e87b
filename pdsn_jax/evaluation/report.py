"""results.md / results.json and the evaluation figures (PIL only) from the evaluate stage."""

import json
import os

import numpy as np
from PIL import Image, ImageDraw

from pdsn_jax import files
from pdsn_jax.data import occlusion
from pdsn_jax.evaluation import tables
from pdsn_jax import workdir as workdir_lib
from pdsn_jax.workdir import RESULTS

RESULTS_MD, RESULTS_JSON = RESULTS
_COLOURS = [(90, 90, 90), (230, 150, 40), (40, 110, 200), (40, 170, 90), (180, 60, 160)]


_pct = tables.pct


def one_line(res: dict, protocols) -> str:
  """A row's headline numbers, for the log."""
  return " | ".join(f"{h} {_pct(v)}" for p in protocols for h, v in p.columns(res).items())


def _ablation_table(label: str, entries: dict, protocols) -> list[str]:
  cols = [p.columns for p in protocols if p.ablations]
  first = {h: v for c in cols for h, v in c(next(iter(entries.values()))).items()}
  rows = [[key] + [_pct({h: v for c in cols for h, v in c(r).items()}[h]) for h in first]
          for key, r in entries.items()]
  return tables.table([label] + list(first), rows)


def _paired_section(paired: dict, protocols: dict) -> list[str]:
  """Each row minus each reference row on every column of the protocols that do not print
  their own: paired bootstrap 95% intervals over the same pairs or probes."""
  lines = ["## Paired differences", "",
           "Each row minus the reference, in points, with its paired bootstrap 95% interval "
           "over the same pairs (verification: each pair's decision at its fold's threshold) "
           "or probes (rank-1). An interval that excludes 0 is a difference; one that does not "
           "is within noise.", ""]
  refs = sorted({ref for r in paired.values() for ref in r}, key=lambda r: r != "Baseline")
  for ref in refs:
    rows = {n: r[ref] for n, r in paired.items() if ref in r}
    keys, names = [], []
    for k in next(iter(rows.values())):
      key, _, column = k.partition("/")
      p = protocols.get(key)
      if p is not None and not p.paired_in_section:
        keys.append(k)
        names.append(f"{p.title or key} {column}")
    if not keys:
      continue
    lines += [f"Against **{ref}**:", ""]
    lines += tables.table(["Model"] + names, [[n] + [tables.interval(r[k]) if k in r else ""
                                                     for k in keys] for n, r in rows.items()])
    lines.append("")
  return lines


def markdown(results: dict, protocols: dict) -> str:
  """results.md: what made the numbers, each protocol's section (``protocols``: name ->
  ``evaluators.Protocol``, in ``eval.protocols`` order), the paired differences, the detector
  on the probes, Tables 1-3."""
  m = results["models"]
  lines = ["# Results", "", f"Data: {results['data']}. Occlusion located from: "
           f"{results['occlusion_source']}. Test occluders: {results.get('test_occluders', '')}. All numbers in %; verification is 10-fold accuracy "
           "(threshold chosen on the other 9 folds) ± std over folds; the second image of "
           "every pair is occluded in the occluded columns; identification is rank-1.", ""]
  prov = results.get("provenance")
  if prov:  # which config made these numbers: the stages' records (provenance.json)
    lines += [f"Config: evaluate/config.json (provenance {prov['evaluate']}); the stages' "
              "records: " + ", ".join(f"{k} {v}" for k, v in prov["stages"].items()) + ".", ""]
  splits = results.get("occluder_splits") or {}
  if splits:
    lines += ["Occluder files by split (no file in two): " + "; ".join(
        f"{k} ({len(v)}): {', '.join(v) or 'none'}" for k, v in splits.items()) + ".", ""]
  lines += [f"Note: {n}" for n in results.get("notes", [])] + ([""] if results.get("notes") else [])
  if results.get("missing"):
    lines += [f"Left out (their stage did not run): {', '.join(results['missing'])}.", ""]
  for p in protocols.values():
    lines += p.section(results)
  if results.get("paired"):
    lines += _paired_section(results["paired"], protocols)
  det = results.get("detector_on_probes")
  if det:
    lines += ["## The occlusion detector on the evaluation probes", "",
              "Rows \"(detector)\" above locate the occlusion with the trained detector instead "
              "of the synthesizer's masks. Its agreement with those masks:", "",
              "| probes | mean IU | pixel accuracy | block accuracy | whole pattern right |",
              "|---|---|---|---|---|"]
    for k, r in det.items():
      lines.append(f"| {k} | {_pct(r['mean_iu'])} | {_pct(r['pixel_accuracy'])} | "
                   f"{_pct(r['block_accuracy'])} | {_pct(r['image_block_pattern_accuracy'])} |")
    lines.append("")
  ab = results.get("ablations") or {}
  if ab.get("tau"):
    lines += ["## Table 1: tau (share of U discarded per dictionary item), PDSN on the trunk", ""]
    lines += _ablation_table("tau", ab["tau"], protocols.values()) + [""]
  if ab.get("mask_kind"):
    lines += (["## Table 2: mask kind", ""]
              + _ablation_table("mask", ab["mask_kind"], protocols.values()) + [""])
  if ab.get("lambda"):
    lines += ["## Table 3: differential supervision", ""]
    lines += _ablation_table("generators", ab["lambda"], protocols.values()) + [""]
  bars = (", `evaluate/occluded_verification.png`"
          if any("clean" in r for r in m.values()) else "")
  lines += ["Figures: `evaluate/probes.png` (probes per condition, blocks marked occluded in "
            f"red){bars}, `dictionary/dictionary.png`.",
            f"Evaluation took {results.get('seconds', 0)} s.", ""]
  return "\n".join(lines)


def summary(results: dict, protocols) -> str:
  out = ["", "=" * 30 + " results " + "=" * 30]
  for name, r in results["models"].items():
    out.append(f"{name:>18}: {one_line(r, protocols)}")
  return "\n".join(out)


def probes_figure(sets, flags: dict, path: str, num: int = 4) -> str:
  """Rows: pairs; columns: the clean first face, then the second face under every condition
  with the generator blocks counted as occluded outlined in red."""
  boxes = occlusion.block_boxes(sets.pair_faces.shape[1:3])
  rows = []
  for i in range(min(num, len(sets.pairs))):
    cells = [sets.pair_faces[sets.pairs[i, 0]]]
    for cond, occ in sets.occluded_second.items():
      img = Image.fromarray(occ.images[i])
      d = ImageDraw.Draw(img)
      for k, b in enumerate(occlusion.CENTRAL_BLOCKS):
        if flags["second"][cond][i, k]:
          y0, x0, y1, x1 = boxes[b]
          d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 0, 0))
      cells.append(np.asarray(img))
    rows.append(np.concatenate([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255)
                                for c in cells], 1))
  from pdsn_jax.visualize import save_with_header  # pylint: disable=g-import-not-at-top
  return save_with_header(np.concatenate(rows, 0), ["clean"] + list(sets.occluded_second), path)


def bar_figure(models: dict, path: str, lo: float = 0.5) -> str:
  """Grouped bars: verification accuracy per condition (clean + occluded), one bar per model."""
  conds = ["clean"] + list(next(iter(models.values()))["occluded"])
  names = list(models)
  gw, bw, h, top = 20 + 16 * len(names), 14, 220, 30
  img = Image.new("RGB", (60 + gw * len(conds), h + 60 + 14 * len(names)), (255, 255, 255))
  d = ImageDraw.Draw(img)
  for t in range(5):  # y grid from lo to 1
    v = lo + (1 - lo) * t / 4
    y = top + h - int((v - lo) / (1 - lo) * h)
    d.line([50, y, img.width - 5, y], fill=(225, 225, 225))
    d.text((5, y - 6), f"{100 * v:.0f}%", fill=(0, 0, 0))
  for ci, c in enumerate(conds):
    x0 = 60 + ci * gw
    for mi, n in enumerate(names):
      r = models[n]["clean"] if c == "clean" else models[n]["occluded"][c]
      y = top + h - int((max(r["accuracy"], lo) - lo) / (1 - lo) * h)
      d.rectangle([x0 + mi * (bw + 2), y, x0 + mi * (bw + 2) + bw, top + h],
                  fill=_COLOURS[mi % len(_COLOURS)])
    d.text((x0, top + h + 4), c, fill=(0, 0, 0))
  d.text((5, 5), "verification accuracy, second image occluded", fill=(0, 0, 0))
  for mi, n in enumerate(names):
    y = top + h + 22 + 14 * mi
    d.rectangle([60, y, 70, y + 10], fill=_COLOURS[mi % len(_COLOURS)])
    d.text((76, y - 1), n, fill=(0, 0, 0))
  with files.atomic_path(path) as tmp:  # never half a picture
    img.save(tmp)
  return path


def write(results: dict, sets, flags: dict, workdir: str, protocols: dict) -> list[str]:
  """results.json, results.md (workdir) and the figures (workdir/evaluate); returns the paths."""
  figure = lambda name: workdir_lib.stage_file(workdir, workdir_lib.EVALUATE, name)  # noqa: E731
  os.makedirs(workdir_lib.stage_dir(workdir, workdir_lib.EVALUATE), exist_ok=True)
  md, js = workdir_lib.results_files(workdir)
  paths = [js, md]
  for p, text in zip(paths, (json.dumps(results, indent=2), markdown(results, protocols))):
    files.atomic_write(p, text)
  paths.append(probes_figure(sets, flags, figure("probes.png")))
  if any("clean" in r for r in results["models"].values()):
    paths.append(bar_figure({n: r for n, r in results["models"].items() if "clean" in r},
                            figure("occluded_verification.png")))
  for p in protocols.values():
    if p.figures is not None:
      paths += p.figures(results, workdir)
  return paths


def compare(workdirs: list[str]) -> str:
  """A markdown table of every model's clean and occluded verification accuracy across runs
  (each ``<workdir>/results.json``): ``python -m pdsn_jax.evaluation.report RUN [RUN ...]``."""
  rows, conds = [], None
  for wd in workdirs:
    with open(workdir_lib.results_files(wd)[1], encoding="utf-8") as f:
      res = json.load(f)
    for name, r in res["models"].items():
      if "clean" not in r:
        continue
      conds = conds or list(r["occluded"])
      rows.append([os.path.basename(os.path.normpath(wd)), name, _pct(r["clean"]["accuracy"])] +
                  [_pct(r["occluded"][c]["accuracy"]) for c in conds] + [_pct(np.mean([v['accuracy'] for v in r['occluded'].values()]))])
  head = ["run", "model", "clean"] + (conds or []) + ["occluded mean"]
  return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                   ["| " + " | ".join(r) + " |" for r in rows])


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  if len(sys.argv) < 2:
    sys.exit("usage: python -m pdsn_jax.evaluation.report RUN_DIR [RUN_DIR ...]")
  print(compare(sys.argv[1:]))
