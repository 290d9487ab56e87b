"""Faces found in raw photos: dlib's landmarks against the LFW landmarks TSV, and LFW accuracy
of a trunk on faces aligned by each.

  pip install dlib-bin face_recognition_models
  python benchmarks/raw_photos.py --lfw=../shared/data/lfw \\
      --weights=../shared/models/mobilefacenet_casia/068.ckpt [--landmark_images=500]

1. On the first ``--landmark_images`` LFW photos (sorted by name): how often the HOG detector
   finds a face, and the error of its five points against the TSV, in pixels of the aligned
   112x96 frame (both point sets mapped by the TSV's alignment): mean and 95th percentile.
2. LFW 10-fold accuracy (official 6,000 pairs) of the MobileFaceNet trunk on faces aligned
   with the TSV's landmarks vs with dlib's (a photo where dlib finds no face is centre-cropped
   and counted).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--lfw", default="../shared/data/lfw")
  ap.add_argument("--weights", default="../shared/models/mobilefacenet_casia/068.ckpt")
  ap.add_argument("--landmark_images", type=int, default=500)
  ap.add_argument("--detector", default="hog", choices=["hog", "cnn"])
  args = ap.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from pdsn_jax import builders  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data import faces as faces_lib, pairs as pairs_lib  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.alignment import align_face, similarity_transform, template_for  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.folders import load_rgb, read_landmarks  # pylint: disable=g-import-not-at-top
  from pdsn_jax.evaluation import verification  # pylint: disable=g-import-not-at-top
  from pdsn_jax.models import mobilefacenet  # pylint: disable=g-import-not-at-top

  marks = read_landmarks(os.path.join(args.lfw, "landmarks.tsv"))
  named, issame = pairs_lib.read_lfw_pairs(os.path.join(args.lfw, "pairs.txt"),
                                           pairs_lib.FLAT_LFW)
  lfw = os.path.abspath(args.lfw)  # the TSV's keys are absolute paths
  paths = sorted({os.path.normpath(os.path.join(lfw, p)) for pair in named for p in pair})
  finder = faces_lib.FaceFinder(args.detector)
  t = time.time()
  found = {}
  for p in paths:
    found[p] = finder.points(load_rgb(p))
  secs = time.time() - t
  missed = [p for p, (pts, _) in found.items() if pts is None]
  several = sum(1 for pts, note in found.values() if pts is not None and note != "ok")
  print(f"dlib {args.detector}: {len(paths)} LFW photos in {secs:.0f} s "
        f"({len(paths) / secs:.1f} photos/s); no face in {len(missed)} "
        f"({100 * len(missed) / len(paths):.2f}%), several faces in {several}")

  errs = []
  sample = sorted(p for p in marks if p in found)[:args.landmark_images]
  for p in sample:
    pts = found[p][0]
    if pts is None or marks[p] is None:
      continue
    m = similarity_transform(marks[p], template_for((112, 96)))
    to = lambda q: q @ m[:, :2].T + m[:, 2]  # noqa: E731
    errs.append(np.linalg.norm(to(pts) - to(marks[p]), axis=1))
  errs = np.asarray(errs)  # (faces, 5)
  per_face = errs.mean(1)
  print(f"landmark error on {len(errs)} of the first {len(sample)} photos (px, 112x96 frame): "
        f"mean {per_face.mean():.2f}, 95th percentile {np.percentile(per_face, 95):.2f}; per "
        "point (eyes, nose, mouth corners) mean " + " ".join(f"{v:.2f}" for v in errs.mean(0)))

  v = mobilefacenet.load(args.weights)
  net = mobilefacenet.MobileFaceNet()
  fwd = jax.jit(lambda x: net.apply(v, builders.normalize(x)))

  def accuracy(points_of):
    images = np.stack([align_face(load_rgb(p), points_of(p), (112, 96)) for p in paths])
    emb = np.concatenate([np.asarray(fwd(jnp.asarray(images[i:i + 64])))
                          for i in range(0, len(images), 64)])
    at = {p: i for i, p in enumerate(paths)}
    a = emb[[at[os.path.normpath(os.path.join(lfw, x))] for x, _ in named]]
    b = emb[[at[os.path.normpath(os.path.join(lfw, y))] for _, y in named]]
    r = verification.ten_fold_accuracy(verification.cosine_scores(a, b), issame)
    return r["accuracy"], r["std"]

  assert all(p in marks for p in paths), "the TSV lacks some pair images"
  tsv = accuracy(lambda p: marks[p])
  det = accuracy(lambda p: found[p][0])  # None (no face): centre crop
  print(f"LFW 6,000 pairs, MobileFaceNet trunk: TSV landmarks {100 * tsv[0]:.2f} +- "
        f"{100 * tsv[1]:.2f}; dlib {args.detector} landmarks {100 * det[0]:.2f} +- "
        f"{100 * det[1]:.2f} ({len(missed)} photos centre-cropped)")


if __name__ == "__main__":
  main()
