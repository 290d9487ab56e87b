"""One orbax CheckpointManager per stage: train state and the grain iterator, saved together.

Resume order (``restore_or_init``):
  1. the latest checkpoint of this stage in the workdir (an interrupted run resumes);
  2. ``init_from``: the params and BatchNorm statistics of another run's checkpoint
     (fresh optimizer, step 0);
  3. scratch.
Every process calls the same manager; orbax writes each array shard once and
grain writes one iterator-state file per process. Saves are atomic (written to
a temporary folder, then renamed), so a crash mid-save leaves the previous
checkpoint as the latest.
"""

import logging
import os
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from pdsn_jax import parallel


def manager(directory: str, max_to_keep: int = 3, save_every: int = 1,
            read_only: bool = False) -> ocp.CheckpointManager:
  opts = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=max(1, save_every), create=not read_only,
      read_only=read_only, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=opts)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any = None,
         force: bool = False) -> bool:
  """Saves state (and the iterator when given) if ``step`` is due, or ``force``."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return mgr.save(step, args=ocp.args.Composite(**items), force=force)


def abstract_replicated(tree: Any, mesh) -> Any:
  """ShapeDtypeStructs with the replicated sharding: the restore target."""
  rep = parallel.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)


def restore_latest(mgr: ocp.CheckpointManager, abstract_state: Any, data_iter: Any = None):
  """(state, step) from the latest checkpoint, restoring ``data_iter`` in place; None if none."""
  step = mgr.latest_step()
  if step is None:
    return None
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = mgr.restore(step, args=ocp.args.Composite(**items))
  return restored["state"], step


def load_variables(directory: str, keys=("params", "batch_stats")) -> dict:
  """Host numpy ``{key: tree}`` from the latest checkpoint under ``directory`` (init_from)."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"init_from checkpoint folder not found: {directory}")
  # Finished checkpoints are folders named by their step; unfinished saves carry a
  # temporary suffix until orbax renames them.
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
  step = max(steps) if steps else None
  if step is None:
    raise FileNotFoundError(f"no finished checkpoint under {directory}")
  # Target from the saved metadata, placed on this process's first device, so a
  # checkpoint from any topology (another device or process count) loads.
  path = os.path.join(os.path.abspath(directory), str(step), "state")
  ckptr = ocp.StandardCheckpointer()
  meta = ckptr.metadata(path)
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
                        getattr(meta, "item_metadata", meta))
  state = ckptr.restore(path, target)
  ckptr.close()
  out = {k: jax.tree.map(np.asarray, state[k]) for k in keys}
  logging.info("loaded %s from %s (step %d)", ", ".join(keys), directory, step)
  return out


def restore_or_init(mgr: ocp.CheckpointManager, init_fn: Callable[[], Any], mesh,
                    data_iter: Any = None, init_from: str = "",
                    merge_fn: Callable[[Any, dict], Any] | None = None,
                    loader: Callable[[str], dict] = None):
  """Returns (state, start_step, origin) following the resume order in the module docstring."""
  abstract = abstract_replicated(jax.eval_shape(init_fn), mesh)
  restored = restore_latest(mgr, abstract, data_iter)
  if restored is not None:
    return restored[0], restored[1], "checkpoint"
  state = jax.jit(init_fn, out_shardings=parallel.replicated(mesh))()
  if init_from:
    if merge_fn is None:
      raise ValueError("this stage does not support init_from")
    state = merge_fn(state, (loader or load_variables)(init_from))
    return state, 0, f"init_from:{init_from}"
  return state, 0, "scratch"
