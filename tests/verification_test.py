"""10-fold verification accuracy and TAR@FAR on constructed scores with known answers."""

import numpy as np
import pytest

from pdsn_jax.data.pairs import generate_pairs
from pdsn_jax.evaluation import verification


def test_ten_fold_perfectly_separable_scores():
  issame = np.tile([True, False], 50)
  scores = np.where(issame, 0.8, 0.2) + np.linspace(0, 0.01, 100)
  res = verification.ten_fold_accuracy(scores, issame)
  assert res["accuracy"] == 1.0 and res["std"] == 0.0
  assert all(0.2 < t < 0.8 for t in res["thresholds"])


def test_ten_fold_known_error_rate():
  # In every fold of 10 pairs: 5 matched at 0.9, 5 mismatched at 0.1 except one at 0.95.
  scores, issame = [], []
  for _ in range(10):
    scores += [0.9] * 5 + [0.1] * 4 + [0.95]
    issame += [True] * 5 + [False] * 5
  res = verification.ten_fold_accuracy(np.array(scores), np.array(issame))
  assert res["accuracy"] == pytest.approx(0.9)
  # the per-pair decisions behind it: exactly the high-scoring mismatched pair of each fold
  wrong = np.flatnonzero(~res["correct"])
  np.testing.assert_array_equal(wrong, np.arange(9, 100, 10))


def test_threshold_is_chosen_on_other_folds():
  # Fold 0's scores are shifted; its threshold comes from the other folds and misclassifies it.
  issame = np.tile([True, False], 50)
  scores = np.where(issame, 0.6, 0.4).astype(float)
  scores[:10] -= 0.5  # fold 0: matched 0.1, mismatched -0.1 -> all below threshold ~0.5
  res = verification.ten_fold_accuracy(scores, issame)
  assert res["fold_accuracy"][0] == 0.5
  assert res["accuracy"] == pytest.approx(0.95)


def test_tar_at_far():
  neg = np.linspace(0, 1, 1000)  # 1000 negatives; FAR 1e-3 allows one above the threshold
  pos = np.array([0.9992, 0.9995, 1.5, 2.0])
  scores = np.concatenate([pos, neg])
  issame = np.concatenate([np.ones(4, bool), np.zeros(1000, bool)])
  # threshold = second highest negative (0.998999); positives above it: all 4.
  assert verification.tar_at_far(scores, issame, 1e-3) == 1.0
  assert verification.tar_at_far(scores, issame, 1.5e-3) == 1.0
  # fewer than 1/FAR negatives: not resolvable, reported as n/a
  assert verification.tar_at_far(scores, issame, 1e-4) is None
  assert verification.tar_at_far(scores[:-1], issame[:-1], 1e-3) is None
  assert verification.format_tar(None, 999) == "n/a (999 negatives)"
  assert verification.format_tar(0.5, 1000) == "50.00"


def test_generated_pairs_are_balanced_and_valid():
  labels = np.repeat(np.arange(10), 3)
  pairs, same = generate_pairs(labels, 100, seed=0)
  assert same.sum() == 50
  np.testing.assert_array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], same)
  assert np.all(pairs[:, 0] != pairs[:, 1])
