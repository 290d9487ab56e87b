"""Stage II pieces: min-max, streaming mean, binarisation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from pdsn_jax.method import fdm
from pdsn_jax.stages import dictionary, evaluate


def test_minmax_normalises_each_mask_on_its_own():
  x = jax.random.normal(jax.random.key(0), (3, 4, 7, 6, 8)) * jnp.arange(1, 5)[None, :, None, None, None]
  y = fdm.minmax(x)
  chex.assert_trees_all_close(y.min(axis=(2, 3, 4)), jnp.zeros((3, 4)), atol=1e-7)
  chex.assert_trees_all_close(y.max(axis=(2, 3, 4)), jnp.ones((3, 4)), atol=1e-6)
  one = fdm.minmax(x[1:2, 2:3])
  chex.assert_trees_all_close(one[0, 0], y[1, 2], atol=1e-7)


def test_streaming_mean_over_uneven_chunks_equals_one_shot():
  rng = np.random.default_rng(0)
  data = rng.uniform(0, 1, (1000, 5, 3)).astype(np.float32)
  mean, count = jnp.zeros((5, 3)), jnp.float32(0)
  start = 0
  for n in (1, 7, 300, 2, 690):
    chunk = data[start:start + n]
    mean, count = dictionary.merge_mean(mean, count, jnp.asarray(chunk.mean(0)), jnp.float32(n))
    start += n
  assert float(count) == 1000
  chex.assert_trees_all_close(mean, data.astype(np.float64).mean(0), atol=1e-6)


def test_running_mean_stays_accurate_for_a_million_pairs():
  mean, count = jnp.float32(0), jnp.float32(0)
  step = jax.jit(dictionary.merge_mean)
  for k in range(1000):  # 1000 batches of 1000 pairs with batch means around 0.5
    bm = jnp.float32(0.5 + 0.1 * np.sin(k))
    mean, count = step(mean, count, bm, jnp.float32(1000))
  expected = np.mean(0.5 + 0.1 * np.sin(np.arange(1000)))
  assert abs(float(mean) - expected) < 1e-5 and float(count) == 1e6


def test_binarize_zeros_exactly_floor_tau_k_with_deterministic_ties():
  rng = np.random.default_rng(0)
  m = rng.uniform(0, 1, (9, 7, 6, 5)).astype(np.float32)
  k = 7 * 6 * 5
  for tau in (0.0, 0.05, 0.25, 0.45):
    f = np.asarray(fdm.binarize(jnp.asarray(m), tau))
    assert f.dtype == np.uint8 and set(np.unique(f)) <= {0, 1}
    np.testing.assert_array_equal((f == 0).reshape(9, -1).sum(1), int(np.floor(tau * k)))
    # the zeros are the smallest entries
    for j in range(9):
      if tau > 0:
        assert m[j][f[j] == 0].max() <= m[j][f[j] == 1].min()
  ties = jnp.zeros((1, 2, 2, 1))  # all equal: the first floor(0.5*4)=2 by flat index go
  np.testing.assert_array_equal(np.asarray(fdm.binarize(ties, 0.5)).reshape(-1), [0, 0, 1, 1])


def test_export_round_trip(tmp_path):
  fdms = np.random.default_rng(0).integers(0, 2, (9, 7, 6, 3)).astype(np.uint8)
  mean = np.random.default_rng(1).uniform(0, 1, (9, 7, 6, 3)).astype(np.float32)
  path = str(tmp_path / "d.npz")
  fdm.export(path, mean, fdms, {"tau": 0.25})
  f, m, meta = fdm.load(path)
  np.testing.assert_array_equal(f, fdms)
  np.testing.assert_allclose(m, mean, atol=1e-3)
  assert meta == {"tau": 0.25}


def test_kept_mean_one_keeps_the_pattern_and_restores_the_scale():
  rng = np.random.default_rng(0)
  mean_masks = rng.uniform(0.05, 0.3, (3, 7, 6, 4)).astype(np.float32)
  fdms = (rng.uniform(size=mean_masks.shape) > 0.1).astype(np.float32)
  fdms[2] = 0  # an item with nothing kept stays all 0
  out = evaluate.kept_mean_one(mean_masks, fdms)
  kept = fdms > 0
  for j in (0, 1):
    np.testing.assert_allclose(out[j][kept[j]].mean(), 1.0, rtol=1e-5)
    # the same ranking inside the item, and 0 wherever the FDM discards
    np.testing.assert_allclose(out[j][kept[j]] / mean_masks[j][kept[j]],
                               1 / mean_masks[j][kept[j]].mean(), rtol=1e-5)
  chex.assert_trees_all_equal(out[~kept], np.zeros((~kept).sum(), np.float32))
