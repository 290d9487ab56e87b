"""results.md / results.json of the evaluate stage, with the figures the protocols draw."""

import json
import os

import numpy as np

from pdsn_jax.run import files
from pdsn_jax.evaluation import tables
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.run.workdir import RESULTS

RESULTS_MD, RESULTS_JSON = RESULTS


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


def write(results: dict, sets, flags: dict, workdir: str, protocols: dict) -> list[str]:
  """results.json, results.md (workdir) and the protocols' figures (workdir/evaluate); returns
  the paths."""
  os.makedirs(workdir_lib.stage_dir(workdir, workdir_lib.EVALUATE), exist_ok=True)
  md, js = workdir_lib.results_files(workdir)
  paths = [js, md]
  for p, text in zip(paths, (json.dumps(results, indent=2), markdown(results, protocols))):
    files.atomic_write(p, text)
  for p in protocols.values():
    if p.figures is not None:
      paths += p.figures(results, workdir, sets, flags)
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
