"""python -m pdsn_jax.embed: see pdsn_jax/commands.py."""

from pdsn_jax import commands

if __name__ == "__main__":
  commands.run(commands.embed_main)
