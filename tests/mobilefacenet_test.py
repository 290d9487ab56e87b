"""MobileFaceNet: the legacy-PyTorch reader (no torch, no code execution), the Flax net's shapes,
the depthwise conv against XLA's grouped convolution, and parity with the original network's
reference outputs (skipped, saying why, when ../shared/models is absent)."""

import json
import os
import pickle
import sys
import types
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdsn_jax.models import mobilefacenet as mfn
from tests import helpers

MODEL_DIR = os.path.join(os.path.dirname(helpers.SHARED_DATA), "models", "mobilefacenet_casia")


# ------------------------------------------------- a legacy-format writer, torch-free


@pytest.fixture
def fake_torch(monkeypatch):
  """Modules named like torch's so that pickle writes the same globals torch.save does."""
  torch = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")
  for name in ("FloatStorage", "LongStorage"):
    setattr(torch, name, type(name, (), {"__module__": "torch"}))

  def _rebuild_tensor_v2(*args):
    return args

  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  torch._utils = utils
  monkeypatch.setitem(sys.modules, "torch", torch)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)
  return torch


def write_legacy(path, obj: dict, torch, storage_name=None, views=None) -> None:
  """torch.save(obj, path, _use_new_zipfile_serialization=False) for a dict of numpy arrays;
  ``views``: {key: (offset, size, stride)} written instead of the array's own (crafted files)."""
  storages = []

  class Tensor:
    def __init__(self, a, view=None):
      self.a, self.view = np.ascontiguousarray(a), view

    def __reduce__(self):
      key = str(len(storages))
      storages.append((key, self.a))
      stride = tuple(s // self.a.itemsize for s in self.a.strides)
      offset, size, stride = self.view or (0, self.a.shape, stride)
      return (torch._utils._rebuild_tensor_v2, (("S", key, self.a), offset, size, stride,
                                                 False, OrderedDict()))

  class Pickler(pickle.Pickler):
    def persistent_id(self, o):
      if isinstance(o, tuple) and len(o) == 3 and o[0] == "S":
        name = storage_name or ("LongStorage" if o[2].dtype == np.int64 else "FloatStorage")
        return ("storage", getattr(torch, name), o[1], "cpu", o[2].size, None)
      return None

  with open(path, "wb") as f:
    for head in (mfn.MAGIC, mfn.PROTOCOL, {"protocol_version": 1001, "little_endian": True}):
      pickle.dump(head, f, protocol=2)
    Pickler(f, protocol=2).dump({k: Tensor(v, (views or {}).get(k)) for k, v in obj.items()})
    pickle.dump([k for k, _ in storages], f, protocol=2)
    for _, a in storages:
      f.write(a.size.to_bytes(8, "little"))
      f.write(a.astype(a.dtype.newbyteorder("<")).tobytes())


def test_reader_round_trips_tensors(tmp_path, fake_torch):
  rng = np.random.default_rng(0)
  obj = {"w": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
         "steps": np.arange(5, dtype=np.int64)}
  path = tmp_path / "a.ckpt"
  write_legacy(path, obj, fake_torch)
  got = mfn.read_torch_legacy(str(path))
  assert set(got) == set(obj)
  for k in obj:
    np.testing.assert_array_equal(got[k], obj[k])
    assert got[k].dtype == obj[k].dtype


def test_reader_errors_name_the_file_and_where(tmp_path, fake_torch):
  path = tmp_path / "a.ckpt"
  write_legacy(path, {"w": np.ones((10, 10), np.float32)}, fake_torch)
  data = path.read_bytes()
  bad = tmp_path / "truncated.ckpt"
  bad.write_bytes(data[:-50])
  with pytest.raises(ValueError, match=r"truncated.ckpt: truncated: storage 0 needs 400 bytes "
                                       r"at byte offset \d+"):
    mfn.read_torch_legacy(str(bad))
  bad.write_bytes(pickle.dumps(12345, protocol=2) + data[20:])
  with pytest.raises(ValueError, match=r"truncated.ckpt: bad magic number 12345 at byte offset 0"):
    mfn.read_torch_legacy(str(bad))
  setattr(fake_torch, "QuintStorage", type("QuintStorage", (), {"__module__": "torch"}))
  write_legacy(bad, {"w": np.ones(3, np.float32)}, fake_torch, storage_name="QuintStorage")
  with pytest.raises(ValueError, match=r"unknown storage type torch.QuintStorage"):
    mfn.read_torch_legacy(str(bad))


@pytest.mark.parametrize("view", [(0, (50_000_000,), (1,)), (10**12, (2,), (1,)),
                                  (0, (2, 2), (3, 1)), (-1, (2,), (1,)), (0, (2,), (-1,))])
def test_reader_refuses_views_outside_their_storage(tmp_path, fake_torch, view):
  """The probe: a 344-byte file (50,000,000 elements on a 4-float storage) segfaulted the
  process; an offset of 10^12 was accepted."""
  path = tmp_path / "crafted.ckpt"
  write_legacy(path, {"w": np.ones(4, np.float32)}, fake_torch, views={"w": view})
  with pytest.raises(ValueError, match=r"crafted.ckpt: a tensor .*(storage 0, which holds 4|"
                                       r"expected non-negative integers)"):
    mfn.read_torch_legacy(str(path))
  write_legacy(path, {"w": np.arange(4, dtype=np.float32)}, fake_torch,
               views={"w": (1, (3,), (1,))})  # an in-bounds view still reads
  np.testing.assert_array_equal(mfn.read_torch_legacy(str(path))["w"], [1, 2, 3])


def test_reader_runs_no_code_from_the_file(tmp_path):
  target = tmp_path / "pwned"
  bad = tmp_path / "evil.ckpt"
  with open(bad, "wb") as f:
    for head in (mfn.MAGIC, mfn.PROTOCOL, {"little_endian": True}):
      pickle.dump(head, f, protocol=2)
    pickle.dump({"w": helpers.Exploit(target)}, f, protocol=2)
  with pytest.raises(ValueError, match=r"evil.ckpt: refusing pickle global (posix|os|nt)\.system"):
    mfn.read_torch_legacy(str(bad))
  assert not target.exists()


# ------------------------------------------------------------------- network


@pytest.mark.slow
def test_depthwise_sum_of_taps_equals_grouped_convolution():
  rng = np.random.default_rng(1)
  for stride, pad, shape in ((1, None, (2, 9, 8, 5)), (2, None, (2, 9, 8, 5)),
                             (2, None, (1, 10, 12, 3)), (1, "VALID", (2, 7, 6, 4))):
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    k = (7, 6) if pad == "VALID" else (3, 3)
    layer = mfn.DepthwiseConv(k, stride, pad)
    v = layer.init(jax.random.key(0), x)
    padding = "VALID" if pad == "VALID" else ((1, 1), (1, 1))  # PyTorch's symmetric padding
    want = jax.lax.conv_general_dilated(x, v["params"]["kernel"], (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=shape[-1])
    np.testing.assert_allclose(layer.apply(v, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_shapes_and_width_multiplier():
  x = jnp.zeros((2, 112, 96, 3))
  for width, u_c in ((1.0, 512), (0.25, 128)):
    net = mfn.MobileFaceNet(width=width, embedding_dim=64)
    v = net.init(jax.random.key(0), x)
    assert net.apply(v, x, method="features").shape == (2, 7, 6, u_c)
    assert net.apply(v, x).shape == (2, 64)
    assert set(net.head_params()) <= set(v["params"])


def test_to_variables_maps_every_key_and_rejects_unknown_ones():
  net = mfn.MobileFaceNet()
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 112, 96, 3))))
  sd = OrderedDict()
  sd["conv1.conv.weight"] = np.zeros((64, 3, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"ckpt: state dict lacks"):
    mfn.to_variables(sd, "x.ckpt")
  sd["conv1.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"unexpected state-dict key 'conv1.extra.weight'"):
    mfn.to_variables(sd, "x.ckpt")
  assert shapes["params"]["conv1"]["conv"]["kernel"].shape == (3, 3, 3, 64)


@pytest.mark.real_data
@pytest.mark.slow
def test_parity_with_the_original_network():
  ckpt = os.path.join(MODEL_DIR, "068.ckpt")
  ref = os.path.join(MODEL_DIR, "reference_outputs.npz")
  if not (os.path.isfile(ckpt) and os.path.isfile(ref)):
    pytest.skip(f"MobileFaceNet weights or reference outputs not found under {MODEL_DIR} "
                "(research-only files in ../shared/models)")
  variables = mfn.load(ckpt)
  net = mfn.MobileFaceNet()
  want = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 112, 96, 3))))
  assert jax.tree.structure(want) == jax.tree.structure(variables)
  z = np.load(ref)
  x = (z["faces_uint8_nhwc"].astype(np.float32) - 127.5) / 128.0
  u = np.asarray(net.apply(variables, x, method="features"))
  emb = np.asarray(net.apply(variables, x))
  for got, ref_out in ((u, z["top_conv_nhwc"]), (emb, z["embedding"])):
    rel = np.abs(got - ref_out).max() / np.abs(ref_out).max()
    assert rel < 1e-4, rel
  # F is affine: masking U removes its contribution linearly
  head = lambda t: net.apply(variables, t, method="head")  # noqa: E731
  m = (np.random.default_rng(0).uniform(size=u.shape) > 0.3).astype(np.float32)
  zero = head(np.zeros_like(u))
  np.testing.assert_allclose(head(u * m) - zero, (head(u) - zero) - (head(u * (1 - m)) - zero),
                             rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_trains_from_scratch_as_the_trunk_then_stages_i_ii(tmp_path):
  from pdsn_jax.method.fdm import load as load_dictionary  # pylint: disable=g-import-not-at-top
  wd = str(tmp_path / "mfn")
  # a 6-step trunk's U is far from normalised: Adam's step size does not depend on it
  helpers.run_main(wd, "--config.model.kind=mobilefacenet", "--config.model.width=0.125",
                   "--config.pdsn.optimizer=adam", "--config.pdsn.learning_rate=0.001",
                   "--config.stages=trunk,pdsn,dictionary", devices=2)
  summary = json.load(open(os.path.join(wd, "trunk", "summary.json")))
  assert summary["steps"] == 6
  fdms, _, meta = load_dictionary(os.path.join(wd, "dictionary", "dictionary.npz"))
  assert fdms.shape == (9, 7, 6, 64) and meta["u_shape"] == [7, 6, 64]


@pytest.mark.slow
def test_trainable_top_moves_only_the_layers_at_u_resolution_and_f():
  import functools  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders, recognition  # pylint: disable=g-import-not-at-top
  from pdsn_jax.train import parallel, training
  config = tiny.get_config()
  config.model.update(kind="mobilefacenet", width=0.25, embedding_dim=32)
  net = builders.backbone(config, False)
  x = jax.random.uniform(jax.random.key(1), (2, 112, 96, 3), minval=-1, maxval=1)
  v = net.init(jax.random.key(0), x)
  np.testing.assert_array_equal(net.apply(v, x, method="features"),
                                net.apply(v, net.apply(v, x, method="bottom"), method="top"))
  assert mfn.TOP_FROM == 13 and net.top_params() == ("block13", "block14", "conv2")
  head = builders.classifier(config, 5)
  tx = training.optimizer(config.finetune, 10,
                          recognition.trainable_mask(net, "top", "distill"))
  state = recognition.init_fn(config, net, head, tx, with_teacher=True)()
  rng = np.random.default_rng(0)
  faces = rng.integers(0, 256, (8, 112, 96, 3), dtype=np.uint8)
  batch = {"image": faces, "clean": faces[::-1].copy(), "label": np.zeros(8, np.int32),
           "blocks": rng.uniform(size=(8, 9)) < 0.3}
  items = (rng.uniform(size=(9, *builders.u_shape(config))) < 0.8).astype(np.float32)
  mesh = parallel.make_mesh()
  step = parallel.data_parallel(functools.partial(
      recognition.train_step, backbone=builders.backbone(config, True), head=head, tx=tx,
      schedule=training.learning_rate_schedule(config.finetune, 10),
      dictionary=jnp.asarray(items), trainable="top", loss="distill"), mesh, donate_state=False)
  new, _ = step(jax.device_put(state, parallel.replicated(mesh)), parallel.put_batch(batch, mesh),
                jax.random.key(0, impl="rbg"))
  moved = {k for k in state.params["backbone"]
           if any(not np.array_equal(a, b) for a, b in zip(
               jax.tree.leaves(state.params["backbone"][k]),
               jax.tree.leaves(jax.device_get(new.params["backbone"][k]))))}
  assert moved == set(net.top_params()) | set(net.head_params())
  with pytest.raises(ValueError, match="trainable='top' needs a trunk"):
    recognition.trainable_mask(builders.backbone(tiny.get_config(), False), "top", "distill")
