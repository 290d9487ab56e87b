"""The generators' BatchNorm statistics as a function of their weights
(``pdsn.generator_statistics="recomputed"``).

Training keeps running averages (momentum 0.9): every step moves them a tenth of the way to its
batch's statistics, whatever the learning rate, and with no weight moving they alone change 5-9%
of the probe dictionary's discarded entries over 20-50 steps (docs/results.md, "Why the overlap
rule cannot end stage I"). Recomputed, they are the plain per-channel mean and variance of the
BatchNorm's input over one fixed set of training pairs (``pdsn.statistics_pairs`` a block, drawn
once as stage I draws its pairs, from ``STREAM``), the weights fixed. Stage I puts them in its
state at every checkpoint (its steps never read them: training normalises by the batch), so the
overlap rule and stage II read the same function of the weights.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pdsn_jax.method import builders, pdsn_probe
from pdsn_jax.models.layers import PReLU
from pdsn_jax.run import stage as stage_lib

MODES = ("running", "recomputed")
STREAM = stage_lib.Stream(data_offset=8, init_fold=None)


def _batch_moments(gen_vars: dict, u_clean, u_occ, *, gens, differential: bool):
  """Per generator and channel, over this batch's pairs and U's cells: count, mean and the sum
  of squared deviations (J, C) of the BatchNorm's input (the PReLU's output)."""
  x = builders.generator_input(u_clean, u_occ, differential)
  _, found = gens.apply(gen_vars, x, False, mutable=["intermediates"],
                        capture_intermediates=lambda module, _: isinstance(module, PReLU))
  (y,) = jax.tree.leaves(found["intermediates"])  # (J, B, h, w, c)
  n = np.prod(y.shape[1:-1])
  mean = y.mean(axis=(1, 2, 3))
  return n, mean, jnp.square(y - mean[:, None, None, None]).sum(axis=(1, 2, 3))


class Recomputer:
  """U of the fixed pairs, computed once; ``__call__(gen_vars)`` gives their batch_stats."""

  def __init__(self, config, trunk: dict, src):
    cfg = config.pdsn
    self.batch_size = builders.update_batch(cfg)
    batches = pdsn_probe.probe_batches(config, src, cfg.statistics_pairs, self.batch_size,
                                       config.occlusion.neighbour_prob, stream=STREAM)
    self.u_clean, self.u_occ = pdsn_probe.pair_features(config, trunk, batches)
    self._moments = jax.jit(functools.partial(
        _batch_moments, gens=builders.generators(config, False),
        differential=bool(cfg.differential)))

  @property
  def pairs(self) -> int:
    return self.u_clean.shape[0]

  def __call__(self, gen_vars: dict) -> dict:
    """The ``batch_stats`` tree of ``gen_vars`` (``params`` and any ``batch_stats``, which are
    not read) on the fixed pairs: batches merged exactly (Chan et al.), in float64."""
    count, mean, m2 = 0, 0.0, 0.0
    for s in range(0, self.pairs, self.batch_size):
      n, bm, bm2 = self._moments(gen_vars, self.u_clean[s:s + self.batch_size],
                                 self.u_occ[:, s:s + self.batch_size])
      bm, bm2 = np.asarray(bm, np.float64), np.asarray(bm2, np.float64)
      delta, total = bm - mean, count + int(n)
      mean = mean + delta * (n / total)
      m2 = m2 + bm2 + delta ** 2 * (count * n / total)
      count = total
    stats = {"mean": mean.astype(np.float32), "var": (m2 / count).astype(np.float32)}
    return {"generators": {"bn": stats}}
