"""The occlusion detector of one or more runs on AR's photos of real sunglasses and scarves,
against the ground-truth masks of ``pdsn_jax/data/ar_photos.py``, beside its held-out CelebA
scores (where its settings are chosen). Prints a markdown table.

  python -m benchmarks.ar_real_detector RUN[@THRESHOLD] [...] [--ar_real=../shared/data/ar_real]

Columns: block-assignment accuracy (the 9 generator blocks flagged from the predicted vs the
true mask) and mean IU on the sunglasses and the scarf photos; the predicted occluded area and
the share with any block flagged on the clean photos; then the run's own held-out scores
(``detector/summary.json``): block accuracy with the select occluder files (plain and grey
low-res) and the predicted area on clean held-out faces (those at the threshold the detector
was trained under). ``RUN@T``: the detector at pixel threshold T. Only AR's development
subjects (1-26, ``data.ar_photos.DEVELOPMENT_SUBJECTS``) are read: the test subjects (27-50) are
read by the evaluation's ``ar_real`` protocol alone, for an adopted configuration.

``--heldout``: each run is scored on the development subjects its detector did not train on
(``detector.ar_subjects`` of its config; all 26 when ``detector.ar_share`` is 0): the
cross-validation of docs/selection.md item 8.

``--per_block``: then, per run and occluded kind, where the block assignments go wrong: for
each of the 9 blocks (row by row) the share of photos whose true mask flags it, whose
predicted mask flags it, flagged only by the truth (missed) and only by the prediction (false
alarm); the pixel recall and precision of the predicted masks; and for the missed blocks, how
much of each the true and the predicted mask cover (the flag needs ``occlusion.min_overlap``).
"""

import json
import os
import sys

from absl import app, flags
import numpy as np

from benchmarks.detector_select import candidate


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_string("ar_real", '../shared/data/ar_real',
                      "AR's real-occlusion folder (labels.tsv).")
  flags.DEFINE_string("alignment", 'landmarks',
                      'How the AR crops are aligned: landmarks or centre.')
  flags.DEFINE_bool("per_block", False, 'Also print the block accuracy per block.')
  flags.DEFINE_bool("heldout", False, "Score each run on the development subjects its detector "
                    "did not train on.")


def scored_subjects(config, heldout: bool, development: tuple) -> tuple:
  """The development subjects a run is scored on: all of them, or (``heldout``) those its
  detector did not train on."""
  from pdsn_jax.stages import detector  # pylint: disable=g-import-not-at-top
  trained = set(detector.ar_training_subjects(config.detector, development))
  if not heldout or not trained:
    return development
  left = tuple(s for s in development if s not in trained)
  if not left:
    raise app.UsageError("--heldout: the run's detector trained on every development subject "
                         "(detector.ar_subjects is empty); nothing is held out")
  return left


def main(argv):
  a = flags.FLAGS
  runs = argv[1:]
  if not runs:
    raise app.UsageError("name at least one run after the flags")
  if not os.path.isfile(os.path.join(a.ar_real, "labels.tsv")):
    sys.exit(f"no AR real-occlusion folder at {a.ar_real} (labels.tsv)")
  from pdsn_jax.method import inference  # pylint: disable=g-import-not-at-top
  from pdsn_jax.run import workdir as workdir_lib
  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data import ar_photos, occlusion
  from pdsn_jax.evaluation.protocols import ar_real as real_ar
  # pylint: enable=g-import-not-at-top
  loaded, details, margins = {}, [], []
  head = ["run", "subjects", "sunglasses block acc", "sunglasses mean IU", "scarf block acc",
          "scarf mean IU", "clean area", "clean any block", "held-out select block acc",
          "held-out select grey low-res block acc", "held-out clean area",
          "held-out clean grey low-res area"]
  print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
  for spec in runs:
    run, config = candidate(spec)
    name = f"{os.path.basename(os.path.normpath(run))}@{config.detector.threshold:g}"
    variables = workdir_lib.load(run, workdir_lib.DETECTOR)
    if variables is None:
      print(f"| {spec} | no detector stage |")
      continue
    subjects = scored_subjects(config, a.heldout, ar_photos.DEVELOPMENT_SUBJECTS)
    key = (subjects, tuple(config.data.image_size), config.data.alignment)
    if key not in loaded:
      loaded[key] = ar_photos.load(a.ar_real, config.data.image_size, config.data.alignment,
                                   a.alignment, subjects=tuple(
                                       s for s in subjects if s in ar_photos.DEVELOPMENT_SUBJECTS))
    ar = loaded[key]
    o = config.occlusion
    block_flags, s, pred = real_ar.ar_real_flags(
        ar, o.min_overlap, o.overlap, inference.occlusion_predictor(config, variables),
        config.data.alignment)
    for kind in ("sunglasses", "scarf"):
      k = ar.kinds == kind
      d, g, m = block_flags["detector"][k], block_flags["ground_truth"][k], ar.masks[k]
      hit = (pred[k] & m).sum()
      details.append((name, kind, g.mean(0), d.mean(0),
                      (g & ~d).mean(0), (d & ~g).mean(0), hit / max(m.sum(), 1),
                      hit / max(pred[k].sum(), 1)))
      missed = g & ~d
      margins.append((name, kind, int(missed.sum()), occlusion.block_coverage(m)[missed],
                      occlusion.block_coverage(pred[k])[missed]))
    with open(os.path.join(workdir_lib.stage_dir(run, workdir_lib.DETECTOR), "summary.json"),
              encoding="utf-8") as f:
      held = json.load(f).get("heldout", {})
    g = lambda k, m: held.get(k, {}).get(m, float("nan"))  # noqa: E731
    cells = [s["sunglasses"]["block_accuracy"], s["sunglasses"]["mean_iu"],
             s["scarf"]["block_accuracy"], s["scarf"]["mean_iu"], s["clean"]["predicted_area"],
             s["clean"]["any_block_flagged"], g("select occluder files", "block_accuracy"),
             g("select occluder files, grey low-res", "block_accuracy"),
             g("clean faces", "predicted_area"), g("clean faces, grey low-res", "predicted_area")]
    print(f"| {name} | {_span(subjects)} | " + " | ".join(f"{100 * c:.2f}" for c in cells)
          + " |", flush=True)
  if a.per_block:
    print("\n| run | photos | per block (%, 9 blocks row by row) | pixel recall | pixel "
          "precision |\n|---|---|---|---|---|")
    for run, kind, *rates, rec, prec in details:
      for name, r in zip(("truth flags", "prediction flags", "missed", "false alarm"), rates):
        print(f"| {run} | {kind}: {name} | " + " ".join(f"{100 * v:.0f}" for v in np.asarray(r))
              + f" | {100 * rec:.1f} | {100 * prec:.1f} |")
    # how far the missed blocks were from the flag's overlap (coverage of the block's pixels)
    print("\n| run | photos | missed blocks | their true coverage: median / share < 0.6 | their "
          "predicted coverage: median / share >= 0.3 |\n|---|---|---|---|---|")
    for run, kind, n, true, got in margins:
      q = lambda x, f: f"{np.median(x):.2f} / {100 * f(x).mean():.0f}%" if n else "-"  # noqa: E731
      print(f"| {run} | {kind} | {n} | {q(true, lambda x: x < 0.6)} | "
            f"{q(got, lambda x: x >= 0.3)} |")


def _span(subjects: tuple) -> str:
  """"1-26", or the list when it is not a run of numbers."""
  s = sorted(subjects)
  if s == list(range(s[0], s[-1] + 1)):
    return f"{s[0]}-{s[-1]}"
  return ",".join(map(str, s))


if __name__ == "__main__":
  define_flags()
  app.run(main)
