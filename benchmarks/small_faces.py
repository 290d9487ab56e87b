"""Small faces in large photos: BlazeFace's found rate by face size, and photos/s, for the whole
photo alone (before) and with tiles (``--min_face``, after).

  python -m benchmarks.small_faces [--faces=40] [--sizes=24,32,48,64,96] [--scene=640x480]
      [--celeba=../shared/data/celeba] [--min_face=20]

Scenes: training-side faces (CelebA crops, their landmarks file's face box) pasted at each
face width into a ``--scene`` photo (a smooth random colour gradient with noise: no other face
in it), one face per scene at a random place. A face is found when a detection overlaps its
box by IoU >= 0.3; "other" counts the remaining detections (false faces). The shipped
short-range weights, then the full-range model where none was found, as the commands use them
(``faces="all"``).
"""

import os
import time

from absl import app, flags
import numpy as np
from PIL import Image

from pdsn_jax.faces import finding as faces_lib


def _faces(root: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """(photo, face box x0 y0 x1 y1) of the first ``n`` CelebA rows with a box."""
  out = []
  with open(os.path.join(root, "landmarks.tsv"), encoding="utf-8") as f:
    next(f)
    for line in f:
      rel, _, box = line.rstrip("\n").split("\t")[:3]
      out.append((np.asarray(Image.open(os.path.join(root, rel)).convert("RGB")),
                  np.array([float(v) for v in box.split()])))
      if len(out) == n:
        break
  return out


def _scene(rng, wh, photo, box, width):
  """A gradient-and-noise scene with ``photo``'s face pasted ``width`` px wide; its box."""
  w, h = wh
  c0, c1 = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
  t = np.linspace(0, 1, w)[None, :, None] * 0.5 + np.linspace(0, 1, h)[:, None, None] * 0.5
  scene = c0 * (1 - t) + c1 * t + rng.normal(0, 8, (h, w, 3))
  # the face box with a margin (hair, chin), scaled so the box is ``width`` wide
  bw = box[2] - box[0]
  m = 0.35 * bw
  x0, y0 = max(0, int(box[0] - m)), max(0, int(box[1] - m))
  x1, y1 = min(photo.shape[1], int(box[2] + m)), min(photo.shape[0], int(box[3] + m))
  s = width / bw
  patch = np.asarray(Image.fromarray(photo[y0:y1, x0:x1]).resize(
      (max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s))), Image.BILINEAR))
  px = rng.integers(0, w - patch.shape[1])
  py = rng.integers(0, h - patch.shape[0])
  scene[py:py + patch.shape[0], px:px + patch.shape[1]] = patch
  gt = np.array([px + (box[0] - x0) * s, py + (box[1] - y0) * s,
                 px + (box[2] - x0) * s, py + (box[3] - y0) * s])
  return np.clip(scene, 0, 255).astype(np.uint8), gt


def _iou(a, b) -> float:
  iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_integer("faces", 40, "CelebA faces per size.")
  flags.DEFINE_list("sizes", ["24", "32", "48", "64", "96"], "Face widths in pixels.")
  flags.DEFINE_string("scene", "640x480", "Scene width x height.")
  flags.DEFINE_string(
      "celeba", os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
          os.path.abspath(__file__)))), "shared", "data", "celeba"), "CelebA folder (landmarks.tsv).")
  flags.DEFINE_integer("min_face", 20, "The tiled search's smallest face width.")


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  wh = tuple(int(v) for v in flags.FLAGS.scene.split("x"))
  people = _faces(flags.FLAGS.celeba, flags.FLAGS.faces)
  finder = faces_lib.FaceFinder("blazeface")
  sizes = [int(v) for v in flags.FLAGS.sizes]
  scenes = {f: [_scene(rng, wh, p, b, f) for p, b in people] for f in sizes}
  warm = [scenes[sizes[0]][0][0]]
  faces_lib.find(warm, (112, 96), finder=finder, faces="all")  # compile both paths first
  faces_lib.find(warm, (112, 96), finder=finder, faces="all", min_face=flags.FLAGS.min_face)
  print(f"{len(people)} CelebA faces per size in {wh[0]}x{wh[1]} scenes; tiles for faces >= "
        f"{flags.FLAGS.min_face} px: {len(faces_lib.tiles(wh[::-1], flags.FLAGS.min_face))} per scene")
  print("| face width px | found, whole photo | found, + tiles | other detections / scene, "
        "whole | ..., + tiles |")
  print("|---:|---:|---:|---:|---:|")
  times = {"whole": 0.0, "tiles": 0.0}
  for f in sizes:
    row = []
    other = []
    for name, kw in (("whole", {}), ("tiles", {"min_face": flags.FLAGS.min_face})):
      images = [s for s, _ in scenes[f]]
      t = time.perf_counter()
      found = faces_lib.find(images, (112, 96), finder=finder, faces="all", **kw)
      times[name] += time.perf_counter() - t
      hit, extra = 0, 0
      for i, (_, gt) in enumerate(scenes[f]):
        boxes = [x.box for x in found if x.index == i and x.box is not None]
        ok = [b for b in boxes if _iou(b, gt) >= 0.3]
        hit += bool(ok)
        extra += len(boxes) - min(1, len(ok))
      row.append(f"{100 * hit / len(scenes[f]):.1f}%")
      other.append(f"{extra / len(scenes[f]):.2f}")
    print(f"| {f} | {row[0]} | {row[1]} | {other[0]} | {other[1]} |")
  n = len(sizes) * len(people)
  print(f"photos/s: whole photo {n / times['whole']:.2f}, + tiles {n / times['tiles']:.2f} "
        f"({n} scenes each, 2-core CPU, one process)")


if __name__ == "__main__":
  define_flags()
  app.run(main)
