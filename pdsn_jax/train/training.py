"""Train state, optimizer and learning-rate schedules shared by every training stage."""

from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from pdsn_jax.run import stage as stage_lib

SCHEDULES = ("cosine", "step", "constant")


@flax.struct.dataclass
class TrainState:
  """Everything a training stage checkpoints except the data iterator.

  ``rng`` is the raw data of the stage's root key: the key of step s is
  ``fold_in(rng, s)``, so a resumed run draws the same randomness.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  # networks the step reads and never trains, carried so that a checkpoint is self-contained
  # and their staying unchanged can be checked: stage I's trunk, ``finetune.loss="distill"``'s
  # teacher; None elsewhere
  frozen: Any = None


PRNG_IMPLS = ("rbg", "threefry2x32", "unsafe_rbg")

def data_seed(config: ml_collections.ConfigDict, stream: stage_lib.Stream) -> int:
  """The data pipeline's seed of a stage drawing ``stream`` (its descriptor's)."""
  return int(config.seed) + stream.data_offset


def init_key(config: ml_collections.ConfigDict, stream: stage_lib.Stream) -> jax.Array:
  """The initial-parameter key of a stage drawing ``stream``."""
  root = root_key(config)
  return root if stream.init_fold is None else jax.random.fold_in(root, stream.init_fold)


def root_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The run's one root key. 'rbg' by default: XLA compiles initialisers drawn with it
  about 4x faster on CPU than threefry (5 s vs 20 s for an IResNet-18), and it is
  deterministic for a given jax version and backend."""
  if config.prng_impl not in PRNG_IMPLS:
    raise ValueError(f"config.prng_impl={config.prng_impl!r} is not one of {PRNG_IMPLS}")
  return jax.random.key(config.seed, impl=config.prng_impl)


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up to ``cfg.learning_rate``, then cosine / step decay / constant."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"schedule={cfg.schedule!r} is not one of {SCHEDULES}")
  warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
  rest = max(total_steps - warmup, 1)
  if cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(cfg.learning_rate, rest)
  elif cfg.schedule == "step":
    bounds = {int(b * total_steps) - warmup: cfg.step_decay for b in cfg.step_boundaries}
    after = optax.piecewise_constant_schedule(cfg.learning_rate, bounds)
  else:
    after = optax.constant_schedule(cfg.learning_rate)
  if warmup == 0:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(cfg.learning_rate / max(warmup, 1), cfg.learning_rate, warmup),
       after], [warmup])


def sgd(cfg: ml_collections.ConfigDict, total_steps: int,
        trainable: Any = None) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay added to the gradient (coupled: it is scaled by the
  learning rate, as in insightface's SGD)."""
  tx = optax.chain(
      optax.add_decayed_weights(cfg.weight_decay),
      optax.sgd(learning_rate_schedule(cfg, total_steps), momentum=cfg.momentum or None,
                nesterov=bool(cfg.get("nesterov", False))),
  )
  return freeze(tx, trainable)


def freeze(tx: optax.GradientTransformation, trainable: Any) -> optax.GradientTransformation:
  """``tx`` on the leaves ``trainable`` (a bool pytree, or a function of the params giving one)
  marks True; the others get a zero update whatever their gradient. (``optax.masked`` would
  pass their raw gradient through as the update.)"""
  if trainable is None:
    return tx
  labels = ((lambda p: jax.tree.map(lambda t: "train" if t else "frozen", trainable(p)))
            if callable(trainable) else
            jax.tree.map(lambda t: "train" if t else "frozen", trainable))
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


class ParamsAverage(NamedTuple):
  """The state ``with_params_average`` adds: the running average of the parameters."""
  average: Any


def with_params_average(tx: optax.GradientTransformation,
                        decay: float) -> optax.GradientTransformation:
  """``tx``, then an exponential moving average of the parameters it produces (Polyak
  averaging) kept in the optimizer state: ``average = decay * average + (1 - decay) * new``
  after every update, starting at the initial parameters. ``tx``'s updates are unchanged, so
  the trained parameters are those of ``tx`` alone."""

  def init(params):
    return ParamsAverage(jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params))

  def update(updates, state, params):
    new = optax.apply_updates(params, updates)
    average = jax.tree.map(lambda a, p: decay * a + (1.0 - decay) * p.astype(a.dtype),
                           state.average, new)
    return updates, ParamsAverage(average)

  return optax.chain(tx, optax.GradientTransformation(init, update))


class RateFactor(NamedTuple):
  """The state ``with_rate_factor`` adds: the factor on the learning rate, which a rule outside
  the step sets (stage I's plateau rule), and what that rule measured last (its value and step;
  -1 before any), so that a resumed run decides as the uninterrupted one."""
  factor: jax.Array
  last_value: jax.Array
  last_step: jax.Array


def with_rate_factor(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """``tx``'s updates times ``RateFactor.factor`` (1 at the start): the learning rate times it
  (``tx``'s momentum and weight decay act on the gradient, before the rate)."""

  def init(params):
    del params
    return RateFactor(jnp.ones((), jnp.float32), -jnp.ones((), jnp.float32),
                      -jnp.ones((), jnp.int32))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u * state.factor.astype(u.dtype), updates), state

  return optax.chain(tx, optax.GradientTransformation(init, update))


def _is_rate_factor(x) -> bool:
  return isinstance(x, RateFactor)


def rate_factor(opt_state: Any) -> RateFactor | None:
  """The ``RateFactor`` in ``opt_state`` (None without one)."""
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_rate_factor) if _is_rate_factor(x)]
  return found[0] if found else None


def replace_rate_factor(opt_state: Any, new: RateFactor) -> Any:
  return jax.tree.map(lambda x: new if _is_rate_factor(x) else x, opt_state,
                      is_leaf=_is_rate_factor)


def params_in_use(params: Any, opt_state: Any) -> Any:
  """The parameters a stage's output stands for: the running average where the optimizer
  keeps one (``with_params_average``), else ``params``. ``opt_state`` is the live state or a
  checkpoint's (restored without a target: the chain's tuple as a list, the average as a dict)."""
  last = opt_state[-1] if isinstance(opt_state, (tuple, list)) and opt_state else None
  if isinstance(last, ParamsAverage):
    return last.average
  if isinstance(last, dict) and set(last) == {"average"}:
    return last["average"]
  return params


OPTIMIZERS = ("sgd", "adam")


def optimizer(cfg: ml_collections.ConfigDict, total_steps: int,
              trainable: Any = None) -> optax.GradientTransformation:
  """``cfg.optimizer``: "sgd" (momentum, L2 added to the gradient) or "adam" (builds AdamW:
  Adam with weight decay decoupled from the gradient), on the
  ``trainable`` leaves only (see ``freeze``)."""
  name = cfg.get("optimizer", "sgd")
  if name == "sgd":
    return sgd(cfg, total_steps, trainable)
  if name == "adam":
    return freeze(optax.adamw(learning_rate_schedule(cfg, total_steps),
                              weight_decay=cfg.weight_decay), trainable)
  raise ValueError(f"optimizer={name!r} is not one of {OPTIMIZERS}")


def finite_or_raise(metrics: dict, step: int) -> None:
  """Raises FloatingPointError naming the step and the offending metric."""
  for k, v in metrics.items():
    if not jnp.isfinite(jnp.asarray(v)).all():
      raise FloatingPointError(
          f"non-finite {k}={v} at step {step}; stopping before the next checkpoint "
          "(the last saved checkpoint is intact). Lower the learning rate or check the data.")
