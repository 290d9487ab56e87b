"""Stage I/II speed: one 9-generator step vs 9 single-generator steps; dictionary vs trunk forward.

Run:
  python -m benchmarks.pdsn_step --config=configs/pdsn.py [--steps=5] [--batch=16] [--reuse=R]
  python -m benchmarks.pdsn_step --config=configs/real_mobilefacenet.py --steps=3

First the split of one stage I step (the frozen trunk's forward of the clean face and its 9
occluded copies; the generators' forward and backward given U; the host's occlusion
synthesis) and pairs/s; ``--reuse`` (``pdsn.reuse``): updates per batch's U.

(a) The stacked step runs the clean forward once for all 9 generators. Nine
separate steps each run their own clean and occluded forward, so the expected
time ratio (stacked / 9 separate) is about (1 + 9) / (2 * 9) = 0.56 when the
trunk forward dominates.
(b) Dictionary pass throughput in pairs/s (each pair = one clean + one occluded
face through the trunk) against trunk forward-only img/s on the same batch.
Random uint8 images through the networks (the synthesis times the config's training faces and
occluders). Prints one table.
"""

import functools
import time


from absl import app, flags
from ml_collections import config_flags


def _time(fn, *args, steps):
  out = fn(*args)
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  config_flags.DEFINE_config_file("config", "configs/pdsn.py", "config file")
  flags.DEFINE_integer("steps", 5, "timed repetitions")
  flags.DEFINE_integer("batch", 0, "faces per step (0: config.pdsn.batch_size)")
  flags.DEFINE_integer("reuse", 0, "updates per batch's U (0: config.pdsn.reuse)")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders  # pylint: disable=g-import-not-at-top
  from pdsn_jax.train import parallel, training
  from pdsn_jax.models.generator import StackedMaskGenerators  # pylint: disable=g-import-not-at-top
  from pdsn_jax.stages import dictionary, pdsn  # pylint: disable=g-import-not-at-top

  config = flags.FLAGS.config
  if flags.FLAGS.reuse:
    config.pdsn.reuse = flags.FLAGS.reuse
  reuse = config.pdsn.reuse
  b = flags.FLAGS.batch or config.pdsn.batch_size
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
  chunk = builders.forward_chunk(config)  # faces per trunk call, as the stages run it

  def step_fn(num):
    fn = parallel.data_parallel(functools.partial(
        pdsn.train_step, backbone=backbone, head=head, gens=StackedMaskGenerators(num, "data"),
        tx=tx, schedule=sched, cfg=config.pdsn.copy_and_resolve_references(), lam=10.0,
        chunk=chunk), mesh, donate_state=False)
    state = pdsn.init_fn(config, tv, StackedMaskGenerators(num), tx, ushape)().replace(frozen=tv)
    return fn, jax.device_put(state, parallel.replicated(mesh))

  fn9, s9 = step_fn(9)
  t9 = _time(fn9, s9, parallel.put_batch(batch, mesh), key, steps=flags.FLAGS.steps)
  fn1, s1 = step_fn(1)
  b1 = parallel.put_batch({**batch, "occluded": batch["occluded"][:, :1]}, mesh)
  t1 = _time(fn1, s1, b1, key, steps=flags.FLAGS.steps)

  gens = StackedMaskGenerators(9)
  gvars = {"params": s9.params, "batch_stats": s9.batch_stats, "frozen": tv}
  carry = {"state": gvars, "mean": jnp.zeros((9, *ushape)), "count": jnp.float32(0),
           "change": jnp.zeros((9, *ushape)), "level": jnp.zeros(ushape)}
  dstep = parallel.data_parallel(functools.partial(
      dictionary.mask_step, backbone=backbone, gens=gens, differential=True, chunk=chunk), mesh,
                                 donate_state=False)
  td = _time(dstep, jax.device_put(carry, parallel.replicated(mesh)),
             parallel.put_batch(batch, mesh), key, steps=flags.FLAGS.steps)
  fwd = jax.jit(lambda v, x: builders.frozen_apply(backbone, v, builders.normalize(x), None, chunk))
  imgs = jnp.asarray(batch["occluded"].reshape(-1, *size, 3))
  tf = _time(fwd, v, imgs, steps=flags.FLAGS.steps)

  # the split of one stage I step: the frozen trunk's forward (clean + 9 occluded copies), the
  # generators' forward and backward on given U, and the host's occlusion synthesis
  feats = jax.jit(functools.partial(builders.frozen_features, net=backbone, chunk=chunk))
  tu = _time(feats, tv, {"image": jnp.asarray(batch["image"]),
                         "occluded": jnp.asarray(batch["occluded"])}, steps=flags.FLAGS.steps)
  u_clean, u_occ = feats(tv, batch)
  gens_train = StackedMaskGenerators(9)

  def gen_grads(params, stats, u_clean, u_occ):
    def loss(p):
      per_gen, _ = pdsn.pdsn_losses(p, stats, tv, u_clean, u_occ, jnp.asarray(batch["label"]),
                                    backbone=backbone, head=head, gens=gens_train,
                                    cfg=config.pdsn, train=True, lam=10.0)
      return per_gen.sum()
    return jax.grad(loss)(params)

  host = lambda x: jax.tree.map(lambda a: np.asarray(a), jax.device_get(x))  # noqa: E731
  tg = _time(jax.jit(gen_grads), host(s9.params), host(s9.batch_stats), u_clean, u_occ,
             steps=flags.FLAGS.steps)
  ts = _synthesis_seconds(config, b)

  m = config.model
  trunk = (f"IResNet-{m.depth} width {m.width}" if m.kind == "iresnet" else m.kind)
  print(f"\nPDSN stages I/II: {trunk} {size}, {b} faces x 9 blocks, "
        f"{jax.device_count()}x {jax.devices()[0].device_kind}")
  print("| measurement | value |")
  print("|---|---:|")
  print(f"| stage I pairs/s (step + host synthesis, 9 pairs per face) | {9 * b / (t9 + ts):.1f} |")
  print(f"| stage I pair updates/s ({reuse} update(s) per batch) | "
        f"{9 * b * reuse / (t9 + ts):.1f} |")
  whole = t9 + ts
  for what, sec in (("trunk forward, clean + 9 occluded copies", tu),
                    ("generators forward + backward, given U", tg),
                    ("host occlusion synthesis (one process)", ts)):
    print(f"| {what} (s, share of step + synthesis) | {sec:.3f} ({100 * sec / whole:.0f}%) |")
  print("| (the split is of one update; with reuse > 1 the generators' part repeats) | |")
  print(f"| stacked 9-generator step (s) | {t9:.3f} |")
  print(f"| single-generator step, own clean forward (s) | {t1:.3f} |")
  print(f"| ratio stacked / (9 x single) | {t9 / (9 * t1):.2f} (expected ~{10 / 18:.2f}) |")
  print(f"| dictionary pass (pairs/s, all 9 blocks) | {9 * b / td:.1f} |")
  print(f"| trunk forward only (img/s) | {imgs.shape[0] / tf:.1f} |")
  print(f"| dictionary images/s (clean + 9 occluded per face) / forward img/s | "
        f"{(10 * b / td) / (imgs.shape[0] / tf):.2f} |")


def _synthesis_seconds(config, b: int) -> float:
  """Host seconds to make ``b`` faces' 9 occluded copies (stage I's transform) on real
  training faces (synthetic ones when the config has no folders)."""
  from pdsn_jax.method import builders  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data import sources  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  src, _ = sources.build(config.data)
  transform = builders.every_block_occlusion(config)
  recs = [src[i] for i in range(b)]
  rng = np.random.default_rng(0)
  for r in recs[:2]:  # warm caches (occluder files)
    transform(dict(r), rng)
  t = time.perf_counter()
  for _ in range(flags.FLAGS.steps):
    for r in recs:
      transform(dict(r), rng)
  return (time.perf_counter() - t) / flags.FLAGS.steps


if __name__ == "__main__":
  define_flags()
  app.run(main)
