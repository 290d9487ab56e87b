"""Small layers shared by the trunk and the mask generators."""

import flax.linen as nn
import jax.numpy as jnp


class PReLU(nn.Module):
  """PReLU with one learnable slope per channel (last axis).

  flax's ``nn.PReLU`` learns a single scalar slope; the insightface IResNet and
  the PDSN mask generator use one slope per channel, as PyTorch's
  ``nn.PReLU(num_parameters=C)`` does.
  """

  init_slope: float = 0.25

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    alpha = self.param(
        "alpha", nn.initializers.constant(self.init_slope), (x.shape[-1],), jnp.float32
    )
    return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)
