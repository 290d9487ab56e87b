"""Data parallelism in the pmap style: per-device code with named-axis collectives, mapped
with ``jax.shard_map`` under ``jax.jit`` over a 1-D device mesh.

Per-device step functions see their shard of the batch and call
``lax.pmean(x, AXIS)``; state and RNG are replicated. Works unchanged on one
CPU, 8 fake CPU devices, a GPU node or a multi-host TPU slice.
"""

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
  """1-D mesh over ``devices`` (default: every device of every process)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def data_parallel(fn: Callable, mesh: Mesh, donate_state: bool = True,
                  batch_out: bool = False) -> Callable:
  """Maps ``fn(state, batch, rng) -> (state, out)`` data-parallel over ``mesh``.

  state and rng replicated, every leaf of batch split on its leading axis. The
  second output is replicated (metrics after ``pmean``), or split like the batch
  when ``batch_out`` (per-example results such as embeddings).
  """
  # check_vma=False gives pmap's semantics, which the per-device code is written for:
  # with it on, the gradient w.r.t. a replicated input is implicitly psum-ed across the
  # axis, and an explicit pmean of gradients would then scale them by the device count.
  mapped = jax.shard_map(
      fn, mesh=mesh, in_specs=(P(), P(AXIS), P()),
      out_specs=(P(), P(AXIS) if batch_out else P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,) if donate_state else ())


def per_device_rng(rng: jax.Array) -> jax.Array:
  """A different key on every device, from the replicated ``rng`` (call inside ``fn``)."""
  return jax.random.fold_in(rng, jax.lax.axis_index(AXIS))


def put_batch(local_batch: Any, mesh: Mesh) -> Any:
  """This process's rows of a global batch -> global arrays split over the mesh."""
  sharding = sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host values identical on every process -> arrays replicated over the mesh."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(put, tree)


def fetch(tree: Any) -> Any:
  """Global arrays -> host numpy on every process (gathers shards across processes)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)
