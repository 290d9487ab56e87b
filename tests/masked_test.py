"""Masked recognition core: symmetry, all-ones FDM = plain cosine, per-pattern gallery cache."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from pdsn_jax.method import fdm
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




def _by_hand(flags):
  """The FDM of each row's flags: the AND of the flagged blocks' items, all ones for none."""
  d = np.asarray(DICT, bool)
  return np.stack([np.logical_and.reduce(d[f], axis=0) if f.any() else np.ones(d.shape[1:], bool)
                   for f in np.atleast_2d(flags)]).astype(np.float32)


def test_a_pair_is_scored_under_the_and_of_both_faces_blocks_in_either_order():
  u, flags = _data(6, 1)
  a, b = u[:3], u[3:]
  both = flags[:3] | flags[3:]
  m = fdm.compose(jnp.asarray(both), DICT)
  chex.assert_trees_all_close(np.asarray(m), _by_hand(both))
  ab = np.sum(np.asarray(masked.masked_embeddings(_head, a, m))
              * np.asarray(masked.masked_embeddings(_head, b, m)), -1)
  m_ba = fdm.compose(jnp.asarray(flags[3:] | flags[:3]), DICT)
  ba = np.sum(np.asarray(masked.masked_embeddings(_head, b, m_ba))
              * np.asarray(masked.masked_embeddings(_head, a, m_ba)), -1)
  chex.assert_trees_all_close(ab, ba, atol=1e-6)


def test_no_occluded_block_is_the_plain_cosine():
  u, _ = _data(8, 2)
  none = np.zeros((8, 9), bool)
  m = fdm.compose(jnp.asarray(none), DICT)
  chex.assert_trees_all_equal(np.asarray(m), np.ones((8, 7, 6, 4), np.float32))
  e = np.asarray(masked.masked_embeddings(_head, u, m))
  plain = np.asarray(_head(u))
  # row-wise, as verification scores its pairs
  chex.assert_trees_all_close(np.sum(e[:4] * e[4:], -1), cosine_scores(plain[:4], plain[4:]),
                              atol=1e-5)


def test_one_mask_for_a_pattern_embeds_the_gallery_as_each_row_would():
  """The gallery is embedded once per block pattern (one (h, w, c) mask broadcast over every
  gallery face), never once per probe: the same numbers as a mask per row."""
  u, _ = _data(10, 3)
  pattern = np.zeros(9, bool)
  pattern[[1, 4]] = True
  one = fdm.compose(jnp.asarray(pattern), DICT)
  chex.assert_shape(one, (7, 6, 4))
  per_row = fdm.compose(jnp.asarray(np.repeat(pattern[None], 10, 0)), DICT)
  chex.assert_trees_all_close(np.asarray(masked.masked_embeddings(_head, u, one)),
                              np.asarray(masked.masked_embeddings(_head, u, per_row)), atol=1e-6)
  chex.assert_trees_all_close(np.asarray(one), _by_hand(pattern)[0])
