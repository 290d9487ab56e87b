"""Stage I measured on a fixed set of training pairs: lambda by the paper's same-scale rule, and
whether the dictionary the generators would give has stopped moving.

The pairs are drawn once with their own seed (the ``pdsn_probe`` stream) from the training
faces and the training occluders (``STREAM``, apart from every stage's:
``tests/stage_test.py``): never the held-out identities or the test files. Every
process draws the same pairs (no sharding) and so takes the same decision. U of the pairs is
computed once; a check runs only the generators.
"""

import functools
import logging

import jax
import numpy as np

from pdsn_jax.method import builders, fdm
from pdsn_jax.train import training
from pdsn_jax import visualize
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.data import occlusion, pipeline

LAMBDA_RULES = ("fixed", "same_scale")
STREAM = stage_lib.Stream(data_offset=5, init_fold=None)


def probe_batches(config, src, pairs: int, batch_size: int, neighbour_prob: float,
                  stream: stage_lib.Stream = STREAM) -> list:
  """``pairs // batch_size`` batches (at least one) of training faces with their 9 block-occluded
  copies, the same in every process and every run (of ``stream``'s seed)."""
  transform = builders.every_block_occlusion(config, neighbour_prob)
  ds = pipeline.train_dataset(src, batch_size, training.data_seed(config, stream), 0, 1,
                              (transform,))
  return [ds[i] for i in range(max(1, pairs // batch_size))]


def pair_features(config, trunk: dict, batches: list) -> tuple[np.ndarray, np.ndarray]:
  """U of ``batches``' clean faces (N, ...) and of their occluded copies (J, N, ...), on the
  host: computed once, then only generators run on them."""
  net = builders.backbone(config, False)
  feats = jax.jit(functools.partial(builders.frozen_features, net=net,
                                    chunk=builders.forward_chunk(config)))
  us = [feats(trunk, {"image": b["image"], "occluded": b["occluded"]}) for b in batches]
  return (np.concatenate([np.asarray(c) for c, _ in us]),
          np.concatenate([np.asarray(o) for _, o in us], axis=1))


def same_scale_lambda(losses_fn, gen_vars: dict, batches: list) -> dict:
  """The paper's rule ("the different components of the object function have the same
  scale"): lambda = mean CE / mean L1 of the starting generators on ``batches``.
  ``losses_fn(gen_vars, batch) -> (ce (J,), l1 (J,))``."""
  ce, l1 = zip(*[map(np.asarray, losses_fn(gen_vars, b)) for b in batches])
  ce, l1 = float(np.mean(ce)), float(np.mean(l1))
  if not (np.isfinite(ce) and np.isfinite(l1)) or l1 <= 0:
    raise FloatingPointError(f"pdsn.lambda_rule='same_scale': the starting loss terms are CE "
                             f"{ce!r}, L1 {l1!r}; set pdsn.lambda_rule='fixed' and a number")
  return {"lambda_l1": ce / l1, "scale_ce": ce, "scale_l1": l1}


def locality(fdms: np.ndarray, blocks=occlusion.CENTRAL_BLOCKS) -> dict:
  """Where each item discards in U's map: its centroid, its block's centre, the distance (in
  U cells), and whether the nearest block centre is its own (the paper's Figs. 5 and 7)."""
  hw = fdms.shape[1:3]
  centroids = np.asarray(visualize.discard_centroids(fdms))
  centres = np.asarray([visualize.block_centre_in_u(b, hw) for b in blocks])
  dist = np.linalg.norm(centroids[:, None] - centres[None], axis=-1)  # (item, block)
  own = np.arange(len(blocks))
  return {"discard_centroid_in_u": np.round(centroids, 2).tolist(),
          "block_centre_in_u": np.round(centres, 2).tolist(),
          "centroid_to_block_centre": np.round(dist[own, own], 2).tolist(),
          "nearest_block_is_own": [bool(v) for v in dist.argmin(1) == own]}


def _masks(gen_vars, u_clean, u_occ, *, gens, differential: bool):
  return gens.apply(gen_vars, builders.generator_input(u_clean, u_occ, differential), False)


class DictionaryProbe:
  """The dictionary (stage II's recipe: min-max, mean, drop the tau*K smallest) of the
  generators on fixed pairs, and how far it moved since the last check."""

  def __init__(self, config, trunk: dict, batches: list, tau: float):
    self.u_clean, self.u_occ = pair_features(config, trunk, batches)
    gens = builders.generators(config, False)
    masks = functools.partial(_masks, gens=gens, differential=bool(config.pdsn.differential))

    def dictionary(gen_vars, u_clean, u_occ):
      m = masks(gen_vars, u_clean, u_occ)
      mean = fdm.minmax(m).mean(axis=1)
      return fdm.binarize(mean, tau), m.mean(axis=(1, 2, 3, 4)), m.std(axis=(1, 2, 3, 4))

    self._dictionary = jax.jit(dictionary)
    self.previous = None

  @property
  def pairs(self) -> int:
    return self.u_clean.shape[0]

  def reset(self, gen_vars: dict) -> None:
    """The reference for the next check: the dictionary of ``gen_vars`` (the restored state)."""
    self.previous = np.asarray(self._dictionary(gen_vars, self.u_clean, self.u_occ)[0])

  def check(self, gen_vars: dict) -> dict:
    """Per item: Jaccard overlap of the discarded sets with the previous check's, mask mean and
    spread, discard centroid's distance to the block centre; then this check is the reference."""
    fdms, mean, std = map(np.asarray, self._dictionary(gen_vars, self.u_clean, self.u_occ))
    now, before = fdms == 0, self.previous == 0
    union = np.maximum((now | before).sum(axis=(1, 2, 3)), 1)
    overlap = (now & before).sum(axis=(1, 2, 3)) / union
    self.previous = fdms
    return {"overlap": overlap, "mask_mean": mean, "mask_spread": std,
            **locality(fdms)}


def log_check(stage: str, step: int, check: dict, target: float) -> dict:
  """Console line and the scalars to write (TensorBoard) of one ``DictionaryProbe.check``."""
  ov = check["overlap"]
  logging.info("[%s] step %d: dictionary overlap with the last check min %.3f (target %.2f), "
               "per item %s; mask mean %.3f spread %.3f; own block nearest for %d of %d items",
               stage, step, ov.min(), target, " ".join(f"{v:.2f}" for v in ov),
               float(check["mask_mean"].mean()), float(check["mask_spread"].mean()),
               sum(check["nearest_block_is_own"]), len(ov))
  out = {"dictionary_overlap_min": float(ov.min()),
         "mask_mean_probe": float(check["mask_mean"].mean()),
         "mask_spread_probe": float(check["mask_spread"].mean())}
  for b, o, d in zip(occlusion.CENTRAL_BLOCKS, ov, check["centroid_to_block_centre"]):
    out[f"dictionary_overlap_block{b}"] = float(o)
    out[f"discard_centroid_distance_block{b}"] = float(d)
  return out


def convergence_figure(checks: list[dict], rate_share: list[float], target: float,
                       path: str) -> str:
  """The dictionary's minimum overlap at each check, the target, and the learning rate as a
  share of its peak: whether the overlap follows the generators or the rate."""
  xs = [c["step"] for c in checks]
  return visualize.curve_figure(
      {"overlap with the last check": {
          "min over the 9 items": [c["overlap_min"] for c in checks],
          f"target {target:g}": [target] * len(xs),
          "learning rate / its peak": rate_share}},
      xs, path, "stage I: the dictionary of the fixed training pairs", log_x=False)
