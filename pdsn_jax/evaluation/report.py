"""results.md / results.json and the evaluation figures (PIL only) from the evaluate stage."""

import json
import os

import numpy as np
from PIL import Image, ImageDraw

from pdsn_jax import files
from pdsn_jax.data import occlusion
from pdsn_jax.evaluation import verification
from pdsn_jax import workdir as workdir_lib
from pdsn_jax.workdir import RESULTS

RESULTS_MD, RESULTS_JSON = RESULTS
_COLOURS = [(90, 90, 90), (230, 150, 40), (40, 110, 200), (40, 170, 90), (180, 60, 160)]


def _pct(x: float) -> str:
  return f"{100 * x:.2f}"


def _occ_mean(res: dict) -> float:
  return float(np.mean([v["accuracy"] for v in res["occluded"].values()]))


# rank-1 columns of the protocols with pasted occluders (the real AR photos: _ar_real_section)
_AR = (("ar_p1", "AR-style (pasted) P1"), ("ar_p2", "AR-style (pasted) P2"))


def one_line(res: dict) -> str:
  occ = ", ".join(f"{c} {_pct(v['accuracy'])}" for c, v in res["occluded"].items())
  ar = ", ".join(f"{p}/{c} {_pct(v)}" for p, _ in _AR for c, v in res.get(p, {}).items())
  return f"clean {_pct(res['clean']['accuracy'])}% | occluded {occ}" + (
      f" | rank-1 {ar}" if ar else "")


def _ar_columns(first: dict) -> list[tuple[str, str, str]]:
  """(protocol, condition, header) of every AR-style rank-1 column the results have."""
  return [(p, c, f"{title} {c}") for p, title in _AR for c in first.get(p, {})]


def _verification_table(models: dict) -> list[str]:
  conds = list(next(iter(models.values()))["occluded"])
  head = ["Model", "clean", "clean TAR@FAR=1e-3"] + conds + ["occluded mean"]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in models.items():
    cells = [name, f"{_pct(r['clean']['accuracy'])} ± {_pct(r['clean']['std'])}",
             verification.format_tar(r["clean"]["tar_at_far_1e-3"], r["clean"]["negatives"])]
    cells += [f"{_pct(r['occluded'][c]['accuracy'])} ± {_pct(r['occluded'][c]['std'])}"
              for c in conds]
    cells.append(_pct(_occ_mean(r)))
    rows.append("| " + " | ".join(cells) + " |")
  return rows


def _identification_table(models: dict) -> list[str]:
  first = next(iter(models.values()))
  ar = _ar_columns(first)
  head = ["Model"] + [h for _, _, h in ar]
  dist = [k for k in first.get("distractors", {}) if k != "num_distractors"]
  if dist:
    n = first["distractors"]["num_distractors"]
    head += [f"+{n} distractors: {c}" for c in dist]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in models.items():
    cells = [name] + [_pct(r[p][c]) for p, c, _ in ar]
    cells += [_pct(r["distractors"][c]) for c in dist] if dist else []
    rows.append("| " + " | ".join(cells) + " |")
  return rows


def _ablation_table(label: str, entries: dict) -> list[str]:
  first = next(iter(entries.values()))
  conds = list(first["occluded"])
  ar = _ar_columns(first)
  head = [label, "clean", "occluded mean"] + conds + [h for _, _, h in ar]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for key, r in entries.items():
    cells = [key, _pct(r["clean"]["accuracy"]), _pct(_occ_mean(r))]
    cells += [_pct(r["occluded"][c]["accuracy"]) for c in conds]
    cells += [_pct(r[p][c]) for p, c, _ in ar]
    rows.append("| " + " | ".join(cells) + " |")
  return rows


_LOCATIONS = {"detector": "detector", "category": "category blocks",
              "ground_truth": "ground truth (oracle location)"}


def _interval(iv: dict) -> str:
  return f"{100 * iv['diff']:+.1f} [{100 * iv['lo']:+.1f}, {100 * iv['hi']:+.1f}]"


def _ar_real_section(results: dict) -> list[str]:
  """The paper's Table 6 on AR's real sunglasses and scarves: one table per way of locating the
  occlusion, each row with its paired difference to the Baseline."""
  m, paired = results["models"], results.get("paired", {})
  rows_with = {n: r["ar_real"] for n, r in m.items() if "ar_real" in r}
  first = next(iter(rows_with.values()))
  lines = ["## Real occlusions: AR sunglasses and scarves (paper Table 6)", "",
           "Rank-1 of AR's own photos of people wearing sunglasses and scarves (6 + 6 per "
           "subject) and of clean session-2 photos (7 per subject); gallery protocol 1: the 7 "
           "clean session-1 photos per subject, protocol 2: the session-1 neutral photo. The "
           "gallery is embedded under each probe's FDM. In brackets: the difference to the "
           "Baseline with its paired bootstrap 95% interval (points).", ""]
  cols = [(p, c) for p in ("p1", "p2") for c in ("sunglasses", "scarf", "clean")]
  for loc in [k for k in _LOCATIONS if k in first]:
    lines += [f"Occlusion located by: **{_LOCATIONS[loc]}**", "",
              "| Model | " + " | ".join(f"{p.upper()} {c}" for p, c in cols) + " |",
              "|" + "---|" * (len(cols) + 1)]
    for name, r in rows_with.items():
      cells = []
      for p, c in cols:
        iv = paired.get(name, {}).get("Baseline", {}).get(f"ar_real/{loc}/{p}/{c}")
        cells.append(_pct(r[loc][p][c]) + (f" ({_interval(iv)})" if iv else ""))
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
  if "centre_crop" in first:
    lines += ["Alignment check, rank-1 of the clean session-2 probes (P1 / P2): "
              + "; ".join(f"{n}: centre crop {_pct(r['centre_crop']['p1']['clean'])} / "
                          f"{_pct(r['centre_crop']['p2']['clean'])}, aligned by landmarks "
                          f"{_pct(r['ground_truth']['p1']['clean'])} / "
                          f"{_pct(r['ground_truth']['p2']['clean'])}"
                          for n, r in rows_with.items() if "PDSN" not in n)
              + ".", ""]
  det = results.get("detector_on_ar_real")
  if det:
    lines += ["The detector on the real AR photos, against the ground-truth masks "
              "(data/ar_real.py):", "",
              "| photos | mean IU | block accuracy | whole pattern right | category blocks' "
              "block accuracy |", "|---|---|---|---|---|"]
    for k in ("sunglasses", "scarf"):
      r = det[k]
      lines.append(f"| {k} | {_pct(r['mean_iu'])} | {_pct(r['block_accuracy'])} | "
                   f"{_pct(r['image_block_pattern_accuracy'])} | "
                   f"{_pct(r['category_block_accuracy'])} |")
    c = det["clean"]
    lines += ["", f"Clean AR photos: predicted occluded area {_pct(c['predicted_area'])}%, "
              f"some block flagged on {_pct(c['any_block_flagged'])}% of them. Contact sheet: "
              "`evaluate/ar_real_detections.png` (research-only data: keep it in the run).", ""]
  return lines


_COLUMN_NAMES = (("verification/", "verification "), ("ar_p1/", "AR-style (pasted) P1 "),
                 ("ar_p2/", "AR-style (pasted) P2 "), ("distractors/", "distractors "))


def _paired_section(paired: dict) -> list[str]:
  """Each row minus each reference row on every column but the real AR ones (those are in
  their own tables): paired bootstrap 95% intervals over the same pairs or probes."""
  lines = ["## Paired differences", "",
           "Each row minus the reference, in points, with its paired bootstrap 95% interval "
           "over the same pairs (verification: each pair's decision at its fold's threshold) "
           "or probes (rank-1). An interval that excludes 0 is a difference; one that does not "
           "is within noise.", ""]
  refs = sorted({ref for r in paired.values() for ref in r}, key=lambda r: r != "Baseline")
  for ref in refs:
    rows = {n: r[ref] for n, r in paired.items() if ref in r}
    keys = [k for k in next(iter(rows.values())) if not k.startswith("ar_real/")]
    if not keys:
      continue
    names = []
    for k in keys:
      for prefix, title in _COLUMN_NAMES:
        k = k.replace(prefix, title) if k.startswith(prefix) else k
      names.append(k)
    lines += [f"Against **{ref}**:", "", "| Model | " + " | ".join(names) + " |",
              "|" + "---|" * (len(keys) + 1)]
    for n, r in rows.items():
      lines.append(f"| {n} | " + " | ".join(_interval(r[k]) if k in r else "" for k in keys)
                   + " |")
    lines.append("")
  return lines


def markdown(results: dict) -> str:
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
  if m:
    lines += ["## Verification", ""] + _verification_table(m) + [""]
    first = next(iter(m.values()))
    if _ar_columns(first) or "distractors" in first:
      lines += ["## Identification", ""] + _identification_table(m) + [""]
  if any("ar_real" in r for r in m.values()):
    lines += _ar_real_section(results)
  if results.get("paired"):
    lines += _paired_section(results["paired"])
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
    lines += _ablation_table("tau", ab["tau"]) + [""]
  if ab.get("mask_kind"):
    lines += ["## Table 2: mask kind", ""] + _ablation_table("mask", ab["mask_kind"]) + [""]
  if ab.get("lambda"):
    lines += ["## Table 3: differential supervision", ""]
    lines += _ablation_table("generators", ab["lambda"]) + [""]
  lines += ["Figures: `evaluate/probes.png` (probes per condition, blocks marked occluded in "
            "red), `evaluate/occluded_verification.png`, `dictionary/dictionary.png`.",
            f"Evaluation took {results.get('seconds', 0)} s.", ""]
  return "\n".join(lines)


def summary(results: dict) -> str:
  out = ["", "=" * 30 + " results " + "=" * 30]
  for name, r in results["models"].items():
    out.append(f"{name:>18}: {one_line(r)}")
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
  img.save(path)
  return path


def write(results: dict, sets, flags: dict, workdir: str) -> list[str]:
  """results.json, results.md (workdir) and the figures (workdir/evaluate); returns the paths."""
  figure = lambda name: workdir_lib.stage_file(workdir, workdir_lib.EVALUATE, name)  # noqa: E731
  os.makedirs(workdir_lib.stage_dir(workdir, workdir_lib.EVALUATE), exist_ok=True)
  md, js = workdir_lib.results_files(workdir)
  paths = [js, md]
  for p, text in zip(paths, (json.dumps(results, indent=2), markdown(results))):
    files.atomic_write(p, text)
  paths.append(probes_figure(sets, flags, figure("probes.png")))
  if results["models"]:
    paths.append(bar_figure(results["models"], figure("occluded_verification.png")))
  return paths


def compare(workdirs: list[str]) -> str:
  """A markdown table of every model's clean and occluded verification accuracy across runs
  (each ``<workdir>/results.json``): ``python -m pdsn_jax.evaluation.report RUN [RUN ...]``."""
  rows, conds = [], None
  for wd in workdirs:
    with open(workdir_lib.results_files(wd)[1], encoding="utf-8") as f:
      res = json.load(f)
    for name, r in res["models"].items():
      conds = conds or list(r["occluded"])
      rows.append([os.path.basename(os.path.normpath(wd)), name, _pct(r["clean"]["accuracy"])] +
                  [_pct(r["occluded"][c]["accuracy"]) for c in conds] + [_pct(_occ_mean(r))])
  head = ["run", "model", "clean"] + (conds or []) + ["occluded mean"]
  return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                   ["| " + " | ".join(r) + " |" for r in rows])


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  if len(sys.argv) < 2:
    sys.exit("usage: python -m pdsn_jax.evaluation.report RUN_DIR [RUN_DIR ...]")
  print(compare(sys.argv[1:]))
