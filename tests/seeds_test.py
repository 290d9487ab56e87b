"""benchmarks/seeds.py: the headline numbers of a results.json row and their spread over seeds."""

import json

import chex
import numpy as np
import pytest

from benchmarks import seeds
from pdsn_jax.evaluation import stats


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


def test_pooled_bootstrap_averages_the_seeds_and_resamples_within_each():
  rng = np.random.default_rng(0)
  # three seeds on the same 300 probes: A right on 10 more probes than B in each
  pairs = []
  for _ in range(3):
    b = rng.random(300) < 0.6
    a = b.copy()
    a[np.flatnonzero(~b)[:30]] = True
    pairs.append((a, b))
  r = stats.pooled_paired_bootstrap(pairs, seed=1)
  chex.assert_trees_all_close(r["per_seed"], [0.1, 0.1, 0.1])
  assert r["diff"] == pytest.approx(0.1) and r["n"] == [300] * 3
  assert 0.05 < r["lo"] < 0.1 < r["hi"] < 0.15 and stats.verdict(r) == "ahead"
  # pooled, the interval is narrower than one seed's alone
  one = stats.paired_bootstrap(*pairs[0], seed=1)
  assert r["hi"] - r["lo"] < one["hi"] - one["lo"]
  # one seed ahead and one behind by as much: level, within noise
  flipped = [pairs[0], (pairs[1][1], pairs[1][0])]
  r = stats.pooled_paired_bootstrap(flipped, seed=1)
  assert r["diff"] == pytest.approx(0.0) and stats.verdict(r) == "within noise"
  with pytest.raises(ValueError, match="two equal 1-D non-empty arrays"):
    stats.pooled_paired_bootstrap([(np.ones(3), np.ones(4))])


def test_pooled_table_says_beats_only_where_the_pooled_interval_is_above_zero():
  rng = np.random.default_rng(0)
  hits = {}
  for seed in (0, 1, 2):
    base = rng.random(200) < 0.5
    better = base | (rng.random(200) < 0.3)  # ahead in every seed
    hits[seed] = {"A|ar_real/detector/p1/sunglasses": better,
                  "B|ar_real/detector/p1/sunglasses": base,
                  "A|ar_real/detector/p1/scarf": base, "B|ar_real/detector/p1/scarf": base,
                  "A|verification/clean": base, "B|verification/clean": base}
  text = seeds.pooled_table(hits, "A:B", r"ar_real/")
  lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in text.splitlines() if ln.startswith("| ar")}
  assert lines["ar_real/detector/p1/sunglasses"].endswith("| **beats** |")
  assert lines["ar_real/detector/p1/scarf"].endswith("| +0.0 [+0.0, +0.0] | within noise |")
  assert "verification" not in text and "seed 0 | seed 1 | seed 2" in text


def test_a_run_without_hits_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"hits.npz not found: evaluate that run again"):
    seeds.read_hits(str(tmp_path))


def test_fewer_seeds_than_a_claim_needs_never_say_beats():
  rng = np.random.default_rng(0)
  base = rng.random(200) < 0.5
  better = base | (rng.random(200) < 0.3)
  hits = {0: {"A|ar_real/detector/p1/sunglasses": better,
              "B|ar_real/detector/p1/sunglasses": base,
              "A|ar_real/detector/p1/scarf": base, "B|ar_real/detector/p1/scarf": better}}
  text = seeds.pooled_table(hits, "A:B", r"ar_real/")
  assert "beats" not in text
  assert "| ahead in 1 seed (a claim needs 3) |" in text
  assert "| below in 1 seed (a claim needs 3) |" in text
  assert "**beats**" in seeds.pooled_table(hits, "A:B", r"ar_real/", min_seeds=1)


def test_timing_table_reads_each_stages_summary_and_marks_a_resumed_one(tmp_path):
  runs = {}
  for seed, (trunk, start) in enumerate(((120.0, 0), (30.0, 101))):
    run = tmp_path / f"seed_{seed}"
    for stage, summary in (("trunk", {"seconds_this_run": trunk, "started_at_step": start}),
                           ("dictionary", {"seconds": 60.0})):
      (run / stage).mkdir(parents=True)
      (run / stage / "summary.json").write_text(json.dumps(summary))
    runs[seed] = str(run)
  text = seeds.timing_table(runs)
  assert "| trunk | 2.0 | 0.5 (from step 101) |" in text
  assert "| dictionary | 1.0 | 1.0 |" in text
  assert "| **sum** | **3.0** | **1.5** |" in text
  assert "pdsn" not in text  # no summary, no row


def test_the_forest_figure_colours_an_interval_only_when_it_is_a_claim(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from pdsn_jax import visualize  # pylint: disable=g-import-not-at-top
  rows = [{"label": "ahead", "per_seed": [2.0, 3.0, 4.0], "diff": 3.0, "lo": 1.0, "hi": 5.0},
          {"label": "level", "per_seed": [-1.0, 0.0, 1.0], "diff": 0.0, "lo": -2.0, "hi": 2.0}]
  green = lambda im: int(np.sum(np.all(np.asarray(im) == (40, 150, 60), -1)))  # noqa: E731
  claim = Image.open(visualize.forest_figure(rows, str(tmp_path / "a.png"), "t"))
  none = Image.open(visualize.forest_figure(rows, str(tmp_path / "b.png"), "t", claims=False))
  assert claim.size == none.size and claim.height > 2 * 16
  assert green(claim) > 50 and green(none) == 0
