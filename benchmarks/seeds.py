"""The spread over training seeds: runs a config once per seed and prints the mean ± std of
every headline number over the seeds (a markdown table, also written to ROOT/seeds.md).

  python benchmarks/seeds.py --config=configs/real_mobilefacenet.py --seeds=0,1,2 \\
      --root=runs/seeds [--match=REGEX] [-- --config.field=value ...]

``--config.seed=<seed>`` changes every training stream (initialisation, data order, the
occluders pasted in training, the dictionary's pairs); the evaluation sets keep
``eval.seed``, so every seed is scored on the same probes and pairs. Each seed's run goes to
ROOT/seed_<seed> and resumes like any run (finished stages are skipped). Cost: one run per seed
(``configs/real_mobilefacenet.py``: about 25 min each on 2 cores).

``--paired="A:B"`` (default "PDSN + fine-tune:Baseline") also prints, for every paired
comparison of model A against B that the runs' results.json holds (``paired``) and ``--match``
selects, each seed's difference and 95% interval and how many seeds beat (interval above 0).

Headline numbers (``--match``, a regex on "model | protocol/column"): verification clean and
occluded mean, AR-style P2, the real AR photos with the detector's location, and LFW rank-1 at
every distractor, detector-located.
"""

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MATCH = (r"verification/(clean|occluded mean)$|ar_p2/|ar_real/detector/p[12]/(sunglasses|scarf)"
         r"|lfw_distractors/detector/")
_SKIP = {"std", "negatives", "num_distractors", "sizes", "probes", "lfw_distractors",
         "tar_at_far_1e-3", "centre_crop"}


def headline(row: dict) -> dict:
  """{"protocol/column": value} of one results.json row: accuracies of verification, every
  rank-1 leaf, and the last point (every distractor) of a curve."""
  out = {}
  if "clean" in row and "occluded" in row:
    out["verification/clean"] = row["clean"]["accuracy"]
    occ = [v["accuracy"] for v in row["occluded"].values()]
    out["verification/occluded mean"] = float(np.mean(occ))
    out.update({f"verification/{c}": v["accuracy"] for c, v in row["occluded"].items()})

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        if k not in _SKIP:
          walk(f"{prefix}/{k}", v)
    elif isinstance(node, list) and node and isinstance(node[-1], float):
      out[prefix] = node[-1]
    elif isinstance(node, float):
      out[prefix] = node
  for key, node in row.items():
    if key not in ("clean", "occluded") and isinstance(node, dict):
      walk(key, node)
  return out


def table(results: dict, match: str) -> str:
  """Markdown: model, number, mean ± std over seeds, each seed's value (in %)."""
  seeds = sorted(results)
  rows = []
  first = results[seeds[0]]["models"]
  for model in first:
    per_seed = [headline(results[s]["models"].get(model, {})) for s in seeds]
    for key in per_seed[0]:
      if not re.search(match, f"{model} | {key}") and not re.search(match, key):
        continue
      vals = [100 * h[key] for h in per_seed if key in h]
      if len(vals) != len(seeds):
        continue
      rows.append(f"| {model} | {key} | {np.mean(vals):.2f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0:.2f} | "
                  + " | ".join(f"{v:.2f}" for v in vals) + " |")
  head = (f"| model | number | mean ± std ({len(seeds)} seeds) | "
          + " | ".join(f"seed {s}" for s in seeds) + " |")
  return "\n".join([head, "|" + "---|" * (3 + len(seeds))] + rows)


def paired_table(results: dict, pair: str, match: str) -> str:
  """Markdown: per comparison, each seed's A - B [interval] (points) and the verdict."""
  a, b = pair.split(":")
  seeds = sorted(results)
  per = [results[s].get("paired", {}).get(a, {}).get(b, {}) for s in seeds]
  rows = []
  for key in per[0]:
    if not re.search(match, key) or not all(key in p for p in per):
      continue
    cells = [f"{100 * p[key]['diff']:+.1f} [{100 * p[key]['lo']:+.1f}, {100 * p[key]['hi']:+.1f}]"
             for p in per]
    wins = sum(p[key]["lo"] > 0 for p in per)
    losses = sum(p[key]["hi"] < 0 for p in per)
    rows.append(f"| {key} | " + " | ".join(cells) + f" | beats in {wins} of {len(seeds)}"
                + (f", below in {losses}" if losses else "") + " |")
  head = f"| {a} minus {b} | " + " | ".join(f"seed {s}" for s in seeds) + " | verdict |"
  return "\n".join([head, "|" + "---|" * (2 + len(seeds))] + rows)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/real_mobilefacenet.py")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--root", default="runs/seeds")
  ap.add_argument("--match", default=MATCH)
  ap.add_argument("--report_only", action="store_true", help="only read finished runs")
  ap.add_argument("--paired", default="PDSN + fine-tune:Baseline",
                  help="A:B, two models of the runs' paired comparisons ('' for none)")
  args, extra = ap.parse_known_args()
  extra = [a for a in extra if a != "--"]
  results = {}
  for seed in [int(s) for s in args.seeds.split(",")]:
    wd = os.path.join(args.root, f"seed_{seed}")
    if not args.report_only:
      cmd = [sys.executable, "-m", "pdsn_jax.main", f"--config={args.config}",
             f"--workdir={wd}", f"--config.seed={seed}", *extra]
      print("+", " ".join(cmd), flush=True)
      subprocess.run(cmd, cwd=REPO, check=True)
    path = os.path.join(wd if os.path.isabs(wd) else os.path.join(REPO, wd), "results.json")
    with open(path, encoding="utf-8") as f:
      results[seed] = json.load(f)
  text = table(results, args.match)
  if args.paired:
    text += "\n\n" + paired_table(results, args.paired, args.match)
  print(text)
  out = os.path.join(args.root, "seeds.md")
  with open(out, "w", encoding="utf-8") as f:
    f.write(f"# {args.config}, seeds {args.seeds}\n\n{text}\n")
  print(f"\nwrote {out}")


if __name__ == "__main__":
  main()
