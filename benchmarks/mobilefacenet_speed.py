"""MobileFaceNet forward throughput: depthwise convs as a sum of taps vs XLA's grouped conv.

  python -m benchmarks.mobilefacenet_speed [--batch=64] [--reps=5] [--chunk=8]

Prints a table of U = features(x) throughput (img/s) for the net as built here
(``DepthwiseConv``: the sum of kh*kw shifted, per-channel-scaled taps) and for the same
net with every depthwise conv swapped for ``nn.Conv(feature_group_count=C)``, random
weights, 112x96 inputs. The difference is XLA:CPU's grouped convolution; on a GPU run it
to see whether it matters there. Then the same batch in calls of ``--chunk`` faces inside one
jitted function (``model.forward_chunk``; whether its outputs are bit-identical is printed), and
``top`` alone, from the bottom's V, which is all the evaluation runs for a checkpoint that shares
the trunk's bottom (``eval.bottom_cache_gib``).
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp


from absl import app, flags

from pdsn_jax.models import mobilefacenet
from pdsn_jax.models.layers import in_chunks


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


def throughput(batch: int, reps: int, method: str = "features", chunk: int = 0
               ) -> tuple[float, jax.Array]:
  """img/s of ``method`` over random faces, ``chunk`` faces per call (0: the whole batch), and
  its outputs."""
  net = mobilefacenet.MobileFaceNet()
  x = jax.random.uniform(jax.random.key(1), (batch, 112, 96, 3), minval=-1, maxval=1)
  v = net.init(jax.random.key(0), x[:1])
  if method == "top":
    x = net.apply(v, x, method="bottom")
  f = jax.jit(lambda v, x: in_chunks(lambda c: net.apply(v, c, method=method), x, chunk))
  out = f(v, x).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    f(v, x).block_until_ready()
  return reps * batch / (time.perf_counter() - t), out


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_integer("batch", 64, 'Faces per batch.')
  flags.DEFINE_integer("reps", 5, 'Timed repetitions.')
  flags.DEFINE_integer("chunk", 8, 'Faces per call for the chunked row (model.forward_chunk).')


def main(argv):
  del argv
  a = flags.FLAGS
  whole, u = throughput(a.batch, a.reps)
  rows = [("sum of taps (as built)", whole)]
  taps = mobilefacenet.DepthwiseConv
  mobilefacenet.DepthwiseConv = _Grouped
  try:
    rows.append(("grouped conv (feature_group_count=C)", throughput(a.batch, a.reps)[0]))
  finally:
    mobilefacenet.DepthwiseConv = taps
  chunked, u_chunked = throughput(a.batch, a.reps, chunk=a.chunk)
  same = "bit-identical" if bool(jnp.array_equal(u, u_chunked)) else (
      f"max |difference| {float(jnp.max(jnp.abs(u - u_chunked))):.2e}")
  rows.append((f"sum of taps, {a.chunk} faces per call ({same} U)", chunked))
  rows.append(("sum of taps, top only (from a cached bottom)",
               throughput(a.batch, a.reps, "top")[0]))
  print(f"device: {jax.devices()[0].device_kind}; batch {a.batch}; U = features(x), 112x96")
  print("| depthwise conv | img/s |\n|---|---:|")
  for name, ips in rows:
    print(f"| {name} | {ips:.1f} |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
