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


OFFICIAL_LFW = "{name}/{name}_{num:04d}.jpg"  # lfw/ and lfw-deepfunneled/ layouts
FLAT_LFW = "lfw/{name}_{num:04d}.jpg"  # ../shared/data/lfw


def read_lfw_pairs(path: str, pattern: str = OFFICIAL_LFW) -> tuple[list[tuple[str, str]],
                                                                 np.ndarray]:
  """Official LFW ``pairs.txt``: ([(relative image path a, b)], issame).

  Lines are ``name i j`` (matched) or ``name1 i name2 j`` (mismatched); an
  optional header line ``folds n`` (or just a count) is skipped. Image paths
  follow ``pattern``. Malformed lines raise naming file and line.
  """
  import os  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(f"pairs file not found: {path}")
  img = lambda name, i: pattern.format(name=name, num=int(i))  # noqa: E731
  pairs, same = [], []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      try:
        names = parts[0::2] if len(parts) in (3, 4) else []
        names = names[:1] if len(parts) == 3 else names
        if any(n in (".", "..") or "/" in n or "\\" in n for n in names):
          raise ValueError(f"a name is a path ({names}): names are single folder names, so a "
                           "pairs file never opens images outside its image root")
        if len(parts) == 3:
          pairs.append((img(parts[0], parts[1]), img(parts[0], parts[2])))
          same.append(True)
        elif len(parts) == 4:
          pairs.append((img(parts[0], parts[1]), img(parts[2], parts[3])))
          same.append(False)
        elif lineno == 1 and all(p.isdigit() for p in parts):
          continue  # header: number of folds and pairs per fold
        else:
          raise ValueError(f"{len(parts)} fields")
      except ValueError as e:
        raise ValueError(f"{path}:{lineno}: not a pairs.txt line ({e}): {line.strip()!r}") from None
  if not pairs:
    raise ValueError(f"{path}: no pairs")
  return pairs, np.asarray(same, bool)
