"""Stage I: the 9 PDSN mask generators, one stacked parameter tree, trained in one jitted step.

For a clean face x and its copy x_j occluded on block j, generator M_j sees
|U(x_j) - U(x)| and outputs a soft mask m; its loss is
  CE(F(m * U(x_j)), y) + lambda * mean|m * U(x) - m * U(x_j)|       (paper, Eq. 5)
or, with ``pdsn.loss="released"``, the authors' code's
  0.5 * CE(F(m * U(x)), y) + 0.5 * CE(F(m * U(x_j)), y) + lambda * L1.
The trunk (U, F and its classifier) is frozen: restored from the trunk stage's
checkpoint, run in inference mode, never differentiated, carried unchanged in
the state's ``frozen`` slot (and its checkpoints) so that this can be checked.

With ``pdsn.ema_decay`` > 0 the stage's output (what stage II and the overlap rule read,
``training.params_in_use``) is a running average of the generators over updates, which the
optimizer state carries; the trained generators stay in ``params``.

``pdsn.lambda_rule="same_scale"`` sets lambda by the paper's rule (the terms at the same scale),
measured on fixed training pairs with the starting generators; ``pdsn.converge_pairs`` > 0
builds, at every checkpoint, the dictionary those pairs would give and stops the stage once
every item's discarded set overlaps the last check's by ``pdsn.converge_overlap``
(``pdsn_jax/method/pdsn_probe.py``). With ``pdsn.generator_statistics="recomputed"`` every
checkpoint holds, in place of the generators' BatchNorm running averages, their plain statistics
on fixed training pairs (``pdsn_jax/method/generator_statistics.py``): a function of the weights
alone, which the overlap rule and stage II then read. ``pdsn.plateau_decay`` > 0 multiplies the
learning rate by it at each check where the overlap rose by less than ``pdsn.plateau_gain``
(the factor in the optimizer state, ``training.with_rate_factor``).
"""

import functools
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pdsn_jax.method import builders
from pdsn_jax.run import checkpointing
from pdsn_jax.train import loop, parallel, training
from pdsn_jax import visualize
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.data import feature_bank, occlusion
from pdsn_jax.method import generator_statistics, pdsn_probe

LOSSES = ("paper", "released")


def pdsn_losses(gen_params, gen_stats, trunk, clean_u, occ_u, labels, *, backbone, head, gens,
                cfg, train: bool, lam: float):
  """Per-generator losses (J,) and aux; ``occ_u`` is (J, B, h, w, c), ``clean_u`` (B, h, w, c)."""
  num = occ_u.shape[0]
  gen_in = builders.generator_input(clean_u, occ_u, cfg.differential)
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
  per_gen = ce_term + lam * l1
  return per_gen, (new_stats, ce_occ, l1, jnp.mean(masks, axis=(1, 2, 3, 4)))


def updates_per_step(cfg) -> int:
  """What the learning-rate schedule counts per step: ``reuse`` updates on each sub-batch."""
  return cfg.reuse * cfg.sub_batches


def train_step(state: training.TrainState, batch: dict, rng: jax.Array, *, backbone, head,
               gens, tx: optax.GradientTransformation, schedule,
               cfg, lam: float, chunk: int = 0) -> tuple[training.TrainState, dict]:
  """Per-device step of all generators; gradients and generator BN statistics pmean-ed.
  ``state.frozen`` holds the trunk's variables. The batch's U (the frozen trunk's forward,
  most of a step's time) serves ``cfg.reuse`` updates in a row; the metrics are the first's
  (before any update on this batch). With ``cfg.sub_batches`` = K > 1 the batch is K
  consecutive batches, each given its own ``reuse`` updates in turn inside this one program
  (the metrics their mean): over the bank a step is otherwise little more than one update, and
  what it costs besides its updates is then paid once per K. ``chunk``: faces per trunk call
  (``builders.forward_chunk``)."""
  del rng  # generators have no dropout; kept for the common step signature
  u_clean, u_occ = builders.frozen_features(state.frozen, batch, backbone, chunk)

  def on_batch(carry, sub):
    u_clean, u_occ, labels = sub

    def update(carry, _):
      params, stats, opt_state = carry

      def loss_fn(p):
        per_gen, aux = pdsn_losses(p, stats, state.frozen, u_clean, u_occ, labels,
                                   backbone=backbone, head=head, gens=gens, cfg=cfg, train=True,
                                   lam=lam)
        # Generators share nothing, so the gradient of the sum is each one's own gradient.
        return per_gen.sum(), (per_gen, aux)

      (_, (per_gen, (stats, ce_occ, l1, mask_mean))), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(params)
      grads = jax.lax.pmean(grads, parallel.AXIS)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), stats, opt_state), (
          per_gen, ce_occ, l1, mask_mean)

    if cfg.reuse == 1:  # no scan: the program, and so the numbers, of the runs before reuse
      return update(carry, None)
    carry, outs = jax.lax.scan(update, carry, None, length=cfg.reuse)
    return carry, jax.tree.map(lambda x: x[0], outs)

  carry = (state.params, state.batch_stats, state.opt_state)
  labels = batch["label"]
  if cfg.sub_batches == 1:  # no scan: the program of the runs before sub-batches
    (params, stats, opt_state), outs = on_batch(carry, (u_clean, u_occ, labels))
  else:
    k = cfg.sub_batches
    subs = (u_clean.reshape(k, -1, *u_clean.shape[1:]),
            jnp.swapaxes(u_occ.reshape(u_occ.shape[0], k, -1, *u_occ.shape[2:]), 0, 1),
            labels.reshape(k, -1))
    (params, stats, opt_state), outs = jax.lax.scan(on_batch, carry, subs)
    outs = jax.tree.map(lambda x: x.mean(0), outs)
  per_gen, ce_occ, l1, mask_mean = outs
  out = jax.lax.pmean({"loss": per_gen.mean(), "ce_occluded": ce_occ.mean(), "l1": l1.mean(),
                       "mask_mean": mask_mean.mean(), "per_generator_loss": per_gen},
                      parallel.AXIS)
  factor = training.rate_factor(state.opt_state)  # pdsn.plateau_decay's
  out["learning_rate"] = schedule(state.step * updates_per_step(cfg)) * (
      1.0 if factor is None else factor.factor)
  out["param_norm"] = optax.tree.norm(params)
  return state.replace(step=state.step + 1, params=params, batch_stats=stats,
                       opt_state=opt_state), out


def starting_generators(config, gens, u_shape) -> tuple[dict, jax.Array]:
  """The generators' starting variables and the stage's run key."""
  k_gen, k_run = jax.random.split(training.init_key(config, STAGE.stream))
  return gens.init(k_gen, jnp.zeros((gens.num, 1, *u_shape), jnp.float32)), k_run


def init_fn(config, trunk: dict, gens, tx, u_shape):
  def init() -> training.TrainState:
    v, k_run = starting_generators(config, gens, u_shape)
    return training.TrainState(
        step=jnp.zeros((), jnp.int32), params=v["params"], batch_stats=v["batch_stats"],
        opt_state=tx.init(v["params"]), rng=jax.random.key_data(k_run),
        # placeholders (no 40M-parameter constants in the program); the real trunk is put
        # in after a fresh start
        frozen=jax.tree.map(lambda a: jnp.zeros(np.shape(a), a.dtype), trunk))
  return init


def _lambda(ctx: loop.Context, trunk: dict, backbone, head) -> dict:
  """lambda and how it was set: ``pdsn.lambda_l1`` (rule "fixed") or measured ("same_scale");
  0 without differential input (Table 3's ablation has no L1 term either)."""
  config, cfg = ctx.config, ctx.cfg
  if cfg.lambda_rule not in pdsn_probe.LAMBDA_RULES:
    raise ValueError(f"config.pdsn.lambda_rule={cfg.lambda_rule!r} is not one of "
                     f"{pdsn_probe.LAMBDA_RULES}")
  if not cfg.differential:
    return {"lambda_l1": 0.0, "lambda_rule": "none (differential=False)"}
  if cfg.lambda_rule == "fixed":
    return {"lambda_l1": float(cfg.lambda_l1), "lambda_rule": "fixed"}
  gens = builders.generators(config, False)  # no device axis: one process, batch statistics
  start, _ = starting_generators(config, gens, builders.u_shape(config))

  @jax.jit
  def losses(gen_vars, batch):
    u_clean, u_occ = builders.frozen_features(trunk, batch, backbone,
                                              builders.forward_chunk(config))
    per_gen, (_, _, l1, _) = pdsn_losses(
        gen_vars["params"], gen_vars["batch_stats"], trunk, u_clean, u_occ, batch["label"],
        backbone=backbone, head=head, gens=gens, cfg=cfg, train=True, lam=0.0)
    return per_gen, l1  # with lam 0, per_gen is the CE term

  b = builders.update_batch(cfg)
  batches = pdsn_probe.probe_batches(config, ctx.train, cfg.scale_batches * b, b,
                                     config.occlusion.neighbour_prob)
  out = pdsn_probe.same_scale_lambda(losses, start, batches)
  logging.info("[%s] lambda by the same-scale rule: %.4g (CE %.4g, L1 %.4g over %d batches of "
               "%d training faces, starting generators)", ctx.name, out["lambda_l1"],
               out["scale_ce"], out["scale_l1"], len(batches), b)
  return {**{k: round(v, 6) for k, v in out.items()}, "lambda_rule": "same_scale"}


def _probe(ctx: loop.Context, trunk: dict):
  """The overlap rule's ``DictionaryProbe`` and its record; (None, record) when
  ``pdsn.converge_pairs`` is 0."""
  config, cfg = ctx.config, ctx.cfg
  record: dict = {"converge_pairs": int(cfg.converge_pairs)}
  if cfg.converge_pairs <= 0:
    return None, record
  # the pairs stage II uses: block j only
  batches = pdsn_probe.probe_batches(config, ctx.train, cfg.converge_pairs,
                                     builders.update_batch(cfg), config.dictionary.neighbour_prob)
  probe = pdsn_probe.DictionaryProbe(config, trunk, batches, config.dictionary.tau)
  record.update(converge_pairs=probe.pairs, converge_overlap=cfg.converge_overlap, checks=[])
  return probe, record


def _plateau(ctx: loop.Context, state, done: int, overlap: float):
  """``pdsn.plateau_decay``: the rate times the decay when the overlap rose by less than
  ``pdsn.plateau_gain`` since the check ``checkpoint_every`` steps before; the state with
  this check recorded in its ``RateFactor``, and the factor in force up to this check."""
  cfg = ctx.cfg
  last = jax.device_get(training.rate_factor(state.opt_state))  # replicated
  factor = float(last.factor)
  new = factor
  if int(last.last_step) == done - cfg.checkpoint_every and (
      overlap - float(last.last_value) < cfg.plateau_gain):
    new = factor * cfg.plateau_decay
    logging.info("[%s] step %d: the overlap rose by %.3f (< %g) since step %d: the learning "
                 "rate's factor %g -> %g", ctx.name, done, overlap - float(last.last_value),
                 cfg.plateau_gain, int(last.last_step), factor, new)
  # float32 as the state holds it, so a resumed run compares the same numbers
  kept = training.RateFactor(np.float32(new), np.float32(overlap), np.int32(done))
  opt_state = training.replace_rate_factor(state.opt_state,
                                           parallel.put_replicated(kept, ctx.mesh))
  return state.replace(opt_state=opt_state), round(factor, 8)


def _at_checkpoints(ctx: loop.Context, trunk: dict):
  """``Plan.on_checkpoint``: the generators' BatchNorm statistics recomputed into the state
  (``pdsn.generator_statistics="recomputed"``), then the overlap rule, which stops the stage
  once the probe dictionary stops moving (``pdsn.converge_pairs`` > 0); with its ``Plan.prepare``
  part (the reference dictionary of the starting or restored state) and the record for the
  summary; (None, None, record) when neither is on."""
  config, cfg = ctx.config, ctx.cfg
  probe, record = _probe(ctx, trunk)
  record["generator_statistics"] = cfg.generator_statistics
  recompute = None
  if cfg.generator_statistics == "recomputed":
    recompute = generator_statistics.Recomputer(config, trunk, ctx.train)
    record["statistics_pairs"] = recompute.pairs
  if probe is None and recompute is None:
    return None, None, record

  def in_use(state):  # replicated: the host copy is the whole tree; what stage II would use
    v = jax.device_get({"params": training.params_in_use(state.params, state.opt_state),
                        "batch_stats": state.batch_stats})
    return v if recompute is None else {**v, "batch_stats": recompute(v)}

  def reference(state, origin):
    del origin
    if probe is not None:
      probe.reset(in_use(state))

  def on_checkpoint(done, state):
    # the statistics go into the state first: the checkpoint holds what the check measured
    gen_vars = in_use(state)
    if recompute is not None:
      state = state.replace(batch_stats=parallel.put_replicated(gen_vars["batch_stats"],
                                                                ctx.mesh))
    if probe is None:
      return {}, False, state
    check = probe.check(gen_vars)
    scalars = pdsn_probe.log_check(ctx.name, done, check, cfg.converge_overlap)
    stop = bool(check["overlap"].min() >= cfg.converge_overlap)
    record["checks"].append({"step": done, "overlap_min": round(float(check["overlap"].min()), 4),
                             "centroid_to_block_centre": check["centroid_to_block_centre"]})
    if cfg.plateau_decay > 0:
      state, record["checks"][-1]["rate_factor"] = _plateau(
          ctx, state, done, float(check["overlap"].min()))
    if stop:
      # at the budget's last step the rule decides nothing: the stage ends there anyway, and its
      # last check is usually closer to the one before than checkpoint_every
      record["stopped"] = {"step": done, "reason": "converged" if done < ctx.steps else
                           "step budget (its last check met the overlap)"}
    return scalars, stop, state

  return reference, on_checkpoint, record


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
  if cfg.reuse < 1:
    raise ValueError(f"config.pdsn.reuse={cfg.reuse!r} must be >= 1")
  if cfg.batch_size % (cfg.sub_batches * ctx.mesh.size):  # validation checked the rest
    raise ValueError(f"config.pdsn.sub_batches={cfg.sub_batches!r} must divide each device's "
                     f"share of config.pdsn.batch_size={cfg.batch_size} ({ctx.mesh.size} "
                     "devices)")
  # the schedule counts updates
  schedule = training.learning_rate_schedule(cfg, ctx.steps * updates_per_step(cfg))
  tx = training.optimizer(cfg, ctx.steps * updates_per_step(cfg))
  if cfg.plateau_decay > 0:  # the rate's factor, set at the overlap rule's checks
    tx = training.with_rate_factor(tx)
  if cfg.ema_decay > 0:  # stage II and the overlap rule read the average (params_in_use)
    tx = training.with_params_average(tx, cfg.ema_decay)
  if cfg.source not in feature_bank.SOURCES:
    raise ValueError(f"config.pdsn.source={cfg.source!r} is not one of {feature_bank.SOURCES}")
  transform = builders.every_block_occlusion(config)
  bank = None
  if cfg.source == "bank":  # the stored U; the pairs' occlusions were drawn as the online ones
    bank = feature_bank.open_bank(workdir_lib.stage_dir(ctx.workdir, workdir_lib.BANK))
  if jax.process_index() == 0:  # what the generators are trained on, to look at
    os.makedirs(workdir_lib.stage_dir(ctx.workdir, ctx.name), exist_ok=True)
    every = max(1, len(ctx.train) // 4)
    visualize.occlusion_sheet([ctx.train[i]["image"] for i in range(0, len(ctx.train), every)][:4],
                              transform.library, workdir_lib.stage_file(ctx.workdir, ctx.name, "occlusions.png"),
                              config.occlusion.neighbour_prob, config.seed)
  done = workdir_lib.read_summary(ctx.workdir, ctx.name) if workdir_lib.is_complete(
      ctx.workdir, ctx.name, ctx.steps) else {}
  if "lambda_l1" in done:  # a finished stage: what it measured, nothing measured again
    lam = {k: done[k] for k in ("lambda_l1", "lambda_rule", "scale_ce", "scale_l1") if k in done}
    reference, on_checkpoint = None, None
    converge = {k: done[k] for k in ("converge_pairs", "converge_overlap", "checks", "stopped",
                                     "generator_statistics", "statistics_pairs") if k in done}
  else:
    lam = _lambda(ctx, trunk, backbone, head)
    reference, on_checkpoint, converge = _at_checkpoints(ctx, trunk)
  logged = []
  average = f"running average {cfg.ema_decay:g}, " if cfg.ema_decay > 0 else ""

  def per_generator(done, out):
    per_gen = out.pop("per_generator_loss")
    logged.append(per_gen)
    return {f"loss_block{b}": v for b, v in zip(occlusion.CENTRAL_BLOCKS, per_gen)}

  def summary(results):
    del results
    out = {**lam, **converge}
    if converge.get("checks") and "stopped" not in converge:
      last = converge["checks"][-1]
      out["stopped"] = {"step": last["step"], "reason": f"step budget (overlap "
                        f"{last['overlap_min']:.3f} < {cfg.converge_overlap:g})"}
    if converge.get("checks") and jax.process_index() == 0:
      checks = converge["checks"]
      pdsn_probe.convergence_figure(
          checks, [float(schedule(c["step"] * updates_per_step(cfg))) / cfg.learning_rate
                   * c.get("rate_factor", 1.0) for c in checks],
          cfg.converge_overlap, workdir_lib.stage_file(ctx.workdir, ctx.name, "convergence.png"))
    if logged:
      out.update(per_generator_loss_first_logged=[round(float(v), 4) for v in logged[0]],
                 per_generator_loss_last=[round(float(v), 4) for v in logged[-1]])
    return out

  def prepare(state, origin):
    if origin == "scratch":
      state = state.replace(frozen=parallel.put_replicated(trunk, ctx.mesh))
    if reference is not None:
      reference(state, origin)
    return state

  return loop.Plan(
      init=init_fn(config, trunk, builders.generators(config, False), tx,
                   builders.u_shape(config)),
      step=functools.partial(train_step, backbone=backbone, head=head, gens=gens, tx=tx,
                             schedule=schedule, cfg=cfg, lam=lam["lambda_l1"],
                             chunk=builders.forward_chunk(config)),
      transforms=(transform,) if bank is None else (
          feature_bank.PickPairs(config.occlusion.neighbour_prob),),
      source=bank, prepare=prepare,
      # with the bank, what a step takes is pairs, not images through the trunk
      images_per_step=cfg.batch_size * (1 if bank else 1 + occlusion.NUM_GENERATORS),
      on_metrics=per_generator, summary=summary, on_checkpoint=on_checkpoint,
      description=f", {gens.num} generators, lambda={lam['lambda_l1']:g} ({lam['lambda_rule']}), "
                  f"loss={cfg.loss}, differential={cfg.differential}, {average}"
                  f"BN statistics {cfg.generator_statistics}, {cfg.reuse} update(s) "
                  f"per batch of {builders.update_batch(cfg)}, {cfg.sub_batches} such batch(es) a "
                  f"step, pairs from {bank.description if bank else 'the trunk (online)'}")


def run(config: ml_collections.ConfigDict, workdir: str, name: str = workdir_lib.PDSN,
        overrides: dict | None = None) -> dict:
  """Trains (or resumes) the 9 generators against the frozen trunk into ``<workdir>/<name>``
  (``overrides``: the fields ``config`` changed from the run's, as Table 3's ablation does)."""
  upstream = STAGE.upstream + ((workdir_lib.BANK,) if config.pdsn.source == "bank" else ())
  return loop.run_stage(config, workdir, STAGE, plan, name=name, overrides=overrides,
                        upstream=upstream)


STAGE = stage_lib.Stage(
    name=workdir_lib.PDSN, run=run, section="pdsn", upstream=(workdir_lib.TRUNK,),
    stream=stage_lib.Stream(data_offset=1, init_fold=1),
    depends_on=stage_lib.BASE + ("model", "cosface", "pdsn") + stage_lib.OCCLUDERS)
