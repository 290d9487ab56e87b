"""Paired statistics for comparing two models on the same probes (or pairs).

``paired_bootstrap``: the difference of two models' mean per-item scores (rank-1 hits,
correct verification decisions) and a percentile 95% interval from resampling the items
with replacement, the same resample for both models (so the pairing is kept). "A beats B"
is said only when the interval excludes 0.

``pooled_paired_bootstrap``: the same over several training seeds, each scored on the same
probes: the mean over seeds of each seed's difference, and an interval from resampling the
items within every seed (a bootstrap stratified by seed), so the seeds' spread and the
probes' both count.
"""

import numpy as np

RESAMPLES = 2000
_CHUNK_INDICES = 1 << 22


def paired_bootstrap(a, b, resamples: int = RESAMPLES, seed: int = 0,
                     level: float = 0.95) -> dict:
  """Mean of ``a - b`` over items and its bootstrap interval: {"diff", "lo", "hi", "n"}."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(f"paired scores need two equal 1-D non-empty arrays, got {a.shape} and "
                     f"{b.shape}")
  d = a - b
  rng = np.random.default_rng(seed)
  # resampled in chunks of ~4M indices (memory flat in the number of items); an even chunk
  # keeps the generator's stream, so the means equal one (resamples, n) draw's
  chunk = max(2, (_CHUNK_INDICES // len(d)) // 2 * 2)
  means = np.concatenate([d[rng.integers(0, len(d), (min(chunk, resamples - s), len(d)))].mean(1)
                          for s in range(0, resamples, chunk)])
  q = (1 - level) / 2
  lo, hi = np.quantile(means, [q, 1 - q])
  return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(d))}


def pooled_paired_bootstrap(pairs, resamples: int = RESAMPLES, seed: int = 0,
                            level: float = 0.95) -> dict:
  """``pairs``: one (a, b) of per-item scores per training seed. The mean over seeds of mean(a -
  b), its interval from resampling the items of every seed (stratified), each seed's own
  difference: {"diff", "lo", "hi", "n" (items per seed), "per_seed"}."""
  diffs = []
  for a, b in pairs:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
      raise ValueError(f"paired scores need two equal 1-D non-empty arrays, got {a.shape} and "
                       f"{b.shape}")
    diffs.append(a - b)
  if not diffs:
    raise ValueError("no seed to pool")
  rng = np.random.default_rng(seed)
  means = np.zeros(resamples)
  for d in diffs:  # each seed's items resampled on their own, then the seeds averaged
    chunk = max(1, _CHUNK_INDICES // len(d))
    means += np.concatenate([d[rng.integers(0, len(d), (min(chunk, resamples - s), len(d)))]
                             .mean(1) for s in range(0, resamples, chunk)])
  means /= len(diffs)
  q = (1 - level) / 2
  lo, hi = np.quantile(means, [q, 1 - q])
  return {"diff": float(np.mean([d.mean() for d in diffs])), "lo": float(lo), "hi": float(hi),
          "n": [int(len(d)) for d in diffs], "per_seed": [float(d.mean()) for d in diffs]}


def verdict(interval: dict) -> str:
  """"ahead" / "behind" when the interval excludes 0, else "within noise"."""
  if interval["lo"] > 0:
    return "ahead"
  if interval["hi"] < 0:
    return "behind"
  return "within noise"
