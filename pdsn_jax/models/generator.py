"""PDSN mask generators: conv3x3 - per-channel PReLU - BN - sigmoid, 9 stacked as one tree."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from pdsn_jax.models.layers import PReLU


class MaskGenerator(nn.Module):
  """Maps a (B, H, W, C) feature difference to a soft mask of the same shape."""

  bn_axis_name: Any = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    c = x.shape[-1]
    y = nn.Conv(c, (3, 3), padding="SAME", name="conv")(x)
    y = PReLU(name="prelu")(y)
    y = nn.BatchNorm(momentum=0.9, epsilon=1e-5, axis_name=self.bn_axis_name, name="bn")(
        y, use_running_average=not train)
    return nn.sigmoid(y)


class StackedMaskGenerators(nn.Module):
  """``num`` independent generators, one parameter tree with a leading axis of ``num``.

  Input and output (num, B, H, W, C): generator j sees slice j.
  """

  num: int = 9
  bn_axis_name: Any = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    vmapped = nn.vmap(
        MaskGenerator, variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True}, in_axes=(0, None), out_axes=0, axis_size=self.num)
    return vmapped(self.bn_axis_name, name="generators")(x, train)
