"""Trunk shapes, per-channel PReLU and the CosFace head."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from pdsn_jax.method import builders
from pdsn_jax.models import CosFaceHead, IResNet, PReLU, cosface_logits
from pdsn_jax.models.layers import in_chunks


def _shapes(depth, width, size):
  m = IResNet(depth=depth, width=width)
  x = jnp.zeros((2, *size, 3))
  v = jax.eval_shape(lambda: m.init(jax.random.key(0), x))
  u = jax.eval_shape(lambda v: m.apply(v, x, method="features"), v)
  e = jax.eval_shape(lambda v, u: m.apply(v, u, method="head"), v, u)
  return v, u, e


def test_paper_trunk_top_feature_is_512x7x6():
  v, u, e = _shapes(50, 1.0, (112, 96))
  chex.assert_shape(u, (2, 7, 6, 512))
  chex.assert_shape(e, (2, 512))
  n = sum(x.size for x in jax.tree.leaves(v["params"]))
  assert 40e6 < n < 45e6, n  # LResNet50E-IR at 112x96: 41.8M


@pytest.mark.parametrize("depth", [18, 34, 100])
def test_depths_and_width(depth):
  _, u, _ = _shapes(depth, 0.5, (112, 96))
  chex.assert_shape(u, (2, 7, 6, 256))


def test_bad_depth_names_allowed():
  with pytest.raises(ValueError, match=r"\[18, 34, 50, 100\]"):
    _shapes(42, 1.0, (112, 96))


@pytest.mark.slow
def test_head_on_u_is_the_full_forward_and_a_mask_acts_only_where_it_is_zero():
  m = IResNet(depth=18, width=0.0625, embedding_dim=16)
  x = jax.random.normal(jax.random.key(1), (3, 112, 96, 3))
  v = m.init(jax.random.key(0), x)
  u = m.apply(v, x, method="features")
  head = lambda t: np.asarray(m.apply(v, t, method="head"))  # noqa: E731
  chex.assert_trees_all_close(head(u), m.apply(v, x), rtol=1e-6)
  mask = np.ones(u.shape, np.float32)
  mask[:, 2:4] = 0.0  # discard two rows of U
  masked = head(u * mask)
  assert np.abs(masked - head(u)).max() > 1e-3  # discarding changes the embedding ...
  other = np.asarray(u).copy()
  other[:, 2:4] = 123.0  # ... and what lay under the mask no longer matters
  np.testing.assert_allclose(head(other * mask), masked, rtol=1e-5, atol=1e-5)


def test_prelu_has_one_slope_per_channel():
  p = PReLU()
  x = jnp.array([[-1.0, -2.0, 3.0]])
  v = p.init(jax.random.key(0), x)
  chex.assert_shape(v["params"]["alpha"], (3,))
  v = {"params": {"alpha": jnp.array([0.1, 0.5, 0.9])}}
  chex.assert_trees_all_close(p.apply(v, x), jnp.array([[-0.1, -1.0, 3.0]]))


def test_cosface_logits_match_hand_computation():
  e = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)
  w = np.array([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]], np.float32)  # unit columns
  labels = np.array([1, 2])
  head = CosFaceHead(3, scale=30.0, margin=0.35)
  logits, cos = head.apply({"params": {"kernel": w}}, e, labels)
  # cos for row 0: e/|e| = (0.6, 0.8) -> (0.6, 0.8, 1.0); row 1: (1, 0, 0.6)
  expected_cos = np.array([[0.6, 0.8, 1.0], [1.0, 0.0, 0.6]])
  chex.assert_trees_all_close(cos, expected_cos, atol=1e-6)
  expected = 30.0 * (expected_cos - 0.35 * np.eye(3)[labels])
  chex.assert_trees_all_close(logits, expected, atol=1e-5)
  chex.assert_trees_all_close(cosface_logits(jnp.asarray(expected_cos), labels, 30.0, 0.35),
                              expected, atol=1e-5)


def test_in_chunks_gives_the_whole_batchs_outputs_a_chunk_at_a_time():
  m = IResNet(depth=18, width=0.0625, embedding_dim=16)
  x = jax.random.uniform(jax.random.key(1), (11, 112, 96, 3), minval=-1, maxval=1)
  v = m.init(jax.random.key(0), x[:1])
  seen = []

  def features(c):
    seen.append(c.shape[0])
    return m.apply(v, c, method="features")

  whole = jax.jit(features)(x)
  for chunk in (4, 11, 0):  # 11 rows in 3 chunks of 4 (one padding row dropped); one call
    seen.clear()
    out = jax.jit(lambda x, chunk=chunk: in_chunks(features, x, chunk))(x)
    assert seen == [4 if chunk == 4 else 11]
    chex.assert_trees_all_close(out, whole, atol=1e-5, rtol=1e-5)
    chex.assert_shape(out, whole.shape)


def test_forward_chunk_is_8_on_cpu_unless_set_and_absent_from_old_configs():
  c = tiny.get_config()
  assert c.model.forward_chunk == 0
  assert builders.forward_chunk(c) == (8 if jax.default_backend() == "cpu" else 0)
  c.model.forward_chunk = 3
  assert builders.forward_chunk(c) == 3
  del c.model["forward_chunk"]  # a run's config.json from before the field
  assert builders.forward_chunk(c) in (0, 8)
