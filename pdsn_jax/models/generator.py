"""PDSN mask generators: conv3x3 - per-channel PReLU - BN - sigmoid, 9 stacked as one tree."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from pdsn_jax.models.layers import PReLU


class Conv3x3(nn.Module):
  """3x3 'SAME' convolution as im2col + one matmul, parameters laid out as ``nn.Conv``'s.

  Numerically a convolution; written as a matmul because the 9 stacked generators
  are vmapped, and a vmapped ``lax.conv`` becomes a grouped convolution that
  XLA:CPU runs ~17x slower than 9 separate ones (measured, fwd+bwd at 7x6x128),
  while a vmapped matmul is a plain batched GEMM. U is small, so im2col is cheap.
  """

  features: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    h, w = x.shape[-3:-1]
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)])
    patches = jnp.concatenate(
        [xp[..., i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    return patches @ kernel.reshape(9 * c, self.features) + bias


class MaskGenerator(nn.Module):
  """Maps a (B, H, W, C) feature difference to a soft mask of the same shape.

  ``bias_init``: the BN shift before the sigmoid starts here, so the first masks are about
  sigmoid(bias_init) (0: 0.5 everywhere, which halves U and makes F's classification poor
  until the shift has been learned; 2: about 0.88, "keep almost everything").
  ``scale_init``: the BN scale's start. BN standardises each channel's logits, so their spread
  is about this scale: at 1 a mask reaches 0.9 only 2.2 standard deviations above the shift,
  and stage I leaves the scale near where it starts (docs/results.md, Table 2's soft masks).
  """

  bn_axis_name: Any = None
  bias_init: float = 0.0
  scale_init: float = 1.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    c = x.shape[-1]
    y = Conv3x3(c, name="conv")(x)
    y = PReLU(name="prelu")(y)
    y = nn.BatchNorm(momentum=0.9, epsilon=1e-5, axis_name=self.bn_axis_name,
                     bias_init=nn.initializers.constant(self.bias_init),
                     scale_init=nn.initializers.constant(self.scale_init), name="bn")(
        y, use_running_average=not train)
    return nn.sigmoid(y)


class StackedMaskGenerators(nn.Module):
  """``num`` independent generators, one parameter tree with a leading axis of ``num``.

  Input and output (num, B, H, W, C): generator j sees slice j.
  """

  num: int = 9
  bn_axis_name: Any = None
  bias_init: float = 0.0
  scale_init: float = 1.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    # "intermediates": a captured layer's output keeps the generator axis (the recomputed BN
    # statistics read the PReLU's, pdsn_jax/method/generator_statistics.py)
    vmapped = nn.vmap(
        MaskGenerator, variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
        split_rngs={"params": True}, in_axes=(0, None), out_axes=0, axis_size=self.num)
    return vmapped(self.bn_axis_name, self.bias_init, self.scale_init, name="generators")(
        x, train)
