"""Masked recognition: embeddings F(M * U(x)) under Feature Discarding Masks (stage III core).

Verification: both faces of a pair use the same FDM, the AND of the items of
every block occluded in either image. Identification: the probe's FDM applies
to every gallery face; gallery U is computed once, and gallery embeddings once
per distinct block pattern (at most 2^9), never once per probe.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pdsn_jax import fdm


def masked_embeddings(head_fn: Callable[[jax.Array], jax.Array], u: jax.Array,
                      masks: jax.Array) -> jax.Array:
  """L2-normalised F(M * U): ``u`` (N, h, w, c), ``masks`` (N, h, w, c) or (h, w, c)."""
  e = head_fn(u * masks)
  return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


def pair_scores(head_fn, u_a: jax.Array, u_b: jax.Array, flags_a: jax.Array,
                flags_b: jax.Array, dictionary: jax.Array) -> jax.Array:
  """Cosine of each pair under the FDM of the blocks occluded in either image. Symmetric."""
  masks = fdm.compose(flags_a | flags_b, dictionary)
  return jnp.sum(masked_embeddings(head_fn, u_a, masks) *
                 masked_embeddings(head_fn, u_b, masks), axis=-1)


def identification_scores(head_fn, gallery_u: jax.Array, probe_u: jax.Array,
                          probe_flags: np.ndarray, dictionary: jax.Array) -> np.ndarray:
  """(P, G) cosine scores; gallery embeddings computed once per distinct probe block pattern."""
  probe_flags = np.asarray(probe_flags, bool)
  patterns, inverse = np.unique(probe_flags, axis=0, return_inverse=True)
  inverse = np.asarray(inverse).reshape(-1)
  embed = jax.jit(functools.partial(masked_embeddings, head_fn))
  # All probes in one call (each under its own FDM); the gallery once per pattern, always
  # the same shapes, so one compilation each.
  probes = np.asarray(embed(probe_u, fdm.compose(jnp.asarray(probe_flags), dictionary)))
  scores = np.zeros((len(probe_u), len(gallery_u)), np.float32)
  for k, pattern in enumerate(patterns):
    gallery = np.asarray(embed(gallery_u, fdm.compose(jnp.asarray(pattern), dictionary)))
    rows = np.flatnonzero(inverse == k)
    scores[rows] = probes[rows] @ gallery.T
  return scores


def rank1(scores: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray) -> float:
  """Fraction of probes whose best-scoring gallery face has their identity."""
  best = np.argmax(scores, axis=1)
  return float(np.mean(np.asarray(gallery_labels)[best] == np.asarray(probe_labels)))
