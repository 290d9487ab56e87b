"""grain input pipelines whose global batches do not depend on the process count.

The training stream is one seeded, per-epoch reshuffled order of record
indices. Global batch k is stream elements [k*B, (k+1)*B); process p of P reads
the contiguous slice [p*B/P, (p+1)*B/P) of it. So one process with 4 devices
and two processes with 2 devices each see the same global batches, and
per-element augmentation is seeded by the element's position in the global
stream, not by anything local.
"""

from typing import Any, Callable, Sequence

import grain
import numpy as np


def check_batch_size(global_batch: int, num_devices: int, num_processes: int, key: str) -> int:
  """Returns the per-process batch, or raises naming the config key."""
  if global_batch <= 0 or global_batch % num_devices:
    raise ValueError(
        f"{key}={global_batch} must be a positive multiple of the number of devices "
        f"({num_devices}); try {max(num_devices, global_batch // num_devices * num_devices)}")
  if global_batch % num_processes:
    raise ValueError(f"{key}={global_batch} must divide by the process count ({num_processes})")
  return global_batch // num_processes


class _LocalToGlobal:
  """Maps a process-local stream position to its global stream position (picklable)."""

  def __init__(self, local_batch: int, process_index: int, process_count: int):
    self.b, self.p, self.n = local_batch, process_index, process_count

  def __call__(self, i: int) -> int:
    k, r = divmod(int(i), self.b)
    return k * self.b * self.n + self.p * self.b + r


class _Lookup:
  """Global stream position -> (position, record index) through the shuffled order."""

  def __init__(self, order: grain.MapDataset):
    self.order = order

  def __call__(self, g: int) -> tuple[int, int]:
    return g, int(self.order[g])


class _Load:
  """(position, record index) -> record dict with the element's stream position."""

  def __init__(self, source: Any, seed: int, transforms: Sequence[Callable]):
    self.source, self.seed, self.transforms = source, seed, tuple(transforms)

  def __call__(self, item: tuple[int, int]) -> dict:
    g, idx = item
    rec = dict(self.source[idx])
    rng = np.random.default_rng([self.seed, 7, g])
    for t in self.transforms:
      rec = t(rec, rng)
    return rec


class RandomFlip:
  """Horizontal flip with probability 0.5 (picklable grain transform)."""

  def __call__(self, rec: dict, rng: np.random.Generator) -> dict:
    if rng.uniform() < 0.5:
      rec["image"] = np.ascontiguousarray(rec["image"][:, ::-1])
    return rec


def train_dataset(source: Any, global_batch: int, seed: int, process_index: int = 0,
                  process_count: int = 1, transforms: Sequence[Callable] = (RandomFlip(),),
                  num_epochs: int | None = None) -> grain.MapDataset:
  """Infinite (or ``num_epochs``) MapDataset of this process's batches, indexable by step."""
  if len(source) < global_batch:
    raise ValueError(f"the training set has {len(source)} images, fewer than one global batch "
                     f"({global_batch}); lower the batch size or add data")
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} does not divide by {process_count} processes")
  local = global_batch // process_count
  order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(num_epochs)
  # drop_remainder per epoch: no global batch straddles two epochs.
  steps_per_epoch = len(source) // global_batch
  length = num_epochs * steps_per_epoch * local if num_epochs is not None else 2**62
  ds = grain.MapDataset.range(length)
  ds = ds.map(_LocalToGlobal(local, process_index, process_count))
  ds = ds.map(_EpochTail(steps_per_epoch * global_batch, len(source)))
  ds = ds.map(_Lookup(order)).map(_Load(source, seed, transforms))
  return ds.batch(local, drop_remainder=True, batch_fn=stack_records)


class _EpochTail:
  """Skips the last ``n - epoch_len`` shuffled indices of every epoch."""

  def __init__(self, epoch_len: int, n: int):
    self.epoch_len, self.n = epoch_len, n

  def __call__(self, g: int) -> int:
    e, r = divmod(int(g), self.epoch_len)
    return e * self.n + r


def stack_records(records: Sequence[dict]) -> dict:
  """Stacks a list of record dicts into a dict of arrays (the grain batch_fn)."""
  return {k: np.stack([r[k] for r in records]) for k in records[0]}


def to_iterator(ds: grain.MapDataset, num_workers: int = 0,
                prefetch: int = 2) -> grain.DatasetIterator:
  """A checkpointable iterator; worker processes when ``num_workers`` > 0."""
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, prefetch), prefetch_buffer_size=prefetch))
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it)


def eval_batches(arrays: dict, global_batch: int, process_index: int, process_count: int):
  """Every evaluation pass's batching: yields (this process's rows of each zero-padded global
  batch of ``arrays``, a dict of equally long arrays; the number of real rows)."""
  n = len(next(iter(arrays.values())))
  local = global_batch // process_count
  for start in range(0, n, global_batch):
    real = min(global_batch, n - start)
    chunk = {}
    for k, a in arrays.items():
      c = np.asarray(a[start:start + global_batch])
      if real < global_batch:
        c = np.concatenate([c, np.zeros((global_batch - real,) + c.shape[1:], c.dtype)])
      chunk[k] = c[process_index * local:(process_index + 1) * local]
    yield chunk, real
