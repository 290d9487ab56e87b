"""IResNet ("LResNet-E-IR", insightface) with the top conv feature U split from the head F.

``features(x)`` returns U, the output of the last residual stage (7x6x512 for a
112x96 face at width 1, NHWC). ``head(U)`` is F: BN, dropout, flatten, dense to
the embedding, BN. ``__call__`` is ``head(features(x))``. PDSN masks U and runs
F, so both are exposed as methods sharing one parameter tree.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from pdsn_jax.models.layers import PReLU

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
BASE_WIDTHS = (64, 128, 256, 512)

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _bn(name: str, axis_name, dtype, use_scale: bool = True) -> nn.BatchNorm:
  # insightface's BN: eps 1e-5, momentum 0.9 (PyTorch 0.1).
  return nn.BatchNorm(
      momentum=0.9, epsilon=1e-5, axis_name=axis_name, dtype=dtype, use_scale=use_scale,
      name=name,
  )


class IBasicBlock(nn.Module):
  """BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus a (projected) shortcut."""

  features: int
  stride: int
  bn_axis_name: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    ura = not train
    conv = lambda f, k, s, name: nn.Conv(  # noqa: E731
        f, (k, k), (s, s), padding=((k // 2, k // 2),) * 2, use_bias=False,
        kernel_init=_conv_init, dtype=self.dtype, name=name,
    )
    y = _bn("bn1", self.bn_axis_name, self.dtype)(x, use_running_average=ura)
    y = conv(self.features, 3, 1, "conv1")(y)
    y = _bn("bn2", self.bn_axis_name, self.dtype)(y, use_running_average=ura)
    y = PReLU(name="prelu")(y)
    y = conv(self.features, 3, self.stride, "conv2")(y)
    y = _bn("bn3", self.bn_axis_name, self.dtype)(y, use_running_average=ura)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = conv(self.features, 1, self.stride, "downsample_conv")(x)
      x = _bn("downsample_bn", self.bn_axis_name, self.dtype)(x, use_running_average=ura)
    return y + x


class IResNet(nn.Module):
  """IResNet-{18,34,50,100} with a width multiplier.

  Attributes:
    depth: one of STAGE_BLOCKS' keys.
    width: multiplier on the (64, 128, 256, 512) stage widths.
    embedding_dim: size of the face embedding (512 in the paper).
    dropout: dropout rate before the embedding layer.
    bn_axis_name: mesh axis for cross-device BatchNorm statistics in training
      (None outside shard_map).
    dtype: computation dtype (params stay float32).
  """

  depth: int = 50
  width: float = 1.0
  embedding_dim: int = 512
  dropout: float = 0.0
  bn_axis_name: Any = None
  dtype: Any = jnp.float32

  def setup(self):
    if self.depth not in STAGE_BLOCKS:
      raise ValueError(f"IResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth}")
    widths = [max(1, int(round(w * self.width))) for w in BASE_WIDTHS]
    self.stem_conv = nn.Conv(
        widths[0], (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
        kernel_init=_conv_init, dtype=self.dtype,
    )
    self.stem_bn = _bn("stem_bn", self.bn_axis_name, self.dtype)
    self.stem_prelu = PReLU()
    blocks = []
    for stage, (n, w) in enumerate(zip(STAGE_BLOCKS[self.depth], widths)):
      for i in range(n):
        blocks.append(
            IBasicBlock(w, 2 if i == 0 else 1, self.bn_axis_name, self.dtype,
                        name=f"stage{stage + 1}_block{i + 1}")
        )
    self.blocks = blocks
    self.head_bn = _bn("head_bn", self.bn_axis_name, self.dtype)
    self.head_dropout = nn.Dropout(self.dropout)
    self.fc = nn.Dense(self.embedding_dim, dtype=self.dtype)
    # insightface freezes this BN's scale at 1.
    self.embedding_bn = _bn("embedding_bn", self.bn_axis_name, self.dtype, use_scale=False)

  def head_params(self) -> tuple[str, ...]:
    """Top-level parameter names of F (``finetune.trainable="head"`` trains only these)."""
    return ("head_bn", "fc", "embedding_bn")

  def features(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Top conv feature U (B, H/16, W/16, C) from images normalised to about [-1, 1]."""
    x = self.stem_conv(images.astype(self.dtype))
    x = self.stem_prelu(self.stem_bn(x, use_running_average=not train))
    for block in self.blocks:
      x = block(x, train)
    return x

  def head(self, u: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """F: the layers after U, mapping (possibly masked) U to the embedding (float32)."""
    x = self.head_bn(u.astype(self.dtype), use_running_average=not train)
    x = self.head_dropout(x, deterministic=not train)
    x = self.fc(x.reshape(x.shape[0], -1))
    x = self.embedding_bn(x, use_running_average=not train)
    return x.astype(jnp.float32)

  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    return self.head(self.features(images, train), train)
