"""Masked recognition core: symmetry, all-ones FDM = plain cosine, per-pattern gallery cache."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from pdsn_jax.evaluation import masked
from pdsn_jax.evaluation.verification import cosine_scores

_W = jax.random.normal(jax.random.key(0), (7 * 6 * 4, 16))


def _head(u):
  return u.reshape(u.shape[0], -1) @ _W


def _data(n, seed):
  rng = np.random.default_rng(seed)
  u = jnp.asarray(rng.normal(size=(n, 7, 6, 4)), jnp.float32)
  flags = rng.uniform(size=(n, 9)) < 0.2
  return u, flags


DICT = jnp.asarray(np.random.default_rng(9).integers(0, 2, (9, 7, 6, 4)), jnp.uint8)


def test_pair_scores_symmetric_and_plain_cosine_without_occlusion():
  ua, fa = _data(10, 1)
  ub, fb = _data(10, 2)
  s_ab = masked.pair_scores(_head, ua, ub, fa, fb, DICT)
  s_ba = masked.pair_scores(_head, ub, ua, fb, fa, DICT)
  chex.assert_trees_all_close(s_ab, s_ba, atol=1e-6)
  none = np.zeros((10, 9), bool)
  plain = cosine_scores(np.asarray(_head(ua)), np.asarray(_head(ub)))
  chex.assert_trees_all_close(masked.pair_scores(_head, ua, ub, none, none, DICT), plain,
                              atol=1e-5)
  # an occluded block changes the score (the mask is really applied)
  assert not np.allclose(np.asarray(s_ab), plain, atol=1e-4)


def test_gallery_cache_per_pattern_equals_per_probe_recomputation():
  gu, _ = _data(12, 3)
  pu, pf = _data(20, 4)
  pf[:5] = pf[5]  # repeated patterns exercise the cache
  cached = masked.identification_scores(_head, gu, pu, pf, DICT)
  for i in range(len(pu)):
    from pdsn_jax import fdm  # pylint: disable=g-import-not-at-top
    m = fdm.compose(jnp.asarray(pf[i]), DICT)
    g = masked.masked_embeddings(_head, gu, m)
    p = masked.masked_embeddings(_head, pu[i:i + 1], m)
    np.testing.assert_allclose(cached[i], np.asarray(p @ g.T)[0], atol=1e-5)


def test_rank1_on_toy_gallery():
  scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.2, 0.8], [0.5, 0.6, 0.1]])
  assert masked.rank1(scores, np.array([0, 2, 0]), np.array([0, 1, 2])) == 2 / 3
