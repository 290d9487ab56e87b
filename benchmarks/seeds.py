"""The spread over training seeds, and what holds over them: runs a config once per seed,
prints the mean ± std of every headline number over the seeds, and each paired comparison
pooled over the seeds (a markdown file, ROOT/seeds.md, and its picture, ROOT/seeds.png: each
seed's difference and the pooled interval, one line per column).

  python -m benchmarks.seeds --config=configs/real_mobilefacenet.py --seeds=0,1,2 \\
      --root=runs/seeds [--match=REGEX] [--report_only] [-- --config.field=value ...]

``--config.seed=<seed>`` changes every training stream (initialisation, data order, the
occluders pasted in training, the dictionary's pairs); the evaluation sets keep
``eval.seed``, so every seed is scored on the same probes and pairs. Each seed's run goes to
ROOT/seed_<seed> and resumes like any run (finished stages are skipped). Cost: one run per
seed (``configs/real_mobilefacenet.py:headline``: 39.9 min on 2 cores, seed 0 at 7f59447;
55 before a795683 made the trunk's passes faster, docs/results.md).

``--paired="A:B"`` (default "PDSN + fine-tune:Baseline"): for every column ``--match``
selects, A minus B pooled over the seeds from each seed's ``evaluate/hits.npz`` (every
probe's right / wrong): the mean over seeds of each seed's difference, each seed's own, and
a 95% interval from a bootstrap over the probes stratified by seed
(``stats.pooled_paired_bootstrap``). "beats" is written only where that interval is above 0
and at least ``--min_seeds`` (3) seeds were pooled: fewer say "ahead in N seed(s)".

Last, each seed's seconds per stage as its ``summary.json`` recorded them (the run that
finished the stage; a stage resumed after a stop counts only its last part).

Headline numbers (``--match``, a regex on "model | protocol/column"): verification clean and
occluded mean, AR-style P2, the real AR photos with the detector's location (among the
distractors too), and LFW rank-1 at every distractor, detector-located. The ``ar_real``
numbers are read from each run's ``results.json`` and ``hits.npz``, never from AR photos: only
the evaluation's ``ar_real`` protocol reads AR's test subjects (27-50); development subjects
are 1-26.
"""

import json
import os
import re
import subprocess
import sys

from absl import app, flags
import numpy as np

from pdsn_jax import stages  # noqa: F401  (registers the stages, for their order)
from pdsn_jax import visualize
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.evaluation import stats

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


def pooled_rows(hits: dict, pair: str, match: str) -> list[dict]:
  """Per column ``match`` selects: A and B (mean over seeds, %), and A - B (points) for each
  seed and pooled with its stratified 95% interval; ``hits``: seed -> {"row|column": bool per
  probe} (each seed's ``evaluate/hits.npz``)."""
  a, b = pair.split(":")
  seeds = sorted(hits)
  keys = [k[len(a) + 1:] for k in hits[seeds[0]] if k.startswith(f"{a}|")]
  rows = []
  for key in keys:
    if not re.search(match, key) or not all(f"{m}|{key}" in hits[s] for s in seeds
                                            for m in (a, b)):
      continue
    pairs = [(hits[s][f"{a}|{key}"], hits[s][f"{b}|{key}"]) for s in seeds]
    r = stats.pooled_paired_bootstrap(pairs)
    mean = lambda m: 100 * np.mean([np.mean(hits[s][f"{m}|{key}"]) for s in seeds])  # noqa: E731
    rows.append({"label": key, "a": mean(a), "b": mean(b), "verdict": stats.verdict(r),
                 "per_seed": [100 * d for d in r["per_seed"]],
                 **{k: 100 * r[k] for k in ("diff", "lo", "hi")}})
  return rows


def pooled_table(hits: dict, pair: str, match: str, min_seeds: int = 3,
                 pooled: list[dict] | None = None) -> str:
  """Markdown of ``pooled_rows`` (``pooled``, computed when not given): per column, A and B,
  each seed's A - B, the pooled A - B with its interval and the verdict. With fewer than
  ``min_seeds`` seeds an interval that excludes 0 is not a claim: it reads "ahead in N
  seed(s)", never "beats"."""
  a, b = pair.split(":")
  seeds = sorted(hits)
  rows = []
  for r in pooled if pooled is not None else pooled_rows(hits, pair, match):
    word = {"ahead": "**beats**", "behind": "below", "within noise": "within noise"}[
        r["verdict"]]
    if len(seeds) < min_seeds and word != "within noise":
      word = (f"{'ahead' if word == '**beats**' else 'below'} in {len(seeds)} seed"
              f"{'s' if len(seeds) > 1 else ''} (a claim needs {min_seeds})")
    rows.append(f"| {r['label']} | {r['a']:.2f} | {r['b']:.2f} | "
                + " | ".join(f"{d:+.1f}" for d in r["per_seed"])
                + f" | {r['diff']:+.1f} [{r['lo']:+.1f}, {r['hi']:+.1f}] | {word} |")
  head = (f"| column | {a} | {b} | " + " | ".join(f"seed {s}" for s in seeds)
          + f" | {a} minus {b}, pooled | verdict |")
  return "\n".join([f"{a} against {b} over seeds {', '.join(map(str, seeds))} (mean over seeds; "
                    "each seed's difference; the pooled difference with its 95% interval, a "
                    "bootstrap over the probes stratified by seed; points):", "", head,
                    "|" + "---|" * (5 + len(seeds))] + rows)


def timing_table(runs: dict) -> str:
  """Markdown: each seed's minutes per stage (``summary.json``'s ``seconds_this_run`` or
  ``seconds``; "from step N" where that run resumed a stopped one) and their sum; ``runs``:
  seed -> run folder."""
  seeds = sorted(runs)
  rows, totals = [], {s: 0.0 for s in seeds}
  for stage in stage_lib.registered().values():
    for folder in stage.folders:
      secs = {}
      for s in seeds:
        summary = workdir_lib.read_summary(runs[s], folder)
        sec = summary.get("seconds_this_run", summary.get("seconds"))
        if sec is not None:
          start = summary.get("started_at_step", 0)
          secs[s] = f"{sec / 60:.1f}" + (f" (from step {start})" if start else "")
          totals[s] += float(sec)
      if secs:
        rows.append(f"| {folder} | " + " | ".join(secs.get(s, "-") for s in seeds) + " |")
  head = "| stage | " + " | ".join(f"seed {s}" for s in seeds) + " |"
  total = "| **sum** | " + " | ".join(f"**{totals[s] / 60:.1f}**" for s in seeds) + " |"
  return "\n".join(["Minutes per stage (each stage's summary.json; a stage resumed after a "
                    "stop counts only the run that finished it, from the step it names):", "",
                    head,
                    "|" + "---|" * (1 + len(seeds))] + rows + [total])


def read_hits(run: str) -> dict:
  """A run's ``evaluate/hits.npz`` as {"row|column": bool array}."""
  path = workdir_lib.hits_file(run)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: evaluate that run again (its evaluate stage "
                            "writes every probe's hits since 2026-12-06)")
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_string("config", "configs/real_mobilefacenet.py", "The config to run.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds (config.seed).")
  flags.DEFINE_string("root", "runs/seeds", "Each seed's run goes to ROOT/seed_<seed>.")
  flags.DEFINE_string("match", MATCH, "Regex on 'model | protocol/column'.")
  flags.DEFINE_bool("report_only", False, "Only read finished runs.")
  flags.DEFINE_string("paired", "PDSN + fine-tune:Baseline",
                                "A:B, two model rows pooled over the seeds ('' for none).")
  flags.DEFINE_integer("min_seeds", 3, "Fewest seeds whose pooled interval may say 'beats'.")


def main(argv):
  extra = [a for a in argv[1:] if a != "--"]
  results, hits, runs = {}, {}, {}
  root = flags.FLAGS.root
  for seed in [int(s) for s in flags.FLAGS.seeds]:
    wd = os.path.join(root, f"seed_{seed}")
    if not flags.FLAGS.report_only:
      cmd = [sys.executable, "-m", "pdsn_jax.main", f"--config={flags.FLAGS.config}",
             f"--workdir={wd}", f"--config.seed={seed}", *extra]
      print("+", " ".join(cmd), flush=True)
      subprocess.run(cmd, cwd=REPO, check=True)
    run = wd if os.path.isabs(wd) else os.path.join(REPO, wd)
    runs[seed] = run
    with open(workdir_lib.results_files(run)[1], encoding="utf-8") as f:
      results[seed] = json.load(f)
    if flags.FLAGS.paired:
      hits[seed] = read_hits(run)
  text = table(results, flags.FLAGS.match)
  if flags.FLAGS.paired:
    rows = pooled_rows(hits, flags.FLAGS.paired, flags.FLAGS.match)
    text += "\n\n" + pooled_table(hits, flags.FLAGS.paired, flags.FLAGS.match,
                                   flags.FLAGS.min_seeds, rows)
    if rows:
      a, b = flags.FLAGS.paired.split(":")
      figure = visualize.forest_figure(
          rows, os.path.join(root, "seeds.png"),
          f"{a} minus {b}, points: each seed (grey), pooled over seeds "
          f"{', '.join(flags.FLAGS.seeds)} with its 95% interval",
          claims=len(hits) >= flags.FLAGS.min_seeds)
      text += f"\n\nFigure: {figure} (research-only data: keep it with the runs)."
  text += "\n\n" + timing_table(runs)
  print(text)
  out = os.path.join(root, "seeds.md")
  with open(out, "w", encoding="utf-8") as f:
    f.write(f"# {flags.FLAGS.config}, seeds {', '.join(flags.FLAGS.seeds)}\n\n{text}\n")
  print(f"\nwrote {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
