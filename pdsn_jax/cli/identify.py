"""Rank-k gallery faces for every probe photo, the gallery embedded under each probe's FDM.

  python -m pdsn_jax.cli.identify --workdir=RUN (--gallery=DIR | --store=STORE) --probes=DIR \\
      --out=ranks.csv [--k=5]

Example:
  python -m pdsn_jax.cli.identify --workdir=runs/real_mobilefacenet --gallery=gallery/ \\
      --probes=probes/ --out=ranks.csv

The gallery has one folder per person; --store searches a prebuilt store (pdsn_jax.cli.gallery).
"""

import sys

from pdsn_jax.cli import commands

def cli():
  """``pdsn-identify``: the console script of ``pip install -e .``."""
  commands.run(commands.identify_main, sys.modules[__name__], commands.IDENTIFY_FLAGS)


if __name__ == "__main__":
  cli()
