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

Each finished step is sealed with ``<step>/sha256.json`` (size and sha256 of every file in
it: orbax's own files carry no checksum of their contents), written once the save is final;
a step whose files do not match is unreadable like a damaged one (a step killed before its
seal has none and is read as it is).

A checkpoint that cannot be restored (a truncated or deleted file, missing
metadata, bytes that differ from its seal) is reported in one line (step, path, root cause), renamed to
``<step>.unreadable`` so that the step can be written again, and the next older
finished step is tried; with none left the run fails with those lines and what
to delete.
"""

import logging
import os
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from pdsn_jax.train import distributed, parallel
from pdsn_jax.run import files

SEAL = "sha256.json"


def manager(directory: str, max_to_keep: int = 3, save_every: int = 1,
            read_only: bool = False) -> ocp.CheckpointManager:
  opts = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, save_interval_steps=max(1, save_every), create=not read_only,
      read_only=read_only, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=opts)


def save(mgr: ocp.CheckpointManager, step: int, state: Any, data_iter: Any = None,
         force: bool = False) -> bool:
  """Saves state (and the iterator when given) if ``step`` is due, or ``force``; the steps
  finished since the last call are sealed first (``seal``), so saving stays asynchronous."""
  seal(mgr)
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return mgr.save(step, args=ocp.args.Composite(**items), force=force)


def _step_files(step_dir: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), step_dir)
                for d, _, fs in os.walk(step_dir) for f in fs if f != SEAL)


def seal(mgr: ocp.CheckpointManager) -> None:
  """Writes ``<step>/sha256.json`` for every finished step without one (process 0; call
  after ``wait_until_finished`` to seal the last save)."""
  if jax.process_index() != 0:
    return
  directory = str(mgr.directory)
  for step in mgr.all_steps():
    step_dir = os.path.join(directory, str(step))
    if os.path.isfile(os.path.join(step_dir, SEAL)) or not os.path.isdir(step_dir):
      continue
    try:
      manifest = {f: files.describe(os.path.join(step_dir, f)) for f in _step_files(step_dir)}
    except FileNotFoundError:  # removed meanwhile (max_to_keep)
      continue
    files.write_json(os.path.join(step_dir, SEAL), manifest)


def verify_seal(step_dir: str) -> None:
  """``files.DamagedFile`` naming the first file of the step that differs from its seal (a
  changed, truncated, missing or added file); nothing for a step without a seal."""
  path = os.path.join(step_dir, SEAL)
  if not os.path.isfile(path):
    return
  fix = "the checkpoint step is damaged"
  manifest = files.read_json(path, "the checkpoint's seal", fix)
  extra = sorted(set(_step_files(step_dir)) - set(manifest))
  if extra:
    raise files.DamagedFile(f"{os.path.join(step_dir, extra[0])} was not in the step when it "
                            f"was sealed; {fix}")
  for rel, expected in manifest.items():
    files.verify(os.path.join(step_dir, rel), expected, fix)


def abstract_replicated(tree: Any, mesh) -> Any:
  """ShapeDtypeStructs with the replicated sharding: the restore target."""
  rep = parallel.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), tree)


def root_cause(e: BaseException) -> str:
  """The innermost exception of a chain, as 'Type: first line of its message'."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  msg = str(e).strip().splitlines()
  return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


class NoReadableCheckpoint(RuntimeError):
  pass


def _set_aside(directory: str, step: int) -> None:
  if jax.process_index() == 0:
    src = os.path.join(directory, str(step))
    dst = f"{src}.unreadable"
    if os.path.exists(dst):
      dst = f"{dst}.{os.getpid()}"
    os.rename(src, dst)
  distributed.barrier(f"{directory}/{step} set aside")  # before any process lists steps again


def restore_latest(mgr: ocp.CheckpointManager, abstract_state: Any, data_iter: Any = None):
  """(state, step) from the latest readable checkpoint, restoring ``data_iter`` in place; None
  if there is none at all (see the module docstring for unreadable ones)."""
  failures = []
  directory = str(mgr.directory)
  for step in sorted(mgr.all_steps(), reverse=True):
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      verify_seal(os.path.join(directory, str(step)))
      restored = mgr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise many kinds)
      line = (f"checkpoint step {step} at {os.path.join(directory, str(step))} cannot be "
              f"restored: {root_cause(e)}")
      logging.warning("%s; trying the previous one", line)
      failures.append(line)
      _set_aside(directory, step)
      continue
    if failures:
      mgr.reload()
      logging.warning("resuming from checkpoint step %d (%d newer unreadable, kept as "
                      "<step>.unreadable)", step, len(failures))
    return restored["state"], step
  if failures:
    raise NoReadableCheckpoint("\n".join(failures) + f"\nno readable checkpoint left under "
                               f"{directory}: delete that folder to start the stage again")
  return None


def backbone_of(checkpointed: dict) -> dict:
  """Inference variables (``params``, ``batch_stats``) of the recognition network in a
  checkpointed ``{params: {backbone, ...}, batch_stats}`` tree."""
  return {"params": checkpointed["params"]["backbone"], "batch_stats": checkpointed["batch_stats"]}


def finished_steps(directory: str) -> list[int]:
  """Steps of the finished checkpoints under ``directory``, as orbax lists them (temporary
  saves and ``<step>.unreadable`` folders are not steps)."""
  return list(ocp.utils.checkpoint_steps(directory))


def load_variables(directory: str, keys=("params", "batch_stats")) -> dict:
  """Host numpy ``{key: tree}`` from the latest checkpoint under ``directory`` (init_from)."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"init_from checkpoint folder not found: {directory}")
  steps = sorted(finished_steps(directory), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no finished checkpoint under {directory}")
  failures = []
  for step in steps:  # the newest readable one (load-only: nothing is renamed)
    path = os.path.join(os.path.abspath(directory), str(step), "state")
    try:
      verify_seal(os.path.dirname(path))
      state = _load_state(path)
    except Exception as e:  # noqa: BLE001
      failures.append(f"checkpoint step {step} at {path} cannot be restored: {root_cause(e)}")
      logging.warning("%s; trying the previous one", failures[-1])
      continue
    out = {k: jax.tree.map(np.asarray, state[k]) for k in keys}
    logging.info("loaded %s from %s (step %d)", ", ".join(keys), directory, step)
    return out
  raise NoReadableCheckpoint("\n".join(failures) + f"\nno readable checkpoint under {directory}")


def _load_state(path: str) -> Any:
  # Target from the saved metadata, placed on this process's first device, so a
  # checkpoint from any topology (another device or process count) loads.
  ckptr = ocp.StandardCheckpointer()
  try:
    meta = ckptr.metadata(path)
    local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=local),
                          getattr(meta, "item_metadata", meta))
    return ckptr.restore(path, target)
  finally:
    ckptr.close()


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
