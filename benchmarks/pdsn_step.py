"""Stage I/II speed: one 9-generator step vs 9 single-generator steps; dictionary vs trunk forward.

Run:
  python benchmarks/pdsn_step.py --config=configs/pdsn.py [--steps=5] [--batch=16]

(a) The stacked step runs the clean forward once for all 9 generators. Nine
separate steps each run their own clean and occluded forward, so the expected
time ratio (stacked / 9 separate) is about (1 + 9) / (2 * 9) = 0.56 when the
trunk forward dominates.
(b) Dictionary pass throughput in pairs/s (each pair = one clean + one occluded
face through the trunk) against trunk forward-only img/s on the same batch.
Random uint8 images, no input pipeline. Prints one table.
"""

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pdsn.py", "config file")
_STEPS = flags.DEFINE_integer("steps", 5, "timed repetitions")
_BATCH = flags.DEFINE_integer("batch", 0, "faces per step (0: config.pdsn.batch_size)")


def _time(fn, *args, steps):
  out = fn(*args)
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from pdsn_jax import builders, parallel, training  # pylint: disable=g-import-not-at-top
  from pdsn_jax.models.generator import StackedMaskGenerators  # pylint: disable=g-import-not-at-top
  from pdsn_jax.stages import dictionary, pdsn  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  b = _BATCH.value or config.pdsn.batch_size
  classes = 200
  mesh = parallel.make_mesh()
  backbone = builders.backbone(config, False)
  head = builders.classifier(config, classes)
  x = jnp.zeros((1, *config.data.image_size, 3))
  v = backbone.init(jax.random.key(0), x)
  h = head.init(jax.random.key(1), jnp.zeros((1, config.model.embedding_dim)))
  tv = {"params": {"backbone": v["params"], "classifier": h["params"]},
        "batch_stats": v["batch_stats"]}
  rng = np.random.default_rng(0)
  size = tuple(config.data.image_size)
  batch = {"image": rng.integers(0, 256, (b, *size, 3), dtype=np.uint8),
           "occluded": rng.integers(0, 256, (b, 9, *size, 3), dtype=np.uint8),
           "label": rng.integers(0, classes, (b,), dtype=np.int32)}
  tx = training.sgd(config.pdsn, 100)
  sched = training.learning_rate_schedule(config.pdsn, 100)
  ushape = builders.u_shape(config)
  key = jax.random.key(0, impl=config.prng_impl)

  def step_fn(num):
    fn = parallel.data_parallel(functools.partial(
        pdsn.train_step, backbone=backbone, head=head, gens=StackedMaskGenerators(num, "data"),
        tx=tx, schedule=sched, cfg=config.pdsn), mesh, donate_state=False)
    state = pdsn.init_fn(config, tv, StackedMaskGenerators(num), tx, ushape)().replace(frozen=tv)
    return fn, jax.device_put(state, parallel.replicated(mesh))

  fn9, s9 = step_fn(9)
  t9 = _time(fn9, s9, parallel.put_batch(batch, mesh), key, steps=_STEPS.value)
  fn1, s1 = step_fn(1)
  b1 = parallel.put_batch({**batch, "occluded": batch["occluded"][:, :1]}, mesh)
  t1 = _time(fn1, s1, b1, key, steps=_STEPS.value)

  gens = StackedMaskGenerators(9)
  gvars = {"params": s9.params, "batch_stats": s9.batch_stats, "frozen": tv}
  carry = {"state": gvars, "mean": jnp.zeros((9, *ushape)), "count": jnp.float32(0),
           "change": jnp.zeros((9, *ushape)), "level": jnp.zeros(ushape)}
  dstep = parallel.data_parallel(functools.partial(
      dictionary.mask_step, backbone=backbone, gens=gens, differential=True), mesh,
                                 donate_state=False)
  td = _time(dstep, jax.device_put(carry, parallel.replicated(mesh)),
             parallel.put_batch(batch, mesh), key, steps=_STEPS.value)
  fwd = jax.jit(lambda v, x: backbone.apply(v, builders.normalize(x)))
  imgs = jnp.asarray(batch["occluded"].reshape(-1, *size, 3))
  tf = _time(fwd, v, imgs, steps=_STEPS.value)

  m = config.model
  print(f"\nPDSN stages I/II: IResNet-{m.depth} width {m.width} {size}, {b} faces x 9 blocks, "
        f"{jax.device_count()}x {jax.devices()[0].device_kind}")
  print("| measurement | value |")
  print("|---|---:|")
  print(f"| stacked 9-generator step (s) | {t9:.3f} |")
  print(f"| single-generator step, own clean forward (s) | {t1:.3f} |")
  print(f"| ratio stacked / (9 x single) | {t9 / (9 * t1):.2f} (expected ~{10 / 18:.2f}) |")
  print(f"| dictionary pass (pairs/s, all 9 blocks) | {9 * b / td:.1f} |")
  print(f"| trunk forward only (img/s) | {imgs.shape[0] / tf:.1f} |")
  print(f"| dictionary images/s (clean + 9 occluded per face) / forward img/s | "
        f"{(10 * b / td) / (imgs.shape[0] / tf):.2f} |")


if __name__ == "__main__":
  app.run(main)
