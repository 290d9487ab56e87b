"""A gallery feature store on disk: U of every gallery face, computed once, in shards that a
process memory-maps, so identification against millions of faces needs no host memory that
grows with the gallery.

  STORE/meta.json             version, U's shape, dtype, shard size, face count, the trunk
                              (checkpoint and a fingerprint of its variables), the source,
                              the sha256 of its inputs list, and its own checksum
  STORE/inputs.json           the source's files in store order, each [path, bytes, mtime_ns]
                              (photo folders: a resumed build must see the same files)
  STORE/shard_00000.npy       U of faces [0, shard_size): float32, float16, or int8 ...
  STORE/scale_00000.npy       ... with per-face, per-channel scales (int8 only)
  STORE/labels_00000.npy      identity labels (-1: a distractor; -2: an unreadable image,
                              kept in place so the other shards stay valid, never found)
  STORE/paths_00000.json      where each face came from
  STORE/check_00000.json      size and sha256 of each of the shard's files

A shard is complete when its ``shard_*.npy`` exists: it is written last, through a temporary
name, so a build killed at any point resumes at the first missing shard. Every file is checked
against ``check_*.json`` before its first use in a process (sizes, then sha256): a damaged
shard is never read silently; a build finds damaged shards and makes them again.
"""

import hashlib
import json
import logging
import os
import time
from typing import Callable

import jax
import numpy as np

from pdsn_jax.train import distributed
from pdsn_jax.run import files

VERSION = 2
DTYPES = ("float32", "float16", "int8")
UNREADABLE = -2  # the label of a face whose image could not be read: kept, never found


def fingerprint(variables) -> str:
  """A short hash of a network's variables (paths, shapes, dtypes, bytes): which trunk."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}:{a.shape}:{a.dtype}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


class OutOfRange(ValueError):
  """U that the store's dtype cannot hold (float16 overflows to inf; NaN anywhere)."""


def _check_range(u: np.ndarray, dtype: str) -> None:
  """Refuses U that ``dtype`` would store wrongly, naming the channels' range and the way out:
  a cast never turns a value into ``inf`` silently."""
  finite = np.isfinite(u)
  if not finite.all():
    raise OutOfRange(f"U holds {int((~finite).sum())} non-finite values (NaN or inf): the "
                     "network's features are broken; check the run's checkpoint")
  if dtype != "float16" or not u.size:
    return
  top = np.abs(u).max(axis=tuple(range(u.ndim - 1)))  # per channel
  limit = float(np.finfo(np.float16).max)
  if top.max() > limit:
    over = np.flatnonzero(top > limit)
    raise OutOfRange(
        f"U reaches {float(top.max()):.4g} (channels {over[:5].tolist()}"
        f"{' ...' if len(over) > 5 else ''} of {len(top)}: {len(over)} above float16's "
        f"{limit:g}; channel maxima range {float(top.min()):.4g}-{float(top.max()):.4g}): "
        "float16 would store inf; use --dtype=int8 (per-face, per-channel scales) or "
        "--dtype=float32")


def quantize(u: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
  """(stored U, scales): int8 with one scale per face and channel (max |U| / 127 over the
  map), float16 / float32 as they are; ``OutOfRange`` where the dtype cannot hold U."""
  if dtype in DTYPES:
    _check_range(np.asarray(u), dtype)
  if dtype == "int8":
    scale = np.abs(u).max(axis=(1, 2)) / 127.0  # (N, C)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(u / scale[:, None, None, :]), -127, 127).astype(np.int8)
    return q, scale
  if dtype not in DTYPES:
    raise ValueError(f"store dtype {dtype!r} is not one of {DTYPES}")
  return u.astype(dtype), None


def dequantize(u: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
  """float32 U from a stored shard (numpy or jnp)."""
  u = u.astype(np.float32)
  return u if scale is None else u * scale[:, None, None, :]


class TrunkMismatch(ValueError):
  pass


def is_store(path: str) -> bool:
  """Whether ``path`` is a gallery store's folder (it has the store's ``meta.json``)."""
  return os.path.isfile(os.path.join(path, "meta.json"))


class Store:
  """A finished or partial store; ``shard(i)`` memory-maps one shard."""

  def __init__(self, path: str):
    self.path = path
    meta_path = os.path.join(path, "meta.json")
    if not os.path.isfile(meta_path):
      raise FileNotFoundError(f"no gallery store at {path} (missing {meta_path}); build one with "
                              "python -m pdsn_jax.cli.gallery build")
    fix = "delete the store and build it again"
    self.meta = files.read_json(meta_path, "a gallery store's metadata", fix)
    if self.meta.get("version") != VERSION:
      raise ValueError(f"{meta_path}: store version {self.meta.get('version')}, this code reads "
                       f"{VERSION}; rebuild it")
    if self.meta.get("checksum") != _meta_checksum(self.meta):
      raise files.DamagedFile(f"{meta_path}: checksum mismatch (edited or damaged); {fix}")
    self.num_faces, self.shard_size = self.meta["num_faces"], self.meta["shard_size"]
    self.num_shards = -(-self.num_faces // self.shard_size)
    self._verified = set()

  def _file(self, kind: str, i: int, ext: str = "npy") -> str:
    return os.path.join(self.path, f"{kind}_{i:05d}.{ext}")

  def complete(self, i: int) -> bool:
    return os.path.isfile(self._file("shard", i)) and os.path.isfile(self._file("check", i, "json"))

  def missing(self) -> list[int]:
    return [i for i in range(self.num_shards) if not self.complete(i)]

  def _shard_files(self, i: int) -> list[str]:
    kinds = [("labels", "npy"), ("paths", "json"), ("shard", "npy")]
    kinds += [("scale", "npy")] if self.meta["dtype"] == "int8" else []
    return [self._file(k, i, ext) for k, ext in kinds]

  def verify(self, i: int) -> None:
    """Checks shard ``i``'s files against its ``check_*.json`` (once per process);
    ``files.DamagedFile`` names the first file that does not match."""
    if i in self._verified:
      return
    fix = (f"the gallery store {self.path} is damaged: run the same gallery build again (it "
           "makes damaged shards again)")
    expected = files.read_json(self._file("check", i, "json"), "a store shard's checksums", fix)
    for path in self._shard_files(i):
      files.verify(path, expected.get(os.path.basename(path), {"bytes": -1, "sha256": ""}), fix)
    self._verified.add(i)

  def damaged(self) -> dict[int, str]:
    """{shard: why} for every complete shard whose files fail ``verify`` (reads them all)."""
    out = {}
    for i in range(self.num_shards):
      if self.complete(i):
        try:
          self.verify(i)
        except files.DamagedFile as e:
          out[i] = str(e)
    return out

  def shard(self, i: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(stored U memory-mapped, its scales or None, labels) of shard ``i``, verified."""
    if not self.complete(i):
      raise FileNotFoundError(f"{self._file('shard', i)} missing: the store at {self.path} is "
                              "incomplete; run the build again to finish it")
    self.verify(i)
    u = np.load(self._file("shard", i), mmap_mode="r")
    scale = np.load(self._file("scale", i)) if self.meta["dtype"] == "int8" else None
    return u, scale, np.load(self._file("labels", i))

  def offset(self, i: int) -> int:
    return i * self.shard_size

  def labels(self) -> np.ndarray:
    for i in range(self.num_shards):
      self.verify(i)
    return np.concatenate([np.load(self._file("labels", i)) for i in range(self.num_shards)])

  def paths(self, i: int) -> list[str]:
    self.verify(i)
    with open(self._file("paths", i, "json"), encoding="utf-8") as f:
      return json.load(f)

  def check_trunk(self, checkpoint: str, print_: str) -> None:
    """Raises TrunkMismatch naming both trunks unless ``print_`` (a ``fingerprint``) is the
    store's."""
    have = self.meta["trunk"]
    if have["fingerprint"] != print_:
      raise TrunkMismatch(
          f"the gallery store {self.path} holds U of the trunk {have['checkpoint']} "
          f"(fingerprint {have['fingerprint']}), not of {checkpoint} (fingerprint {print_}): "
          "its features would not match; build a store with this trunk")

  def write_shard(self, i: int, u: np.ndarray, labels: np.ndarray, paths: list[str]) -> None:
    try:
      q, scale = quantize(u, self.meta["dtype"])
    except OutOfRange as e:
      raise OutOfRange(f"gallery store {self.path}, shard {i}: {e} (a new dtype needs a new "
                       "--out, or delete this store)") from None
    for f in (self._file("shard", i), self._file("check", i, "json")):
      if os.path.exists(f):  # making a damaged shard again: incomplete until the end
        os.remove(f)
    with files.atomic_path(self._file("labels", i)) as tmp:
      np.save(tmp, np.asarray(labels, np.int64))
    files.atomic_write(self._file("paths", i, "json"), json.dumps(list(paths)))
    if scale is not None:
      with files.atomic_path(self._file("scale", i)) as tmp:
        np.save(tmp, scale)
    with files.atomic_path(self._file("shard", i)) as tmp:  # a full disk leaves no stray file
      np.save(tmp, q)
      check = {os.path.basename(f): files.describe(tmp if f == self._file("shard", i) else f)
               for f in self._shard_files(i)}
      files.write_json(self._file("check", i, "json"), check)
    # the rename above came last: it marks the shard complete
    self._verified.discard(i)


INPUTS = "inputs.json"


class InputsChanged(ValueError):
  """A resumed build whose source files are not those the store was started with."""


def _inputs_digest(inputs: list | None) -> str | None:
  if inputs is None:
    return None
  return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def _first_difference(old: list, new: list) -> str:
  for i, (a, b) in enumerate(zip(old, new)):
    if a != b:
      return f"face {i}: {a[0]!r} ({a[1]} bytes, mtime {a[2]}) then, {b[0]!r} ({b[1]} bytes, " \
             f"mtime {b[2]}) now"
  i = min(len(old), len(new))
  return f"face {i}: {'absent then' if i >= len(old) else repr(old[i][0])}, " \
         f"{'absent now' if i >= len(new) else repr(new[i][0])}"


def create_or_resume(path: str, *, num_faces: int, u_shape, dtype: str, shard_size: int,
                     trunk_checkpoint: str, trunk_fingerprint: str, source: str,
                     inputs: list | None = None) -> Store:
  """Opens the store at ``path``, creating its metadata; an existing store must describe the
  same build (else the error says what differs). ``inputs``: the source's files in order
  (``[path, bytes, mtime_ns]`` each); a resumed build over other files is refused naming the
  first difference, so no face is lost or stored twice."""
  meta = {"version": VERSION, "num_faces": int(num_faces), "u_shape": list(u_shape),
          "dtype": dtype, "shard_size": int(shard_size), "source": source,
          "trunk": {"checkpoint": trunk_checkpoint, "fingerprint": trunk_fingerprint}}
  digest = _inputs_digest(inputs)
  if digest is not None:
    meta["inputs"] = digest
  if dtype not in DTYPES:
    raise ValueError(f"store dtype {dtype!r} is not one of {DTYPES}")
  meta_path = os.path.join(path, "meta.json")
  if os.path.isfile(meta_path):
    store = Store(path)
    old = dict(store.meta)
    store.check_trunk(trunk_checkpoint, trunk_fingerprint)
    diff = [k for k in ("num_faces", "u_shape", "dtype", "shard_size", "source")
            if old.get(k) != meta[k]]
    if diff:
      raise ValueError(f"the store at {path} was started with other settings ("
                       + ", ".join(f"{k}: {old.get(k)!r} vs now {meta[k]!r}" for k in diff)
                       + "); use another --out, or delete it to start again")
    if old.get("inputs") != digest:
      listed = os.path.join(path, INPUTS)
      was = (files.read_json(listed, "the store's inputs list", "delete the store")
             if os.path.isfile(listed) else None)
      where = (_first_difference(was, inputs) if was is not None and inputs is not None
               else "the store records no file list" if was is None else "no file list now")
      raise InputsChanged(f"the store at {path} was started over other files ({where}): "
                          "resuming would lose faces or store some twice; use another --out, "
                          "or delete it to start again")
    return store
  os.makedirs(path, exist_ok=True)
  if inputs is not None:
    files.write_json(os.path.join(path, INPUTS), inputs)
  meta["checksum"] = _meta_checksum(meta)
  files.write_json(meta_path, meta)
  return Store(path)


def _meta_checksum(meta: dict) -> str:
  body = json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True)
  return hashlib.sha256(body.encode()).hexdigest()


def build(store: Store, load: Callable[[int, int], tuple[np.ndarray, np.ndarray, list[str]]],
          features: Callable[[np.ndarray], np.ndarray], write: bool = True) -> dict:
  """Fills every missing shard: ``load(start, stop)`` gives (uint8 images, labels, paths),
  ``features(images)`` their U (float32; every process calls it, data-parallel); only
  ``write`` (process 0) writes. Returns counts and throughput."""
  bad = store.damaged()
  for i, why in bad.items():
    logging.warning("[gallery] %s: making shard %d again", why, i)
  todo = sorted(set(store.missing()) | set(bad))
  distributed.barrier(f"{store.path}: shards to build")  # every process, before any is written
  done_before = store.num_shards - len(todo)
  t0, faces = time.time(), 0
  for n, i in enumerate(todo):
    start = store.offset(i)
    stop = min(start + store.shard_size, store.num_faces)
    images, labels, paths = load(start, stop)
    u = features(images)
    if write:
      store.write_shard(i, u, labels, paths)
    faces += stop - start
    rate = faces / max(time.time() - t0, 1e-9)
    left = (len(todo) - n - 1) * store.shard_size
    logging.info("[gallery] shard %d/%d (%d faces) | %.1f faces/s | ETA %.0f s",
                 done_before + n + 1, store.num_shards, stop - start, rate, left / rate)
  return {"shards_built": len(todo), "shards_resumed": done_before, "faces_built": faces,
          "faces_per_sec": faces / max(time.time() - t0, 1e-9) if faces else None}


def build_from_source(path: str, source, features: Callable[[np.ndarray], np.ndarray], *,
                      u_shape, dtype: str, shard_size: int, trunk_checkpoint: str,
                      trunk_fingerprint: str, description: str,
                      label_fn: Callable[[int], int] | None = None,
                      path_fn: Callable[[int], str] | None = None) -> tuple[Store, dict]:
  """A store of U for every face of ``source`` (``source[i]["image"]``), built or resumed
  under a lock on ``path`` (two builds into one store would write the same temporary names).
  A source with ``inventory()`` (its files as ``[path, bytes, mtime_ns]``) is resumed only
  over the same files."""
  with files.locked(path, "the gallery store", f".lock.{jax.process_index()}"):
    inventory = source.inventory() if hasattr(source, "inventory") else None
    store = create_or_resume(path, num_faces=len(source), u_shape=u_shape, dtype=dtype,
                             shard_size=shard_size, trunk_checkpoint=trunk_checkpoint,
                             trunk_fingerprint=trunk_fingerprint, source=description,
                             inputs=inventory)
    return store, _fill(store, source, features, description, label_fn, path_fn)


def _fill(store: Store, source, features, description: str, label_fn, path_fn) -> dict:
  """Builds the store's missing shards from ``source``; the build's counts."""
  unreadable = []

  def load(start: int, stop: int):
    recs = (source.batch(list(range(start, stop))) if hasattr(source, "batch")
            else [source[i] for i in range(start, stop)])
    labels = [UNREADABLE if r.get("unreadable") else label_fn(i) if label_fn
              else int(r.get("label", -1)) for i, r in zip(range(start, stop), recs)]
    paths = [path_fn(i) if path_fn else f"{description}#{i}" for i in range(start, stop)]
    unreadable.extend(f"{p}: {r['unreadable']}" for p, r in zip(paths, recs)
                      if r.get("unreadable"))
    return np.stack([r["image"] for r in recs]), np.asarray(labels), paths

  stats = build(store, load, features, write=jax.process_index() == 0)
  if unreadable:
    stats["unreadable"] = unreadable
    logging.warning("[gallery] %d images could not be read (kept as label %d, never found): %s",
                    len(unreadable), UNREADABLE, "; ".join(unreadable))
  distributed.barrier(f"gallery store {store.path}")  # the others read what process 0 wrote
  return stats
