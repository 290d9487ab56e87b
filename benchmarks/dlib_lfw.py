"""LFW 10-fold verification with the Flax port of dlib's ResNet, and its speed against dlib's.

  pip install dlib-bin face_recognition_models
  python -m benchmarks.dlib_lfw --lfw=../shared/data/lfw [--batch=64] [--dlib_speed_faces=200]

Faces are aligned by the project (``data.alignment="dlib_chip"``: the shipped
5-point template of dlib's 150x150 chip, fitted by benchmarks/fit_dlib_chip.py)
from ../shared/data/lfw/landmarks.tsv; descriptors are compared by Euclidean
distance (dlib's metric) with the LFW protocol (10 folds of pairs.txt, threshold
chosen on the other 9). Prints a table: accuracy, faces/s of the port (jitted,
batched, all cores) and of dlib's compute_face_descriptor (one face per call).
"""

import os
import time

from absl import app, flags
import numpy as np


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_string("lfw", '../shared/data/lfw', 'The LFW folder (pairs.txt, landmarks.tsv).')
  flags.DEFINE_integer("batch", 64, 'Faces per batch.')
  flags.DEFINE_integer("pairs_every", 1, "Every this-th pair of pairs.txt (1: all 6,000; a "
                       "quick look: 100, 60 pairs in 10 folds).")
  flags.DEFINE_integer("dlib_speed_faces", 200, 'Faces timed through dlib itself.')


def main(argv):
  del argv
  args = flags.FLAGS
  import jax  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data import pairs as pairs_lib, sources  # pylint: disable=g-import-not-at-top
  from pdsn_jax.evaluation import verification  # pylint: disable=g-import-not-at-top
  from pdsn_jax.models import dlib_files, dlib_resnet  # pylint: disable=g-import-not-at-top

  named, issame = pairs_lib.read_lfw_pairs(os.path.join(args.lfw, "pairs.txt"),
                                           pairs_lib.FLAT_LFW)
  named, issame = named[::args.pairs_every], issame[::args.pairs_every]
  t = time.time()
  faces, idx = sources.load_pair_images(named, args.lfw, os.path.join(args.lfw, "landmarks.tsv"),
                                        (150, 150), "dlib_chip")
  print(f"aligned {len(faces)} faces in {time.time() - t:.1f}s")
  model = dlib_resnet.DlibResNet()
  variables = dlib_resnet.to_variables(dlib_resnet.read_network(dlib_files.path()))
  fwd = jax.jit(lambda v, x: model.apply(v, (x.astype(np.float32) - 127.5) / 128.0))
  fwd(variables, faces[:args.batch]).block_until_ready()  # compile
  t = time.time()
  desc = np.concatenate([np.asarray(fwd(variables, faces[i:i + args.batch]))
                         for i in range(0, len(faces), args.batch)])
  port_fps = len(faces) / (time.time() - t)
  scores = -np.linalg.norm(desc[idx[:, 0]] - desc[idx[:, 1]], axis=1)
  res = verification.ten_fold_accuracy(scores, issame)
  dlib_fps = float("nan")
  try:
    import dlib  # pylint: disable=g-import-not-at-top
    fr = dlib.face_recognition_model_v1(dlib_files.path())
    n = min(args.dlib_speed_faces, len(faces))
    fr.compute_face_descriptor(faces[0])
    t = time.time()
    for f in faces[:n]:
      fr.compute_face_descriptor(f)
    dlib_fps = n / (time.time() - t)
  except ImportError:
    pass
  print("| model | LFW 10-fold | faces/s |")
  print("|---|---:|---:|")
  print(f"| Flax port (project alignment) | {100 * res['accuracy']:.2f} +- "
        f"{100 * res['std']:.2f} | {port_fps:.1f} (batch {args.batch}, jit) |")
  print(f"| dlib compute_face_descriptor | - | {dlib_fps:.1f} (one face per call) |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
