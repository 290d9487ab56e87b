"""Stage I: the 9 PDSN mask generators, one stacked parameter tree, trained in one jitted step.

For a clean face x and its copy x_j occluded on block j, generator M_j sees
|U(x_j) - U(x)| and outputs a soft mask m; its loss is
  CE(F(m * U(x_j)), y) + lambda * mean|m * U(x) - m * U(x_j)|       (paper, Eq. 5)
or, with ``pdsn.loss="released"``, the authors' code's
  0.5 * CE(F(m * U(x)), y) + 0.5 * CE(F(m * U(x_j)), y) + lambda * L1.
The trunk (U, F and its classifier) is frozen: restored from the trunk stage's
checkpoint, run in inference mode, never differentiated, carried unchanged in
the state's ``frozen`` slot (and its checkpoints) so that this can be checked.
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pdsn_jax import builders, checkpointing, loop, parallel, training, visualize
from pdsn_jax import workdir as workdir_lib
from pdsn_jax.data import occlusion

STAGE = workdir_lib.PDSN
LOSSES = ("paper", "released")


def effective_lambda(cfg) -> float:
  """Table 3's ablation switch: without differential input there is no L1 term either."""
  return float(cfg.lambda_l1) if cfg.differential else 0.0


def pdsn_losses(gen_params, gen_stats, trunk, clean_u, occ_u, labels, *, backbone, head, gens,
                cfg, train: bool):
  """Per-generator losses (J,) and aux; ``occ_u`` is (J, B, h, w, c), ``clean_u`` (B, h, w, c)."""
  num = occ_u.shape[0]
  gen_in = jnp.abs(occ_u - clean_u[None]) if cfg.differential else occ_u
  variables = {"params": gen_params, "batch_stats": gen_stats}
  if train:
    masks, updates = gens.apply(variables, gen_in, True, mutable=["batch_stats"])
    new_stats = updates["batch_stats"]
  else:
    masks, new_stats = gens.apply(variables, gen_in, False), gen_stats
  bvars = checkpointing.backbone_of(trunk)
  tiled = jnp.tile(labels, num)

  def ce(u):
    emb = backbone.apply(bvars, u.reshape(-1, *u.shape[2:]), method="head")
    logits, _ = head.apply({"params": trunk["params"]["classifier"]}, emb, tiled)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tiled).reshape(num, -1).mean(1)

  m_occ, m_clean = masks * occ_u, masks * clean_u[None]
  ce_occ = ce(m_occ)
  l1 = jnp.mean(jnp.abs(m_clean - m_occ), axis=(1, 2, 3, 4))
  ce_term = 0.5 * ce(m_clean) + 0.5 * ce_occ if cfg.loss == "released" else ce_occ
  per_gen = ce_term + effective_lambda(cfg) * l1
  return per_gen, (new_stats, ce_occ, l1, jnp.mean(masks, axis=(1, 2, 3, 4)))


def train_step(state: training.TrainState, batch: dict, rng: jax.Array, *, backbone, head,
               gens, tx: optax.GradientTransformation, schedule,
               cfg) -> tuple[training.TrainState, dict]:
  """Per-device step of all generators; gradients and generator BN statistics pmean-ed.
  ``state.frozen`` holds the trunk's variables."""
  del rng  # generators have no dropout; kept for the common step signature
  u_clean, u_occ = builders.frozen_features(state.frozen, batch, backbone)

  def loss_fn(params):
    per_gen, aux = pdsn_losses(params, state.batch_stats, state.frozen, u_clean, u_occ,
                               batch["label"], backbone=backbone, head=head, gens=gens, cfg=cfg,
                               train=True)
    # Generators share nothing, so the gradient of the sum is each one's own gradient.
    return per_gen.sum(), (per_gen, aux)

  (_, (per_gen, (stats, ce_occ, l1, mask_mean))), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, parallel.AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  out = jax.lax.pmean({"loss": per_gen.mean(), "ce_occluded": ce_occ.mean(), "l1": l1.mean(),
                       "mask_mean": mask_mean.mean(), "per_generator_loss": per_gen},
                      parallel.AXIS)
  out["learning_rate"] = schedule(state.step)
  out["param_norm"] = optax.tree.norm(params)
  return state.replace(step=state.step + 1, params=params, batch_stats=stats,
                       opt_state=opt_state), out


def init_fn(config, trunk: dict, gens, tx, u_shape):
  def init() -> training.TrainState:
    k_gen, k_run = jax.random.split(training.init_key(config, "pdsn"))
    x = jnp.zeros((gens.num, 1, *u_shape), jnp.float32)
    v = gens.init(k_gen, x)
    return training.TrainState(
        step=jnp.zeros((), jnp.int32), params=v["params"], batch_stats=v["batch_stats"],
        opt_state=tx.init(v["params"]), rng=jax.random.key_data(k_run),
        # placeholders (no 40M-parameter constants in the program); the real trunk is put
        # in after a fresh start
        frozen=jax.tree.map(lambda a: jnp.zeros(np.shape(a), a.dtype), trunk))
  return init


def plan(ctx: loop.Context) -> loop.Plan:
  """The 9 generators against the frozen trunk, on each face and its 9 block-occluded copies."""
  config, cfg = ctx.config, ctx.cfg
  if cfg.loss not in LOSSES:
    raise ValueError(f"config.pdsn.loss={cfg.loss!r} is not one of {LOSSES}")
  workdir_lib.require(ctx.workdir, workdir_lib.TRUNK, needed_by=ctx.name)
  trunk = workdir_lib.load(ctx.workdir, workdir_lib.TRUNK)
  backbone = builders.backbone(config, False)  # frozen: inference-mode BN
  head = builders.classifier(config, ctx.train.num_classes)
  gens = builders.generators(config, train=True)
  schedule = training.learning_rate_schedule(cfg, ctx.steps)
  tx = training.optimizer(cfg, ctx.steps)
  transform = builders.every_block_occlusion(config)
  if jax.process_index() == 0:  # what the generators are trained on, to look at
    os.makedirs(workdir_lib.stage_dir(ctx.workdir, ctx.name), exist_ok=True)
    every = max(1, len(ctx.train) // 4)
    visualize.occlusion_sheet([ctx.train[i]["image"] for i in range(0, len(ctx.train), every)][:4],
                              transform.library, workdir_lib.stage_file(ctx.workdir, ctx.name, "occlusions.png"),
                              config.occlusion.neighbour_prob, config.seed)
  logged = []

  def per_generator(done, out):
    per_gen = out.pop("per_generator_loss")
    logged.append(per_gen)
    return {f"loss_block{b}": v for b, v in zip(occlusion.CENTRAL_BLOCKS, per_gen)}

  def summary(results):
    del results
    if not logged:
      return {}
    return {"per_generator_loss_first_logged": [round(float(v), 4) for v in logged[0]],
            "per_generator_loss_last": [round(float(v), 4) for v in logged[-1]]}

  def prepare(state, origin):
    return state.replace(frozen=parallel.put_replicated(trunk, ctx.mesh)) \
        if origin == "scratch" else state

  return loop.Plan(
      init=init_fn(config, trunk, builders.generators(config, False), tx,
                   builders.u_shape(config)),
      step=functools.partial(train_step, backbone=backbone, head=head, gens=gens, tx=tx,
                             schedule=schedule, cfg=cfg),
      stream="pdsn", transforms=(transform,), prepare=prepare,
      images_per_step=cfg.batch_size * (1 + occlusion.NUM_GENERATORS),  # + occluded copies
      on_metrics=per_generator, summary=summary,
      description=f", {gens.num} generators, lambda={effective_lambda(cfg):g}, loss={cfg.loss}, "
                  f"differential={cfg.differential}")


def run(config: ml_collections.ConfigDict, workdir: str, name: str = STAGE,
        overrides: dict | None = None) -> dict:
  """Trains (or resumes) the 9 generators against the frozen trunk into ``<workdir>/<name>``
  (``overrides``: the fields ``config`` changed from the run's, as Table 3's ablation does)."""
  return loop.run_stage(config, workdir, name, config.pdsn, plan, kind=STAGE,
                        upstream=(workdir_lib.TRUNK,), overrides=overrides)
