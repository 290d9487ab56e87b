"""Nothing silently wrong at the edges (issue 38): one test per probe of the adversarial user,
each failing on the code before the fix. Probes that need a finished run use the session's
tiny run (a copy when they change it); the rest run on arrays and files made here."""

import errno
import json
import os
import shutil
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from pdsn_jax.run import checkpointing, files, provenance
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax import recognizer
from pdsn_jax.faces import finding as faces_lib
from pdsn_jax.data import folders, pairs
from pdsn_jax.gallery import store
from tests import helpers

U_SHAPE = (7, 6, 8)


class _Photos:
  """A store source over photo files, as ``gallery._Folder`` lists them (inventory)."""

  def __init__(self, root):
    self.root = str(root)
    self.paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(self.root) for f in fs)

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    return {"image": np.zeros((4, 4, 3), np.uint8), "label": 0}

  def inventory(self):
    return [[os.path.relpath(p, self.root), os.path.getsize(p), os.stat(p).st_mtime_ns]
            for p in self.paths]


def _photos(root, n_per_person=4, people=3):
  for p in range(people):
    os.makedirs(root / f"p{p}", exist_ok=True)
    for i in range(n_per_person):
      (root / f"p{p}" / f"{i}.png").write_bytes(f"photo {p} {i}".encode())


def _features(n_calls):
  def f(images):
    n_calls.append(len(images))
    return np.ones((len(images), *U_SHAPE), np.float32)
  return f


def _store(path, src, dtype="float32", features=None):
  return store.build_from_source(
      str(path), src, features or _features([]), u_shape=U_SHAPE, dtype=dtype, shard_size=4,
      trunk_checkpoint="run/trunk", trunk_fingerprint="aa", description="images:x")


# ------------------------------------------------------------------ 1, 2, 12: the gallery store


def test_a_resumed_store_over_moved_photos_is_refused_naming_the_first_difference(tmp_path):
  """The probe: kill after shard 2, move a photo to another identity (same count), rerun:
  rc 0, the moved photo missing and another stored twice."""
  _photos(tmp_path / "gal")
  out = tmp_path / "st"
  _store(out, _Photos(tmp_path / "gal"))
  os.remove(out / "shard_00002.npy")  # as if killed before the last shard
  shutil.move(tmp_path / "gal" / "p0" / "3.png", tmp_path / "gal" / "p1" / "9.png")
  with pytest.raises(store.InputsChanged, match=r"face 3: 'p0/3.png' .* then, 'p1/0.png'"):
    _store(out, _Photos(tmp_path / "gal"))
  shutil.move(tmp_path / "gal" / "p1" / "9.png", tmp_path / "gal" / "p0" / "3.png")
  os.utime(tmp_path / "gal" / "p0" / "3.png", ns=(0, json.load(open(out / "inputs.json"))[3][2]))
  calls = []
  _, stats = _store(out, _Photos(tmp_path / "gal"), features=_features(calls))
  assert stats["shards_built"] == 1 and calls == [4]  # the same files: resumed


def test_a_second_build_into_the_same_store_is_refused_while_the_first_runs(tmp_path):
  _photos(tmp_path / "gal")
  with files.locked(str(tmp_path / "st"), "the gallery store", ".lock.0"):
    with pytest.raises(files.InUse, match=r"in use by pid \d+"):
      _store(tmp_path / "st", _Photos(tmp_path / "gal"))
  _store(tmp_path / "st", _Photos(tmp_path / "gal"))  # the lock died with its holder


def test_float16_never_stores_inf_and_names_the_channels_and_the_way_out(tmp_path):
  """The probe: 43% of the stored values were inf, with only numpy's overflow warning."""
  u = np.ones((2, *U_SHAPE), np.float32)
  u[:, 0, 0, 5] = 9e4
  with pytest.raises(store.OutOfRange, match=r"channels \[5\] of 8.*--dtype=int8"):
    store.quantize(u, "float16")
  q, scale = store.quantize(u, "int8")  # per-face, per-channel scales hold it
  back = store.dequantize(q, scale)
  chex.assert_tree_all_finite(back)
  chex.assert_trees_all_close(back[:, 0, 0, 5], u[:, 0, 0, 5], rtol=1e-2)
  u[0, 1, 1, 1] = np.nan
  with pytest.raises(store.OutOfRange, match="non-finite"):
    store.quantize(u, "float32")
  _photos(tmp_path / "gal", 2, 1)
  big = lambda images: np.full((len(images), *U_SHAPE), 7e4, np.float32)  # noqa: E731
  with pytest.raises(store.OutOfRange, match=r"shard 0"):
    _store(tmp_path / "st", _Photos(tmp_path / "gal"), dtype="float16", features=big)
  assert sorted(os.listdir(tmp_path / "st")) == [".lock.0", "inputs.json", "meta.json"]


# ---------------------------------------------------------------- 3, 11, 14: photos as taken


def _rotated_jpeg(path, orientation=6):
  """A landscape image whose left edge is white, stored with an EXIF orientation tag."""
  a = np.zeros((40, 80, 3), np.uint8)
  a[:, :10] = 255
  im = Image.fromarray(a)
  exif = im.getexif()
  exif[0x0112] = orientation
  im.save(path, "JPEG", exif=exif.tobytes())


def test_phone_photos_are_read_upright(tmp_path):
  """The probe: a JPEG with EXIF Orientation=6 was aligned tilted by ~50 degrees."""
  _rotated_jpeg(tmp_path / "phone.jpg")
  img = folders.load_rgb(str(tmp_path / "phone.jpg"))
  assert img.shape == (80, 40, 3)  # portrait, as the phone showed it
  assert img[:8].mean() > 200 and img[20:].mean() < 30  # the white edge is now the top


def test_a_huge_photo_is_shrunk_as_it_is_read_and_its_landmarks_follow(tmp_path):
  """The probe: 8 PNGs of 12000x12000 took 4.9 GB in embed (each chunk decoded whole)."""
  w, h = 3000, 2000
  a = np.zeros((h, w, 3), np.uint8)
  a[900:1100, 1400:1600] = 200
  Image.fromarray(a).save(tmp_path / "big.png")
  img, scale = folders.load_photo(str(tmp_path / "big.png"), max_pixels=600_000)
  assert img.shape[0] * img.shape[1] <= 600_000 and scale == pytest.approx(
      img.shape[1] / w, rel=1e-2)
  pts = np.array([[1450, 950], [1550, 950], [1500, 1000], [1460, 1050], [1540, 1050]], float)
  small = faces_lib.find([str(tmp_path / "big.png")], (112, 96), "arcface",
                         {str(tmp_path / "big.png"): pts})[0]
  faces_lib.MAX_PHOTO_PIXELS, old = 600_000, faces_lib.MAX_PHOTO_PIXELS
  try:
    shrunk = faces_lib.find([str(tmp_path / "big.png")], (112, 96), "arcface",
                            {str(tmp_path / "big.png"): pts})[0]
  finally:
    faces_lib.MAX_PHOTO_PIXELS = old
  # the TSV's points are in the photo's own pixels: the crop is the same face either way
  assert abs(small.face.astype(float).mean() - shrunk.face.astype(float).mean()) < 8


class _CountingFinder:
  def __init__(self):
    self.batches = []

  def detect_batch(self, images, min_face=0, faces="largest"):
    del min_face, faces
    self.batches.append(sum(im.shape[0] * im.shape[1] for im in images))
    return [[] for _ in images]


def test_the_finder_never_holds_more_than_a_chunks_pixels(tmp_path, monkeypatch):
  for i in range(5):
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(tmp_path / f"{i}.png")
  monkeypatch.setattr(faces_lib, "CHUNK_PIXELS", 2 * 300 * 400)
  finder = _CountingFinder()
  found = faces_lib.find(faces_lib.list_images(str(tmp_path)), (112, 96), "arcface", None,
                         finder)
  assert len(found) == 5 and max(finder.batches) <= 2 * 300 * 400 and len(finder.batches) == 3


def test_gifs_are_listed_and_read_as_their_first_frame(tmp_path):
  """The probe: .gif files were skipped without being listed."""
  frames = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (10, 250)]
  frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
  assert faces_lib.list_images(str(tmp_path)) == [str(tmp_path / "anim.gif")]
  assert folders.load_rgb(str(tmp_path / "anim.gif")).mean() < 30


# ------------------------------------------------------------------------- 10, 12: readers


def test_list_files_never_open_paths_outside_their_root(tmp_path):
  from pdsn_jax.data import ar_photos  # pylint: disable=g-import-not-at-top
  root = tmp_path / "ar"
  root.mkdir()
  for rel in ("../secret.png", "/etc/passwd"):
    (root / "labels.tsv").write_text("relative_path\tsubject\tsession\tindex\tkind\n"
                                     f"{rel}\t1\t1\t1\tneutral\n")
    with pytest.raises(ValueError, match=r"labels.tsv line 2: path .* is outside"):
      ar_photos.read_labels(str(root))
  (tmp_path / "pairs.txt").write_text("1 300\nAnn 1 ../../etc 2\n")
  with pytest.raises(ValueError, match=r"pairs.txt:2: .*a name is a path"):
    pairs.read_lfw_pairs(str(tmp_path / "pairs.txt"))


# ------------------------------------------------------------------- 8: checkpoint contents


def test_a_flipped_byte_in_a_checkpoint_is_caught_by_its_seal(tmp_path, tiny_run, caplog):
  """The probe: one flipped byte in a checkpoint restored silently with changed weights."""
  wd = str(tmp_path / "run")
  shutil.copytree(os.path.join(tiny_run, "trunk"), os.path.join(wd, "trunk"))
  ckpt = workdir_lib.checkpoints(wd, "trunk")
  steps = sorted(checkpointing.finished_steps(ckpt))
  assert len(steps) >= 2 and all(
      os.path.isfile(os.path.join(ckpt, str(s), checkpointing.SEAL)) for s in steps)
  older = checkpointing._load_state(os.path.join(ckpt, str(steps[-2]), "state"))
  d = os.path.join(ckpt, str(steps[-1]), "state")
  data = [os.path.join(p, f) for p, _, fs in os.walk(d) for f in fs]
  biggest = max(data, key=os.path.getsize)
  blob = bytearray(open(biggest, "rb").read())
  blob[len(blob) // 2] ^= 0x01
  open(biggest, "wb").write(bytes(blob))
  got = workdir_lib.load(wd, "trunk")
  assert f"checkpoint step {steps[-1]}" in caplog.text and "checksum mismatch" in caplog.text
  chex.assert_trees_all_equal(got["params"], jax.tree.map(np.asarray, older["params"]))


# ------------------------------------------------------------ 4, 5, 14: the photo commands


@pytest.fixture(scope="module")
def run_copy(tmp_path_factory, tiny_run):
  wd = str(tmp_path_factory.mktemp("edges") / "run")
  shutil.copytree(tiny_run, wd, ignore=shutil.ignore_patterns("distractors_*", "export"))
  os.makedirs(os.path.join(wd, "p"))
  for i, name in enumerate(("a.png", "b.png")):
    Image.fromarray(np.full((112, 96, 3), 60 + 40 * i, np.uint8)).save(
        os.path.join(wd, "p", name))
  return wd


@pytest.mark.parametrize("value", ["NaN", "-7.5", "\"0.3\""])
def test_a_threshold_outside_minus_one_to_one_never_decides(run_copy, tmp_path, value):
  """The probe: NaN gave 'different people (threshold nan)', -7.5 'same person', rc 0."""
  wd = str(tmp_path / "run")
  shutil.copytree(run_copy, wd)
  path = workdir_lib.thresholds_file(wd)
  t = json.load(open(path))
  for model in t.values():
    model["occluded"] = "@"
  open(path, "w").write(json.dumps(t).replace('"@"', value))
  rec = recognizer.Recognizer(wd)
  t, why = rec.threshold(occluded=True)
  assert t is None and "none usable" in why and "not a cosine in [-1, 1]" in why
  t, why = rec.threshold(occluded=False)  # the clean one is fine and still decides
  assert -1 <= t <= 1 and "mean of the 10 fold thresholds" in why


@pytest.mark.slow
def test_the_commands_refuse_stages_made_under_another_config(run_copy, tmp_path):
  """The probe: after the trunk was made again with a changed field, embed used the new trunk
  with the old dictionary (rc 0, no warning)."""
  wd = str(tmp_path / "run")
  shutil.copytree(run_copy, wd)
  helpers.run_main(wd, "--config.stages=trunk", "--config.overwrite=trunk",
                   "--config.trunk.learning_rate=0.05")
  with pytest.raises(provenance.StaleStage, match=r"(?s)model 'PDSN \+ fine-tune'.*made from "
                                                  r"another 'trunk'"):
    recognizer.Recognizer(wd)


@pytest.mark.slow
def test_a_full_disk_in_a_command_is_one_line_and_leaves_no_partial_file(run_copy, tmp_path):
  """The probe: a full disk left a 0-byte embeddings.npz and a raw OSError traceback."""
  out = tmp_path / "e.npz"
  code = ("import errno, runpy, sys, numpy as np\n"
          "def full(f, **k):\n"
          "  f.write(b'PK half a file')\n"
          "  raise OSError(errno.ENOSPC, 'No space left on device', f.name)\n"
          "np.savez_compressed = full\n"
          "sys.argv = ['embed'] + sys.argv[1:]\n"
          "runpy.run_module('pdsn_jax.cli.embed', run_name='__main__')\n")
  proc = subprocess.run([sys.executable, "-c", code, f"--workdir={run_copy}",
                         f"--images={os.path.join(run_copy, 'p')}", f"--out={out}",
                         "--face_finder=none"], cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "disk full writing" in proc.stderr and "MiB free on that disk" in proc.stderr
  assert os.listdir(tmp_path) == []  # neither the file nor its temporary


def test_orbax_wrapped_disk_full_is_recognised():
  """Orbax's writer reports ENOSPC as text (182 lines of RESOURCE_EXHAUSTED tracebacks)."""
  e = ValueError("RESOURCE_EXHAUSTED: Error writing \"/tmp/run/trunk/checkpoints/4/state/d/x\""
                 " [os_error_code='28'] [source locations='...']")
  try:
    raise RuntimeError("async save failed") from e
  except RuntimeError as outer:
    line = files.disk_full(outer)
  assert line.startswith("disk full writing /tmp/run/trunk/checkpoints/4/state/d/x (")
  assert files.disk_full(ValueError("RESOURCE_EXHAUSTED: out of memory")) is None


def test_gallery_stage_must_be_one_of_the_runs_networks(run_copy, tmp_path):
  """The probe: --stage=../other_run/trunk read another run's checkpoints."""
  proc = subprocess.run([sys.executable, "-m", "pdsn_jax.cli.gallery", f"--workdir={run_copy}",
                         f"--out={tmp_path / 'st'}", f"--images={os.path.join(run_copy, 'p')}",
                         "--stage=../other/trunk", "--face_finder=none"], cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode != 0 and "--stage='../other/trunk': must be one of this run's " \
      "networks ['baseline', 'finetune', 'trunk']" in proc.stderr


# ------------------------------------------------------------ 14: errors a user can act on


@pytest.mark.parametrize("row, says", [("nan 1 2 3 4 5 6 7 8 9", "not finite"),
                                       ("5 5 5 5 5 5 5 5 5 5", "degenerate")])
def test_bad_landmarks_name_the_file_and_row(tmp_path, row, says):
  """The probe: NaN or degenerate landmarks gave LinAlgError naming neither file nor row."""
  tsv = tmp_path / "marks.tsv"
  tsv.write_text("relative_path\tpoints\na.jpg\t1 2 3 4 5 6 7 8 9 10\nb.jpg\t" + row + "\n")
  with pytest.raises(ValueError, match=rf"marks.tsv:3: landmarks for 'b.jpg' are {says}"):
    folders.read_landmarks(str(tsv))


def test_a_damaged_face_finder_weights_file_is_named(tmp_path):
  wd = str(tmp_path)
  os.makedirs(os.path.dirname(workdir_lib.face_finder_weights(wd)))
  open(workdir_lib.face_finder_weights(wd), "wb").write(b"PK\x03\x04 not a zip")
  with pytest.raises(files.DamagedFile, match=r"short_range.npz \(the run's tuned face-finder "
                                              r"weights\) cannot be read.*shipped"):
    recognizer.face_finder("blazeface", wd)


def test_an_edited_config_json_names_the_field_not_a_flax_error(run_copy, tmp_path):
  """The probe: a config.json shape edit surfaced as flax's ScopeParamShapeError."""
  wd = str(tmp_path / "run")
  shutil.copytree(run_copy, wd)
  c = json.load(open(workdir_lib.config_file(wd)))
  c["model"]["width"] = c["model"]["width"] * 2
  json.dump(c, open(workdir_lib.config_file(wd), "w"))
  with pytest.raises(provenance.StaleStage, match=r"model.width"):
    recognizer.Recognizer(wd)
  # without records (an older run) the shapes themselves are checked
  for d in os.listdir(wd):
    for f in (provenance.RECORD, provenance.COPY):
      if os.path.isfile(os.path.join(wd, d, f)):
        os.remove(os.path.join(wd, d, f))
  with pytest.raises(ValueError, match=r"does not fit the network of the run's config.json: "
                                       r"\[.*\] is \(\d+,?.*\) in the checkpoint, \("):
    recognizer.Recognizer(wd)


@pytest.mark.slow
def test_detect_reports_an_unreadable_image_and_goes_on(run_copy, tmp_path):
  """The probe: detect aborted at the first unreadable image."""
  images = tmp_path / "img"
  shutil.copytree(os.path.join(run_copy, "p"), images)
  (images / "0_broken.png").write_bytes(b"\x89PNG broken")
  out = tmp_path / "sheet.png"
  proc = subprocess.run([sys.executable, "-m", "pdsn_jax.cli.occlusions", f"--workdir={run_copy}",
                         f"--images={images}", f"--out={out}"], cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "skipped" in proc.stderr and "0_broken.png" in proc.stderr and out.is_file()


@pytest.mark.slow
def test_a_rerun_keeps_what_the_first_run_measured(tmp_path, tiny_run):
  """The probe: a rerun rewrote trunk/summary.json without heldout_verification_at_start."""
  wd = str(tmp_path / "run")
  shutil.copytree(tiny_run, wd, ignore=shutil.ignore_patterns("distractors_*", "export"))
  first = workdir_lib.read_summary(wd, "trunk")
  assert "heldout_verification_at_start" in first
  helpers.run_main(wd, "--config.stages=trunk")
  again = workdir_lib.read_summary(wd, "trunk")
  assert again["heldout_verification_at_start"] == first["heldout_verification_at_start"]
  # the probe: a complete stage's rerun wrote its few seconds as the stage's training time
  assert again["seconds_this_run"] == first["seconds_this_run"] > 0
  assert again["started_at_step"] == first["started_at_step"] == 0
