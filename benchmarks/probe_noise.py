"""How far stage I's overlap rule moves when the generators do not (issue 36): the noise floor
of ``pdsn.converge_overlap``.

  python -m benchmarks.probe_noise RUN [--steps=50] [--at=1,5,10,20,50]

From a run's finished stage I, ``--steps`` steps with learning rate 0 on fresh training
batches (occluded as stage I draws them): the weights stay, and only the generators' BatchNorm
running averages move, as they do in training (flax ``momentum``: each step keeps that share
and takes the rest from the batch). At each of ``--at`` it builds the probe's dictionary (the
pairs and tau the stage's rule uses) and prints its overlap (Jaccard of the discarded sets, per
item) with the finished one, and with the one 20 steps before (the probe's pairs:
``pdsn.converge_pairs``, 256 where the run has none). An overlap below
``pdsn.converge_overlap`` here is movement the rule counts although no weight moved.
No protocol is scored; it reads the run's training faces only.
"""

import functools

from absl import app, flags


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_integer("steps", 50, "steps with learning rate 0")
  flags.DEFINE_list("at", ["1", "5", "10", "20", "50"], "steps after which to build the "
                    "dictionary")
  flags.DEFINE_integer("seed", 777, "the fresh batches' data seed (not the stage's stream)")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("give one run folder: python -m benchmarks.probe_noise RUN")
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pdsn_jax import run_config  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data import pipeline, sources  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders, pdsn_probe  # pylint: disable=g-import-not-at-top
  from pdsn_jax.run import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  run, fl = argv[1], flags.FLAGS
  config = run_config.load_config(run)
  cfg = config.pdsn
  trunk = workdir_lib.load(run, workdir_lib.TRUNK)
  finished = builders.trained_generators(run)
  if trunk is None or finished is None:
    raise app.UsageError(f"{run} needs a trunk and a stage I checkpoint")
  finished = jax.tree.map(jnp.asarray, finished)
  at = sorted({int(a) for a in fl.at if 0 < int(a) <= fl.steps})
  src, _ = sources.build(config.data)
  pairs = cfg.converge_pairs if cfg.converge_pairs > 0 else 256
  probe = pdsn_probe.DictionaryProbe(
      config, trunk, pdsn_probe.probe_batches(config, src, pairs, cfg.batch_size,
                                              config.dictionary.neighbour_prob),
      config.dictionary.tau)
  fresh = pipeline.train_dataset(
      src, cfg.batch_size, fl.seed, 0, 1,
      (builders.every_block_occlusion(config, config.occlusion.neighbour_prob),))
  feats = jax.jit(functools.partial(builders.frozen_features, net=builders.backbone(config, False),
                                    chunk=builders.forward_chunk(config)))
  gens = builders.generators(config, False)  # one process: the batch's own statistics

  @jax.jit
  def bn_only(v, u_clean, u_occ):
    gen_in = jnp.abs(u_occ - u_clean[None]) if cfg.differential else u_occ
    _, new = gens.apply(v, gen_in, True, mutable=["batch_stats"])
    return {"params": v["params"], "batch_stats": new["batch_stats"]}

  def overlap(a, b):
    probe.reset(a)
    return probe.check(b)["overlap"]

  states, v = {0: finished}, finished
  for k in range(1, fl.steps + 1):
    batch = fresh[k % len(fresh)]
    v = bn_only(v, *feats(trunk, {"image": batch["image"], "occluded": batch["occluded"]}))
    if k in at or k + 20 in at:
      states[k] = v
  rows = [(f"finished vs after {k}", overlap(finished, states[k])) for k in at]
  rows += [(f"after {k - 20} vs after {k}", overlap(states[k - 20], states[k]))
           for k in at if k - 20 in states and k - 20 > 0]
  print(f"\n{run}: stage I's dictionary probe ({probe.pairs} pairs a block, tau "
        f"{config.dictionary.tau:g}) under learning rate 0, the generators' BatchNorm running "
        f"averages alone moving; the rule's target {cfg.converge_overlap:g}")
  print("| dictionaries | min overlap | per item |")
  print("|---|---:|---|")
  for what, o in rows:
    print(f"| {what} | {o.min():.3f} | {' '.join(f'{x:.2f}' for x in o)} |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
