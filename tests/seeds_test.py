"""benchmarks/seeds.py: the headline numbers of a results.json row and their spread over seeds."""

import pytest

from benchmarks import seeds


def _row(clean, sunglasses, curve):
  return {"clean": {"accuracy": clean, "std": 0.01},
          "occluded": {"sunglasses": {"accuracy": sunglasses}, "mask": {"accuracy": 0.5}},
          "ar_p2": {"sunglasses": 0.25},
          "lfw_distractors": {"sizes": [0, 10, 20], "probes": 7,
                              "detector": {"mask": curve}}}


def test_headline_takes_accuracies_rank1_leaves_and_the_curves_last_point():
  h = seeds.headline(_row(0.9, 0.7, [0.8, 0.6, 0.4]))
  assert h["verification/clean"] == 0.9
  assert h["verification/occluded mean"] == pytest.approx(0.6)
  assert h["ar_p2/sunglasses"] == 0.25
  assert h["lfw_distractors/detector/mask"] == 0.4  # every distractor
  assert not any(k.endswith(("sizes", "probes", "std")) for k in h)


def test_table_gives_mean_and_sample_std_over_seeds():
  results = {s: {"models": {"PDSN": _row(c, 0.7, [0.5])}} for s, c in ((0, 0.90), (1, 0.92),
                                                                      (2, 0.94))}
  text = seeds.table(results, r"verification/clean$")
  assert "| PDSN | verification/clean | 92.00 ± 2.00 | 90.00 | 92.00 | 94.00 |" in text
  assert "ar_p2" not in text


def test_paired_table_counts_the_seeds_whose_interval_excludes_zero():
  def run(diff, lo, hi):
    return {"paired": {"A": {"B": {"ar_real/detector/p1/sunglasses":
                                   {"diff": diff, "lo": lo, "hi": hi, "n": 300},
                                   "verification/clean": {"diff": 0, "lo": 0, "hi": 0}}}}}
  results = {0: run(0.05, 0.02, 0.08), 1: run(0.01, -0.01, 0.04), 2: run(-0.04, -0.07, -0.01)}
  text = seeds.paired_table(results, "A:B", r"ar_real/")
  assert ("| ar_real/detector/p1/sunglasses | +5.0 [+2.0, +8.0] | +1.0 [-1.0, +4.0] | "
          "-4.0 [-7.0, -1.0] | beats in 1 of 3, below in 1 |") in text
  assert "verification" not in text
