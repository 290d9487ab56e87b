"""The feature bank: the frozen trunk's U of every training face, clean and occluded on each
generator block (alone, and with a 4-neighbour), computed once per run (``data/feature_bank.py``
holds the layout and the format). Stage I (``pdsn.source="bank"``) and stage II
(``dictionary.source="bank"``) then never run the trunk: the trunk's forward pass was most of
their time.

Face i's occlusions are drawn from its own seed (``config.seed``, the stage's stream, i), so a
shard built again is bit-identical and a resumed build equals an unbroken one. With several
processes, shard s is built by process s mod P; each reads the whole bank.

Size: faces x (1 + 18 x ``bank.variants``) x h x w x c x 2 bytes in float16; for CelebA's 5,020
training faces, V = 1 and MobileFaceNet's 7x6x512: 4.1 GB.
"""

import concurrent.futures
import logging
import os
import time

import jax
import ml_collections
import numpy as np

from pdsn_jax.method import builders
from pdsn_jax.run import checkpointing, provenance
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.train import distributed, parallel, training
from pdsn_jax.data import feature_bank, occlusion, sources


def face_entries(image: np.ndarray, index: int, seed: int, variants: int, library, o):
  """Face ``index``'s occluded copies in the bank's order (after the clean entry) and their
  placements, from the face's own seed."""
  rng = np.random.default_rng([seed, 11, index])
  images, placements = [], []
  for _ in range(variants):
    for neighbour_prob in (0.0, 1.0):
      for b in occlusion.CENTRAL_BLOCKS:
        where: list = []
        im, _ = occlusion.occlude_block(image, b, rng, library, neighbour_prob, o.min_overlap,
                                        o.overlap, exact=o.exact_blocks, placements=where)
        images.append(im)
        placements.append(where)
  return images, placements


def _features_fn(config, trunk: dict, batch: int):
  """A jitted U of up to ``batch`` uint8 images (float32 on the host), split over this
  process's devices; shorter inputs are padded so that one program serves every call. Not the
  evaluation's ``Embedder.features``: that one splits each batch over every process, and here
  each process builds shards of its own."""
  net = builders.backbone(config, False)
  mesh = parallel.make_mesh(jax.local_devices())
  bvars = jax.device_put(checkpointing.backbone_of(trunk), parallel.replicated(mesh))
  rows = parallel.sharded(mesh)
  chunk = builders.forward_chunk(config)  # a host batch above it runs in calls of this many
  apply = jax.jit(lambda v, x: builders.frozen_apply(net, v, builders.normalize(x), "features",
                                                     chunk), out_shardings=rows)
  size = -(-batch // mesh.size) * mesh.size  # a whole number of rows per device

  def features(images: np.ndarray) -> np.ndarray:
    n = len(images)
    pad = np.zeros((size - n, *images.shape[1:]), images.dtype)
    return np.asarray(apply(bvars, jax.device_put(np.concatenate([images, pad]), rows)))[:n]

  return features


def _synthesize(faces: range, src, config, library) -> tuple[np.ndarray, dict]:
  """The shard's images (each face, then its occluded copies) and its record so far."""
  seed = training.data_seed(config, STAGE.stream)
  images, placements, labels = [], [], []
  for i in faces:
    rec = src[i]
    occluded, where = face_entries(rec["image"], i, seed, config.bank.variants, library,
                                   config.occlusion)
    images.append(rec["image"])
    images.extend(occluded)
    placements.append(where)
    labels.append(int(rec["label"]))
  return np.stack(images), {"faces": list(faces), "labels": labels, "placements": placements}


def _features(s: int, images: np.ndarray, config, features) -> tuple[np.ndarray, dict]:
  cfg = config.bank
  u = np.concatenate([features(images[k:k + cfg.batch_size])
                      for k in range(0, len(images), cfg.batch_size)])
  u = u.reshape(-1, feature_bank.entries_per_face(cfg.variants), *u.shape[1:])
  return feature_bank.quantize(u, cfg.dtype, f"bank shard {s}")


def _build(config, workdir: str, name: str, shards: list, src) -> int:
  """Writes this process's shards that have no record yet; returns the faces it built."""
  cfg, folder = config.bank, workdir_lib.stage_dir(workdir, name)
  trunk = workdir_lib.load(workdir, workdir_lib.TRUNK)
  features = _features_fn(config, trunk, int(cfg.batch_size))
  library = builders.training_occluders(config)
  done = feature_bank.written_shards(folder)
  mine = [s for s in range(len(shards)) if s % jax.process_count() == jax.process_index()]
  todo = [s for s in mine if s not in done or done[s]["faces"] != list(shards[s])]
  entries = feature_bank.entries_per_face(cfg.variants)
  logging.info("[%s] %d faces x %d entries of U in %d shards (%d already written); this process "
               "builds %d", name, len(src), entries, len(shards), len(shards) - len(todo),
               len(todo))
  t0, built = time.time(), 0
  # the next shard's occlusions are drawn on the host while the trunk runs on this one
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    ahead = {s: pool.submit(_synthesize, shards[s], src, config, library) for s in todo[:1]}
    for i, s in enumerate(todo):
      images, rec = ahead.pop(s).result()
      if i + 1 < len(todo):
        ahead[todo[i + 1]] = pool.submit(_synthesize, shards[todo[i + 1]], src, config, library)
      q, rec["quantization"] = _features(s, images, config, features)
      feature_bank.write_shard(folder, s, q, rec)
      built += len(shards[s])
      rate = built / max(time.time() - t0, 1e-9)
      left = sum(len(shards[x]) for x in todo[i + 1:])
      logging.info("[%s] shard %d/%d: %d faces | %.2f faces/s (%.1f trunk img/s) | ETA %.1f min",
                   name, s + 1, len(shards), len(shards[s]), rate, rate * entries,
                   left / max(rate, 1e-9) / 60)
  return built


def _summary(config, name: str, shards: list, done: dict, num_classes: int) -> tuple[dict, dict]:
  """The manifest's layout and the stage's summary (size, quantisation error)."""
  cfg = config.bank
  entries, u_shape = feature_bank.entries_per_face(cfg.variants), list(done[0]["shape"][2:])
  layout = {"variants": int(cfg.variants), "entries_per_face": entries, "dtype": cfg.dtype,
            "u_shape": u_shape, "num_classes": int(num_classes),
            "blocks": list(occlusion.CENTRAL_BLOCKS),
            "order": "0 clean; 1 + v*18 + k block k alone; 1 + v*18 + 9 + k block k and a "
                     "4-neighbour"}
  quant = [done[s]["quantization"] for s in range(len(shards))]
  n, size = sum(len(f) for f in shards), sum(done[s]["bytes"] for s in range(len(shards)))
  item = np.dtype(feature_bank.DTYPES[cfg.dtype]).itemsize
  return layout, {
      "stage": name, "faces": n, **layout, "bytes": size,
      "size": f"{n} faces x {entries} entries x {'x'.join(map(str, u_shape))} x {item} B = "
              f"{size / 2**30:.2f} GiB",
      "quantization": {"max_abs": max(q["max_abs"] for q in quant),
                       "max_abs_error": max(q["max_abs_error"] for q in quant),
                       "mean_abs_error": float(np.mean([q["mean_abs_error"] for q in quant]))}}


def run(config: ml_collections.ConfigDict, workdir: str, name: str = workdir_lib.BANK) -> dict:
  """Builds (or completes) ``<workdir>/<name>``; skipped when its manifest exists and its
  provenance matches."""
  cfg = config.bank
  if cfg.dtype not in feature_bank.DTYPES:
    raise ValueError(f"config.bank.dtype={cfg.dtype!r} is not one of {tuple(feature_bank.DTYPES)}")
  for key in ("variants", "batch_size", "shard_faces"):
    if int(cfg[key]) < 1:
      raise ValueError(f"config.bank.{key}={cfg[key]!r} must be >= 1")
  folder = workdir_lib.stage_dir(workdir, name)
  workdir_lib.require(workdir, workdir_lib.TRUNK, needed_by=name)
  record = provenance.begin(config, workdir, name, STAGE.name, STAGE.upstream)
  if feature_bank.is_complete(folder):
    logging.info("[%s] complete, skipping: %s", name, folder)
    return {**workdir_lib.read_summary(workdir, name), "skipped": True}
  os.makedirs(folder, exist_ok=True)
  src, _ = sources.build(config.data)
  n, per = len(src), int(cfg.shard_faces)
  shards = [range(a, min(a + per, n)) for a in range(0, n, per)]
  t0 = time.time()
  built = _build(config, workdir, name, shards, src)
  seconds = time.time() - t0
  distributed.barrier(f"{folder}: every shard written")
  done = feature_bank.written_shards(folder)
  missing = [s for s in range(len(shards)) if s not in done]
  if missing:
    raise RuntimeError(f"[{name}] shards {missing} of {folder} were not written by their "
                       "processes; run the stage again")
  layout, summary = _summary(config, name, shards, done, src.num_classes)
  summary.update(seconds_this_run=round(seconds, 1),
                 faces_per_sec_this_run=round(built / seconds, 2) if built else None,
                 provenance=record["fingerprint"])
  if jax.process_index() == 0:
    workdir_lib.write_summary(workdir, name, summary)
    feature_bank.write_manifest(folder, layout, [done[s] for s in range(len(shards))])
  distributed.barrier(f"{folder}: manifest written")
  logging.info("[%s] %s, in %s", name, summary["size"], folder)
  return summary


STAGE = stage_lib.Stage(
    name=workdir_lib.BANK, run=run, section="bank", upstream=(workdir_lib.TRUNK,),
    stream=stage_lib.Stream(data_offset=7, init_fold=None),
    # bank.batch_size is recorded too: XLA's kernels may round differently at another size
    depends_on=stage_lib.BASE + ("model", "bank") + stage_lib.OCCLUDERS)
