"""Stage I: the 9 PDSN mask generators, one stacked parameter tree, trained in one jitted step.

For a clean face x and its copy x_j occluded on block j, generator M_j sees
|U(x_j) - U(x)| and outputs a soft mask m; its loss is
  CE(F(m * U(x_j)), y) + lambda * mean|m * U(x) - m * U(x_j)|       (paper, Eq. 5)
or, with ``pdsn.loss="released"``, the authors' code's
  0.5 * CE(F(m * U(x)), y) + 0.5 * CE(F(m * U(x_j)), y) + lambda * L1.
The trunk (U, F and its classifier) is frozen: restored from the trunk stage's
checkpoint, run in inference mode, never differentiated, carried unchanged in
the state (and its checkpoints) so that this can be checked.
"""

import functools
import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pdsn_jax import checkpointing, loop, metrics as metrics_lib, parallel, training, visualize
from pdsn_jax.data import occlusion, pipeline, sources
from pdsn_jax.models.generator import StackedMaskGenerators
from pdsn_jax.stages import trunk as trunk_stage

STAGE = "pdsn"
LOSSES = ("paper", "released")


@flax.struct.dataclass
class PDSNState:
  """Generator training state; ``trunk`` holds the frozen trunk variables."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  trunk: Any


def trunk_variables(trunk: dict) -> dict:
  return {"params": trunk["params"]["backbone"], "batch_stats": trunk["batch_stats"]}


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
  bvars = trunk_variables(trunk)
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


def frozen_features(trunk: dict, batch: dict, backbone) -> tuple[jax.Array, jax.Array]:
  """U of the clean batch (B, ...) and of its occluded copies (J, B, ...), no gradient."""
  bvars = trunk_variables(trunk)
  clean = trunk_stage.normalize(batch["image"])
  occ = trunk_stage.normalize(batch["occluded"])  # (B, J, H, W, 3)
  b, j = occ.shape[:2]
  u_clean = backbone.apply(bvars, clean, method="features")
  u_occ = backbone.apply(bvars, occ.reshape(b * j, *occ.shape[2:]), method="features")
  u_occ = u_occ.reshape(b, j, *u_occ.shape[1:]).swapaxes(0, 1)
  return jax.lax.stop_gradient(u_clean), jax.lax.stop_gradient(u_occ)


def train_step(state: PDSNState, batch: dict, rng: jax.Array, *, backbone, head, gens,
               tx: optax.GradientTransformation, schedule, cfg) -> tuple[PDSNState, dict]:
  """Per-device step of all generators; gradients and generator BN statistics pmean-ed."""
  del rng  # generators have no dropout; kept for the common step signature
  u_clean, u_occ = frozen_features(state.trunk, batch, backbone)

  def loss_fn(params):
    per_gen, aux = pdsn_losses(params, state.batch_stats, state.trunk, u_clean, u_occ,
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


def load_trunk(workdir: str) -> dict:
  """Host numpy trunk variables from the trunk stage's latest checkpoint."""
  path = os.path.join(workdir, trunk_stage.STAGE, "checkpoints")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"stage '{STAGE}' needs a trained trunk: {path} does not exist; "
                            "run the 'trunk' stage first (config.stages)")
  return checkpointing.load_variables(path)


def build(config, num_classes: int, train: bool):
  backbone = trunk_stage.build_backbone(config, False)  # frozen: inference-mode BN
  head = trunk_stage.build_head(config, num_classes)
  gens = StackedMaskGenerators(len(occlusion.CENTRAL_BLOCKS),
                               parallel.AXIS if train else None, config.pdsn.mask_bias_init)
  return backbone, head, gens


def occluder_library(config) -> occlusion.OccluderLibrary:
  """The occluders every training stage uses: with ``occlusion.heldout`` its files are left out
  (evaluation uses them), the procedural set is limited to ``occlusion.procedural_categories``."""
  o = config.occlusion
  return occlusion.OccluderLibrary(o.occluder_dir, o.procedural,
                                   tuple(o.procedural_categories),
                                   split="train" if o.heldout else "all",
                                   face_template=config.data.alignment, heldout=tuple(o.heldout))


def init_fn(config, trunk: dict, gens, tx, u_shape):
  def init() -> PDSNState:
    root = training.root_key(config)
    k_gen, k_run = jax.random.split(jax.random.fold_in(root, 1))
    x = jnp.zeros((gens.num, 1, *u_shape), jnp.float32)
    v = gens.init(k_gen, x)
    return PDSNState(step=jnp.zeros((), jnp.int32), params=v["params"],
                     batch_stats=v["batch_stats"], opt_state=tx.init(v["params"]),
                     rng=jax.random.key_data(k_run),
                     # placeholders (no 40M-parameter constants in the program); the real
                     # trunk is put in by ``with_trunk``
                     trunk=jax.tree.map(lambda a: jnp.zeros(np.shape(a), a.dtype), trunk))
  return init


def u_shape(config) -> tuple[int, ...]:
  backbone = trunk_stage.build_backbone(config, False)
  x = jnp.zeros((1, *config.data.image_size, 3))
  v = jax.eval_shape(lambda: backbone.init(jax.random.key(0), x))
  return tuple(jax.eval_shape(lambda v: backbone.apply(v, x, method="features"), v).shape[1:])


def run(config: ml_collections.ConfigDict, workdir: str, name: str = STAGE) -> dict:
  """Trains (or resumes) the 9 generators against the frozen trunk into ``<workdir>/<name>``."""
  cfg = config.pdsn
  if cfg.loss not in LOSSES:
    raise ValueError(f"config.pdsn.loss={cfg.loss!r} is not one of {LOSSES}")
  stage_dir = os.path.join(workdir, name)
  mesh = parallel.make_mesh()
  pcount, pindex = jax.process_count(), jax.process_index()
  pipeline.check_batch_size(cfg.batch_size, mesh.size, pcount, "pdsn.batch_size")
  train_src, _ = sources.build(config.data)
  trunk = load_trunk(workdir)
  steps = trunk_stage.total_steps(cfg, len(train_src))
  backbone, head, gens = build(config, train_src.num_classes, train=True)
  schedule = training.learning_rate_schedule(cfg, steps)
  tx = training.optimizer(cfg, steps)
  init = init_fn(config, trunk, build(config, train_src.num_classes, False)[2], tx,
                 u_shape(config))
  o = config.occlusion
  transform = occlusion.OccludeEveryBlock(occluder_library(config), occlusion.CENTRAL_BLOCKS,
                                          o.neighbour_prob, o.min_overlap, o.overlap,
                                          o.exact_blocks)
  ds = pipeline.train_dataset(train_src, cfg.batch_size, config.seed + 1, pindex, pcount,
                              (transform,))
  if pindex == 0:
    os.makedirs(stage_dir, exist_ok=True)
    sheet = visualize.occlusion_sheet([train_src[i]["image"] for i in
                                       range(0, len(train_src), max(1, len(train_src) // 4))][:4],
                                      transform.library, os.path.join(stage_dir, "occlusions.png"),
                                      o.neighbour_prob, config.seed)
    logging.info("[%s] occlusion contact sheet: %s", name, sheet)
  data_iter = pipeline.to_iterator(ds, config.data.num_workers)
  mgr = checkpointing.manager(os.path.join(stage_dir, "checkpoints"), cfg.keep_checkpoints,
                              cfg.checkpoint_every)
  state, start, origin = checkpointing.restore_or_init(mgr, init, mesh, data_iter)
  if origin == "scratch":
    state = state.replace(trunk=parallel.put_replicated(trunk, mesh))
  logging.info("[%s] %d generators x %d steps of %d faces (each + 9 occluded copies), "
               "lambda=%g, loss=%s, differential=%s; starting at step %d (%s)", name, gens.num,
               steps, cfg.batch_size, effective_lambda(cfg), cfg.loss, cfg.differential, start,
               origin)
  writer = metrics_lib.MetricWriter(os.path.join(stage_dir, "logs"), name)
  step_fn = parallel.data_parallel(functools.partial(
      train_step, backbone=backbone, head=head, gens=gens, tx=tx, schedule=schedule, cfg=cfg),
                                   mesh)
  root = loop.stage_root_key(state, mesh, config.prng_impl)
  logged, t0 = [], time.time()

  def per_generator(done, out):
    per_gen = out.pop("per_generator_loss")
    logged.append(per_gen)
    return {f"loss_block{b}": v for b, v in zip(occlusion.CENTRAL_BLOCKS, per_gen)}

  try:
    state = loop.train_loop(stage=name, state=state, step_fn=step_fn, data_iter=data_iter,
                            mesh=mesh, mgr=mgr, writer=writer, root=root, start=start,
                            total=steps, images_per_step=cfg.batch_size * 10,  # incl. occluded
                            log_every=cfg.log_every, on_metrics=per_generator,
                            max_growth=config.max_param_norm_growth)
  finally:
    mgr.close()
    writer.close()
  summary = {"stage": name, "steps": steps, "seconds_this_run": round(time.time() - t0, 1)}
  if logged:
    summary["per_generator_loss_first_logged"] = [round(float(v), 4) for v in logged[0]]
    summary["per_generator_loss_last"] = [round(float(v), 4) for v in logged[-1]]
  return summary
