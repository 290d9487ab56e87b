"""Stage I's "block j" samples: how often the FDM rule flags exactly the intended blocks.

  python -m benchmarks.block_samples [--occluder_dir=../shared/data/occluders] [--faces=60]

For each generator block j, ``--faces`` synthetic faces are occluded with ``occlude_block``
(``neighbour_prob`` 0 and 0.5), with and without ``exact``; a sample is exact when the set of
central blocks with overlap >= 0.5 equals the intended set (j, plus the drawn neighbour when
it is a central block). Prints a table: share exact, mean flagged blocks, and the share of
"extra" central blocks flagged.
"""

import time

from absl import app, flags
import numpy as np


from pdsn_jax.data import occlusion
from pdsn_jax.data.synthetic import SyntheticFaces


def measure(faces, library, neighbour_prob: float, exact: bool, seed: int = 0) -> dict:
  blocks = occlusion.block_pixel_masks(faces[0].shape[:2])[np.asarray(occlusion.CENTRAL_BLOCKS)]
  n_exact = n = flagged = extra = 0
  for i, face in enumerate(faces):
    for k, b in enumerate(occlusion.CENTRAL_BLOCKS):
      rng = np.random.default_rng([seed, i, k])
      _, m, targets = occlusion.occlude_block(face, b, rng, library, neighbour_prob,
                                              exact=exact, return_targets=True)
      flags = occlusion.blocks_occluded(m, blocks)
      got = {c for c, f in zip(occlusion.CENTRAL_BLOCKS, flags) if f}
      want = {t for t in targets if t in occlusion.CENTRAL_BLOCKS}
      n += 1
      n_exact += got == want
      flagged += len(got)
      extra += len(got - want)
  return {"exact": n_exact / n, "flagged": flagged / n, "extra": extra / n, "samples": n}


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  flags.DEFINE_string("occluder_dir", '', "Occluder folder ('' = the built-in drawings).")
  flags.DEFINE_integer("faces", 60, 'How many synthetic faces.')


def main(argv):
  del argv
  a = flags.FLAGS
  faces = [SyntheticFaces(a.faces, 1, 0, 0, (112, 96))[i]["image"] for i in range(a.faces)]
  library = occlusion.OccluderLibrary(a.occluder_dir, True)
  print(f"occluders: {a.occluder_dir or 'built-in'}; {a.faces} SYNTHETIC faces x 9 blocks")
  print("| neighbour_prob | exact | share flagging exactly the intended set | mean flagged "
        "| mean extra flagged | s |")
  print("|---|---|---|---|---|---|")
  for nb in (0.0, 0.5):
    for exact in (False, True):
      t = time.time()
      r = measure(faces, library, nb, exact)
      print(f"| {nb} | {exact} | {100 * r['exact']:.1f}% ({r['samples']}) | {r['flagged']:.2f} "
            f"| {r['extra']:.3f} | {time.time() - t:.1f} |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
