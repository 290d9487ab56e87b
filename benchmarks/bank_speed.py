"""What the feature bank buys stage I: the trunk's forward rate, the bank's build rate, and stage
I's pair updates per second from the trunk (online) and from the bank.

  python -m benchmarks.bank_speed --config=configs/real_mobilefacenet.py [--steps=5]

Rows (one table; run it alone, the rates are wall-clock):
* trunk forward img/s at each ``--batches`` size (``features``: U, what the bank stores), and
  the largest in calls of ``model.forward_chunk`` faces (on CPU 8), as the stages run it;
* bank build faces/s: ``--faces`` training faces through the bank stage's own code (occlusions
  drawn on the host, 1 + 18 x ``bank.variants`` entries of U each, quantised, written with its
  sha256);
* stage I pair updates/s online: one ``pdsn.train_step`` on images (the trunk's forward of each
  face and its 9 copies) with ``--online_reuse`` updates per batch, plus the host's synthesis;
* stage I pair updates/s from the bank: the same step on stored U (one update per batch), plus
  the host's pick of each face's entries; and the ratio of the two; then the bank with
  ``--bank_sub_batches`` batches per step (``pdsn.sub_batches``: one program, one update each);
* what bounds the bank's step: the 9 generators' forward and weight gradient (3x3 convolutions
  over U's channels as im2col GEMMs) in GFLOP/s, beside the same GEMMs alone.

Random weights (the rates do not depend on them), the config's training faces and occluders.
"""

import functools
import os
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  config_flags.DEFINE_config_file("config", "configs/pdsn.py", "config file")
  flags.DEFINE_integer("steps", 5, "timed repetitions of each step")
  flags.DEFINE_list("batches", ["16", "32", "64"], "trunk forward batch sizes")
  flags.DEFINE_integer("faces", 64, "training faces the bank build is timed on")
  flags.DEFINE_integer("online_reuse", 4, "updates per batch's U online (pdsn.reuse)")
  flags.DEFINE_integer("bank_sub_batches", 4, "batches of stored pairs per step in the last "
                       "bank row (pdsn.sub_batches)")


def _time(fn, *args, steps: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))  # compile
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
  from pdsn_jax.data import feature_bank, sources  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders  # pylint: disable=g-import-not-at-top
  from pdsn_jax.models.generator import StackedMaskGenerators  # pylint: disable=g-import-not-at-top
  from pdsn_jax.stages import bank as bank_stage  # pylint: disable=g-import-not-at-top
  from pdsn_jax.stages import pdsn  # pylint: disable=g-import-not-at-top
  from pdsn_jax.train import parallel, training  # pylint: disable=g-import-not-at-top

  fl, config = flags.FLAGS, flags.FLAGS.config
  steps, b = fl.steps, config.pdsn.batch_size
  src, _ = sources.build(config.data)
  classes = src.num_classes
  backbone, head = builders.backbone(config, False), builders.classifier(config, classes)
  size = tuple(config.data.image_size)
  v = backbone.init(jax.random.key(0), jnp.zeros((1, *size, 3)))
  h = head.init(jax.random.key(1), jnp.zeros((1, config.model.embedding_dim)))
  trunk = {"params": {"backbone": v["params"], "classifier": h["params"]},
           "batch_stats": v["batch_stats"]}
  rows = []

  feats = jax.jit(lambda v, x: backbone.apply(v, builders.normalize(x), method="features"))
  rng = np.random.default_rng(0)
  for n in map(int, fl.batches):
    x = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
    rows.append((f"trunk forward, batch {n} (img/s)", n / _time(feats, v, x, steps=steps)))
  chunk = builders.forward_chunk(config)  # what the stages run (model.forward_chunk)
  if chunk:
    chunked = jax.jit(lambda v, x: builders.frozen_apply(backbone, v, builders.normalize(x),
                                                         "features", chunk))
    rows.append((f"trunk forward, batch {n} in calls of {chunk} (img/s)",
                 n / _time(chunked, v, x, steps=steps)))

  # the bank stage's own code on the first faces
  entries = feature_bank.entries_per_face(config.bank.variants)
  library = builders.training_occluders(config)
  features = bank_stage._features_fn(config, trunk, int(config.bank.batch_size))  # pylint: disable=protected-access
  faces = range(min(fl.faces, len(src)))
  with tempfile.TemporaryDirectory() as tmp:
    bank_stage._synthesize(range(1), src, config, library)  # pylint: disable=protected-access
    features(np.zeros((1, *size, 3), np.uint8))  # compile
    t = time.perf_counter()
    images, rec = bank_stage._synthesize(faces, src, config, library)  # pylint: disable=protected-access
    t_synth = time.perf_counter() - t
    q, rec["quantization"] = bank_stage._features(0, images, config, features)  # pylint: disable=protected-access
    feature_bank.write_shard(tmp, 0, q, rec)
    t_build = time.perf_counter() - t
  rows.append((f"bank build ({entries} entries per face, {config.bank.dtype}; faces/s)",
               len(faces) / t_build))
  rows.append(("  of which host occlusion synthesis (share)", t_synth / t_build))

  mesh = parallel.make_mesh()
  gens = StackedMaskGenerators(9, parallel.AXIS)
  tx = training.optimizer(config.pdsn, 1000)
  sched = training.learning_rate_schedule(config.pdsn, 1000)
  key = jax.random.key(0, impl=config.prng_impl)
  labels = rng.integers(0, classes, (b,), dtype=np.int32)

  def rate(reuse: int, batch: dict, host_seconds: float, sub_batches: int = 1) -> float:
    cfg = config.pdsn.copy_and_resolve_references()
    cfg.reuse, cfg.sub_batches, cfg.batch_size = reuse, sub_batches, b * sub_batches
    fn = parallel.data_parallel(functools.partial(
        pdsn.train_step, backbone=backbone, head=head, gens=gens, tx=tx, schedule=sched,
        cfg=cfg, lam=10.0, chunk=builders.forward_chunk(config)), mesh)  # donated, as in the stage
    state = pdsn.init_fn(config, trunk, StackedMaskGenerators(9), tx,
                         builders.u_shape(config))().replace(frozen=jax.device_get(trunk))
    state = jax.device_put(state, parallel.replicated(mesh))
    on_device = parallel.put_batch(batch, mesh)
    state, _ = fn(state, on_device, key)  # compile
    jax.block_until_ready(state)
    t = time.perf_counter()
    for _ in range(steps):
      state, _ = fn(state, on_device, key)
    jax.block_until_ready(state)
    sec = (time.perf_counter() - t) / steps
    # a pair: a face and one block's copy
    return 9 * b * reuse * sub_batches / (sec + host_seconds * sub_batches)

  transform = builders.every_block_occlusion(config)
  recs = [dict(src[i]) for i in range(b)]
  t = time.perf_counter()
  online = [transform(dict(r), np.random.default_rng(i)) for i, r in enumerate(recs)]
  t_online_host = time.perf_counter() - t
  online_batch = {"image": np.stack([r["image"] for r in online]),
                  "occluded": np.stack([r["occluded"] for r in online]), "label": labels}
  ushape = builders.u_shape(config)
  dtype = feature_bank.DTYPES[config.bank.dtype]
  fake = {"u_clean": np.zeros((config.bank.variants, 9, *ushape), dtype),
          "u_alone": rng.normal(size=(config.bank.variants, 9, *ushape)).astype(dtype),
          "u_neighbour": rng.normal(size=(config.bank.variants, 9, *ushape)).astype(dtype),
          "label": np.int32(0)}
  fake["u_clean"] = fake["u_alone"][0, 0]
  pick = feature_bank.PickPairs(config.occlusion.neighbour_prob)
  t = time.perf_counter()
  picked = [pick(fake, np.random.default_rng(i)) for i in range(b)]
  t_bank_host = time.perf_counter() - t
  bank_batch = {"u_clean": np.stack([p["u_clean"] for p in picked]),
                "u_occ": np.stack([p["u_occ"] for p in picked]), "label": labels}
  r_online = rate(fl.online_reuse, online_batch, t_online_host)
  r_bank = rate(1, bank_batch, t_bank_host)
  k = fl.bank_sub_batches
  r_sub = rate(1, {key: np.concatenate([v] * k) for key, v in bank_batch.items()}, t_bank_host, k)
  rows.append((f"stage I pair updates/s online ({fl.online_reuse} updates per batch)", r_online))
  rows.append(("stage I pair updates/s from the bank (1 update per step)", r_bank))
  rows.append(("bank / online", r_bank / r_online))
  rows.append((f"stage I pair updates/s from the bank ({k} batches per step: pdsn.sub_batches)",
               r_sub))
  rows.append((f"bank ({k} batches per step) / online", r_sub / r_online))

  # What bounds the bank's step: the 9 generators' 3x3 convolutions over U's channels, an
  # im2col GEMM (b*h*w, 9c) @ (9c, c) each, forward and weight gradient (U needs no gradient).
  h, w, c = ushape
  flop = 2 * 9 * (2 * b * h * w * 9 * c * c)
  u = jnp.asarray(rng.normal(size=(9, b, h, w, c)), jnp.float32)
  one = builders.generators(config, False)  # the config's generators, no device axis
  gv = one.init(jax.random.key(2), u[:, :1])

  def gen_loss(p, u):
    masks, _ = one.apply({"params": p, "batch_stats": gv["batch_stats"]}, u, True,
                         mutable=["batch_stats"])
    return jnp.sum(masks * u)

  grad = jax.jit(jax.grad(gen_loss))
  gemm = jax.jit(lambda a, k: a @ k)
  a = jnp.asarray(rng.normal(size=(9, b * h * w, 9 * c)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(9, 9 * c, c)), jnp.float32)
  rows.append((f"generators' forward + weight gradient, batch {b} (GFLOP/s)",
               flop / _time(grad, gv["params"], u, steps=steps) / 1e9))
  rows.append(("  the same GEMMs alone, forward only (GFLOP/s: this CPU's rate for them)",
               flop / 2 / _time(gemm, a, k, steps=steps) / 1e9))

  m = config.model
  print(f"\nfeature bank: {m.kind} {size}, U {ushape}, stage I batch {b}, "
        f"{jax.device_count()}x {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs")
  print("| measurement | value |")
  print("|---|---:|")
  for what, value in rows:
    print(f"| {what} | {value:.2f} |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
