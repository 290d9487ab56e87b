"""insightface formats: RecordIO sets and verification .bin files written here, read back."""

import io
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from pdsn_jax.data import insightface
from pdsn_jax.data.synthetic import SyntheticFaces
from tests import helpers


def pack(labels, image_bytes: bytes = b"") -> bytes:
  """One record's payload, as insightface's writer packs it (the reader's test input)."""
  labels = np.atleast_1d(np.asarray(labels, np.float32))
  header = insightface._HEADER  # pylint: disable=protected-access
  if len(labels) == 1:
    return header.pack(0, float(labels[0]), 0, 0) + image_bytes
  return header.pack(len(labels), 0.0, 0, 0) + labels.astype("<f4").tobytes() + image_bytes


def write_recordio(rec_path: str, idx_path: str, payloads: list[bytes]) -> None:
  """Records 0..n-1 in insightface's .rec/.idx layout."""
  with open(rec_path, "wb") as rec, open(idx_path, "w", encoding="ascii") as idx:
    for i, p in enumerate(payloads):
      idx.write(f"{i}\t{rec.tell()}\n")
      rec.write(struct.pack("<II", insightface.MAGIC, len(p)) + p + b"\0" * (-len(p) % 4))

FACES = SyntheticFaces(3, 2, 0, 400, (112, 112))


def _jpeg(a):
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format="PNG")  # lossless, so pixels can be compared
  return buf.getvalue()


def _write_set(tmp_path):
  images = [FACES[i]["image"] for i in range(6)]  # identities 0,0,1,1,2,2
  payloads = [pack([7.0, 10.0])]  # header: images 1..6, identities 7..9
  payloads += [pack(float(i // 2), _jpeg(im)) for i, im in enumerate(images)]
  payloads += [pack([1 + 2 * k, 3 + 2 * k]) for k in range(3)]
  rec, idx = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
  write_recordio(rec, idx, payloads)
  return rec, idx, images


def test_recordio_round_trip_with_identity_ranges(tmp_path):
  rec, idx, images = _write_set(tmp_path)
  src = insightface.RecordIOFaces(rec)
  assert len(src) == 6 and src.num_classes == 3
  assert src.labels.tolist() == [0, 0, 1, 1, 2, 2]
  for i in range(6):
    np.testing.assert_array_equal(src[i]["image"], images[i])
  cropped = insightface.RecordIOFaces(rec, idx, (112, 96))[0]["image"]
  np.testing.assert_array_equal(cropped, images[0][:, 8:104])
  pickle.loads(pickle.dumps(src))[1]  # picklable for grain workers


def test_recordio_errors_name_file_and_offset(tmp_path):
  rec, idx, _ = _write_set(tmp_path)
  data = open(rec, "rb").read()
  offsets = insightface.read_index(idx)
  # bad magic at record 2
  bad = bytearray(data)
  bad[offsets[2]] ^= 0xFF
  open(rec, "wb").write(bytes(bad))
  src = insightface.RecordIOFaces(rec)
  with pytest.raises(ValueError, match=rf"train.rec: bad magic .* at byte offset {offsets[2]}"):
    src[1]
  # truncated: the file ends inside record 6
  open(rec, "wb").write(data[:offsets[6] + 20])
  with pytest.raises(ValueError, match=rf"truncated|past the end"):
    insightface.RecordIOFaces(rec)
  # index past the end of the file
  open(rec, "wb").write(data)
  with open(idx, "a", encoding="ascii") as f:
    f.write(f"99\t{len(data) + 100}\n")
  src = insightface.RecordIOFaces(rec)
  with pytest.raises(ValueError, match=rf"record 99 at byte offset {len(data) + 100} is past"):
    src.read(99)
  with pytest.raises(FileNotFoundError, match="nope.rec"):
    insightface.RecordIOFaces(str(tmp_path / "nope.rec"))


def test_verification_bin_round_trip(tmp_path):
  images = [FACES[i]["image"] for i in range(4)]
  path = tmp_path / "lfw.bin"
  with open(path, "wb") as f:
    pickle.dump(([_jpeg(a) for a in images], [True, False]), f)
  got, pairs, issame = insightface.read_verification_bin(str(path))
  np.testing.assert_array_equal(got, np.stack(images))
  assert pairs.tolist() == [[0, 1], [2, 3]] and issame.tolist() == [True, False]
  with open(path, "wb") as f:
    pickle.dump(([_jpeg(images[0])], [True]), f)
  with pytest.raises(ValueError, match="1 images for 1 pairs"):
    insightface.read_verification_bin(str(path))
  path.write_bytes(b"garbage")
  with pytest.raises(ValueError, match="not an insightface verification"):
    insightface.read_verification_bin(str(path))


def test_crafted_bin_runs_no_code_and_names_the_file(tmp_path):
  target = tmp_path / "created"
  path = tmp_path / "evil.bin"
  good = [_jpeg(FACES[i]["image"]) for i in range(2)]
  for payload in (helpers.Exploit(target), (good, [True, helpers.Exploit(target)])):  # garbage, or shaped
    with open(path, "wb") as f:
      pickle.dump(payload, f, protocol=2)
    with pytest.raises(ValueError, match=r"evil.bin: refusing pickle global (posix|os|nt)\.system"):
      insightface.read_verification_bin(str(path))
    assert not target.exists()


def test_bin_decoding_failure_names_the_image(tmp_path):
  path = tmp_path / "broken.bin"
  good = _jpeg(FACES[0]["image"])
  with open(path, "wb") as f:
    pickle.dump(([good, good, good, good[:40]], np.array([True, False])), f, protocol=2)
  with pytest.raises(ValueError, match=r"broken.bin: image 3 \(pair 1\) cannot be decoded"):
    insightface.read_verification_bin(str(path))


def test_recordio_header_is_checked_before_allocating(tmp_path):
  for first, end in ((3e8, 3e8 + 2), (2.0 ** 40, 2.0 ** 40 + 1), (7.0, 20.0)):
    rec, idx = str(tmp_path / "big.rec"), str(tmp_path / "big.idx")
    write_recordio(rec, idx, [pack([first, end]),
                                          pack(0.0, _jpeg(FACES[0]["image"]))])
    with pytest.raises(insightface.RecordIOError, match=r"big.rec: header claims .*big.idx "
                                                        r"indexes 2 records"):
      insightface.RecordIOFaces(rec)
