"""Who is it? Build a gallery from a folder (one subfolder per person) and search it.

  python examples/search_a_gallery.py runs/real_mobilefacenet people/ probe1.jpg probe2.jpg
"""

import argparse

import pdsn_jax

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run"), parser.add_argument("gallery"), parser.add_argument("probes", nargs="+")
parser.add_argument("--face_finder", default="blazeface", help="'none': aligned crops")
parser.add_argument("--k", type=int, default=3)
args = parser.parse_args()

run = pdsn_jax.load(args.run, face_finder=args.face_finder)
gallery = run.gallery(args.gallery)  # U of every gallery face, searched under each probe's FDM
print(f"{len(gallery.identities)} gallery faces of {len(set(gallery.identities))} people")
for matches in run.identify(args.probes, gallery, k=args.k):
  print(matches[0].probe, "| occluded blocks:", matches[0].probe_blocks)
  for m in matches:
    print(f"  {m.rank}. {m.identity:<20} {m.score:.4f}  ({m.gallery_item})")
