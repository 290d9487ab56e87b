"""MobileFaceNet (112x96, U = 7x6x512, affine F) in Flax, and a reader for PyTorch's legacy
checkpoint files that needs neither PyTorch nor code execution.

Network (Xiaoccer/MobileFaceNet_Pytorch, the layout of ``../shared/models/mobilefacenet_casia``):
conv 3x3/2 -> depthwise 3x3 -> 15 inverted-residual bottlenecks -> conv 1x1 to 512 = U
(``features``); F (``head``) = depthwise 7x6 "global" conv, BN, conv 1x1 to 128, BN: affine,
so zeroing elements of U removes their contribution linearly, as with the paper's FC head.
Every conv pads like PyTorch's ``padding=1`` (one pixel on every side, also at stride 2,
which is not XLA's "SAME"), has no bias, and is followed by BN (eps 1e-5); PReLU has one
slope per channel. ``width`` scales every channel count, so the same module trains from
scratch as a light trunk (``model.kind="mobilefacenet"``).

Reader (``read_torch_legacy``): the pre-1.6 serialization is five pickles in a row (magic
number, protocol version, system info, the object, the list of storage keys) followed by
each storage's raw bytes (8-byte little-endian element count, then the data). The object
pickle names ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and
``torch.<Type>Storage``; a restricted unpickler maps exactly these to numpy and refuses
every other global, so a crafted file cannot run code.
"""

import io
import os
import pickle
from collections import OrderedDict
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from pdsn_jax.models.layers import PReLU, depthwise_sum

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# (expansion t, output channels c, repeats n, first stride s), as in the original
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
# the first bottleneck at U's resolution: the one after the last stride-2 block
_STRIDES = [s if i == 0 else 1 for _, _, n, s in BOTTLENECKS for i in range(n)]
TOP_FROM = max(i for i, s in enumerate(_STRIDES) if s == 2) + 1


class TorchFormatError(ValueError):
  pass


class _Storage:
  def __init__(self, key: str, dtype, numel: int):
    self.key, self.dtype, self.numel, self.data = key, dtype, numel, None


class _Tensor:
  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


class _StorageType:
  def __init__(self, name: str):
    self.name = name


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _Tensor(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):
  """Only the globals a state-dict checkpoint needs; anything else is refused."""

  def __init__(self, f, path: str, storages: dict):
    super().__init__(f)
    self.path, self.storages = path, storages

  def find_class(self, module: str, name: str):
    if (module, name) == ("collections", "OrderedDict"):
      return OrderedDict
    if (module, name) in (("torch._utils", "_rebuild_tensor_v2"),
                          ("torch._utils", "_rebuild_tensor")):
      return _rebuild_tensor
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    if module == "torch" and name.endswith("Storage"):
      raise TorchFormatError(f"{self.path}: unknown storage type torch.{name} (known: "
                             f"{sorted(STORAGE_DTYPES)})")
    raise TorchFormatError(f"{self.path}: refusing pickle global {module}.{name} (only "
                           "tensors, storages and OrderedDict are allowed)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise TorchFormatError(f"{self.path}: unexpected persistent id {pid!r}")
    _, stype, key, _, numel = pid[:5]
    if key not in self.storages:
      self.storages[key] = _Storage(key, STORAGE_DTYPES[stype.name], int(numel))
    return self.storages[key]


def _load(f, path: str, what: str, storages: dict | None = None):
  at = f.tell()
  try:
    return _Unpickler(f, path, storages if storages is not None else {}).load()
  except TorchFormatError:
    raise
  except Exception as e:  # noqa: BLE001  (EOFError, UnpicklingError, ...)
    raise TorchFormatError(f"{path}: cannot read the {what} pickle at byte offset {at}: "
                           f"{type(e).__name__}: {e}") from None


def read_torch_legacy(path: str) -> Any:
  """The object saved by ``torch.save(obj, path, _use_new_zipfile_serialization=False)``,
  every tensor as a numpy array."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"PyTorch checkpoint not found: {path}")
  with open(path, "rb") as fh:
    data = fh.read()
  if data[:2] == b"PK":
    raise TorchFormatError(f"{path}: a zip-format PyTorch file (torch >= 1.6); re-save it with "
                           "_use_new_zipfile_serialization=False")
  f = io.BytesIO(data)
  magic = _load(f, path, "magic number")
  if magic != MAGIC:
    raise TorchFormatError(f"{path}: bad magic number {magic!r} at byte offset 0 (expected "
                           f"{MAGIC:#x}, a legacy PyTorch file)")
  version = _load(f, path, "protocol version")
  if version != PROTOCOL:
    raise TorchFormatError(f"{path}: protocol version {version!r}, expected {PROTOCOL}")
  info = _load(f, path, "system info")
  if not isinstance(info, dict) or not info.get("little_endian", False):
    raise TorchFormatError(f"{path}: only little-endian files are supported (sys info {info})")
  storages: dict = {}
  obj = _load(f, path, "object", storages)
  keys = _load(f, path, "storage key list")
  for key in keys:
    st = storages.get(key)
    at = f.tell()
    head = f.read(8)
    if len(head) < 8:
      raise TorchFormatError(f"{path}: truncated: storage {key} header at byte offset {at}")
    numel = int.from_bytes(head, "little")
    if st is None or numel != st.numel:
      raise TorchFormatError(f"{path}: storage {key} at byte offset {at} has {numel} elements, "
                             f"the object expects {None if st is None else st.numel}")
    nbytes = numel * np.dtype(st.dtype).itemsize
    raw = f.read(nbytes)
    if len(raw) < nbytes:
      raise TorchFormatError(f"{path}: truncated: storage {key} needs {nbytes} bytes at byte "
                             f"offset {at + 8}, {len(raw)} left")
    st.data = np.frombuffer(raw, st.dtype)
  missing = [k for k, s in storages.items() if s.data is None]
  if missing:
    raise TorchFormatError(f"{path}: storages {missing[:5]} are referenced but not stored")
  return _materialise(obj, path)


def _check_extent(t: _Tensor, path: str) -> None:
  """Every element a tensor's (offset, size, stride) reaches must lie in its storage: a crafted
  view would otherwise read (or crash on) memory outside the file's bytes."""
  ints = all(isinstance(v, int) and not isinstance(v, bool)
             for v in (t.offset, *t.size, *t.stride))
  if not ints or t.offset < 0 or any(n < 0 for n in t.size) or any(s < 0 for s in t.stride):
    raise TorchFormatError(f"{path}: a tensor of storage {t.storage.key} has offset {t.offset!r}, "
                           f"size {t.size!r}, stride {t.stride!r}: expected non-negative integers")
  if 0 in t.size:
    return
  last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
  if last >= t.storage.numel:
    raise TorchFormatError(
        f"{path}: a tensor of size {t.size} (offset {t.offset}, stride {t.stride}) reaches "
        f"element {last} of storage {t.storage.key}, which holds {t.storage.numel}: the file is "
        "damaged or crafted")


def _materialise(obj, path: str = ""):
  if isinstance(obj, _Tensor):
    _check_extent(obj, path)
    st, item = obj.storage, np.dtype(obj.storage.dtype).itemsize
    if 0 in obj.size:
      return np.zeros(obj.size, st.dtype)
    return np.lib.stride_tricks.as_strided(st.data[obj.offset:], obj.size,
                                           [s * item for s in obj.stride]).copy()
  if isinstance(obj, dict):
    return type(obj)((k, _materialise(v, path)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v, path) for v in obj)
  return obj


# ---------------------------------------------------------------- network


def _scaled(c: int, width: float) -> int:
  return max(1, int(round(c * width)))


def _bn(axis_name, dtype, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(momentum=0.9, epsilon=1e-5, axis_name=axis_name, dtype=dtype, name=name)


def _conv(features, kernel, stride=1, pad=None, dtype=jnp.float32, name=None):
  kh, kw = kernel
  pad = ((kh // 2, kh // 2), (kw // 2, kw // 2)) if pad is None else pad  # PyTorch's symmetric
  return nn.Conv(features, kernel, (stride, stride), padding=pad, use_bias=False, dtype=dtype,
                 name=name)


class DepthwiseConv(nn.Module):
  """Depthwise conv (no bias) as the sum of its taps (``layers.depthwise_sum``), with the
  kernel layout of ``nn.Conv(feature_group_count=C)``: (kh, kw, 1, C)."""

  kernel_size: tuple
  stride: int = 1
  padding: Any = None  # None: PyTorch's symmetric k//2; "VALID": none
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kh, kw = self.kernel_size
    c, s = x.shape[-1], self.stride
    k = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, 1, c), jnp.float32)
    k = k.astype(self.dtype)
    if self.padding != "VALID":
      x = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    return depthwise_sum(x, k[:, :, 0], s)


class ConvBlock(nn.Module):
  """conv (or depthwise conv), BN, optional PReLU."""

  features: int
  kernel: tuple = (3, 3)
  stride: int = 1
  depthwise: bool = False
  activate: bool = True
  valid: bool = False
  bn_axis_name: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    pad = "VALID" if self.valid else None
    if self.depthwise:
      x = DepthwiseConv(self.kernel, self.stride, pad, self.dtype, name="conv")(x)
    else:
      x = _conv(self.features, self.kernel, self.stride, pad, self.dtype, "conv")(x)
    x = _bn(self.bn_axis_name, self.dtype, "bn")(x, use_running_average=not train)
    return PReLU(name="prelu")(x) if self.activate else x


class Bottleneck(nn.Module):
  """1x1 expand, depthwise 3x3 (stride), 1x1 project; residual when shapes agree."""

  features: int
  stride: int
  expansion: int
  bn_axis_name: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    hidden = x.shape[-1] * self.expansion
    kw = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    y = ConvBlock(hidden, (1, 1), name="expand", **kw)(x, train)
    y = ConvBlock(hidden, (3, 3), self.stride, depthwise=True, name="depthwise", **kw)(y, train)
    y = ConvBlock(self.features, (1, 1), activate=False, name="project", **kw)(y, train)
    return x + y if self.stride == 1 and x.shape[-1] == self.features else y


class MobileFaceNet(nn.Module):
  """MobileFaceNet with the trunk interface: ``features`` = U, ``head`` = F."""

  width: float = 1.0
  embedding_dim: int = 128
  u_channels: int = 512
  bn_axis_name: Any = None
  dtype: Any = jnp.float32

  def setup(self):
    kw = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype)
    c64 = _scaled(64, self.width)
    self.conv1 = ConvBlock(c64, (3, 3), 2, **kw)
    self.dw_conv1 = ConvBlock(c64, (3, 3), 1, depthwise=True, **kw)
    blocks = []
    for t, c, n, s in BOTTLENECKS:
      for i in range(n):
        blocks.append(Bottleneck(_scaled(c, self.width), s if i == 0 else 1, t,
                                 name=f"block{len(blocks)}", **kw))
    self.blocks = blocks
    u = _scaled(self.u_channels, self.width)
    self.conv2 = ConvBlock(u, (1, 1), **kw)
    self.linear7 = ConvBlock(u, (7, 6), depthwise=True, activate=False, valid=True, **kw)
    self.linear1 = ConvBlock(self.embedding_dim, (1, 1), activate=False, **kw)

  def head_params(self) -> tuple[str, ...]:
    """Top-level parameter names of F (``finetune.trainable="head"`` trains only these)."""
    return ("linear7", "linear1")

  def top_params(self) -> tuple[str, ...]:
    """Top-level parameter names of the layers at U's resolution, up to U (the bottlenecks
    after the last stride-2 one, and conv2): ``finetune.trainable="top"`` trains these and F."""
    return tuple(f"block{i}" for i in range(TOP_FROM, len(_STRIDES))) + ("conv2",)

  def bottom(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """The layers below ``top``: (B, 7, 6, 128) from normalised 112x96 faces."""
    x = self.dw_conv1(self.conv1(images.astype(self.dtype), train), train)
    for block in self.blocks[:TOP_FROM]:
      x = block(x, train)
    return x

  def top(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for block in self.blocks[TOP_FROM:]:
      x = block(x, train)
    return self.conv2(x, train)

  def features(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """U (B, 7, 6, 512) from 112x96 faces normalised as (x - 127.5) / 128."""
    return self.top(self.bottom(images, train), train)

  def head(self, u: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """F: global depthwise conv over the whole map, BN, 1x1 conv, BN (affine in inference)."""
    x = self.linear1(self.linear7(u.astype(self.dtype), train), train)
    return x.reshape(x.shape[0], -1).astype(jnp.float32)

  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    return self.head(self.features(images, train), train)


# ---------------------------------------------------------------- weights


def _block_modules(prefix: str) -> dict:
  # the original's nn.Sequential indices inside a Bottleneck
  return {f"{prefix}.0": ("expand", "conv"), f"{prefix}.1": ("expand", "bn"),
          f"{prefix}.2": ("expand", "prelu"), f"{prefix}.3": ("depthwise", "conv"),
          f"{prefix}.4": ("depthwise", "bn"), f"{prefix}.5": ("depthwise", "prelu"),
          f"{prefix}.6": ("project", "conv"), f"{prefix}.7": ("project", "bn")}


def to_variables(state_dict: dict, path: str = "checkpoint") -> dict:
  """Flax variables of ``MobileFaceNet()`` from the original state dict (every key used once)."""
  modules = {}
  for name in ("conv1", "dw_conv1", "conv2", "linear7", "linear1"):
    modules.update({f"{name}.conv": (name, "conv"), f"{name}.bn": (name, "bn"),
                    f"{name}.prelu": (name, "prelu")})
  num_blocks = sum(n for _, _, n, _ in BOTTLENECKS)
  for i in range(num_blocks):
    modules.update({k: (f"block{i}", *v) for k, v in _block_modules(f"blocks.{i}.conv").items()})
  params: dict = {}
  stats: dict = {}
  used = set()

  def put(tree, where, leaf, value):
    node = tree
    for part in where:
      node = node.setdefault(part, {})
    node[leaf] = np.asarray(value, np.float32)

  for key, value in state_dict.items():
    module, _, leaf = key.rpartition(".")
    if module not in modules:
      raise TorchFormatError(f"{path}: unexpected state-dict key {key!r}")
    where = modules[module]
    kind = where[-1]
    if kind == "conv" and leaf == "weight":  # OIHW -> HWIO (depthwise: I = 1, O = C)
      put(params, where, "kernel", np.transpose(value, (2, 3, 1, 0)))
    elif kind == "bn" and leaf in ("weight", "bias"):
      put(params, where, {"weight": "scale", "bias": "bias"}[leaf], value)
    elif kind == "bn" and leaf in ("running_mean", "running_var"):
      put(stats, where, {"running_mean": "mean", "running_var": "var"}[leaf], value)
    elif kind == "bn" and leaf == "num_batches_tracked":
      pass
    elif kind == "prelu" and leaf == "weight":
      put(params, where, "alpha", value.reshape(-1))
    else:
      raise TorchFormatError(f"{path}: unexpected state-dict key {key!r}")
    used.add(module)
  missing = sorted(set(modules) - used - {f"{n}.prelu" for n in ("linear7", "linear1")})
  if missing:
    raise TorchFormatError(f"{path}: state dict lacks {missing[:6]}")
  return {"params": params, "batch_stats": stats}


def load(path: str) -> dict:
  """Flax variables of the pretrained ``MobileFaceNet()`` from a legacy PyTorch checkpoint
  (a state dict, or a dict holding one under ``net_state_dict`` / ``state_dict``)."""
  obj = read_torch_legacy(path)
  if isinstance(obj, dict):
    for k in ("net_state_dict", "state_dict"):
      if k in obj and isinstance(obj[k], dict):
        obj = obj[k]
        break
  if not isinstance(obj, dict) or not obj:
    raise TorchFormatError(f"{path}: no state dict in the checkpoint")
  return to_variables(obj, path)
