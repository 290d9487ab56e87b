"""Same person? The score of two photos under the AND of both faces' occlusion, the
decision and the threshold the run's evaluation chose.

  python -m pdsn_jax.cli.verify --workdir=RUN A.jpg B.jpg [--occlusion=auto|none|sunglasses|...]

Example:
  python -m pdsn_jax.cli.verify --workdir=runs/real_mobilefacenet --occlusion=scarf a.jpg b.jpg
"""

import sys

from pdsn_jax.cli import commands

def cli():
  """``pdsn-verify``: the console script of ``pip install -e .``."""
  commands.run(commands.verify_main, sys.modules[__name__], commands.VERIFY_FLAGS)


if __name__ == "__main__":
  cli()
