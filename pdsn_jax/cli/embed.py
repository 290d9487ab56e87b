"""Embeddings, occlusion masks and blocks of every face under a folder.

  python -m pdsn_jax.cli.embed --workdir=RUN --images=DIR --out=embeddings.npz [--sheet=PNG]

Example:
  python -m pdsn_jax.cli.embed --workdir=runs/real_mobilefacenet --images=photos/ \\
      --out=embeddings.npz --sheet=sheet.png

Faces are found with --face_finder (BlazeFace by default) unless --landmarks names them; see
pdsn_jax/cli/commands.py.
"""

import sys

from pdsn_jax.cli import commands

def cli():
  """``pdsn-embed``: the console script of ``pip install -e .``."""
  commands.run(commands.embed_main, sys.modules[__name__], commands.EMBED_FLAGS)


if __name__ == "__main__":
  cli()
