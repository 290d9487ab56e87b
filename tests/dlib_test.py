"""dlib's ResNet port: reader errors, descriptors equal to dlib's own, the project's chip alignment.

Parity tests need ``pip install dlib-bin face_recognition_models`` (CI installs both) and
real faces from ../shared/data/lfw; they skip, saying which, when either is missing.
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdsn_jax.data import alignment
from pdsn_jax.data.folders import read_landmarks
from pdsn_jax.models import dlib_files, dlib_resnet
from tests import helpers

LFW = os.path.join(helpers.SHARED_DATA, "lfw")


def _model_file():
  try:
    return dlib_files.path()
  except FileNotFoundError as e:
    pytest.skip(f"{e}")


@pytest.fixture(scope="module")
def port():
  net = dlib_resnet.read_network(_model_file())
  return net, dlib_resnet.to_variables(net)


@pytest.mark.slow
def test_reader_finds_the_published_architecture(port):
  net, variables = port
  kinds = [l["type"] for l in net.layers]
  assert kinds.count("con") == 29 and kinds.count("add_prev") == 14
  n = sum(np.size(x) for x in jax.tree.leaves(variables["params"]))
  assert 5_500_000 < n < 5_700_000, n
  np.testing.assert_allclose(net.mean_rgb, dlib_resnet.MEAN_RGB, atol=1e-3)
  assert net.input_size == (150, 150)
  model = dlib_resnet.DlibResNet()
  x = jnp.zeros((1, 150, 150, 3))
  assert model.apply(variables, x, method="features").shape == (1, 4, 4, 256)
  assert dlib_resnet.DlibResNet(dlib_resnet.U_BLOCKS["8x8"]).apply(
      variables, x, method="features").shape == (1, 8, 8, 128)
  assert model.apply(variables, x).shape == (1, 128)


def test_truncated_or_unknown_records_name_the_byte_offset(tmp_path):
  data = open(_model_file(), "rb").read()
  bad = tmp_path / "truncated.dat"
  bad.write_bytes(data[:200_000])
  with pytest.raises(ValueError, match=r"truncated.dat: .* at byte offset \d+"):
    dlib_resnet.read_network(str(bad))
  i = data.index(b"relu_")
  bad.write_bytes(data[:i] + b"rela_" + data[i + 5:])
  with pytest.raises(ValueError, match=rf"unknown layer record 'rela_' at byte offset {i - 2}"):
    dlib_resnet.read_network(str(bad))
  with pytest.raises(FileNotFoundError, match="nope.dat"):
    dlib_resnet.read_network(str(tmp_path / "nope.dat"))


def _dlib():
  try:
    import dlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    pytest.skip("dlib is not installed (pip install dlib-bin)")
  if not os.path.isdir(LFW):
    pytest.skip(f"real faces not found: {LFW}")
  return dlib


def _dlib_chips(dlib, n=6):
  det = dlib.get_frontal_face_detector()
  sp = dlib.shape_predictor(dlib_files.path("shape_predictor_5_face_landmarks.dat"))
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = []
  for p in sorted(glob.glob(os.path.join(LFW, "lfw", "*.jpg")))[::500]:
    img = np.asarray(Image.open(p).convert("RGB"))
    faces = det(img, 1)
    if len(faces) == 1:
      out.append((p, img, dlib.get_face_chip(img, sp(img, faces[0]), 150, 0.25)))
    if len(out) == n:
      break
  return out


def _descriptors(variables, chips):
  x = (np.stack(chips).astype(np.float32) - 127.5) / 128.0
  return np.asarray(dlib_resnet.DlibResNet().apply(variables, x))


@pytest.mark.slow
@pytest.mark.real_data
def test_descriptors_equal_dlibs_on_dlibs_own_chips(port):
  dlib = _dlib()
  _, variables = port
  fr = dlib.face_recognition_model_v1(_model_file())
  items = _dlib_chips(dlib)
  ref = np.stack([np.asarray(fr.compute_face_descriptor(c)) for _, _, c in items])
  ours = _descriptors(variables, [c for _, _, c in items])
  rel = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
  assert rel.max() < 1e-4, rel


@pytest.mark.real_data
def test_project_chips_stay_close_to_dlib_end_to_end(port):
  dlib = _dlib()
  _, variables = port
  fr = dlib.face_recognition_model_v1(_model_file())
  marks = read_landmarks(os.path.join(LFW, "landmarks.tsv"))
  items = [(p, img, c) for p, img, c in _dlib_chips(dlib) if marks.get(p) is not None]
  ref = np.stack([np.asarray(fr.compute_face_descriptor(c)) for _, _, c in items])
  ours = _descriptors(variables, [alignment.align_face(img, marks[p], (150, 150), "dlib_chip")
                                  for p, img, _ in items])
  dist = np.linalg.norm(ours - ref, axis=1)
  # dlib's same-person threshold is 0.6; the two landmark models differ by a few pixels
  assert dist.max() < 0.4, dist


@pytest.mark.real_data
@pytest.mark.slow
def test_dlib_trunk_runs_the_pdsn_stages(tmp_path):
  _model_file()
  wd = str(tmp_path / "dlib")
  proc = helpers.run_main(
      wd, "--config.stages=trunk,pdsn,dictionary",
      "--config.data.synthetic.num_identities=8", "--config.data.synthetic.images_per_identity=2",
      "--config.data.synthetic.eval_identities=4", "--config.data.synthetic.cache=False",
      "--config.trunk.num_steps=2", "--config.trunk.batch_size=8", "--config.trunk.log_every=1",
      "--config.eval.num_pairs=20", "--config.eval.batch_size=8",
      "--config.pdsn.num_steps=2", "--config.pdsn.batch_size=4", "--config.pdsn.log_every=1",
      "--config.dictionary.pairs_per_block=4", "--config.dictionary.batch_size=4",
      config="configs/dlib_trunk.py")
  assert "loaded model.kind=dlib weights from" in proc.stderr and "init_from:dlib" in proc.stderr
  from pdsn_jax.run import checkpointing  # pylint: disable=g-import-not-at-top
  t = checkpointing.load_variables(os.path.join(wd, "trunk", "checkpoints"))
  ref = dlib_resnet.to_variables(dlib_resnet.read_network(_model_file()))
  # the backbone stayed frozen while the CosFace head was fitted
  jax.tree.map(np.testing.assert_array_equal, t["params"]["backbone"], ref["params"])
  from pdsn_jax.method import fdm  # pylint: disable=g-import-not-at-top
  fdms, _, meta = fdm.load(os.path.join(wd, "dictionary", "dictionary.npz"))
  assert fdms.shape == (9, 4, 4, 256) and meta["u_shape"] == [4, 4, 256]
