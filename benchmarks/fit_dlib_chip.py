"""Fits the 5-point template of dlib's 150x150 face chip for the project's landmarks.

dlib cuts its chip (size 150, padding 0.25) from its own 5-point shape predictor
(eye corners and nose base). The project's landmarks are MTCNN-order points (eye
centres, nose tip, mouth corners), so this script finds where those points land
inside dlib's chip, averaged over many faces, and prints the constants that
``pdsn_jax.data.alignment.DLIB_CHIP_TEMPLATE_150`` ships.

  pip install dlib-bin face_recognition_models
  python -m benchmarks.fit_dlib_chip --lfw=../shared/data/lfw --num=2000

How: for each face, the chip's sampling grid is recovered exactly by cutting
the same chip (same chip_details) from two float images holding each pixel's x
and y coordinate; a least-squares similarity from chip to image coordinates is
inverted to move the project's landmarks into the chip.
"""

import os

from absl import app, flags
import numpy as np
from PIL import Image

from pdsn_jax.data import alignment
from pdsn_jax.data.folders import read_landmarks
from pdsn_jax.models import dlib_files


def chip_to_image(dlib, image_shape, details) -> np.ndarray:
  """(150*150, 2) image (x, y) sampled by every chip pixel, row-major."""
  h, w = image_shape[:2]
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  cx = dlib.extract_image_chip(np.ascontiguousarray(xx), details)
  cy = dlib.extract_image_chip(np.ascontiguousarray(yy), details)
  return np.stack([cx.reshape(-1), cy.reshape(-1)], 1)


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_string("lfw", '../shared/data/lfw', 'The LFW folder (pairs.txt, landmarks.tsv).')
  flags.DEFINE_integer("num", 2000, 'How many faces.')


def main(argv):
  del argv
  args = flags.FLAGS
  import dlib  # pylint: disable=g-import-not-at-top
  det = dlib.get_frontal_face_detector()
  sp = dlib.shape_predictor(dlib_files.path("shape_predictor_5_face_landmarks.dat"))
  marks = read_landmarks(os.path.join(args.lfw, "landmarks.tsv"))
  rr, cc = np.mgrid[0:150, 0:150]
  chip_xy = np.stack([cc.reshape(-1), rr.reshape(-1)], 1).astype(np.float64)
  pts, used = [], 0
  for path, lm in sorted(marks.items()):
    if lm is None or used >= args.num:
      continue
    img = np.asarray(Image.open(path).convert("RGB"))
    faces = det(img, 1)
    if len(faces) != 1:
      continue
    details = dlib.get_face_chip_details(sp(img, faces[0]), 150, 0.25)
    img_xy = chip_to_image(dlib, img.shape, details)
    m = alignment.similarity_transform(img_xy, chip_xy)  # image -> chip, 2x3
    pts.append(lm @ m[:, :2].T + m[:, 2])
    used += 1
  pts = np.asarray(pts)
  mean, std = pts.mean(0), pts.std(0)
  print(f"faces used: {used}")
  print("DLIB_CHIP_TEMPLATE_150 = np.array([")
  for (x, y), (sx, sy) in zip(mean, std):
    print(f"    [{x:.4f}, {y:.4f}],  # std {sx:.2f}, {sy:.2f} px")
  print("])")


if __name__ == "__main__":
  define_flags()
  app.run(main)
