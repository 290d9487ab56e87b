"""dlib's ResNet face descriptor network (``dlib_face_recognition_resnet_model_v1.dat``) in Flax.

Reader: pure Python/numpy over dlib's serialization (no dlib at run time).
  * integers: a control byte (low nibble = number of little-endian magnitude
    bytes that follow, bit 7 = negative), then the bytes;
  * floats: an integer mantissa and an integer exponent, value = m * 2**e;
  * strings: an integer length, then the bytes; bools: one char, '1' or '0';
  * tensors: version, (n, k, nr, nc), then n*k*nr*nc raw little-endian float32;
    alias tensors: version, (n, k, nr, nc).
  A network is its loss record, one version integer per layer wrapper from the
  outermost in (add_layer 2, the input add_layer 3, tag/skip layers 1), the
  input layer, then every computational layer's record from the input out,
  each followed by the wrapper's state (3 bools, 3 tensors; the input wrapper
  also a sample-expansion factor).

The graph is not in the file (tag and skip records carry no wiring); it is
dlib's published ``anet_type`` (dnn_face_recognition_ex.cpp): stem conv 7x7/2
(no padding) + affine + ReLU + max-pool 3x3/2, then 14 residual blocks
[conv3x3/s, affine, ReLU, conv3x3, affine] + shortcut (identity, or a 2x2/2
average pool in the 4 downsampling blocks; the sum zero-padded to the larger
shape, top-left aligned) + ReLU, at 32 (35x35), 64 (17x17), 128 (8x8) and
256 (4x4, then 2x2) channels; global average pool; bias-free dense 256 -> 128.
Stride-2 layers use no padding, stride-1 3x3 convs pad 1. Batch norm is
already folded into the affine layers' per-channel scale and shift.

Trunk interface (as ``IResNet``): ``features(x)`` is U, the output of block
``u_block`` (12: 4x4x256, the default; 9: 8x8x128), ``head(U)`` is F, every
layer after it up to the 128-d descriptor (not normalised). Inputs are the
project's normalised images ((x - 127.5) / 128), mapped back to dlib's
(x - mean) / 256 inside.
"""

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

NUM_BLOCKS = 14
U_BLOCKS = {"4x4": 12, "8x8": 9}


class DlibFormatError(ValueError):
  pass


@dataclasses.dataclass
class DlibNetwork:
  """The layers of a dlib network file, input first."""

  mean_rgb: tuple[float, float, float]
  input_size: tuple[int, int]
  layers: list[dict]  # {"type": "con"|"affine"|"relu"|"max_pool"|"avg_pool"|"add_prev"|"fc", ...}
  loss: dict


class _Reader:
  def __init__(self, data: bytes, path: str):
    self.d, self.pos, self.path = data, 0, path

  def fail(self, what: str, at: int | None = None):
    raise DlibFormatError(f"{self.path}: {what} at byte offset {self.pos if at is None else at}")

  def int(self) -> int:
    if self.pos >= len(self.d):
      self.fail("unexpected end of file")
    c = self.d[self.pos]
    n = c & 0x0F
    if n > 8 or self.pos + 1 + n > len(self.d):
      self.fail(f"bad integer control byte 0x{c:02x}")
    v = int.from_bytes(self.d[self.pos + 1:self.pos + 1 + n], "little")
    self.pos += 1 + n
    return -v if c & 0x80 else v

  def float(self) -> float:
    m, e = self.int(), self.int()
    return float(m) * 2.0 ** e

  def str(self) -> str:
    at = self.pos
    n = self.int()
    if not 0 <= n <= 256 or self.pos + n > len(self.d):
      self.fail(f"bad string length {n}", at)
    s = self.d[self.pos:self.pos + n]
    self.pos += n
    try:
      return s.decode("ascii")
    except UnicodeDecodeError:
      self.fail("non-ASCII record name", at)

  def bool(self) -> bool:
    c = self.d[self.pos:self.pos + 1]
    if c not in (b"0", b"1"):
      self.fail(f"bad bool {c!r}")
    self.pos += 1
    return c == b"1"

  def tensor(self) -> np.ndarray:
    at = self.pos
    version = self.int()
    if version != 2:
      self.fail(f"unsupported tensor version {version}", at)
    shape = tuple(self.int() for _ in range(4))
    n = int(np.prod(shape))
    if min(shape) < 0 or self.pos + 4 * n > len(self.d):
      self.fail(f"tensor of shape {shape} runs past the end of the file", at)
    a = np.frombuffer(self.d, "<f4", n, self.pos).reshape(shape)
    self.pos += 4 * n
    return a

  def alias(self) -> tuple[int, ...]:
    self.int()  # version
    return tuple(self.int() for _ in range(4))


def read_network(path: str) -> DlibNetwork:
  """Parses a dlib ``loss_metric`` ResNet file (e.g. dlib_face_recognition_resnet_model_v1.dat)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"dlib network file not found: {path}")
  with open(path, "rb") as f:
    r = _Reader(f.read(), path)
  r.int()  # add_loss_layer version
  at = r.pos
  name = r.str()
  if name != "loss_metric_2":
    r.fail(f"unknown loss record {name!r} (expected 'loss_metric_2')", at)
  loss = {"margin": r.float(), "distance_threshold": r.float()}
  wrappers = []
  while True:
    at = r.pos
    v = r.int()
    if v not in (1, 2, 3):
      r.pos = at
      break
    wrappers.append(v)
  at = r.pos
  name = r.str()
  if name != "input_rgb_image_sized":
    r.fail(f"unknown input record {name!r}", at)
  mean = (r.float(), r.float(), r.float())
  size = (r.int(), r.int())
  layers = []
  while r.pos < len(r.d):
    at = r.pos
    name = r.str()
    rec: dict[str, Any] = {"offset": at}
    if name == "con_4":
      params = r.tensor().reshape(-1)
      nf, nr, nc, sy, sx, py, px = (r.int() for _ in range(7))
      fshape, bshape = r.alias(), r.alias()
      [r.float() for _ in range(4)]  # learning-rate / weight-decay multipliers
      k = int(np.prod(fshape))
      rec.update(type="con", stride=(sy, sx), padding=(py, px),
                 kernel=params[:k].reshape(fshape), bias=params[k:k + nf].copy())
      if (nf, nr, nc) != fshape[:1] + fshape[2:]:
        r.fail(f"con_ filter shape {fshape} disagrees with ({nf}, {nr}, {nc})", at)
    elif name == "affine_":
      params = r.tensor().reshape(-1)
      gshape, _ = r.alias(), r.alias()
      r.int()  # mode
      k = int(np.prod(gshape))
      rec.update(type="affine", gamma=params[:k].copy(), beta=params[k:2 * k].copy())
    elif name == "relu_":
      rec.update(type="relu")
    elif name in ("max_pool_2", "avg_pool_2"):
      nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
      rec.update(type=name[:-2], window=(nr, nc), stride=(sy, sx), padding=(py, px))
    elif name == "add_prev_":
      rec.update(type="add_prev")
    elif name == "fc_2":
      num_out, num_in = r.int(), r.int()
      params = r.tensor().reshape(-1)
      r.alias()
      r.alias()
      mode = r.int()
      [r.float() for _ in range(4)]
      rec.update(type="fc", weights=params[:num_in * num_out].reshape(num_in, num_out).copy(),
                 has_bias=mode == 0)
    else:
      r.fail(f"unknown layer record {name!r}", at)
    for _ in range(3):
      r.bool()
    for _ in range(3):
      r.tensor()
    if not layers:
      r.int()  # the input wrapper's sample expansion factor
    layers.append(rec)
  if len(layers) != sum(v != 1 for v in wrappers):
    raise DlibFormatError(f"{path}: {len(layers)} layer records for "
                          f"{sum(v != 1 for v in wrappers)} layer wrappers")
  return DlibNetwork(mean, size, layers, loss)


def to_variables(net: DlibNetwork) -> dict:
  """Flax variables of ``DlibResNet`` from the parsed layers (checks the expected graph)."""
  seq = net.layers
  kinds = [l["type"] for l in seq]
  if kinds[:4] != ["con", "affine", "relu", "max_pool"]:
    raise DlibFormatError(f"unexpected stem {kinds[:4]}")

  def conv(l):  # (out, in, kh, kw) -> HWIO
    return {"kernel": np.transpose(l["kernel"], (2, 3, 1, 0)).copy(), "bias": l["bias"]}

  def affine(l):
    return {"scale": l["gamma"], "shift": l["beta"]}

  params = {"stem_conv": conv(seq[0]), "stem_affine": affine(seq[1])}
  i, b = 4, 0
  while i < len(seq) and seq[i]["type"] == "con":
    block = seq[i:i + 8]
    down = block[5]["type"] == "avg_pool"
    want = (["con", "affine", "relu", "con", "affine"] + (["avg_pool"] if down else []) +
            ["add_prev", "relu"])
    if [l["type"] for l in seq[i:i + len(want)]] != want:
      raise DlibFormatError(f"block {b} at byte {seq[i]['offset']}: layers "
                            f"{[l['type'] for l in seq[i:i + len(want)]]}, expected {want}")
    params[f"block{b}"] = {"conv1": conv(block[0]), "affine1": affine(block[1]),
                           "conv2": conv(block[3]), "affine2": affine(block[4])}
    i += len(want)
    b += 1
  if b != NUM_BLOCKS or [l["type"] for l in seq[i:]] != ["avg_pool", "fc"]:
    raise DlibFormatError(f"expected {NUM_BLOCKS} residual blocks, global pool and fc; found {b} "
                          f"blocks then {[l['type'] for l in seq[i:]]}")
  params["fc"] = {"kernel": seq[-1]["weights"]}
  return {"params": params, "batch_stats": {"unused": np.zeros((), np.float32)}}


class _Affine(nn.Module):
  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    return x * self.param("scale", nn.initializers.ones, (c,)) + self.param(
        "shift", nn.initializers.zeros, (c,))


def _pad_add(a, b):
  """dlib add_prev: zero-pads both to the larger shape (top-left aligned), then adds."""
  shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape))
  pad = lambda t: jnp.pad(t, [(0, s - d) for s, d in zip(shape, t.shape)])  # noqa: E731
  return pad(a) + pad(b)


class _Block(nn.Module):
  features: int
  down: bool

  @nn.compact
  def __call__(self, x):
    s = 2 if self.down else 1
    pad = "VALID" if self.down else ((1, 1), (1, 1))
    y = nn.Conv(self.features, (3, 3), (s, s), padding=pad, name="conv1")(x)
    y = nn.relu(_Affine(name="affine1")(y))
    y = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = _Affine(name="affine2")(y)
    short = nn.avg_pool(x, (2, 2), (2, 2), "VALID") if self.down else x
    return nn.relu(_pad_add(y, short))


BLOCKS = ((32, False), (32, False), (32, False), (64, True), (64, False), (64, False),
          (64, False), (128, True), (128, False), (128, False), (256, True), (256, False),
          (256, False), (256, True))
MEAN_RGB = (122.782, 117.001, 104.298)  # verified against the file by the reader


class DlibResNet(nn.Module):
  """dlib's face ResNet with the IResNet trunk interface; ``u_block`` splits U from F."""

  u_block: int = U_BLOCKS["4x4"]
  embedding_dim: int = 128
  dtype: Any = jnp.float32

  def setup(self):
    self.stem_conv = nn.Conv(32, (7, 7), (2, 2), padding="VALID", dtype=self.dtype)
    self.stem_affine = _Affine()
    self.blocks = [_Block(f, d, name=f"block{i}") for i, (f, d) in enumerate(BLOCKS)]
    self.fc = nn.Dense(self.embedding_dim, use_bias=False, dtype=self.dtype)
    self.unused = self.variable("batch_stats", "unused", lambda: jnp.zeros(()))

  def head_params(self) -> tuple[str, ...]:
    """Top-level parameter names of F: the blocks after U and the dense layer."""
    return tuple(f"block{i}" for i in range(self.u_block + 1, NUM_BLOCKS)) + ("fc",)

  def features(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """U from images normalised as (x - 127.5) / 128 (converted to dlib's (x - mean) / 256)."""
    del train
    raw = images.astype(jnp.float32) * 128.0 + 127.5
    x = ((raw - jnp.asarray(MEAN_RGB)) / 256.0).astype(self.dtype)
    x = nn.relu(self.stem_affine(self.stem_conv(x)))
    x = nn.max_pool(x, (3, 3), (2, 2), "VALID")
    for block in self.blocks[:self.u_block + 1]:
      x = block(x)
    return x

  def head(self, u: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """F: the blocks after U, global average pool, dense to the 128-d descriptor."""
    del train
    x = u.astype(self.dtype)
    for block in self.blocks[self.u_block + 1:]:
      x = block(x)
    return self.fc(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)

  def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    return self.head(self.features(images, train), train)
