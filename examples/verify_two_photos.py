"""Same person? Two photos through a finished run.

  python examples/verify_two_photos.py runs/real_mobilefacenet a.jpg b.jpg
"""

import argparse

import numpy as np
from PIL import Image

import pdsn_jax

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run"), parser.add_argument("a"), parser.add_argument("b")
parser.add_argument("--face_finder", default="blazeface", help="'none': aligned crops")
args = parser.parse_args()

run = pdsn_jax.load(args.run, face_finder=args.face_finder)
a = np.asarray(Image.open(args.a).convert("RGB"))  # any image in memory, or just the path
r = run.verify(a, args.b)
print(f"{run.model}: score {r.score:.4f}, threshold {r.threshold} ({r.threshold_from})")
print("same person" if r.same else "different people" if r.same is not None else "no decision",
      "| occluded blocks:", " / ".join(r.blocks))
