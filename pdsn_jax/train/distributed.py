"""Multi-process start-up: ``jax.distributed.initialize`` when launched as one of several."""

import logging
import os

import jax

def _multi_process_env() -> bool:
  if os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
    return True
  if os.environ.get("OMPI_COMM_WORLD_SIZE", "1") not in ("", "1"):
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or "," in hosts


def maybe_initialize(coordinator_address: str = "", num_processes: int = 0,
                     process_id: int = -1) -> None:
  """Initialises jax.distributed from explicit flags, else from the cluster's environment.

  Flags win (local multi-process runs and tests); otherwise SLURM, Open MPI and
  TPU pod environments are detected and jax reads their variables itself.
  """
  if coordinator_address:
    if num_processes < 1 or process_id < 0:
      raise ValueError("--coordinator_address needs --num_processes >= 1 and --process_id >= 0")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _multi_process_env():
    addr = os.environ.get("JAX_COORDINATOR_ADDRESS")
    n = int(os.environ.get("JAX_NUM_PROCESSES", "0")) or None
    pid = int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None
    jax.distributed.initialize(addr, n, pid)
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())


def barrier(tag: str) -> None:
  """Waits until every process reaches the same ``tag``: after process 0 writes, renames or
  deletes what the others then read. A no-op in a single process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(tag)
