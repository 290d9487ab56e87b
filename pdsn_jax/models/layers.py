"""Small layers shared by the trunk and the mask generators."""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
  """``x`` scaled to unit L2 norm along ``axis`` (zero vectors stay zero)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def in_chunks(fn: Callable[[jax.Array], Any], x: jax.Array, chunk: int) -> Any:
  """``fn(x)`` (an array or a pytree of them, each with x's rows) computed ``chunk`` rows at a
  time (``lax.map``; ``x`` padded to a multiple of ``chunk``, the padding dropped). For a
  row-independent ``fn`` (a network in inference mode) only the speed changes: XLA:CPU runs
  MobileFaceNet's forward pass about 1.9x as fast over 8 faces as over 128
  (``benchmarks.mobilefacenet_speed``). ``chunk <= 0`` or a batch no larger than it: one call."""
  n = x.shape[0]
  if chunk <= 0 or n <= chunk:
    return fn(x)
  pad = -n % chunk
  xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x
  out = jax.lax.map(fn, xs.reshape(-1, chunk, *x.shape[1:]))
  return jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:])[:n], out)


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


def depthwise_sum(x: jnp.ndarray, kernel: jnp.ndarray, stride: int = 1) -> jnp.ndarray:
  """Depthwise convolution (VALID, NHWC; ``kernel`` (kh, kw, C)) as the sum of its kh*kw
  shifted, per-channel-scaled taps. XLA:CPU runs grouped convolutions 8-35x slower than this
  sum (measured at batch 64 on MobileFaceNet's shapes, e.g. 256 ms vs 30 ms at 56x48x64); on
  GPUs both are memory-bound."""
  kh, kw = kernel.shape[:2]
  ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
      out = tap * kernel[i, j] if out is None else out + tap * kernel[i, j]
  return out
