"""Evaluation protocols: placement, AR split, pairs files, sharded top-1, the data-parallel embedder."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from pdsn_jax.method import builders, fdm
from pdsn_jax.train import parallel
from pdsn_jax.data import occlusion, pairs, placement
from pdsn_jax.data.synthetic import SyntheticFaces
from pdsn_jax.evaluation import evaluators, masked
from pdsn_jax.evaluation import sets as sets_lib
from pdsn_jax.evaluation.verification import cosine_scores

LIB = occlusion.OccluderLibrary("", True)
FACES = np.stack([SyntheticFaces(8, 1, 0, 900)[i]["image"] for i in range(8)])
B = {b: k for k, b in enumerate(occlusion.CENTRAL_BLOCKS)}  # block id -> flag column


def _flags(condition, n=8, seed=0):
  occ = sets_lib.occlude_all(FACES[:n], condition, LIB, seed, 0)
  return occ, occlusion.block_flags(occ.masks)


def test_sunglasses_cover_the_eye_row_and_masks_the_nose_row():
  # 5x5 grid on the 112x96 template: eyes (y 52) in block row 2, nose tip (y 72) in row 3
  _, f = _flags("sunglasses")
  eye_row, nose_row = [B[b] for b in (11, 12, 13)], [B[b] for b in (16, 17, 18)]
  assert f[:, eye_row].mean() > 0.6 and f[:, nose_row].sum() == 0
  _, f = _flags("mask")
  assert f[:, nose_row].mean() > 0.6 and f[:, eye_row].sum() == 0


def test_occlusion_sets_are_seeded_and_masks_are_the_changed_pixels():
  a, _ = _flags("hand", seed=3)
  b, _ = _flags("hand", seed=3)
  c, _ = _flags("hand", seed=4)
  np.testing.assert_array_equal(a.images, b.images)
  assert not np.array_equal(a.images, c.images)
  changed = np.any(a.images != FACES, axis=-1)
  assert np.all(a.masks[changed])  # every changed pixel is in the mask


def test_unknown_condition_and_source_fail_clearly():
  with pytest.raises(ValueError, match="not one of"):
    placement.occlude(FACES[0], np.random.default_rng(0), LIB, "umbrella")
  occ, _ = _flags("mask", 2)
  with pytest.raises(ValueError, match="occlusion_source"):
    sets_lib.locate(occ, "oracle")
  with pytest.raises(ValueError, match="detector"):
    sets_lib.locate(occ, "detector")


def test_ar_split_protocols():
  labels = np.repeat(np.arange(3), 5)
  g1, g2, probes = sets_lib.ar_split(labels, 3)
  assert len(g1) == 9 and len(g2) == 3 and len(probes) == 6
  assert set(g2) <= set(g1) and not set(g1) & set(probes)
  assert sorted(labels[g2].tolist()) == [0, 1, 2]


def test_random_occlusion_transform_flags_clean_faces_as_unoccluded():
  t = placement.RandomOcclusion(LIB, clean_prob=0.5)
  recs = [t({"image": FACES[i % 8].copy()}, np.random.default_rng(i)) for i in range(40)]
  clean = [r for r in recs if r["occluded_fraction"] == 0]
  occluded = [r for r in recs if r["occluded_fraction"] > 0]
  assert 8 < len(clean) < 32 and all(not r["blocks"].any() for r in clean)
  assert np.mean([r["blocks"].any() for r in occluded]) > 0.8
  with pytest.raises(ValueError, match="allowed"):
    placement.RandomOcclusion(LIB, conditions=("rain",))
  # clean_fdm_prob: clean faces (the image untouched) flagged with a random occlusion's blocks
  t = placement.RandomOcclusion(LIB, clean_prob=1.0, clean_fdm_prob=1.0, keep_clean=True)
  recs = [t({"image": FACES[i % 8].copy()}, np.random.default_rng(i)) for i in range(20)]
  for i, r in enumerate(recs):
    np.testing.assert_array_equal(r["image"], FACES[i % 8])
    assert r["occluded_fraction"] == 0
  assert np.mean([r["blocks"].any() for r in recs]) > 0.8


def test_lfw_pairs_file_both_line_kinds(tmp_path):
  p = tmp_path / "pairs.txt"
  p.write_text("10\t300\nAbel_Pacheco\t1\t4\nAbel_Pacheco\t2\tAkhmed_Zakayev\t3\n")
  named, same = pairs.read_lfw_pairs(str(p))
  assert named == [("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg"),
                   ("Abel_Pacheco/Abel_Pacheco_0002.jpg", "Akhmed_Zakayev/Akhmed_Zakayev_0003.jpg")]
  assert same.tolist() == [True, False]
  p.write_text("10\t300\nAbel_Pacheco\t1\nx\n")
  with pytest.raises(ValueError, match=r"pairs.txt:2"):
    pairs.read_lfw_pairs(str(p))
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    pairs.read_lfw_pairs(str(tmp_path / "nope.txt"))


def _embedder():
  config = tiny.get_config()
  backbone = builders.backbone(config, False)
  v = backbone.init(jax.random.key(0), jnp.zeros((1, 112, 96, 3)))
  mesh = parallel.make_mesh()
  return backbone, v, masked.Embedder(backbone, mesh, 16, builders.normalize), mesh


@pytest.mark.slow
def test_embedder_matches_single_device_and_all_ones_is_plain_embedding():
  backbone, v, emb, mesh = _embedder()
  assert mesh.size == 8
  rv = parallel.put_replicated(v, mesh)
  u = emb.features(rv, FACES[:5])  # 5 rows: padded to one global batch of 16
  chex.assert_shape(u, (5, 7, 6, 32))
  ref_u = backbone.apply(v, builders.normalize(jnp.asarray(FACES[:5])), method="features")
  chex.assert_trees_all_close(u, np.asarray(ref_u), atol=1e-4)
  table = np.random.default_rng(0).integers(0, 2, (9, 7, 6, 32)).astype(np.float32)
  none = np.zeros((5, 9), bool)
  plain = backbone.apply(v, builders.normalize(jnp.asarray(FACES[:5])))
  e = emb.embed(rv, parallel.put_replicated(table, mesh), u, none)
  chex.assert_trees_all_close(np.sum(e * e, 1), np.ones(5), atol=1e-5)
  chex.assert_trees_all_close(cosine_scores(e, np.asarray(plain)), np.ones(5), atol=1e-5)
  flags = np.eye(9, dtype=bool)[:5]
  head = functools.partial(backbone.apply, v, method="head")
  ref = masked.masked_embeddings(head, jnp.asarray(u), fdm.compose(jnp.asarray(flags),
                                                                  jnp.asarray(table)))
  chex.assert_trees_all_close(emb.embed(rv, parallel.put_replicated(table, mesh), u, flags),
                              np.asarray(ref), atol=1e-5)


@pytest.mark.slow
def test_checkpoints_sharing_the_trunks_bottom_run_only_their_top(tmp_path):
  from pdsn_jax.stages import evaluate  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.model.update(kind="mobilefacenet", width=0.25, embedding_dim=32)
  net = builders.backbone(config, False)
  trunk = jax.device_get(net.init(jax.random.key(0), jnp.zeros((1, 112, 96, 3))))

  def moved(names):
    return {"params": {k: jax.tree.map(lambda a: a * 1.1, p) if k in names else p
                       for k, p in trunk["params"].items()}, "batch_stats": trunk["batch_stats"]}

  host = {"trunk": trunk, "baseline": moved(net.top_params() + net.head_params()),
          "finetune": moved(("block0",))}
  mesh = parallel.make_mesh()
  emb = masked.Embedder(net, mesh, 16, builders.normalize)
  calls = []
  features = emb.features
  emb.features = lambda v, x, method="features": calls.append(method) or features(v, x, method)
  nets = evaluate._Networks(config, evaluators.plan(config), str(tmp_path), emb, None, mesh)
  nets.host = host
  nets.reps = {k: parallel.put_replicated(v, mesh) for k, v in host.items()}
  for stage, expect in (("trunk", ["bottom", "top"]), ("baseline", ["top"]),
                        ("finetune", ["features"])):
    calls.clear()
    u = nets._feature_fn(stage)(FACES[:5])
    assert calls == expect, stage
    ref = net.apply(host[stage], builders.normalize(jnp.asarray(FACES[:5])), method="features")
    chex.assert_trees_all_close(u, np.asarray(ref), atol=1e-4)
  assert nets.bottoms.hits == 5
  config.eval.bottom_cache_gib = 0.0  # off: every checkpoint runs its whole network
  nets = evaluate._Networks(config, evaluators.plan(config), str(tmp_path), emb, None, mesh)
  nets.host, nets.reps = host, {k: parallel.put_replicated(v, mesh) for k, v in host.items()}
  calls.clear()
  nets._feature_fn("baseline")(FACES[:5])
  assert calls == ["features"]
  with pytest.raises(ValueError, match="this trunk has"):
    _embedder()[2].features(nets.reps["trunk"], FACES[:5], "bottom")
