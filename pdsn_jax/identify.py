"""Rank-k gallery faces for every probe photo, the gallery embedded under each probe's FDM.

  python -m pdsn_jax.identify --workdir=RUN (--gallery=DIR | --store=STORE) --probes=DIR \\
      --out=ranks.csv [--k=5]

Example:
  python -m pdsn_jax.identify --workdir=runs/real_mobilefacenet --gallery=gallery/ \\
      --probes=probes/ --out=ranks.csv

The gallery has one folder per person; --store searches a prebuilt store (pdsn_jax.gallery).
"""

import sys

from pdsn_jax import commands

def cli():
  """``pdsn-identify``: the console script of ``pip install -e .``."""
  commands.run(commands.identify_main, sys.modules[__name__], commands.IDENTIFY_FLAGS)


if __name__ == "__main__":
  cli()
