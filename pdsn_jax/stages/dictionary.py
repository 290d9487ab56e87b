"""Stage II: the mask dictionary, 9 binary Feature Discarding Masks (FDMs).

P occluded/clean pairs per block go through the trained generators; each mask is
min-max normalised on its own and folded into a running mean (per-batch means
combined by counts, so float32 stays exact-enough for P up to 10^6); then for
each block the floor(tau*K) smallest mean entries (K = elements of U) become 0
and the rest 1, ties broken by element index.

Outputs in ``<workdir>/dictionary/``: ``state/`` (orbax: mean masks, FDMs,
count) and ``dictionary.npz`` (bit-packed FDMs, float32 mean masks, JSON
metadata; ``fdm.export`` / ``fdm.load``).
"""

import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from pdsn_jax.method import builders, fdm
from pdsn_jax.train import distributed, parallel, training
from pdsn_jax.run import files, provenance
from pdsn_jax import visualize
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.data import feature_bank, occlusion, pipeline, sources
from pdsn_jax.method import pdsn_probe



def merge_mean(mean: jax.Array, count: jax.Array, batch_mean: jax.Array, n) -> tuple:
  """Running mean update by counts: exact combination of two means."""
  total = count + n
  return mean + (batch_mean - mean) * (n / jnp.maximum(total, 1.0)), total


def and_discard_shares(fdms: np.ndarray, blocks=occlusion.CENTRAL_BLOCKS,
                       grid: int = occlusion.GRID) -> dict:
  """Share of U discarded by one item and by the AND of every 2 and 3 adjacent items
  (4-connected sets of generator blocks): mean, min, max over the sets."""
  pos = {b: divmod(b, grid) for b in blocks}
  adjacent = lambda a, b: abs(pos[a][0] - pos[b][0]) + abs(pos[a][1] - pos[b][1]) == 1  # noqa
  idx = {b: i for i, b in enumerate(blocks)}
  pairs = [(a, b) for i, a in enumerate(blocks) for b in blocks[i + 1:] if adjacent(a, b)]
  triples = sorted({tuple(sorted((a, b, c))) for a, b in pairs for c in blocks
                    if c not in (a, b) and (adjacent(a, c) or adjacent(b, c))})
  out = {}
  for name, sets in (("1", [(b,) for b in blocks]), ("2_adjacent", pairs),
                     ("3_connected", triples)):
    shares = [1.0 - float(np.prod([fdms[idx[b]] for b in s], axis=0).mean()) for s in sets]
    out[name] = {"mean": round(float(np.mean(shares)), 4), "min": round(min(shares), 4),
                 "max": round(max(shares), 4), "sets": len(sets)}
  return out


def mask_step(carry: dict, batch: dict, rng: jax.Array, *, backbone, gens, differential: bool,
              chunk: int = 0):
  """Per-device: generator masks for the batch, min-max, psum-ed sum into the running mean;
  also the running means of |U(x_j) - U(x)| and |U(x)| (the not-learned reference).
  ``chunk``: faces per trunk call (``builders.forward_chunk``)."""
  del rng
  state = carry["state"]
  u_clean, u_occ = builders.frozen_features(state["frozen"], batch, backbone, chunk)
  diff = jnp.abs(u_occ - u_clean[None])
  gen_in = diff if differential else u_occ
  masks = gens.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, gen_in,
                     False)  # (J, B, h, w, c)
  if "valid" in batch:  # the bank's last batch is padded: its padding rows weigh 0
    w = batch["valid"].astype(jnp.float32)[:, None, None, None]
    n = jax.lax.psum(w.sum(), parallel.AXIS)
    batch_mean = lambda x: jax.lax.psum((x * w).sum(axis=-4), parallel.AXIS) / n  # noqa: E731
  else:
    n = jax.lax.psum(jnp.float32(masks.shape[1]), parallel.AXIS)
    batch_mean = lambda x: jax.lax.psum(x.sum(axis=-4), parallel.AXIS) / n  # noqa: E731
  mean, count = merge_mean(carry["mean"], carry["count"], batch_mean(fdm.minmax(masks)), n)
  change, _ = merge_mean(carry["change"], carry["count"], batch_mean(diff), n)
  level, _ = merge_mean(carry["level"], carry["count"], batch_mean(jnp.abs(u_clean)), n)
  return {**carry, "mean": mean, "count": count, "change": change, "level": level}, count


def relative_change_scores(change: np.ndarray, level: np.ndarray) -> np.ndarray:
  """Keep-scores of the not-learned reference dictionary: minus the mean relative change
  E|U(x_j) - U(x)| / E|U(x)| per element (``binarize`` drops the lowest, i.e. the most
  changed). The paper's MED (Eq. 1) per element instead of per channel."""
  return -(change / (level[None] + 1e-6))


def median_relative_change(backbone, trunk: dict, local_batch: dict, chunk: int = 0
                           ) -> np.ndarray:
  """MED (paper Eq. 1) per block and channel: median over faces of the relative change
  mean|U(x_j) - U(x)| / mean|U(x)| of each channel of U. (num_blocks, C)."""
  keys = ("u_clean", "u_occ") if "u_occ" in local_batch else ("image", "occluded")
  u_clean, u_occ = jax.jit(functools.partial(builders.frozen_features, net=backbone,
                                             chunk=chunk))(
      trunk, {k: local_batch[k] for k in keys})
  u_clean, u_occ = np.asarray(u_clean), np.asarray(u_occ)
  num = np.abs(u_occ - u_clean[None]).mean(axis=(2, 3))  # (J, B, C)
  den = np.abs(u_clean).mean(axis=(1, 2))[None] + 1e-6
  return np.median(num / den, axis=1)


def _online_batches(config):
  """``pairs_per_block // batch_size`` batches of this process's faces and their copies, each
  occluded on its block alone (``dictionary.neighbour_prob``), drawn as they come."""
  cfg = config.dictionary
  train_src, _ = sources.build(config.data)
  ds = pipeline.train_dataset(train_src, cfg.batch_size, training.data_seed(config, STAGE.stream),
                              jax.process_index(), jax.process_count(),
                              (builders.every_block_occlusion(config, cfg.neighbour_prob),))
  data_iter = pipeline.to_iterator(ds, config.data.num_workers)
  num_batches = max(1, cfg.pairs_per_block // cfg.batch_size)
  return (next(data_iter) for _ in range(num_batches)), num_batches


def _bank_batches(config, workdir: str):
  """The bank's first ``pairs_per_block // variants`` faces (all of them when it has fewer)
  once per variant, with their block-alone entries (the paper's pairs), in the bank's order;
  the last batch padded (``valid`` 0)."""
  cfg = config.dictionary
  bank = feature_bank.open_bank(workdir_lib.stage_dir(workdir, workdir_lib.BANK))
  gb, v = cfg.batch_size, bank.variants
  n = min(len(bank), max(1, int(cfg.pairs_per_block) // v))
  alone = [[feature_bank.alone_index(x, k) for k in range(feature_bank.NUM_BLOCKS)]
           for x in range(v)]

  def batches():
    for start in range(0, n, gb):
      rows = bank.rows(start, min(start + gb, n))
      for x in range(v):
        arrays = {"u_clean": rows[:, 0], "u_occ": rows[:, alone[x]],
                  "valid": np.ones(len(rows), np.float32)}
        for chunk, _ in pipeline.eval_batches(arrays, gb, jax.process_index(),
                                              jax.process_count()):
          yield chunk

  return batches(), -(-n // gb) * v


def _accumulate(config, workdir: str, generators_vars: dict, name: str,
                mesh) -> tuple[dict, np.ndarray]:
  """Streams the pairs of ``dictionary.source`` through the generators: the running means (on
  the devices) and MED from the first batch."""
  cfg = config.dictionary
  pindex = jax.process_index()
  backbone, gens = builders.backbone(config, False), builders.generators(config, False)
  if cfg.source == "bank":
    data_iter, num_batches = _bank_batches(config, workdir)
  else:
    data_iter, num_batches = _online_batches(config)
  shape = builders.u_shape(config)
  carry = parallel.put_replicated({
      "state": generators_vars, "mean": np.zeros((gens.num, *shape), np.float32),
      "count": np.zeros((), np.float32), "change": np.zeros((gens.num, *shape), np.float32),
      "level": np.zeros(shape, np.float32)}, mesh)
  chunk = builders.forward_chunk(config)
  step = parallel.data_parallel(functools.partial(
      mask_step, backbone=backbone, gens=gens, differential=bool(config.pdsn.differential),
      chunk=chunk), mesh)
  key, t0, med = jax.random.key(0), time.time(), None
  for b, local in enumerate(data_iter):
    if b == 0 and pindex == 0:
      med = median_relative_change(backbone, generators_vars["frozen"], local, chunk)
    carry, count = step(carry, parallel.put_batch(local, mesh), key)
    if (b + 1) % cfg.log_every == 0 or b + 1 == num_batches:
      c = float(jax.device_get(count))
      logging.info("[%s] %d/%d pairs per block | %.1f pairs/s (x9 blocks)", name, int(c),
                   num_batches * cfg.batch_size, c / max(time.time() - t0, 1e-9))
  if cfg.source == "bank" and pindex == 0:
    logging.info("[%s] the bank's block-alone entries: %d pairs per block (at most %d)", name,
                 int(jax.device_get(carry["count"])), cfg.pairs_per_block)
  return carry, med


def _metadata(config, workdir: str, fdms: np.ndarray, count, shape) -> dict:
  cfg = config.dictionary
  return {"tau": cfg.tau, "pairs_per_block": int(count), "source": cfg.source,
          "pairs_per_block_requested": cfg.pairs_per_block,
          "neighbour_prob": cfg.neighbour_prob,
          "blocks": list(occlusion.CENTRAL_BLOCKS), "grid": occlusion.GRID,
          "image_size": list(config.data.image_size), "u_shape": list(shape),
          "trunk_checkpoint": os.path.abspath(workdir_lib.checkpoints(workdir, workdir_lib.TRUNK)),
          "zeros_per_item": [int((f == 0).sum()) for f in fdms],
          "discarded_share_of_and": and_discard_shares(fdms),
          **pdsn_probe.locality(fdms)}


def run(config: ml_collections.ConfigDict, workdir: str, name: str = workdir_lib.DICTIONARY,
        generators: str = workdir_lib.PDSN, overrides: dict | None = None) -> dict:
  """Builds ``<workdir>/<name>/dictionary.npz`` from the generators in ``<workdir>/<generators>``
  (skipped when it exists and its provenance matches; rebuilt when it cannot be read)."""
  cfg = config.dictionary
  out_path = workdir_lib.dictionary_file(workdir, name)
  own = lambda f: workdir_lib.stage_file(workdir, name, f)  # noqa: E731
  if cfg.source not in feature_bank.SOURCES:
    raise ValueError(f"config.dictionary.source={cfg.source!r} is not one of "
                     f"{feature_bank.SOURCES}")
  workdir_lib.require(workdir, generators, needed_by=name)
  upstream = (generators,) + ((workdir_lib.BANK,) if cfg.source == "bank" else ())
  record = provenance.begin(config, workdir, name, STAGE.name, upstream, overrides)
  if workdir_lib.is_complete(workdir, name):
    try:
      _, _, meta = fdm.load(out_path)
      logging.info("[%s] complete, skipping: %s", name, out_path)
      return {"stage": name, "skipped": True, **meta}
    except files.DamagedFile as e:
      logging.warning("[%s] %s; building it again", name, e)
  mesh = parallel.make_mesh()
  pipeline.check_batch_size(cfg.batch_size, mesh.size, jax.process_count(),
                            "dictionary.batch_size")
  gen_vars = builders.trained_generators(workdir, generators,
                                         keys=("params", "batch_stats", "frozen"))
  t0 = time.time()
  carry, med = _accumulate(config, workdir, gen_vars, name, mesh)
  fdms = jax.jit(functools.partial(fdm.binarize, tau=cfg.tau))(carry["mean"])
  mean, fdms, count, change, level = map(np.asarray, jax.device_get(
      (carry["mean"], fdms, carry["count"], carry["change"], carry["level"])))
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.abspath(own("state")),
             {"mean_masks": mean, "fdms": fdms, "count": count}, force=True)
  ckptr.wait_until_finished()
  meta = _metadata(config, workdir, fdms, count, mean.shape[1:])
  if jax.process_index() == 0:  # the figures first: dictionary.npz marks the stage complete
    visualize.dictionary_figure(mean, fdms, own("dictionary.png"))
    visualize.med_figure(med, own("med.png"))
    fdm.export(out_path, mean, fdms, meta, relative_change_scores(change, level))
    logging.info("[%s] figures: %s, %s", name, own("dictionary.png"), own("med.png"))
  distributed.barrier(f"{out_path} written")  # later stages read it in every process
  logging.info("[%s] wrote %s: %d pairs per block, %d of %d elements discarded per item; "
               "AND of 2 / 3 adjacent items discards %.1f%% / %.1f%% of U", name, out_path,
               int(count), meta["zeros_per_item"][0], int(np.prod(mean.shape[1:])),
               100 * meta["discarded_share_of_and"]["2_adjacent"]["mean"],
               100 * meta["discarded_share_of_and"]["3_connected"]["mean"])
  summary = {"stage": name, **meta, "seconds": round(time.time() - t0, 1),
             "provenance": record["fingerprint"]}
  if jax.process_index() == 0:
    workdir_lib.write_summary(workdir, name, summary)
  return summary


STAGE = stage_lib.Stage(
    name=workdir_lib.DICTIONARY, run=run, section="dictionary", upstream=(workdir_lib.PDSN,),
    stream=stage_lib.Stream(data_offset=2, init_fold=None),
    depends_on=stage_lib.BASE + ("model", "dictionary") + stage_lib.OCCLUDERS,
    # it rebuilds the generators the pdsn stage trained
    through_upstream=("pdsn.differential", "pdsn.mask_bias_init",
                      "pdsn.mask_scale_init"))
