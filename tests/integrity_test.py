"""Verified reads (issue 22): a damaged store shard, store header or file is named, never used
silently, and made again by the build; unreadable gallery images keep the shards valid; a
full disk is one line; the run's config.json is validated by the commands' loader."""

import errno
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from pdsn_jax.method import builders
from pdsn_jax import config_validation, run_config
from pdsn_jax.run import files
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.gallery import search, store

U_SHAPE = (7, 6, 32)


def _build(path, u, labels=None, dtype="float32"):
  """A store of ``u`` in shards of 4; returns (store, stats, the (start, stop) loaded)."""
  calls, cur = [], {}
  labels = np.arange(len(u)) if labels is None else labels

  def load(start, stop):
    calls.append((start, stop))
    cur["u"] = u[start:stop]
    return (np.zeros((stop - start, 4, 4, 3), np.uint8), labels[start:stop],
            [f"f{i}" for i in range(start, stop)])

  s = store.create_or_resume(path, num_faces=len(u), u_shape=U_SHAPE, dtype=dtype,
                             shard_size=4, trunk_checkpoint="run/trunk", trunk_fingerprint="aa",
                             source="test")
  return s, store.build(s, load, lambda images: cur["u"]), calls


def _u(n=10, seed=0):
  return np.random.default_rng(seed).normal(size=(n, *U_SHAPE)).astype(np.float32)


@pytest.mark.parametrize("damage", ["nan_same_header", "flip_byte", "truncate"])
def test_a_damaged_shard_is_named_and_made_again(tmp_path, damage):
  path, u = str(tmp_path / "s"), _u()
  _build(path, u)
  shard = os.path.join(path, "shard_00001.npy")
  if damage == "nan_same_header":  # the probe: NaN data under the same .npy header
    a = np.load(shard)
    np.save(shard, np.full_like(a, np.nan))
  elif damage == "flip_byte":
    with open(shard, "r+b") as f:
      f.seek(-7, 2)
      b = f.read(1)
      f.seek(-7, 2)
      f.write(bytes([b[0] ^ 0xFF]))
  else:
    with open(shard, "r+b") as f:
      f.truncate(os.path.getsize(shard) // 2)
  s = store.Store(path)
  s.shard(0)  # the others are fine
  with pytest.raises(files.DamagedFile, match=r"shard_00001\.npy"):
    s.shard(1)
  assert s.missing() == [] and list(s.damaged()) == [1]
  _, stats, calls = _build(path, u)  # the build finds it and makes only it again
  assert calls == [(4, 8)] and stats["shards_built"] == 1 and stats["shards_resumed"] == 2
  got = np.concatenate([store.Store(path).shard(i)[0] for i in range(3)])
  np.testing.assert_array_equal(got, u)


def test_an_edited_store_header_is_refused(tmp_path):
  path = str(tmp_path / "s")
  _build(path, _u())
  meta = json.load(open(os.path.join(path, "meta.json")))
  meta["num_faces"] = 8
  json.dump(meta, open(os.path.join(path, "meta.json"), "w"))
  with pytest.raises(files.DamagedFile, match=r"meta\.json: checksum mismatch"):
    store.Store(path)
  open(os.path.join(path, "meta.json"), "w").write("{")
  with pytest.raises(files.DamagedFile, match=r"meta\.json \(a gallery store's metadata\) is "
                                              "damaged"):
    store.Store(path)


@pytest.mark.slow
def test_unreadable_faces_keep_their_place_and_are_never_found(tmp_path):
  """A gallery image that cannot be read is stored as label UNREADABLE (its shard and every
  later one keep their faces), and the search never returns it, even as the best match."""
  config = tiny.get_config()
  backbone = builders.backbone(config, False)
  v = backbone.init(jax.random.key(0), jnp.zeros((1, 112, 96, 3)))
  shape = builders.u_shape(config)
  rng = np.random.default_rng(3)
  u = rng.normal(size=(9, *shape)).astype(np.float32)
  probe_u = u[[2, 6]]  # each probe's own gallery row is its best match ...
  labels = np.arange(9)
  labels[2] = store.UNREADABLE  # ... but row 2 is an unreadable image
  cur = {}

  def load(start, stop):
    cur["u"] = u[start:stop]
    return np.zeros((stop - start, 4, 4, 3), np.uint8), labels[start:stop], ["p"] * (stop - start)

  s = store.create_or_resume(str(tmp_path / "g"), num_faces=9, u_shape=shape, dtype="float32",
                             shard_size=4, trunk_checkpoint="t", trunk_fingerprint="f",
                             source="test")
  store.build(s, load, lambda images: cur["u"])
  searcher = search.Searcher(backbone, shape, batch_size=8, k=3)
  head = lambda x: backbone.apply(v, x, method="head")  # noqa: E731
  emb = np.asarray(head(jnp.asarray(probe_u)))
  emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  table = np.ones((9, *shape), np.float32)
  _, idx = search.identify(searcher, v, table, emb, np.zeros((2, 9), bool), s)
  assert 2 not in idx and idx[1, 0] == 6


def test_disk_full_is_one_line_naming_the_file_and_the_free_space(tmp_path):
  inner = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "ckpt" / "x.tmp"))
  try:
    try:
      raise inner
    except OSError as e:
      raise RuntimeError("orbax: async save failed") from e
  except RuntimeError as outer:
    line = files.disk_full(outer)
  assert line.startswith(f"disk full writing {tmp_path / 'ckpt' / 'x.tmp'} (")
  assert "MiB free on that disk" in line and "\n" not in line
  assert files.disk_full(ValueError("other")) is None


def test_commands_validate_the_runs_config_json(tmp_path):
  wd = str(tmp_path)
  for key, value, says in (("eval.batch_size", 0, "config.eval.batch_size=0 must be > 0"),
                           ("eval.batch_size", -8, "config.eval.batch_size=-8 must be > 0"),
                           ("data.image_size", [-112, 96], "must be (height, width), each >= 16"),
                           ("detector.input_scale", 1e9, "input_scale=1000000000.0 must be in"),
                           ("eval.models", ["X=/abs/other_run"], "this workdir's networks")):
    c = tiny.get_config()
    section, field = key.split(".")
    c[section][field] = value
    workdir_lib.save_config(wd, c.to_json_best_effort())
    with pytest.raises(ValueError, match="config.json: .*" + r"\(".join(
        s.replace(")", r"\)") for s in says.split("("))):
      run_config.load_config(wd)
  open(workdir_lib.config_file(wd), "w").write('{"eval": ')
  with pytest.raises(files.DamagedFile, match=r"config\.json \(the run's config\) is damaged"):
    run_config.load_config(wd)
  assert len(os.listdir(os.path.join(wd, "config_history"))) == 4  # every earlier version


def test_overwrite_names_only_stages():
  c = tiny.get_config()
  c.overwrite = "pdsn,trunks"
  with pytest.raises(ValueError, match=r"config.overwrite='pdsn,trunks': unknown stage\(s\) "
                                       r"\['trunks'\]"):
    config_validation.validate(c)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
  path = str(tmp_path / "t.json")
  files.write_json(path, {"a": 1})

  def boom(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "replace", boom)
  with pytest.raises(OSError):
    files.write_json(path, {"a": 2})
  monkeypatch.undo()
  assert json.load(open(path)) == {"a": 1} and os.listdir(tmp_path) == ["t.json"]
  shutil.rmtree(tmp_path / "nothing", ignore_errors=True)
