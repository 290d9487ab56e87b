"""The training loop every stage shares: steps, logging, NaN checks, checkpoints."""

from typing import Any, Callable

import jax
import numpy as np

from pdsn_jax import checkpointing, metrics as metrics_lib, parallel, training


def train_loop(*, stage: str, state: Any, step_fn: Callable, data_iter: Any, mesh, mgr,
               writer: metrics_lib.MetricWriter, root: jax.Array, start: int, total: int,
               images_per_step: int, log_every: int,
               on_metrics: Callable[[int, dict], dict] | None = None,
               on_step: Callable[[int, Any], None] | None = None) -> Any:
  """Runs steps [start, total) and returns the final state.

  Metrics leave the device only at log and checkpoint steps; there the loss and
  the parameter norm must be finite, so a checkpoint never holds a diverged
  state. ``on_metrics(step, metrics)`` may pop non-scalar metrics and returns
  extra scalars to log; ``on_step(step, state)`` runs after every step (evals).
  """
  clock = metrics_lib.Throughput(total, images_per_step, start)
  for step in range(start, total):
    batch = parallel.put_batch(next(data_iter), mesh)
    state, out = step_fn(state, batch, jax.random.fold_in(root, step))
    done = step + 1
    is_log = done % log_every == 0 or done == total or done == start + 1
    is_ckpt = mgr.should_save(done) or done == total
    extra = {}
    if is_log or is_ckpt:
      out = jax.device_get(out)
      training.finite_or_raise({"loss": out["loss"], "param_norm": out["param_norm"]}, done)
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
