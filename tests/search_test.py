"""The gallery store and the streaming masked top-k search (MegaFace-scale identification)."""

import functools
import json
import os
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from pdsn_jax.method import builders, fdm
from pdsn_jax.evaluation import masked
from pdsn_jax.gallery import search, store
from tests import helpers

U_SHAPE = (7, 6, 32)


def _net(seed=0):
  config = tiny.get_config()
  backbone = builders.backbone(config, False)
  v = backbone.init(jax.random.key(seed), jnp.zeros((1, 112, 96, 3)))
  # non-trivial BatchNorm statistics: an affine F must fold them in
  v = dict(v)
  v["batch_stats"] = jax.tree.map(
      lambda a: a + 0.3 * jax.random.uniform(jax.random.key(seed + 1), a.shape), v["batch_stats"])
  return backbone, v


def _problem(seed=1, gallery=45, probes=13):
  rng = np.random.default_rng(seed)
  gallery_u = rng.normal(size=(gallery, *U_SHAPE)).astype(np.float32)
  probe_u = rng.normal(size=(probes, *U_SHAPE)).astype(np.float32)
  flags = rng.uniform(size=(probes, 9)) < 0.25
  flags[:4] = flags[4]  # shared patterns
  flags[5] = False  # an unoccluded probe
  table = rng.integers(0, 2, (9, *U_SHAPE)).astype(np.float32)
  return gallery_u, probe_u, flags, table


def _brute_force(backbone, v, gallery_u, probe_u, flags, table, clean=None):
  """The (P, G) score matrix, every probe's gallery embedded under its own FDM, one by one."""
  head = lambda vv, u: np.asarray(masked.masked_embeddings(  # noqa: E731
      functools.partial(backbone.apply, vv, method="head"), jnp.asarray(u), jnp.ones(())))
  out = np.zeros((len(probe_u), len(gallery_u)), np.float32)
  for p in range(len(probe_u)):
    m = np.asarray(fdm.compose(jnp.asarray(flags[p]), jnp.asarray(table)))
    vv = clean if (clean is not None and not flags[p].any()) else v
    out[p] = head(vv, probe_u[p:p + 1] * m) @ head(vv, gallery_u * m).T
  return out


def test_head_matrix_reproduces_an_affine_head_and_rejects_another():
  backbone, v = _net()
  head = functools.partial(backbone.apply, v, method="head")
  w, b = search.head_matrix(head, U_SHAPE)
  u = np.random.default_rng(0).normal(size=(3, *U_SHAPE)).astype(np.float32)
  chex.assert_trees_all_close(u.reshape(3, -1) @ w + b, np.asarray(head(jnp.asarray(u))),
                              rtol=1e-4, atol=1e-4)
  assert search.head_matrix(lambda x: jnp.tanh(head(x)), U_SHAPE) is None


@pytest.mark.parametrize("path", ["affine", "general", "auto"])
def test_streaming_topk_equals_the_full_score_matrix(path):
  backbone, v = _net()
  _, clean = _net(seed=5)
  gallery_u, probe_u, flags, table = _problem()
  k = 4
  searcher = search.Searcher(backbone, U_SHAPE, batch_size=16, k=k, path=path)
  gallery = search.ArrayGallery(gallery_u, np.arange(45), shard_size=20)  # 3 shards, short tail
  head = lambda vv, u: np.asarray(masked.masked_embeddings(  # noqa: E731
      functools.partial(backbone.apply, vv, method="head"), jnp.asarray(u), jnp.ones(())))
  # each probe embedded under its own FDM (the all-clear one by the clean network)
  emb = np.concatenate([head(clean if not f.any() else v, probe_u[i:i + 1] * np.asarray(
      fdm.compose(jnp.asarray(f), jnp.asarray(table)))) for i, f in enumerate(flags)])
  scores, index = search.identify(searcher, v, table, emb, flags, gallery, clean_variables=clean)
  full = _brute_force(backbone, v, gallery_u, probe_u, flags, table, clean)
  want = np.argsort(-full, axis=1, kind="stable")[:, :k]
  np.testing.assert_array_equal(index, want)
  chex.assert_trees_all_close(scores, np.take_along_axis(full, want, 1), atol=2e-5)
  if path == "auto":  # a timed trial of both paths chose one, once per network and patterns
    (key, choice), = searcher.choices.items()
    t = searcher.trial_seconds[key]
    assert choice == min(t, key=t.get) and set(t) == {"affine", "general"}
    search.identify(searcher, v, table, emb, flags, gallery, clean_variables=clean)
    assert len(searcher.choices) == 1


def test_store_int8_round_trip_resume_and_trunk_check(tmp_path):
  rng = np.random.default_rng(0)
  u = rng.normal(size=(10, *U_SHAPE)).astype(np.float32) * rng.uniform(0.1, 5, (1, 1, 1, 32))
  calls = []

  def load(start, stop):
    calls.append((start, stop))
    return np.zeros((stop - start, 4, 4, 3), np.uint8), np.arange(start, stop), \
        [f"f{i}" for i in range(start, stop)]

  feats = {}
  features = lambda images: feats["cur"]  # noqa: E731  (U of the shard just loaded)

  def build(path, dtype):
    s = store.create_or_resume(path, num_faces=10, u_shape=U_SHAPE, dtype=dtype, shard_size=4,
                               trunk_checkpoint="runA/trunk", trunk_fingerprint="aaaa",
                               source="test")

    def load_and_remember(start, stop):
      feats["cur"] = u[start:stop]
      return load(start, stop)
    return s, store.build(s, load_and_remember, features)

  path = str(tmp_path / "int8")
  s, stats = build(path, "int8")
  assert s.num_shards == 3 and stats["shards_built"] == 3 and s.missing() == []
  got = np.concatenate([store.dequantize(*s.shard(i)[:2]) for i in range(3)])
  # per face and channel, the error is at most half a quantisation step
  step = np.abs(u).max(axis=(1, 2)) / 127
  assert np.all(np.abs(got - u) <= 0.5 * step[:, None, None, :] + 1e-6)
  np.testing.assert_array_equal(s.labels(), np.arange(10))
  assert s.paths(2) == ["f8", "f9"]
  # a build killed after shard 0: the rerun computes only the missing shards
  os.remove(os.path.join(path, "shard_00001.npy"))
  calls.clear()
  _, stats = build(path, "int8")
  assert calls == [(4, 8)] and stats["shards_resumed"] == 2
  with pytest.raises(store.TrunkMismatch, match=r"runA/trunk \(fingerprint aaaa\).*runB/trunk"):
    store.Store(path).check_trunk("runB/trunk", "bbbb")
  with pytest.raises(ValueError, match=r"dtype: 'int8' vs now 'float16'"):
    build(path, "float16")
  with pytest.raises(FileNotFoundError, match="no gallery store"):
    store.Store(str(tmp_path / "nope"))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_find_the_same_topk_as_one(tmp_path):
  """2 processes x 2 CPU devices, each searching its own shards, equal 1 process x 4."""
  worker = [sys.executable, "-m", "tests.search_worker"]
  single = tmp_path / "single.npz"
  subprocess.run(worker + [str(single)], cwd=helpers.REPO, env=helpers.env_with_devices(4),
                 check=True, capture_output=True, timeout=300)
  port = _free_port()
  procs = [subprocess.Popen(worker + [str(tmp_path / f"multi{i}.npz"), f"127.0.0.1:{port}",
                                      "2", str(i)], cwd=helpers.REPO,
                            env=helpers.env_with_devices(2), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  a = np.load(single)
  for i in range(2):
    b = np.load(tmp_path / f"multi{i}.npz")
    assert json.loads(str(b["info"]))["processes"] == 2
    assert json.loads(str(b["info"]))["own_shards"] == [i, i + 2]  # 4 shards, dealt out
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
