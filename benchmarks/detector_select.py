"""Choosing the occlusion detector's settings on training-side data: every run's detector scored
on the *current* held-out sets (``stages/detector.heldout_sets``: CelebA held-out identities,
clean, with the training files and with the *select* files, the select masks also stretched
like scarves, each plain and as grey low-resolution photos), and the selection rule applied.

  python benchmarks/detector_select.py RUN [RUN ...]

A candidate is ``python -m pdsn_jax.main --config=configs/real_mobilefacenet.py
--config.stages=detector --workdir=RUN [--config.detector.augment=...]
[--config.detector.num_epochs=...]``. AR and LFW are never looked at here;
``benchmarks/ar_real_detector.py`` then reports AR for the chosen run only.

Selection rule, version 2 (written in the commit that added this script, before any candidate
it judges was trained; version 1 is in ``configs/real_mobilefacenet.py``'s docstring): among the
candidates whose predicted occluded area is at most 2% on both clean held-out sets, the highest
mean block-assignment accuracy over the four select sets ("select occluder files", its grey
low-res copy, "select occluder files as scarves", its grey low-res copy) wins; a tie within
0.5 points goes to the cheaper (fewer epochs), then to the one already in the config.
Candidates: the config's detector as committed (all nine augmentation parts, 10 epochs) and
the same with "knit" added (knitted scarves, ``placement.knitted``), 10 epochs.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SELECT = ("select occluder files", "select occluder files, grey low-res",
          "select occluder files as scarves", "select occluder files as scarves, grey low-res")
CLEAN = ("clean faces", "clean faces, grey low-res")


def verdicts(rows: dict) -> tuple[dict, str | None]:
  """(run -> its rule score or why it is out, the chosen run) for ``rows``: run -> (scores per
  held-out set, epochs)."""
  out, ok = {}, {}
  for run, (res, _) in rows.items():
    over = [k for k in CLEAN if res[k]["predicted_area"] > 0.02]
    if over:
      out[run] = "out: clean area > 2% on " + ", ".join(over)
    else:
      ok[run] = float(np.mean([res[k]["block_accuracy"] for k in SELECT]))
      out[run] = f"{100 * ok[run]:.2f}"
  if not ok:
    return out, None
  best = max(ok.values())
  tied = [r for r in ok if ok[r] >= best - 0.005]  # in the order given: the committed first
  return out, min(tied, key=lambda r: rows[r][1])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("runs", nargs="+")
  a = ap.parse_args()
  from pdsn_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from pdsn_jax.stages import detector  # pylint: disable=g-import-not-at-top
  rows, cache, augment = {}, {}, {}
  for run in a.runs:
    config = workdir_lib.load_config(run)
    variables = workdir_lib.load(run, workdir_lib.DETECTOR)
    if variables is None:
      sys.exit(f"{run}: no detector stage to score (run its detector stage first)")
    key = json.dumps([config.data.to_dict(), config.occlusion.to_dict(), config.eval.seed,
                      config.detector.eval_images], sort_keys=True, default=str)
    if key not in cache:
      t = time.time()
      cache[key] = detector.heldout_sets(config)
      print(f"held-out sets built in {time.time() - t:.0f}s", flush=True)
    missing = [k for k in SELECT + CLEAN if k not in cache[key]]
    if missing:
      sys.exit(f"{run}: its config has no select occluder files ({missing}); the rule needs "
               "occlusion.occluder_dir and the select split")
    rows[run] = (detector.evaluate(config, variables, sets=cache[key]),
                 float(config.detector.num_epochs))
    augment[run] = ",".join(config.detector.augment)
  scores, chosen = verdicts(rows)
  head = ["run", "epochs", "augment"] + [f"{k}: block acc" for k in SELECT] + [
      f"{k}: area" for k in CLEAN] + ["rule score"]
  print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
  for run, (res, epochs) in rows.items():
    cells = [f"{100 * res[k]['block_accuracy']:.2f}" for k in SELECT]
    cells += [f"{100 * res[k]['predicted_area']:.2f}" for k in CLEAN]
    print(f"| {os.path.basename(os.path.normpath(run))} | {epochs:g} | {augment[run]} | "
          + " | ".join(cells) + f" | {scores[run]} |")
  print(f"\nchosen by the rule: {chosen}" if chosen else "\nno candidate passes the rule")


if __name__ == "__main__":
  main()
