"""Verification pairs generated from a labelled set (10 folds of matched + mismatched pairs)."""

import numpy as np


def generate_pairs(labels: np.ndarray, num_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (pairs (N, 2) record indices, issame (N,) bool), half matched, shuffled, seeded.

  Matched pairs need identities with >= 2 images; mismatched pairs need >= 2 identities.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  by_label = {l: np.flatnonzero(labels == l) for l in np.unique(labels)}
  multi = [l for l, idx in by_label.items() if len(idx) >= 2]
  if not multi or len(by_label) < 2:
    raise ValueError("verification pairs need an identity with >= 2 images and >= 2 identities")
  n_pos = num_pairs // 2
  pairs, same = [], []
  for _ in range(n_pos):
    idx = by_label[multi[rng.integers(len(multi))]]
    a, b = rng.choice(idx, 2, replace=False)
    pairs.append((a, b))
    same.append(True)
  keys = list(by_label)
  for _ in range(num_pairs - n_pos):
    la, lb = rng.choice(len(keys), 2, replace=False)
    pairs.append((rng.choice(by_label[keys[la]]), rng.choice(by_label[keys[lb]])))
    same.append(False)
  order = rng.permutation(num_pairs)
  return np.asarray(pairs, np.int64)[order], np.asarray(same, bool)[order]
