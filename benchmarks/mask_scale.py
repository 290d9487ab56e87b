"""Why soft masks lose to binary ones (issue 36, Table 2): how much stage I's cross-entropy cares
about the scale of the masked U, and how far the dictionary's kept entries are from 1.

  python -m benchmarks.mask_scale RUN [--faces=256] [--figure=masks.png]

Prints two tables for a run with a trunk and a dictionary (no score of any protocol):
* for c in --scales: the trunk classifier's cross-entropy of F(c U) on ``--faces`` training
  faces, and the cosine between F(c U) and F(U). A CE that barely moves while c shrinks means
  the CE term of stage I does not push the masks up, and the L1 term then pulls every mask
  down together; the cosine says how much a soft mask's overall scale moves the embedding F's
  shifts (BatchNorm's, folded) leave in it;
* the dictionary's mean masks on the entries each item keeps: quantiles and their mean (1 would
  be saturated: soft + binary would then equal binary, as in the paper);
* the trained generators' own masks on ``--faces`` training faces occluded on one block (stage
  II's pairs): quantiles and the shares above 0.9 and below 0.1. Saturated single masks whose
  mean is soft would mean the pairs disagree; soft single masks mean the generators never
  saturate;
* the generators' BatchNorm just before the sigmoid, over 9 x C channels: its scale gamma and
  shift beta. BatchNorm standardises each channel's logits, so their spread is about |gamma|:
  a mask saturates (sigmoid > 0.9 needs a logit above 2.2) only where gamma grew well past
  its start (``pdsn.mask_scale_init``) or beta moved up.
"""

import numpy as np

from absl import app, flags


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_integer("faces", 256, "training faces")
  flags.DEFINE_list("scales", ["1", "0.75", "0.5", "0.3", "0.2", "0.1"], "mask scales c")
  flags.DEFINE_integer("batch", 32, "faces per forward")
  flags.DEFINE_string("figure", "", "also write the two mask distributions (the generators' "
                      "own, the dictionary's kept means) to this PNG")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("give one run folder: python -m benchmarks.mask_scale RUN")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from pdsn_jax import run_config, visualize  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data import sources  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders, fdm, pdsn_probe  # pylint: disable=g-import-not-at-top
  from pdsn_jax.run import checkpointing  # pylint: disable=g-import-not-at-top
  from pdsn_jax.run import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  run, fl = argv[1], flags.FLAGS
  config = run_config.load_config(run)
  trunk = workdir_lib.load(run, workdir_lib.TRUNK)
  if trunk is None:
    raise app.UsageError(f"{run} has no trunk checkpoint")
  src, _ = sources.build(config.data)
  net = builders.backbone(config, False)
  head = builders.classifier(config, src.num_classes)
  bvars = checkpointing.backbone_of(trunk)
  scales = [float(c) for c in fl.scales]

  @jax.jit
  def measure(images, labels):
    u = net.apply(bvars, builders.normalize(images), method="features")
    ref = net.apply(bvars, u, method="head")
    out = []
    for c in scales:
      emb = net.apply(bvars, c * u, method="head")
      logits, _ = head.apply({"params": trunk["params"]["classifier"]}, emb, labels)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      cos = jnp.sum(emb * ref, -1) / (jnp.linalg.norm(emb, axis=-1) *
                                      jnp.linalg.norm(ref, axis=-1) + 1e-12)
      out.append((ce.sum(), cos.sum()))
    return jnp.asarray(out)

  n = min(fl.faces, len(src))
  total = np.zeros((len(scales), 2))
  for start in range(0, n, fl.batch):
    idx = range(start, min(start + fl.batch, n))
    total += np.asarray(measure(np.stack([src[i]["image"] for i in idx]),
                                np.asarray([src[i]["label"] for i in idx], np.int32)))
  print(f"\n{run}: the trunk's classifier on {n} training faces")
  print("| c | CE of F(c U) | cosine F(c U) vs F(U) |")
  print("|---:|---:|---:|")
  for c, (ce, cos) in zip(scales, total / n):
    print(f"| {c:g} | {ce:.3f} | {cos:.4f} |")

  fdms, mean_masks, meta = fdm.load(workdir_lib.dictionary_file(run))
  kept = [mean_masks[j][fdms[j] == 1] for j in range(len(fdms))]
  allk = np.concatenate(kept)
  print(f"\nthe dictionary's mean masks on the entries each item keeps (tau {meta['tau']}, "
        f"{meta['pairs_per_block']} pairs per block)")
  print("| item | mean | 10% | median | 90% |")
  print("|---|---:|---:|---:|---:|")
  for j, k in enumerate(kept):
    print(f"| {j} | {k.mean():.3f} | {np.quantile(k, 0.1):.3f} | {np.median(k):.3f} | "
          f"{np.quantile(k, 0.9):.3f} |")
  print(f"| all | {allk.mean():.3f} | {np.quantile(allk, 0.1):.3f} | {np.median(allk):.3f} | "
        f"{np.quantile(allk, 0.9):.3f} |")

  gens = builders.generators(config, False)
  gvars = builders.trained_generators(run)  # those stage II used
  if gvars is None:
    raise app.UsageError(f"{run} has no pdsn (stage I) checkpoint")
  bn = gvars["params"]["generators"]["bn"]
  print("\nthe generators' BatchNorm before the sigmoid, over "
        f"{np.asarray(bn['scale']).size} channels (starting values: gamma "
        f"{config.pdsn.mask_scale_init:g}, beta {config.pdsn.mask_bias_init:g})")
  print("| parameter | mean | 10% | median | 90% | min | max |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for name, key in (("gamma (scale)", "scale"), ("beta (shift)", "bias")):
    a = np.asarray(bn[key])
    print(f"| {name} | {a.mean():.3f} | {np.quantile(a, 0.1):.3f} | {np.median(a):.3f} | "
          f"{np.quantile(a, 0.9):.3f} | {a.min():.3f} | {a.max():.3f} |")
  masks_fn = jax.jit(lambda v, b: gens.apply(v, jnp.abs(b[1] - b[0][None]), False))
  feats = jax.jit(lambda t, b: builders.frozen_features(t, b, net, builders.forward_chunk(config)))
  batches = pdsn_probe.probe_batches(config, src, n, min(fl.batch, n), 0.0)
  masks = np.concatenate([np.asarray(masks_fn(gvars, feats(trunk, {
      "image": b["image"], "occluded": b["occluded"]}))) for b in batches], axis=1)
  print(f"\nthe generators' own masks, {masks.shape[1]} training faces x 9 blocks (block alone)")
  print("| 10% | median | 90% | share > 0.9 | share < 0.1 |")
  print("|---:|---:|---:|---:|---:|")
  print(f"| {np.quantile(masks, 0.1):.3f} | {np.median(masks):.3f} | {np.quantile(masks, 0.9):.3f} "
        f"| {(masks > 0.9).mean():.3f} | {(masks < 0.1).mean():.3f} |")
  if fl.figure:
    print("\nwrote " + visualize.histogram_figure(
        {f"generators' own masks ({masks.shape[1]} faces x 9 blocks)": masks,
         "dictionary's mean masks, kept entries": allk}, fl.figure,
        f"{run}: mask values (gamma starts at {config.pdsn.mask_scale_init:g})"))


if __name__ == "__main__":
  define_flags()
  app.run(main)
