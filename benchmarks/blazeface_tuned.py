"""Choosing a fine-tuned BlazeFace on training-side data: does the short-range model, tuned on
CelebA training faces with the *training* occluder files (``python -m pdsn_jax.main
--config=configs/real_mobilefacenet.py --config.stages=face_finder``, ``faces.tuning``),
find more occluded faces than the shipped one without finding more faces where there are none?

  python -m benchmarks.blazeface_tuned --weights=RUN/face_finder/short_range.npz[@FALLBACK][,...] \\
      [--celeba=../shared/data/celeba] [--occluders=../shared/data/occluders]

Sets: those of ``blazeface_fallback.py`` (CelebA held-out identities, clean and with the *select*
mask and sunglasses, each also as a grey low-resolution photo; occluders alone; face-erased
crops). Every row runs the default finder (short range, then full range on the photos without a
face); only the short-range weights differ. AR and LFW are never looked at here.

Selection rule (fixed before any tuned candidate was scored, in the commit that added this
script): a tuned candidate replaces the shipped weights as the run's face finder only if
1. it gives a face to no more of the face-erased crops and of the occluders alone than the
   shipped weights do (each, in points);
2. it finds at least 99% of the clean and the clean grey low-res faces;
3. its mean point error on the occluded sets is at most 0.5 px above the shipped weights';
4. its mean found % over the occluded sets (version 2: six) is at least 1 point above the
   shipped weights'.
Among candidates that pass, the highest mean occluded found % wins (a tie within 0.5 points:
fewer erased crops given a face). AR's real photos and LFW then only report the chosen one
(``raw_photos.py``).

Version 2 (2026-12-03, written before any candidate it judges was trained): the same rule, with
the select masks also stretched like scarves (``placement.scarf``) among the occluded sets,
plain and grey low-res: six occluded sets instead of four. Version 1's sets had no scarf, and
the chosen 2,000-step weights stayed 3.3 points short on AR's real scarves. Candidates: the
config's 2,000-step weights as committed, and the same with ``face_finder.cloth_prob=0.5``
(half the scarves drawn cloth, half of that knitted, instead of mask files).

More version-2 candidates (added 2026-12-03, before any of them was trained; same rule, same
sets): the grey low-res select scarves are the set the committed weights miss most (96.39%),
so the share of scarves among the training photos goes from 0.20 to 0.35
(``face_finder.kind_probs=(0.15, 0.2, 0.35, 0.15, 0.15)``: clean, mask, scarf, sunglasses,
erased), at the config's 2,000 steps and at 4,000 steps (``face_finder.num_steps=4000``).

And (added 2026-12-03, after the 0.35 share at 2,000 steps tied and before any of these was
scored): the config's 2,000-step weights with a last try at a lower score on the photos still
without a face (``--face_fallback_score``, ``FaceFinder(fallback=)``) of 0.4 and of 0.3,
written ``WEIGHTS@SCORE``. On the shipped weights a fallback found more masked faces only by
giving faces to erased heads too; the tuned weights give 0.57% of them a face, so the rule's
first condition (no more than the shipped weights' 17.87%) leaves room, and its tie-break (fewer
erased crops) still prefers no fallback unless the found % rises by more than 0.5.

And (added 2026-12-03, after the 4,000-step run tied at +0.35 and before this one was trained):
the scarf share of 0.35 at 6,000 steps (``face_finder.num_steps=6000``), the next point of the
one trend that moved (grey low-res select scarves 96.39, 96.96, 97.72 at 2,000 / 2,000 / 4,000
steps). Its rows are compared with the config's 2,000-step weights as recorded in docs/data.md
(the sets and the scoring are seeded: the same weights score the same). Stopped at step 500 of
6,000 and never scored: at 20-31 photos/s on 2 cores it needed about 1 h 45 min, and the
rule's first condition was already at its limit at 4,000 steps (occluders alone given a face
14.29, 21.43, 23.81 along the same trend, the shipped weights' 23.81 being the most allowed).

And (added 2026-12-03, before any of these was trained or scored; same rule, same sets): that
first condition is what rules out every way found so far to find more scarves (more scarf
training, a last try at a lower score), so the candidates teach the model that an occluder is
not a face: half the erased faces get a training occluder file pasted where the face was
(``face_finder.erased_occluder_prob=0.5``, still negatives; 2,000 steps, ``runs/ff_negocc``),
scored as they are and with a last try at 0.4 and at 0.3 (``WEIGHTS@0.4``, ``WEIGHTS@0.3``).
"""

import time

from absl import app, flags
import numpy as np

from benchmarks.blazeface_fallback import build_sets, score, define_set_flags


CATEGORIES = ("mask", "sunglasses", "scarf")
OCCLUDED = tuple(f"select {c}{v}" for v in ("", ", grey low-res") for c in CATEGORIES)
NONFACES = ("occluders alone given a face %", "face-erased crops given a face %")


def passes(row: dict, stock: dict) -> list[str]:
  """The rule's conditions ``row`` fails against ``stock`` (empty: it passes)."""
  fails = [k for k in NONFACES if row[k] > stock[k]]
  fails += [f"{k} < 99" for k in ("clean found %", "clean, grey low-res found %") if row[k] < 99]
  if row["occluded point error (px)"] > stock["occluded point error (px)"] + 0.5:
    fails.append("point error")
  if occluded_mean(row) < occluded_mean(stock) + 1:
    fails.append("occluded found % not 1 point above the shipped weights'")
  return fails


def occluded_mean(row: dict) -> float:
  return float(np.mean([row[f"{k} found %"] for k in OCCLUDED]))


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_string("weights", None,
                      'comma-separated .npz files, each optionally @ a fallback score')
  flags.mark_flag_as_required("weights")
  define_set_flags()


def main(argv):
  del argv
  args = flags.FLAGS
  from pdsn_jax.faces import finding as faces_lib  # pylint: disable=g-import-not-at-top
  sets, nonfaces, erased, paths = build_sets(args, CATEGORIES)
  rows = {}
  for w in ["shipped"] + args.weights.split(","):
    t0 = time.time()
    path, _, fallback = w.partition("@")
    params = None if path == "shipped" else dict(np.load(path))
    finder = faces_lib.FaceFinder("blazeface", fallback=float(fallback) if fallback else None,
                                  short_params=params)
    rows[w] = score(finder, sets, nonfaces, erased)
    rows[w]["s"] = time.time() - t0
    print(f"scored {w} in {rows[w]['s']:.0f}s", flush=True)
  keys = list(rows["shipped"])
  print("| weights | " + " | ".join(keys) + " | occluded mean % | rule |\n|"
        + "---|" * (len(keys) + 3))
  for w, row in rows.items():
    fails = [] if w == "shipped" else passes(row, rows["shipped"])
    verdict = "-" if w == "shipped" else ("passes" if not fails else "fails: " + "; ".join(fails))
    print(f"| {w} | " + " | ".join(f"{row[k]:.2f}" for k in keys)
          + f" | {occluded_mean(row):.2f} | {verdict} |")
  ok = [w for w in rows if w != "shipped" and not passes(rows[w], rows["shipped"])]
  if ok:
    best = max(occluded_mean(rows[w]) for w in ok)
    ok = [w for w in ok if occluded_mean(rows[w]) >= best - 0.5]
    win = min(ok, key=lambda w: rows[w]["face-erased crops given a face %"])
    print(f"\nchosen by the rule: {win}")
  else:
    print("\nno candidate passes the rule: the shipped weights stay")
  print(f"({len(paths)} held-out CelebA faces per set; {len(nonfaces)} occluders alone, "
        f"{len(erased)} face-erased crops)")


if __name__ == "__main__":
  define_flags()
  app.run(main)
