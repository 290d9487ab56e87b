"""python -m pdsn_jax.identify: see pdsn_jax/commands.py."""

from pdsn_jax import commands

if __name__ == "__main__":
  commands.run(commands.identify_main)
