"""The feature bank: the frozen trunk's U of every training face, clean and occluded on each
generator block, stored once so that stages I and II run at the generators' speed.

Per face the bank holds ``1 + 2 * 9 * V`` entries of U (h, w, c), in this order:

  0                         the clean face
  1 + v*18 + k              variant v, occluded on block ``CENTRAL_BLOCKS[k]`` alone (stage II)
  1 + v*18 + 9 + k          variant v, occluded on that block and one 4-neighbour (stage I)

Its folder (``stages/bank.py`` writes it, one folder per run):

  shard-00000.npy   (n, entries, h, w, c) in ``bank.dtype`` (float16, range-checked)
  shard-00000.json  the shard's faces (their index in the training source), labels, every
                    entry's placements (occluder file or drawing, block, box, angle), the
                    quantisation error, and the .npy's size and sha256
  bank.json         written last: the layout, the shards' records; marks the bank complete

A shard is written whole (``files.atomic_path``) and its record after it, so a crash loses at
most the shard being written, and a resumed build starts at the first shard without a record.
``open_bank`` checks every shard's size and sha256 before a stage reads it.
"""

import dataclasses
import glob
import os

import numpy as np

from pdsn_jax.run import files
from pdsn_jax.data import occlusion

MANIFEST = "bank.json"
# where stages I and II take their pairs from (``pdsn.source``, ``dictionary.source``)
SOURCES = ("online", "bank")
DTYPES = {"float16": np.float16, "float32": np.float32}
NUM_BLOCKS = len(occlusion.CENTRAL_BLOCKS)


def entries_per_face(variants: int) -> int:
  return 1 + 2 * NUM_BLOCKS * variants


def alone_index(variant: int, k: int) -> int:
  return 1 + variant * 2 * NUM_BLOCKS + k


def neighbour_index(variant: int, k: int) -> int:
  return 1 + variant * 2 * NUM_BLOCKS + NUM_BLOCKS + k


def shard_name(index: int, ext: str) -> str:
  return f"shard-{index:05d}.{ext}"


def quantize(u: np.ndarray, dtype: str, where: str) -> tuple[np.ndarray, dict]:
  """``u`` (float32) in ``dtype``, refusing a value it cannot hold (non-finite, or beyond
  float16's 65504) with the shard's name; with the largest absolute and relative rounding
  errors."""
  if dtype not in DTYPES:
    raise ValueError(f"bank.dtype={dtype!r} is not one of {tuple(DTYPES)}")
  u = np.asarray(u, np.float32)
  if not np.isfinite(u).all():
    raise FloatingPointError(f"{where}: the trunk gave non-finite features; nothing of this "
                             "shard is written")
  peak = float(np.abs(u).max()) if u.size else 0.0
  limit = float(np.finfo(DTYPES[dtype]).max)
  if peak > limit:
    raise OverflowError(f"{where}: a feature of magnitude {peak:.4g} does not fit {dtype} (max "
                        f"{limit:.4g}); set bank.dtype='float32'")
  q = u.astype(DTYPES[dtype])
  err = np.abs(q.astype(np.float32) - u)
  return q, {"max_abs": round(peak, 4), "max_abs_error": float(err.max()) if u.size else 0.0,
             "mean_abs_error": float(err.mean()) if u.size else 0.0}


def write_shard(folder: str, index: int, features: np.ndarray, record: dict) -> dict:
  """Writes shard ``index`` (``features`` already quantised) and then its record (with the
  .npy's size and sha256); returns the record."""
  path = os.path.join(folder, shard_name(index, "npy"))
  with files.atomic_path(path) as tmp:
    np.save(tmp, features)
  record = {**record, "index": index, "file": os.path.basename(path), "shape": list(features.shape),
            "dtype": str(features.dtype), **files.describe(path)}
  files.write_json(os.path.join(folder, shard_name(index, "json")), record)
  return record


def written_shards(folder: str) -> dict[int, dict]:
  """{index: record} of the shards whose record and .npy of the recorded size exist (a shard
  without them is built again)."""
  out = {}
  for path in sorted(glob.glob(os.path.join(folder, "shard-*.json"))):
    try:
      rec = files.read_json(path)
      files.verify_size(os.path.join(folder, rec["file"]), rec)
    except (files.DamagedFile, OSError, ValueError, KeyError):
      continue
    out[int(rec["index"])] = rec
  return out


def write_manifest(folder: str, layout: dict, shards: list[dict]) -> str:
  faces = sum(s["shape"][0] for s in shards)
  return files.write_json(os.path.join(folder, MANIFEST), {
      **layout, "faces": faces, "bytes": sum(s["bytes"] for s in shards),
      "shards": [{k: s[k] for k in ("index", "file", "shape", "dtype", "bytes", "sha256")}
                 for s in shards]})


def is_complete(folder: str) -> bool:
  return os.path.isfile(os.path.join(folder, MANIFEST))


@dataclasses.dataclass
class Bank:
  """A complete bank, memory-mapped: ``arrays[s]`` is shard s's (n, entries, h, w, c) array,
  ``labels`` and ``faces`` (the training source's index of each row) over all shards. As a grain
  source (``len``, ``[i]``) row i is ``{u_clean, u_alone (V, 9, ...), u_neighbour (V, 9, ...),
  label}``."""

  folder: str
  manifest: dict
  arrays: list
  labels: np.ndarray
  faces: np.ndarray
  num_classes: int

  @property
  def variants(self) -> int:
    return int(self.manifest["variants"])

  @property
  def description(self) -> str:
    return (f"feature bank {self.folder} ({len(self)} faces x {self.manifest['entries_per_face']} "
            f"entries, {self.manifest['dtype']})")

  def __len__(self) -> int:
    return len(self.labels)

  def _row(self, i: int) -> np.ndarray:
    s, r = np.searchsorted(self._ends, i, side="right"), i
    if s > 0:
      r -= self._ends[s - 1]
    return np.asarray(self.arrays[s][r])

  def __post_init__(self):
    self._ends = np.cumsum([a.shape[0] for a in self.arrays])

  def __getitem__(self, i: int) -> dict:
    row, v = self._row(int(i)), self.variants
    occluded = row[1:].reshape(v, 2, NUM_BLOCKS, *row.shape[1:])
    return {"u_clean": row[0], "u_alone": occluded[:, 0], "u_neighbour": occluded[:, 1],
            "label": np.int32(self.labels[i])}

  def rows(self, start: int, stop: int) -> np.ndarray:
    """Entries of faces [start, stop) as one array (n, entries, h, w, c)."""
    return np.stack([self._row(i) for i in range(start, stop)]) if stop > start else np.zeros(
        (0, *self.arrays[0].shape[1:]), self.arrays[0].dtype)


def open_bank(folder: str, verify: bool = True) -> Bank:
  """The complete bank in ``folder``; ``FileNotFoundError`` when it is not complete,
  ``files.DamagedFile`` naming a shard whose size or sha256 is not its record's."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no complete feature bank in {folder} ({MANIFEST} missing): run "
                            "the 'bank' stage (config.stages)")
  manifest = files.read_json(path, "the feature bank's manifest")
  fix = "run the 'bank' stage again (--config.overwrite=bank rebuilds it)"
  arrays, labels, faces = [], [], []
  for s in manifest["shards"]:
    npy = os.path.join(folder, s["file"])
    if verify:
      files.verify(npy, s, fix)
    else:
      files.verify_size(npy, s, fix)
    arrays.append(np.load(npy, mmap_mode="r"))
    rec = files.read_json(os.path.join(folder, shard_name(s["index"], "json")))
    labels.append(np.asarray(rec["labels"], np.int32))
    faces.append(np.asarray(rec["faces"], np.int64))
  return Bank(folder, manifest, arrays, np.concatenate(labels), np.concatenate(faces),
              int(manifest["num_classes"]))


class PickPairs:
  """grain transform over bank rows: stage I's pair of a face, ``u_occ`` (9, h, w, c) taking for
  each block one of its variants, with its 4-neighbour occluded too with probability
  ``neighbour_prob`` (the online stream's ``occlusion.neighbour_prob``); picklable."""

  def __init__(self, neighbour_prob: float):
    self.neighbour_prob = float(neighbour_prob)

  def __call__(self, rec: dict, rng: np.random.Generator) -> dict:
    v = rec["u_alone"].shape[0]
    variant = rng.integers(v, size=NUM_BLOCKS)
    neighbour = rng.uniform(size=NUM_BLOCKS) < self.neighbour_prob
    k = np.arange(NUM_BLOCKS)
    u_occ = np.where(neighbour[:, None, None, None], rec["u_neighbour"][variant, k],
                     rec["u_alone"][variant, k])
    return {"u_clean": rec["u_clean"], "u_occ": u_occ, "label": rec["label"]}
