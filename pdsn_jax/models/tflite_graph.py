"""A float TensorFlow Lite graph run as a JAX function: its weights read from the ``.tflite``
flatbuffer (the ``tflite`` package parses it), its operators as ``jax.lax`` ops, so the graph
is batched, jitted and exportable like the rest of the project.

Covers the operators of MediaPipe's face detectors (BlazeFace short and full range): CONV_2D,
DEPTHWISE_CONV_2D (as the sum of its taps, fast on XLA:CPU), ADD, RELU, RELU6, PAD,
MAX_POOL_2D, RESHAPE, CONCATENATION, RESIZE_BILINEAR, DEQUANTIZE (float16 weights); another
operator is refused when the file is read, naming it. ``tests/blazeface_test.py`` compares the
outputs with the LiteRT interpreter's.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pdsn_jax.models.layers import depthwise_sum

_NUMPY = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64}
_ACTIVATIONS = {0: lambda x: x, 1: jax.nn.relu, 3: lambda x: jnp.clip(x, 0.0, 6.0)}


@dataclasses.dataclass(frozen=True)
class Op:
  kind: str
  inputs: tuple
  outputs: tuple
  options: dict


@dataclasses.dataclass(frozen=True)
class Graph:
  """The operators in execution order; the float constants are the weights (``params`` of
  ``apply``), the integer ones (paddings, shapes, sizes) are static, in ``statics``."""

  ops: tuple
  inputs: tuple
  outputs: tuple
  shapes: dict
  names: dict
  statics: dict

  @property
  def input_shape(self) -> tuple:
    return tuple(self.shapes[self.inputs[0]])


def _opname(model, tflite, op) -> str:
  code = model.OperatorCodes(op.OpcodeIndex())
  value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
  names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
  return names.get(value, str(value))


def _options(tflite, kind: str, op) -> dict:
  table = {"CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
           "MAX_POOL_2D": "Pool2DOptions", "ADD": "AddOptions",
           "CONCATENATION": "ConcatenationOptions", "RESHAPE": "ReshapeOptions",
           "RESIZE_BILINEAR": "ResizeBilinearOptions"}
  if kind not in table or op.BuiltinOptions() is None:
    return {}
  cls = getattr(tflite, table[kind])
  o = cls()
  o.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
  out = {}
  for field in ("Padding", "StrideH", "StrideW", "FilterHeight", "FilterWidth",
                "DilationHFactor", "DilationWFactor", "DepthMultiplier",
                "FusedActivationFunction", "Axis", "AlignCorners", "HalfPixelCenters"):
    if hasattr(o, field):
      out[field] = getattr(o, field)()
  if kind == "RESHAPE" and hasattr(o, "NewShapeAsNumpy") and o.NewShapeLength():
    out["NewShape"] = tuple(int(v) for v in o.NewShapeAsNumpy())
  return out


SUPPORTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RELU", "RELU6", "PAD", "MAX_POOL_2D",
             "RESHAPE", "CONCATENATION", "RESIZE_BILINEAR", "DEQUANTIZE")


def check_supported(kind: str, path: str) -> str:
  """``kind`` if ``apply`` runs it, else ValueError naming the operator and the file."""
  if kind not in SUPPORTED:
    raise ValueError(f"{path}: operator {kind} is not supported (supported: {SUPPORTED})")
  return kind


def read(path: str) -> tuple[Graph, dict]:
  """(graph, params) of a float ``.tflite`` file; ValueError naming an unsupported operator."""
  import tflite  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    buf = f.read()
  model = tflite.Model.GetRootAsModel(buf, 0)
  g = model.Subgraphs(0)
  shapes, names, params, statics = {}, {}, {}, {}
  for i in range(g.TensorsLength()):
    t = g.Tensors(i)
    shapes[i] = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    names[i] = t.Name().decode()
    data = model.Buffers(t.Buffer()).DataAsNumpy() if t.Buffer() else 0
    if not isinstance(data, int) and data.size:
      if t.Type() not in _NUMPY:
        raise ValueError(f"{path}: tensor {names[i]} has type {t.Type()}; only float32, float16 "
                         "and int32/64 graphs are supported")
      value = np.frombuffer(data.tobytes(), _NUMPY[t.Type()]).reshape(shapes[i])
      if np.issubdtype(value.dtype, np.integer):
        statics[i] = value.tolist()
      else:
        params[str(i)] = value
  ops = []
  for k in range(g.OperatorsLength()):
    op = g.Operators(k)
    kind = check_supported(_opname(model, tflite, op), path)
    ops.append(Op(kind, tuple(int(v) for v in op.InputsAsNumpy()),
                  tuple(int(v) for v in op.OutputsAsNumpy()), _options(tflite, kind, op)))
  graph = Graph(tuple(ops), tuple(int(v) for v in g.InputsAsNumpy()),
                tuple(int(v) for v in g.OutputsAsNumpy()), shapes, names, statics)
  return graph, params


def _same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
  eff = (k - 1) * dilation + 1
  out = -(-size // stride)
  total = max((out - 1) * stride + eff - size, 0)
  return total // 2, total - total // 2


def _pad_nhwc(x, options, kh, kw):
  if options.get("Padding", 1) != 0:  # 1: VALID
    return x
  ph = _same_pads(x.shape[1], kh, options.get("StrideH", 1), options.get("DilationHFactor", 1))
  pw = _same_pads(x.shape[2], kw, options.get("StrideW", 1), options.get("DilationWFactor", 1))
  return jnp.pad(x, ((0, 0), ph, pw, (0, 0)))


def _conv(x, w, sh: int, sw: int, dh: int, dw: int):
  """VALID convolution, NHWC x OHWI, as one matrix product over the kh*kw shifted (strided)
  slices: XLA:CPU's convolution is slow at few channels (BlazeFace's first layer, 5x5 over RGB:
  2.1 ms a face as a convolution), a product is not."""
  o, kh, kw, _ = w.shape
  if (kh, kw, sh, sw) == (1, 1, 1, 1):
    return jnp.einsum("nhwc,oc->nhwo", x, w[:, 0, 0])
  ho = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
  wo = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
  cols = [x[:, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]
  return jnp.einsum("nhwkc,okc->nhwo", jnp.stack(cols, axis=3), w.reshape(o, kh * kw, -1))


def _resize_bilinear(x, size, align_corners: bool, half_pixel: bool):
  def coords(n_in, n_out):
    o = jnp.arange(n_out, dtype=jnp.float32)
    if align_corners and n_out > 1:
      src = o * (n_in - 1) / (n_out - 1)
    elif half_pixel:
      src = jnp.maximum((o + 0.5) * n_in / n_out - 0.5, 0.0)
    else:
      src = o * n_in / n_out
    lo = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, n_in - 1)
    return lo, jnp.minimum(lo + 1, n_in - 1), src - lo
  (y0, y1, fy), (x0, x1, fx) = coords(x.shape[1], size[0]), coords(x.shape[2], size[1])
  top = x[:, y0] * (1 - fy)[None, :, None, None] + x[:, y1] * fy[None, :, None, None]
  return top[:, :, x0] * (1 - fx)[None, None, :, None] + top[:, :, x1] * fx[None, None, :, None]


def apply(graph: Graph, params: dict, x: jax.Array) -> list[jax.Array]:
  """The graph's outputs for a batch ``x`` (any batch size; the file's is 1)."""
  env = {int(k): jnp.asarray(v) for k, v in params.items()}
  env[graph.inputs[0]] = x
  for op in graph.ops:
    a = [env.get(i) if i >= 0 else None for i in op.inputs]
    o = op.options
    act = _ACTIVATIONS[o.get("FusedActivationFunction", 0)]
    if op.kind == "DEQUANTIZE":
      y = a[0].astype(jnp.float32)
    elif op.kind == "CONV_2D":
      w = a[1]  # (O, kh, kw, I)
      xin = _pad_nhwc(a[0], o, w.shape[1], w.shape[2])
      y = _conv(xin, w, o["StrideH"], o["StrideW"], o.get("DilationHFactor", 1),
                o.get("DilationWFactor", 1))
      y = act(y + a[2] if len(a) > 2 and a[2] is not None else y)
    elif op.kind == "DEPTHWISE_CONV_2D":
      w = a[1]  # (1, kh, kw, C * multiplier)
      if w.shape[-1] != a[0].shape[-1] or o.get("DilationHFactor", 1) != 1:
        raise ValueError("DEPTHWISE_CONV_2D with a depth multiplier or dilation is not supported")
      xin = _pad_nhwc(a[0], o, w.shape[1], w.shape[2])
      if o["StrideH"] != o["StrideW"]:
        raise ValueError("DEPTHWISE_CONV_2D with unequal strides is not supported")
      y = depthwise_sum(xin, w[0], o["StrideH"])
      y = act(y + a[2] if len(a) > 2 and a[2] is not None else y)
    elif op.kind == "ADD":
      y = act(a[0] + a[1])
    elif op.kind == "RELU":
      y = jax.nn.relu(a[0])
    elif op.kind == "RELU6":
      y = jnp.clip(a[0], 0.0, 6.0)
    elif op.kind == "PAD":
      y = jnp.pad(a[0], [tuple(p) for p in graph.statics[op.inputs[1]]])
    elif op.kind == "MAX_POOL_2D":
      kh, kw = o["FilterHeight"], o["FilterWidth"]
      xin = _pad_nhwc(a[0], o, kh, kw) if o.get("Padding", 1) != 0 else a[0]
      y = act(jax.lax.reduce_window(xin, -jnp.inf, jax.lax.max, (1, kh, kw, 1),
                                    (1, o["StrideH"], o["StrideW"], 1), "VALID"))
    elif op.kind == "RESHAPE":
      shape = o.get("NewShape") or tuple(graph.statics[op.inputs[1]])
      y = a[0].reshape((a[0].shape[0],) + tuple(shape[1:]))  # the batch stays the batch
    elif op.kind == "CONCATENATION":
      y = act(jnp.concatenate([v for v in a if v is not None], axis=o["Axis"]))
    elif op.kind == "RESIZE_BILINEAR":
      size = tuple(graph.statics[op.inputs[1]])
      y = _resize_bilinear(a[0], size, bool(o.get("AlignCorners")),
                           bool(o.get("HalfPixelCenters")))
    else:  # read() refuses these
      raise AssertionError(op.kind)
    env[op.outputs[0]] = y
  return [env[i] for i in graph.outputs]
