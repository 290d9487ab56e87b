"""insightface's data formats without mxnet: RecordIO training sets and verification .bin files.

RecordIO (``train.rec`` + ``train.idx``, e.g. ``faces_webface_112x112``):
  * ``train.idx``: text lines ``<record id>\\t<byte offset in train.rec>``;
  * a record: uint32 magic 0xced7230a, uint32 (cflag << 29 | length), ``length``
    payload bytes, zero padding to a multiple of 4;
  * a payload: the image header ``<IfQQ`` (flag, label, id, id2), then ``flag``
    float32 labels when flag > 0, then the encoded image (JPEG/PNG);
  * record 0 is the header record: flag > 0, labels (first identity record,
    end): records [1, first) are images, records [first, end) one per identity
    with labels (start, end) = that identity's image records.
Verification ``.bin`` (lfw.bin, cfp_fp.bin, agedb_30.bin): a pickle of
``(list of encoded images, list of issame bools)``, pair i = images 2i, 2i+1.
"""

import io
import os
import pickle
import struct

import numpy as np
from PIL import Image

MAGIC = 0xCED7230A
_HEADER = struct.Struct("<IfQQ")


class RecordIOError(ValueError):
  pass


def read_index(path: str) -> dict[int, int]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"RecordIO index not found: {path}")
  out = {}
  with open(path, encoding="ascii") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise RecordIOError(f"{path}:{lineno}: expected '<id>\\t<offset>', got {line.strip()!r}")
      out[int(parts[0])] = int(parts[1])
  return out


def unpack(payload: bytes) -> tuple[np.ndarray, bytes]:
  """(labels float32 array, image bytes) of one record payload."""
  flag, label, _, _ = _HEADER.unpack_from(payload)
  rest = payload[_HEADER.size:]
  if flag > 0:
    labels = np.frombuffer(rest[:4 * flag], "<f4").copy()
    return labels, rest[4 * flag:]
  return np.array([label], np.float32), rest


class RecordIOFaces:
  """grain random-access source over an insightface RecordIO set; labels 0..K-1 by identity."""

  def __init__(self, rec_path: str, idx_path: str | None = None,
               image_size: tuple[int, int] | None = None):
    if not os.path.isfile(rec_path):
      raise FileNotFoundError(f"RecordIO file not found: {rec_path}")
    self.rec_path = rec_path
    self.idx_path = idx_path or os.path.splitext(rec_path)[0] + ".idx"
    self.index = read_index(self.idx_path)
    self.size = os.path.getsize(rec_path)
    self.image_size = tuple(image_size) if image_size else None
    self._file = None
    header, _ = unpack(self.read(0))
    if len(header) >= 2:  # identity ranges present
      first, end = int(header[0]), int(header[1])
      # checked against the index before anything is allocated: every image and identity
      # record the header claims must be indexed
      top = max(self.index) if self.index else 0
      if not (1 <= first <= end <= top + 1) or len(self.index) < end - 1:
        raise RecordIOError(f"{self.rec_path}: header claims images 1..{first - 1} and identity "
                            f"records {first}..{end - 1}, but {self.idx_path} indexes "
                            f"{len(self.index)} records (up to {top})")
      self.records = np.arange(1, first)
      labels = np.zeros(len(self.records), np.int32)
      for k, ident in enumerate(range(first, end)):
        lo, hi = (int(v) for v in unpack(self.read(ident))[0][:2])
        if not 1 <= lo <= hi <= first:
          raise RecordIOError(f"{self.rec_path}: identity record {ident} spans images "
                              f"{lo}..{hi - 1}, outside 1..{first - 1}")
        labels[lo - 1:hi - 1] = k
      self.num_classes = end - first
    else:  # no header: every indexed record is an image, label from its header
      self.records = np.array(sorted(i for i in self.index if i != 0))
      labels = np.array([int(unpack(self.read(int(i)))[0][0]) for i in self.records], np.int32)
      self.num_classes = int(labels.max()) + 1 if len(labels) else 0
    self.labels = labels
    self.description = f"recordio:{rec_path}"

  def __getstate__(self):
    d = dict(self.__dict__)
    d["_file"] = None  # reopened in each grain worker
    return d

  def read(self, record: int) -> bytes:
    """The payload of record ``record``; errors name the file and byte offset."""
    if record not in self.index:
      raise RecordIOError(f"{self.idx_path}: no record {record}")
    offset = self.index[record]
    if offset + 8 > self.size:
      raise RecordIOError(f"{self.rec_path}: record {record} at byte offset {offset} is past the "
                          f"end of the file ({self.size} bytes)")
    if self._file is None:
      self._file = open(self.rec_path, "rb")  # noqa: SIM115
    self._file.seek(offset)
    magic, lrec = struct.unpack("<II", self._file.read(8))
    if magic != MAGIC:
      raise RecordIOError(f"{self.rec_path}: bad magic 0x{magic:08x} at byte offset {offset} "
                          f"(record {record})")
    length = lrec & ((1 << 29) - 1)
    data = self._file.read(length)
    if len(data) != length:
      raise RecordIOError(f"{self.rec_path}: record {record} at byte offset {offset} is "
                          f"truncated ({len(data)} of {length} bytes)")
    return data

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> dict:
    _, img = unpack(self.read(int(self.records[int(i)])))
    image = decode(img, self.image_size)
    return {"image": image, "label": self.labels[int(i)]}


def decode(data: bytes, image_size: tuple[int, int] | None = None) -> np.ndarray:
  """Encoded image -> uint8 RGB, resized to ``image_size`` = (h, w) if given (insightface sets are
  already aligned; a 112x112 crop goes to 112x96 by dropping 8 columns each side)."""
  with Image.open(io.BytesIO(data)) as im:
    a = np.asarray(im.convert("RGB"))
  if image_size and a.shape[:2] != tuple(image_size):
    h, w = image_size
    if a.shape[0] == h and a.shape[1] > w:  # centre-crop the width (112x112 -> 112x96)
      x0 = (a.shape[1] - w) // 2
      a = a[:, x0:x0 + w]
    else:
      a = np.asarray(Image.fromarray(a).resize((w, h), Image.BILINEAR))
  return a


# What a verification .bin may name: bytes written by Python 3 under protocol 2 and numpy
# bool arrays. Any other global (os.system, builtins.eval, ...) is refused: reading the
# file can never run code from it.
_BIN_GLOBALS = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"),
                ("builtins", "bytearray"), ("__builtin__", "bytearray")}


class UnsafeFileError(ValueError):
  pass


class _SafeUnpickler(pickle.Unpickler):
  def __init__(self, f, path: str):
    super().__init__(f, encoding="bytes")
    self.path = path

  def find_class(self, module: str, name: str):
    if (module, name) in _BIN_GLOBALS:
      return super().find_class(module, name)
    raise UnsafeFileError(f"{self.path}: refusing pickle global {module}.{name}: a verification "
                          ".bin holds only encoded images (bytes) and issame bools")


def read_verification_bin(path: str, image_size: tuple[int, int] | None = None):
  """(images (2P, H, W, 3) uint8, pairs (P, 2), issame (P,)) of an insightface .bin file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"verification file not found: {path}")
  try:
    with open(path, "rb") as f:
      bins, issame = _SafeUnpickler(f, path).load()
  except UnsafeFileError:
    raise
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"{path}: not an insightface verification .bin ({type(e).__name__}: "
                     f"{e})") from None
  if not all(isinstance(b, (bytes, bytearray)) for b in bins):
    raise ValueError(f"{path}: images must be encoded bytes, found "
                     f"{sorted({type(b).__name__ for b in bins})}")
  if len(bins) != 2 * len(issame):
    raise ValueError(f"{path}: {len(bins)} images for {len(issame)} pairs (need 2 per pair)")
  images = []
  for i, b in enumerate(bins):
    try:
      images.append(decode(bytes(b), image_size))
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"{path}: image {i} (pair {i // 2}) cannot be decoded: "
                       f"{type(e).__name__}: {e}") from None
  images = np.stack(images)
  pairs = np.arange(len(bins)).reshape(-1, 2)
  return images, pairs, np.asarray(issame, bool)
