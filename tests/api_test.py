"""The Python API (``import pdsn_jax``) on a tiny run: images in memory -> faces -> embeddings
-> verify and identify, the same numbers as the commands' files, and the loaders that read those
files back (issue 39 items 1 and 5)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import pdsn_jax
from pdsn_jax import api
from pdsn_jax.data import occlusion, placement
from pdsn_jax.data.synthetic import SyntheticFaces
from tests import helpers

pytestmark = pytest.mark.slow  # the session's tiny run


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """3 people x 3 aligned faces in memory (one masked) and the same as PNG files."""
  root = tmp_path_factory.mktemp("api")
  src = SyntheticFaces(3, 3, 0, 50)
  images, people = [], []
  for i in range(len(src)):
    r = src[i]
    img = r["image"]
    if i == 4:
      img, _ = placement.occlude(img, np.random.default_rng(0), occlusion.OccluderLibrary("", True),
                                 "mask")
    images.append(img)
    people.append(f"person{r['label']}")
    folder = root / ("gallery" if i % 3 == 0 else "probes")
    sub = folder / people[-1] if i % 3 == 0 else folder
    os.makedirs(sub, exist_ok=True)
    Image.fromarray(img).save(sub / f"{people[-1]}_{i}.png")
  return images, people, root


@pytest.fixture(scope="module")
def run(tiny_run):
  return pdsn_jax.load(tiny_run, face_finder="none")


def _cli(module, *args):
  proc = subprocess.run([sys.executable, "-m", f"pdsn_jax.cli.{module}", *args,
                         "--face_finder=none"], cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_the_package_names_the_api():
  assert pdsn_jax.load is api.load and set(pdsn_jax._API) == set(api.__all__)
  with open(os.path.join(helpers.REPO, "pyproject.toml"), encoding="utf-8") as f:
    assert f'version = "{pdsn_jax.__version__}"' in f.read()
  with pytest.raises(AttributeError):
    pdsn_jax.no_such_name  # pylint: disable=pointless-statement


def test_images_in_memory_give_the_embed_commands_file(run, photos, tiny_run, tmp_path):
  images, _, root = photos
  probes = [images[i] for i in range(len(images)) if i % 3]
  # numpy, PIL and a grey array: the same faces whichever way they come
  mixed = [probes[0], Image.fromarray(probes[1])] + probes[2:]
  e = run.embed(run.find_faces(mixed))
  chex_shape = (len(probes), 32)
  assert e.embeddings.shape == chex_shape and e.blocks.shape == (len(probes), 9)
  assert e.masks.shape == (len(probes), 112, 96) and e.faces.dtype == np.uint8
  np.testing.assert_allclose(np.linalg.norm(e.embeddings, axis=1), 1.0, atol=1e-5)
  assert e.sources[:2] == ["<image 0>", "<image 1>"]
  out = str(tmp_path / "e.npz")
  _cli("embed", f"--workdir={tiny_run}", f"--images={root / 'probes'}", f"--out={out}")
  back = api.load_embeddings(out)
  # the files are sorted by name: person0_1, person0_2, person1_4, ...; so are the probes here
  np.testing.assert_array_equal(back.blocks, e.blocks)
  np.testing.assert_array_equal(back.masks, e.masks)
  np.testing.assert_allclose(back.embeddings, e.embeddings, rtol=0, atol=1e-6)
  assert back.model == e.model == run.model == "PDSN + fine-tune" and back.faces is None


def test_verify_in_memory_gives_the_verify_commands_decision(run, photos, tiny_run):
  images, _, root = photos
  a, b = images[4], images[7]  # the masked face and another person
  r = run.verify(a, Image.fromarray(b))
  out = _cli("verify", f"--workdir={tiny_run}", str(root / "probes" / "person1_4.png"),
             str(root / "probes" / "person2_7.png"))
  assert f"score {r.score:.4f}" in out and f"threshold {r.threshold:.4f}" in out
  assert ("same person" in out) == bool(r.same) and r.threshold_from in out
  for blocks in r.blocks:
    assert f"occluded blocks {blocks} (" in out
  assert r.same == (r.score > r.threshold)


def test_identify_in_memory_gives_the_identify_commands_ranks(run, photos, tiny_run, tmp_path):
  images, people, root = photos
  gallery = run.gallery({p: [images[i] for i in range(len(images)) if i % 3 == 0
                             and people[i] == p] for p in sorted(set(people))})
  assert gallery.identities == ["person0", "person1", "person2"]
  probes = [images[i] for i in range(len(images)) if i % 3]
  mine = run.identify(probes, gallery, k=2)
  out = str(tmp_path / "ranks.csv")
  _cli("identify", f"--workdir={tiny_run}", f"--gallery={root / 'gallery'}",
       f"--probes={root / 'probes'}", f"--out={out}", "--k=2")
  theirs = api.load_ranks(out)
  assert len(theirs) == len(mine) == 6
  for m, t in zip(mine, theirs):
    assert [x.identity for x in m] == [x.identity for x in t]
    assert [x.rank for x in m] == [1, 2] and [x.probe_blocks for x in m] == [
        x.probe_blocks for x in t]
    np.testing.assert_allclose([x.score for x in m], [x.score for x in t], rtol=0, atol=1e-6)
  # ranks.csv written by the API reads back the same
  api.save_ranks(mine, str(tmp_path / "mine.csv"))
  assert api.load_ranks(str(tmp_path / "mine.csv")) == mine


def test_results_read_back(tiny_run):
  res = api.load_results(tiny_run)
  assert "PDSN + fine-tune" in res["models"] and "data" in res
  with pytest.raises(FileNotFoundError, match="run the 'evaluate' stage"):
    api.load_results(os.path.join(tiny_run, "trunk"))


def test_bad_inputs_are_named(run, photos):
  images = photos[0]
  with pytest.raises(ValueError, match=r"<image 0>: a float32 array; images are uint8"):
    run.find_faces([images[0].astype(np.float32)])
  assert run.find_faces([np.zeros((8, 8, 3), np.uint8)])[0].note.startswith("too small")
  with pytest.raises(ValueError, match="no face found in any of the 1 inputs: <image 0>: too small"):
    run.embed([np.zeros((8, 8, 3), np.uint8)])
  with pytest.raises(ValueError, match=r"aligned face 0: 50x40 px; the run's faces are 96x112"):
    run.embed([np.zeros((40, 50, 3), np.uint8)], aligned=True)
  with pytest.raises(ValueError, match="faces='some': allowed values"):
    run.find_faces(images[:1], faces="some")
  with pytest.raises(ValueError, match="face_finder='yolo': allowed values"):
    api.load("unused", face_finder="yolo")
  with pytest.raises(ValueError, match="k=0: must be >= 1"):
    run.identify(images[:1], images[:1], k=0)
  with pytest.raises(ValueError, match=r"--occlusion='eyes'"):
    run.embed(images[:1], occlusion="eyes")


@pytest.mark.parametrize("script,extra", [
    ("verify_two_photos.py", ("probes/person1_4.png", "probes/person2_7.png")),
    ("search_a_gallery.py", ("gallery", "probes/person1_4.png", "probes/person0_1.png"))])
def test_the_examples_run(tiny_run, photos, script, extra):
  root = photos[2]
  env = {**helpers.env_with_devices(1), "PYTHONPATH": helpers.REPO}  # as after pip install -e .
  proc = subprocess.run([sys.executable, os.path.join("examples", script), tiny_run,
                         *[str(root / e) for e in extra], "--face_finder=none"],
                        cwd=helpers.REPO, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert ("score" in proc.stdout) if "verify" in script else ("1. person" in proc.stdout)
