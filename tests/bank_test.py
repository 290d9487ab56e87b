"""The feature bank (issue 36): its format (range-checked, sha256-verified shards), stage I's
pair picking, stage II's padded batches, and end to end: the stored U is the trunk's U of the
recorded occlusions, a build killed part-way resumes to the same bytes, and stages I and II run
on it."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from pdsn_jax.data import feature_bank, occlusion, sources
from pdsn_jax.method import builders
from pdsn_jax.run import checkpointing, files, provenance
from pdsn_jax.stages import bank as bank_stage
from pdsn_jax.stages import dictionary
from pdsn_jax.train import parallel, training
from pdsn_jax.run import workdir as workdir_lib
from tests import helpers

BANK = ("--config.stages=trunk,bank,pdsn,dictionary", "--config.pdsn.source=bank",
        "--config.dictionary.source=bank", "--config.dictionary.pairs_per_block=1000")


def test_quantize_refuses_what_float16_cannot_hold_naming_the_shard():
  ok, err = feature_bank.quantize(np.float32([[1.0, -3.25, 1e-3]]), "float16", "shard 3")
  assert ok.dtype == np.float16 and err["max_abs"] == 3.25
  assert 0 < err["max_abs_error"] < 1e-5
  with pytest.raises(OverflowError, match="shard 3.*7e\\+04.*float32"):
    feature_bank.quantize(np.float32([7e4]), "float16", "shard 3")
  with pytest.raises(FloatingPointError, match="shard 3"):
    feature_bank.quantize(np.float32([np.nan]), "float32", "shard 3")
  with pytest.raises(ValueError, match="bank.dtype='int4'.*float16"):
    feature_bank.quantize(np.float32([1.0]), "int4", "shard 3")


def _fake_bank(folder, faces=(5, 3), variants=2, shape=(2, 2, 3)):
  """Shards of recognisable rows: entry e of face f is filled with 1000 f + e."""
  entries = feature_bank.entries_per_face(variants)
  shards, start = [], 0
  for s, n in enumerate(faces):
    f = np.arange(start, start + n)
    u = (1000.0 * f[:, None] + np.arange(entries)[None]).astype(np.float32)
    u = np.broadcast_to(u[..., None, None, None], (n, entries, *shape)).copy()
    shards.append(feature_bank.write_shard(folder, s, u, {
        "faces": f.tolist(), "labels": (f % 2).tolist(), "placements": [], "quantization": {}}))
    start += n
  feature_bank.write_manifest(folder, {"variants": variants, "entries_per_face": entries,
                                       "dtype": "float32", "u_shape": list(shape),
                                       "num_classes": 2}, shards)
  return start, entries


def test_bank_rows_come_back_in_the_layouts_order_across_shards(tmp_path):
  n, entries = _fake_bank(str(tmp_path))
  bank = feature_bank.open_bank(str(tmp_path))
  assert len(bank) == n == 8 and bank.variants == 2 and bank.num_classes == 2
  rec = bank[6]  # the second shard's second face
  assert rec["u_clean"][0, 0, 0] == 6000 and rec["label"] == 0
  for v in range(2):
    for k in range(9):
      assert rec["u_alone"][v, k, 0, 0, 0] == 6000 + feature_bank.alone_index(v, k)
      assert rec["u_neighbour"][v, k, 0, 0, 0] == 6000 + feature_bank.neighbour_index(v, k)
  np.testing.assert_array_equal(bank.rows(3, 7)[:, 0, 0, 0, 0], [3000, 4000, 5000, 6000])
  chex.assert_shape(bank.rows(3, 7), (4, entries, 2, 2, 3))


def test_a_damaged_shard_is_named_before_any_stage_reads_it(tmp_path):
  _fake_bank(str(tmp_path))
  path = os.path.join(str(tmp_path), feature_bank.shard_name(1, "npy"))
  with open(path, "r+b") as f:  # same size, one byte changed: only the sha256 sees it
    f.seek(-1, 2)
    last = f.read(1)
    f.seek(-1, 2)
    f.write(bytes([last[0] ^ 1]))
  with pytest.raises(files.DamagedFile, match="shard-00001.npy"):
    feature_bank.open_bank(str(tmp_path))
  os.remove(os.path.join(str(tmp_path), feature_bank.MANIFEST))
  with pytest.raises(FileNotFoundError, match="'bank' stage"):
    feature_bank.open_bank(str(tmp_path))


def test_written_shards_skip_one_whose_npy_is_cut_short(tmp_path):
  _fake_bank(str(tmp_path))
  path = os.path.join(str(tmp_path), feature_bank.shard_name(0, "npy"))
  with open(path, "r+b") as f:
    f.truncate(100)
  assert sorted(feature_bank.written_shards(str(tmp_path))) == [1]


def test_pick_pairs_takes_the_neighbour_entry_with_its_probability(tmp_path):
  _fake_bank(str(tmp_path))
  rec = feature_bank.open_bank(str(tmp_path))[2]
  alone = {2000 + feature_bank.alone_index(v, k) for v in range(2) for k in range(9)}
  nbr = {2000 + feature_bank.neighbour_index(v, k) for v in range(2) for k in range(9)}
  for p, want in ((0.0, alone), (1.0, nbr)):
    out = feature_bank.PickPairs(p)(rec, np.random.default_rng(0))
    chex.assert_shape(out["u_occ"], (9, 2, 2, 3))
    assert set(out["u_occ"][:, 0, 0, 0].tolist()) <= want
  picks = [feature_bank.PickPairs(0.3)(rec, np.random.default_rng(s))["u_occ"][:, 0, 0, 0]
           for s in range(200)]
  picks = np.stack(picks)
  share = np.isin(picks, list(nbr)).mean()
  assert 0.25 < share < 0.35
  # item k's entry is always block k's (of either variant)
  k_of = lambda e: ((e - 2000 - 1) % 18) % 9  # noqa: E731
  np.testing.assert_array_equal(k_of(picks), np.broadcast_to(np.arange(9), picks.shape))
  assert len(np.unique((picks - 2000 - 1) // 18)) == 2  # both variants drawn


def test_stage_twos_padded_batch_weighs_only_its_real_rows():
  config = tiny.get_config()
  gens = builders.generators(config, False)
  shape = (7, 6, 4)
  v = gens.init(jax.random.key(0), jnp.zeros((9, 1, *shape)))
  rng = np.random.default_rng(0)
  u_clean = rng.normal(size=(12, *shape)).astype(np.float32)
  u_occ = rng.normal(size=(12, 9, *shape)).astype(np.float32)
  mesh = parallel.make_mesh(jax.devices()[:1])
  step = parallel.data_parallel(lambda c, b, r: dictionary.mask_step(
      c, b, r, backbone=None, gens=gens, differential=True), mesh)

  def run(batches):
    carry = parallel.put_replicated({
        "state": {**v, "frozen": {}}, "mean": np.zeros((9, *shape), np.float32),
        "count": np.zeros((), np.float32), "change": np.zeros((9, *shape), np.float32),
        "level": np.zeros(shape, np.float32)}, mesh)
    for b in batches:
      carry, _ = step(carry, parallel.put_batch(b, mesh), jax.random.key(0))
    return jax.device_get(carry)

  exact = run([{"u_clean": u_clean[i:i + 4], "u_occ": u_occ[i:i + 4]} for i in (0, 4, 8)])
  pad = lambda a: np.concatenate([a, np.zeros((4, *a.shape[1:]), a.dtype)])  # noqa: E731
  padded = run([{"u_clean": u_clean[:8], "u_occ": u_occ[:8], "valid": np.ones(8, np.float32)},
                {"u_clean": pad(u_clean[8:]), "u_occ": pad(u_occ[8:]),
                 "valid": np.float32([1, 1, 1, 1, 0, 0, 0, 0])}])
  assert float(padded["count"]) == float(exact["count"]) == 12
  for key in ("mean", "change", "level"):
    chex.assert_trees_all_close(padded[key], exact[key], atol=1e-6)


def test_stage_two_takes_at_most_pairs_per_block_of_the_banks_faces(tmp_path):
  os.makedirs(tmp_path / workdir_lib.BANK)
  _fake_bank(str(tmp_path / workdir_lib.BANK))  # 8 faces, 2 variants
  config = tiny.get_config()
  config.dictionary.update(source="bank", batch_size=4)
  for cap, faces in ((5, 2), (16, 8), (1000, 8)):
    config.dictionary.pairs_per_block = cap
    batches, _ = dictionary._bank_batches(config, str(tmp_path))  # pylint: disable=protected-access
    batches = list(batches)
    rows = [b["u_clean"][b["valid"] == 1][:, 0, 0, 0] for b in batches]
    assert len(batches) == 2 * -(-faces // 4)  # each batch once per variant
    assert sorted(np.concatenate(rows).tolist()) == sorted(
        [1000.0 * f for f in range(faces)] * 2)
    occ = batches[1]["u_occ"][0, :, 0, 0, 0]  # variant 1 of the first face: its alone entries
    np.testing.assert_array_equal(occ, [feature_bank.alone_index(1, k) for k in range(9)])


def test_records_from_before_the_source_fields_stay_fresh(tmp_path):
  wd, c = str(tmp_path), tiny.get_config()
  for name, kind, up in (("trunk", "trunk", ()), ("pdsn", "pdsn", ("trunk",)),
                         ("dictionary", "dictionary", ("pdsn",))):
    provenance.begin(c, wd, name, kind, up)
    with open(os.path.join(wd, name, "out.bin"), "w") as f:
      f.write(name)
  for name, field in (("pdsn", "pdsn.source"), ("dictionary", "dictionary.source")):
    for f in (provenance.RECORD, provenance.COPY):  # as the code before the bank wrote them
      path = os.path.join(wd, name, f)
      rec = json.load(open(path))
      del rec["fields"][field]
      json.dump(rec, open(path, "w"))
  assert provenance.stale(c, wd, "dictionary") == []
  c.pdsn.source = "bank"
  assert any("pdsn.source" in w for w in provenance.stale(c, wd, "pdsn"))


@pytest.fixture(scope="module")
def bank_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("bank") / "run")
  helpers.run_main(wd, *BANK)
  return wd


@pytest.mark.slow
def test_the_bank_holds_the_trunks_u_of_each_recorded_occlusion(bank_run):
  config = tiny.get_config()
  bank = feature_bank.open_bank(workdir_lib.stage_dir(bank_run, workdir_lib.BANK))
  src, _ = sources.build(config.data)
  assert len(bank) == len(src) and bank.manifest["entries_per_face"] == 19
  shard = json.load(open(os.path.join(bank.folder, feature_bank.shard_name(1, "json"))))
  i = shard["faces"][3]  # a face of the second shard
  seed = training.data_seed(config, bank_stage.STAGE.stream)
  images, where = bank_stage.face_entries(src[i]["image"], i, seed, 1,
                                          builders.training_occluders(config), config.occlusion)
  assert where == shard["placements"][3]
  for k, b in enumerate(occlusion.CENTRAL_BLOCKS):
    alone, nbr = where[k], where[9 + k]
    assert [p["block"] for p in alone] == [b]
    assert nbr[0]["block"] == b and len(nbr) == 2
    r0, c0 = divmod(b, occlusion.GRID)
    r1, c1 = divmod(nbr[1]["block"], occlusion.GRID)
    assert abs(r0 - r1) + abs(c0 - c1) == 1
    assert all(p["source"] for p in alone + nbr)
  trunk = workdir_lib.load(bank_run, workdir_lib.TRUNK)
  net = builders.backbone(config, False)
  u = net.apply(checkpointing.backbone_of(trunk),
                builders.normalize(np.stack([src[i]["image"]] + images)), method="features")
  row = bank.rows(i, i + 1)[0]
  chex.assert_trees_all_close(row, np.asarray(u), rtol=1e-4, atol=1e-3 * float(np.abs(u).max()))
  assert workdir_lib.read_summary(bank_run, "bank")["faces"] == len(src)
  d = workdir_lib.read_summary(bank_run, "dictionary")
  assert d["source"] == "bank" and d["pairs_per_block"] == len(src)
  assert workdir_lib.BANK in provenance.read(bank_run, "dictionary")["upstream"]
  assert workdir_lib.BANK in provenance.read(bank_run, "pdsn")["upstream"]


@pytest.mark.slow
def test_a_bank_build_killed_after_a_shard_resumes_to_the_same_bytes(bank_run, tmp_path):
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  shutil.copytree(os.path.join(bank_run, "trunk"), os.path.join(wd, "trunk"))
  shutil.copy(os.path.join(bank_run, "config.json"), os.path.join(wd, "config.json"))
  helpers.run_until(wd, "shard 1/3", "--config.stages=bank")
  folder = workdir_lib.stage_dir(wd, workdir_lib.BANK)
  assert not feature_bank.is_complete(folder)
  assert 0 in feature_bank.written_shards(folder)
  helpers.run_main(wd, "--config.stages=bank")
  ours = json.load(open(os.path.join(folder, feature_bank.MANIFEST)))["shards"]
  theirs = json.load(open(os.path.join(bank_run, "bank", feature_bank.MANIFEST)))["shards"]
  assert [s["sha256"] for s in ours] == [s["sha256"] for s in theirs]
  # a changed bank field is refused, naming it
  with pytest.raises(AssertionError, match="bank.variants: 1 -> 2"):
    helpers.run_main(wd, "--config.stages=bank", "--config.bank.variants=2")
