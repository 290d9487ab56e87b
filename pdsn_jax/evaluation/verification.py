"""Face verification protocols: LFW-style 10-fold accuracy and TAR at a given FAR."""

import numpy as np


def _best_threshold(scores: np.ndarray, issame: np.ndarray) -> float:
  """Threshold maximising accuracy of ``score >= t`` (midpoints between sorted scores)."""
  s = np.sort(np.unique(scores))
  cands = np.concatenate([[s[0] - 1e-6], (s[1:] + s[:-1]) / 2, [s[-1] + 1e-6]])
  acc = [np.mean((scores >= t) == issame) for t in cands]
  return float(cands[int(np.argmax(acc))])


def report(scores: np.ndarray, issame: np.ndarray) -> dict:
  """``ten_fold_accuracy`` with TAR at FAR 1e-3 and the number of negative pairs (which says
  whether that FAR can be measured at all)."""
  r = ten_fold_accuracy(scores, issame)
  r["tar_at_far_1e-3"] = tar_at_far(scores, issame, 1e-3)
  r["negatives"] = int(np.sum(~np.asarray(issame, bool)))
  return r


def ten_fold_accuracy(scores: np.ndarray, issame: np.ndarray, num_folds: int = 10) -> dict:
  """LFW protocol: per fold, the threshold is chosen on the other folds, accuracy measured on it.

  Pairs are split into ``num_folds`` contiguous folds, as in the official
  pairs.txt order. Returns mean, std (over folds) and per-fold accuracy and thresholds, and
  ``correct``: each pair's decision under its fold's threshold was right (bool array; for
  paired statistics, not for results.json).
  """
  scores = np.asarray(scores, np.float64)
  issame = np.asarray(issame, bool)
  if len(scores) != len(issame) or len(scores) < num_folds:
    raise ValueError(f"need >= {num_folds} scores with matching labels, got {len(scores)} "
                     f"scores and {len(issame)} labels")
  folds = np.array_split(np.arange(len(scores)), num_folds)
  accs, thresholds = [], []
  correct = np.zeros(len(scores), bool)
  for k, test in enumerate(folds):
    train = np.concatenate([f for j, f in enumerate(folds) if j != k])
    t = _best_threshold(scores[train], issame[train])
    correct[test] = (scores[test] >= t) == issame[test]
    accs.append(np.mean(correct[test]))
    thresholds.append(t)
  accs = np.asarray(accs)
  return {"accuracy": float(accs.mean()), "std": float(accs.std()),
          "fold_accuracy": accs.tolist(), "thresholds": thresholds, "correct": correct}


def tar_at_far(scores: np.ndarray, issame: np.ndarray, far: float = 1e-3) -> float | None:
  """True accept rate at the threshold whose false accept rate is at most ``far``; None when
  there are fewer than 1/far negatives (the FAR cannot be resolved: write ``format_tar``)."""
  scores = np.asarray(scores, np.float64)
  issame = np.asarray(issame, bool)
  neg = np.sort(scores[~issame])[::-1]
  pos = scores[issame]
  if len(neg) == 0 or len(pos) == 0:
    raise ValueError("TAR@FAR needs both matched and mismatched pairs")
  if len(neg) < int(np.ceil(1.0 / far - 1e-9)):
    return None
  k = int(np.floor(far * len(neg)))  # number of negatives allowed above the threshold
  thr = neg[k] if k < len(neg) else -np.inf
  return float(np.mean(pos > thr))


def format_tar(tar: float | None, negatives: int) -> str:
  """Percent, or "n/a (N negatives)" when the pairs cannot resolve the FAR."""
  return f"{100 * tar:.2f}" if tar is not None else f"n/a ({negatives} negatives)"


def cosine_scores(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity."""
  a = emb_a / np.maximum(np.linalg.norm(emb_a, axis=1, keepdims=True), 1e-12)
  b = emb_b / np.maximum(np.linalg.norm(emb_b, axis=1, keepdims=True), 1e-12)
  return np.sum(a * b, axis=1)
