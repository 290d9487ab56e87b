"""pdsn_jax: occlusion-robust face recognition with Pairwise Differential Siamese Networks.

  import pdsn_jax
  run = pdsn_jax.load("runs/real_mobilefacenet")
  print(run.verify("a.jpg", "b.jpg"))

The Python API is ``pdsn_jax.api`` (docs/api.md); its names are reachable from here.
"""

__version__ = "0.4.0"

_API = ("load", "Run", "Faces", "Embeddings", "Verification", "Match", "Gallery",
        "load_embeddings", "save_embeddings", "load_ranks", "save_ranks", "load_results",
        "open_store")


def __getattr__(name):
  # the API loads jax and the networks: only when it is asked for, so that the commands'
  # --help stays fast and jax starts after their flags are parsed
  if name in _API:
    from pdsn_jax import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f"module 'pdsn_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_API))
