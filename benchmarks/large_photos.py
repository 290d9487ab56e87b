"""Memory and speed of finding faces in very large photos (issue 38's probe: 8 PNGs of
12000x12000 took 4.9 GB in ``embed``, a whole chunk decoded at full size).

  python -m benchmarks.large_photos [--photos=8] [--side=12000]

Writes ``--photos`` PNGs of ``--side`` x ``--side`` pixels (a synthetic face, a third of the
photo's width, at the centre; the rest flat: small files, full-size decodes) and runs the photo
commands' finder (``faces.finding.find`` with BlazeFace) on them in this process, then prints
peak RSS and photos/s.
For a before/after, run it in a worktree of the other commit (``git worktree add``).
"""

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from pdsn_jax.faces import finding as faces

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(folder: str, n: int, side: int) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.synthetic import SyntheticFaces  # pylint: disable=g-import-not-at-top
  face = SyntheticFaces(1, 1, 0, 0, (448, 384))[0]["image"]
  face = np.asarray(Image.fromarray(face).resize((side * 3 // 10, side * 7 // 20)))  # a portrait
  canvas = np.full((side, side, 3), 128, np.uint8)
  y, x = (side - face.shape[0]) // 2, (side - face.shape[1]) // 2
  canvas[y:y + face.shape[0], x:x + face.shape[1]] = face
  for i in range(n):
    Image.fromarray(canvas).save(os.path.join(folder, f"{i}.png"), compress_level=1)


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_integer("photos", 8, "How many photos.")
  flags.DEFINE_integer("side", 12000, "Their side in pixels.")
  flags.DEFINE_string("write_to", "", "(internal) only write the photos there: their "
                               "full-size canvas must not count in the measured process's peak")


def main(argv):
  del argv
  if flags.FLAGS.write_to:
    _write(flags.FLAGS.write_to, flags.FLAGS.photos, flags.FLAGS.side)
    return
  folder = tempfile.mkdtemp(prefix="large_photos_")
  subprocess.run([sys.executable, "-m", "benchmarks.large_photos", f"--write_to={folder}",
                  f"--photos={flags.FLAGS.photos}", f"--side={flags.FLAGS.side}"], check=True,
                 cwd=REPO)
  paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
  side = flags.FLAGS.side
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  finder = faces.FaceFinder("blazeface")
  t0 = time.time()
  found = faces.find(paths, (112, 96), "arcface", None, finder)
  seconds = time.time() - t0
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  mib = sum(os.path.getsize(p) for p in paths) / 2**20
  shutil.rmtree(folder)
  print(f"{len(paths)} photos of {side}x{side} px "
        f"({mib:.1f} MiB on disk): "
        f"{sum(f.face is not None for f in found)} faces found; peak RSS {peak:.2f} GiB "
        f"(before finding {before:.2f} GiB); {len(paths) / seconds:.2f} photos/s")


if __name__ == "__main__":
  define_flags()
  app.run(main)
