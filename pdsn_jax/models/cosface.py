"""Large-margin cosine loss head (CosFace, Wang et al. 2018)."""

import flax.linen as nn
import jax.numpy as jnp

from pdsn_jax.models.layers import l2_normalize


def cosface_logits(
    cosine: jnp.ndarray, labels: jnp.ndarray, scale: float, margin: float
) -> jnp.ndarray:
  """s * (cos(theta_j) - m * [j == y]) for a batch of cosine similarities (B, K)."""
  one_hot = jnp.eye(cosine.shape[-1], dtype=cosine.dtype)[labels]
  return scale * (cosine - margin * one_hot)


class CosFaceHead(nn.Module):
  """Normalised classifier; returns (margin logits, plain cosines).

  The margin logits train the trunk, and PDSN's classification term scores masked features
  with them too (it passes the labels); the plain cosines give the accuracy.
  """

  num_classes: int
  scale: float = 30.0
  margin: float = 0.35

  @nn.compact
  def __call__(self, embeddings: jnp.ndarray, labels: jnp.ndarray | None = None):
    w = self.param(
        "kernel",
        nn.initializers.normal(stddev=0.01),
        (embeddings.shape[-1], self.num_classes),
        jnp.float32,
    )
    e = embeddings.astype(jnp.float32)
    e = l2_normalize(e)
    w = l2_normalize(w, axis=0)
    cosine = e @ w
    if labels is None:
      return self.scale * cosine, cosine
    return cosface_logits(cosine, labels, self.scale, self.margin), cosine
