"""Occlusion detector: a small U-Net-style fully convolutional network (per-pixel logits).

The paper uses an FCN-8s; this is the same idea (an encoder, then upsampling
with skip connections from every encoder scale) at a size that trains on a
CPU. ``widths`` sets the encoder's channels per scale; each scale is two
conv3x3-BN-ReLU, the first with stride 2 after the first scale. The decoder
resizes to the skip's shape (so any input size works, 112x96 included),
concatenates and applies two conv3x3-BN-ReLU; a 1x1 conv gives the logit of
"occluded" at full resolution.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class _ConvBN(nn.Module):
  features: int
  stride: int = 1
  bn_axis_name: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)),
                use_bias=False, dtype=self.dtype)(x)
    x = nn.BatchNorm(momentum=0.9, epsilon=1e-5, axis_name=self.bn_axis_name,
                     dtype=self.dtype)(x, use_running_average=not train)
    return nn.relu(x)


class OcclusionDetector(nn.Module):
  """Images normalised to about [-1, 1] (B, H, W, 3) -> occlusion logits (B, H, W) float32."""

  widths: Sequence[int] = (16, 32, 64, 96)
  bn_axis_name: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.astype(self.dtype)
    skips = []
    for i, w in enumerate(self.widths):
      x = _ConvBN(w, 1 if i == 0 else 2, self.bn_axis_name, self.dtype)(x, train)
      x = _ConvBN(w, 1, self.bn_axis_name, self.dtype)(x, train)
      skips.append(x)
    for w, skip in zip(reversed(self.widths[:-1]), reversed(skips[:-1])):
      x = jax.image.resize(x, (x.shape[0], *skip.shape[1:3], x.shape[-1]), "bilinear")
      x = jnp.concatenate([x, skip], axis=-1)
      x = _ConvBN(w, 1, self.bn_axis_name, self.dtype)(x, train)
      x = _ConvBN(w, 1, self.bn_axis_name, self.dtype)(x, train)
    return nn.Conv(1, (1, 1), dtype=self.dtype)(x)[..., 0].astype(jnp.float32)
