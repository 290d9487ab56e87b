"""MobileFaceNet forward throughput: depthwise convs as a sum of taps vs XLA's grouped conv.

  python -m benchmarks.mobilefacenet_speed [--batch=64] [--reps=5]

Prints a table of U = features(x) throughput (img/s) for the net as built here
(``DepthwiseConv``: the sum of kh*kw shifted, per-channel-scaled taps) and for the same
net with every depthwise conv swapped for ``nn.Conv(feature_group_count=C)``, random
weights, 112x96 inputs. The difference is XLA:CPU's grouped convolution; on a GPU run it
to see whether it matters there. A last row: ``top`` alone, from the bottom's V, which is all
the evaluation runs for a checkpoint that shares the trunk's bottom (``eval.bottom_cache_gib``).
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp


from absl import app, flags

from pdsn_jax.models import mobilefacenet


class _Grouped(nn.Module):
  kernel_size: tuple
  stride: int = 1
  padding: object = None
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    pad = "VALID" if self.padding == "VALID" else ((kh // 2, kh // 2), (kw // 2, kw // 2))
    return nn.Conv(x.shape[-1], self.kernel_size, (self.stride, self.stride), padding=pad,
                   feature_group_count=x.shape[-1], use_bias=False, dtype=self.dtype,
                   name="inner")(x)


def throughput(batch: int, reps: int, method: str = "features") -> float:
  net = mobilefacenet.MobileFaceNet()
  x = jnp.zeros((batch, 112, 96, 3))
  v = net.init(jax.random.key(0), x[:1])
  if method == "top":
    x = net.apply(v, x, method="bottom")
  f = jax.jit(lambda v, x: net.apply(v, x, method=method))
  f(v, x).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    f(v, x).block_until_ready()
  return reps * batch / (time.perf_counter() - t)


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_integer("batch", 64, 'Faces per batch.')
  flags.DEFINE_integer("reps", 5, 'Timed repetitions.')


def main(argv):
  del argv
  a = flags.FLAGS
  rows = [("sum of taps (as built)", throughput(a.batch, a.reps))]
  taps = mobilefacenet.DepthwiseConv
  mobilefacenet.DepthwiseConv = _Grouped
  try:
    rows.append(("grouped conv (feature_group_count=C)", throughput(a.batch, a.reps)))
  finally:
    mobilefacenet.DepthwiseConv = taps
  rows.append(("sum of taps, top only (from a cached bottom)", throughput(a.batch, a.reps, "top")))
  print(f"device: {jax.devices()[0].device_kind}; batch {a.batch}; U = features(x), 112x96")
  print("| depthwise conv | img/s |\n|---|---:|")
  for name, ips in rows:
    print(f"| {name} | {ips:.1f} |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
