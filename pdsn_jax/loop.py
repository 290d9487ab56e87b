"""The training loop every stage shares: steps, logging, NaN checks, checkpoints."""

from typing import Any, Callable

import jax
import numpy as np
import optax

from pdsn_jax import checkpointing, metrics as metrics_lib, parallel, training


class Diverged(FloatingPointError):
  pass


def check_divergence(stage: str, metrics: dict, step: int, start_norm: float,
                     max_growth: float, mgr) -> None:
  """Raises ``Diverged`` (before anything is saved) on a non-finite loss or parameter norm, or
  a parameter norm grown more than ``max_growth``-fold since the stage's first step, naming
  the last good checkpoint and how to resume."""
  def where() -> str:  # only when stopping: it lists the checkpoint folder
    last = mgr.latest_step()
    if last is None:
      return f"no checkpoint was saved yet ({mgr.directory}); rerun with a lower learning rate"
    return (f"the last good checkpoint is step {last} in {mgr.directory}; rerun the same "
            "command with a lower learning rate to resume from it")

  try:
    training.finite_or_raise({"loss": metrics["loss"], "param_norm": metrics["param_norm"]},
                             step)
  except FloatingPointError as e:
    raise Diverged(f"[{stage}] {e}; {where()}") from None
  norm = float(metrics["param_norm"])
  if max_growth > 0 and norm > max_growth * start_norm:
    raise Diverged(f"[{stage}] parameter norm grew from {start_norm:.4g} to {norm:.4g} (more "
                   f"than {max_growth:g}x, config.max_param_norm_growth) by step {step}: the "
                   f"run is diverging; stopping before saving; {where()}")


def train_loop(*, stage: str, state: Any, step_fn: Callable, data_iter: Any, mesh, mgr,
               writer: metrics_lib.MetricWriter, root: jax.Array, start: int, total: int,
               images_per_step: int, log_every: int,
               on_metrics: Callable[[int, dict], dict] | None = None,
               on_step: Callable[[int, Any], None] | None = None,
               max_growth: float = 0.0) -> Any:
  """Runs steps [start, total) and returns the final state.

  Metrics leave the device only at log and checkpoint steps; there the loss and
  the parameter norm must be finite and the norm within ``max_growth`` times the
  starting state's (``check_divergence``), so a checkpoint never holds a diverged
  state. ``on_metrics(step, metrics)`` may pop non-scalar metrics and returns
  extra scalars to log; ``on_step(step, state)`` runs after every step (evals).
  """
  clock = metrics_lib.Throughput(total, images_per_step, start)
  # the params are replicated: this process's first copy is the whole tree
  local = lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x  # noqa: E731
  start_norm = float(optax.tree.norm(jax.tree.map(lambda x: np.asarray(local(x)), state.params)))
  for step in range(start, total):
    batch = parallel.put_batch(next(data_iter), mesh)
    state, out = step_fn(state, batch, jax.random.fold_in(root, step))
    done = step + 1
    is_log = done % log_every == 0 or done == total or done == start + 1
    is_ckpt = mgr.should_save(done) or done == total
    extra = {}
    if is_log or is_ckpt:
      out = jax.device_get(out)
      check_divergence(stage, out, done, start_norm, max_growth, mgr)
      if on_metrics is not None:
        extra = on_metrics(done, out)
    if is_log:
      img_s, eta = clock.update(done)
      metrics_lib.log_line(stage, done, total, out, img_s, eta)
      if np.isfinite(img_s):
        extra["images_per_sec"] = img_s
      writer.write(done, {**out, **extra})
    if on_step is not None:
      on_step(done, state)
    if is_ckpt:
      checkpointing.save(mgr, done, state, data_iter, force=done == total)
  mgr.wait_until_finished()
  return state


def stage_root_key(state: Any, mesh, impl: str) -> jax.Array:
  """The stage's root key, replicated, copied out of the state (whose buffers get donated)."""
  return jax.random.wrap_key_data(parallel.put_replicated(jax.device_get(state.rng), mesh),
                                  impl=impl)
