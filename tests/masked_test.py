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


