"""Feature Discarding Masks: the dictionary's items, its file, and composing a face's FDM.

pixel mask (H, W) -> ``occlusion.block_flags`` -> AND of the flagged blocks' items ->
FDM with the shape of U. Batched and jittable; a face with no occluded block gets all
ones. ``binarize`` turns mean masks (or any keep-scores) into items; the dictionary
stage writes them with ``export`` and every later user reads them with ``load``.
"""

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from pdsn_jax.run import files


def minmax(masks: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Normalises every mask (the trailing 3 axes) to [0, 1] on its own."""
  lo = masks.min(axis=(-3, -2, -1), keepdims=True)
  hi = masks.max(axis=(-3, -2, -1), keepdims=True)
  return (masks - lo) / jnp.maximum(hi - lo, eps)


def binarize(mean_masks: jax.Array, tau: float) -> jax.Array:
  """Zeros the floor(tau*K) smallest entries of each (h, w, c) mask, ones elsewhere.

  Ties: the element with the lower flat index is discarded first (stable sort).
  """
  j = mean_masks.shape[0]
  flat = mean_masks.reshape(j, -1)
  k = int(np.floor(tau * flat.shape[1]))
  order = jnp.argsort(flat, axis=1, stable=True)
  ranks = jnp.argsort(order, axis=1, stable=True)
  return (ranks >= k).astype(jnp.uint8).reshape(mean_masks.shape)


def compose(flags: jax.Array, dictionary: jax.Array) -> jax.Array:
  """(..., J) bool block flags, (J, h, w, c) {0,1} items -> (..., h, w, c) AND of flagged items."""
  items = dictionary.astype(jnp.float32)
  f = flags.astype(jnp.float32)[..., None, None, None]
  # item where flagged, 1 elsewhere; product over blocks = logical AND for {0,1} values
  return jnp.prod(f * items + (1.0 - f), axis=-4)


def export(path: str, mean_masks: np.ndarray, fdms: np.ndarray, meta: dict,
           change_scores: np.ndarray | None = None) -> None:
  """Bit-packed FDMs + float32 means (the tau sweep re-binarises them) + metadata in one .npz,
  and the not-learned reference's keep-scores; written atomically."""
  tmp = path + ".tmp.npz"
  extra = {} if change_scores is None else {"change_scores": change_scores.astype(np.float32)}
  np.savez_compressed(tmp, fdm_bits=np.packbits(fdms.astype(bool).reshape(-1)),
                      fdm_shape=np.asarray(fdms.shape), mean_masks=mean_masks.astype(np.float32),
                      metadata=np.asarray(json.dumps(meta)), **extra)
  os.replace(tmp, path)


def load(path: str) -> tuple[np.ndarray, np.ndarray, dict]:
  """(fdms uint8 (J, h, w, c), mean masks float32, metadata) from ``dictionary.npz``;
  ``files.DamagedFile`` naming it when it cannot be read (the dictionary stage rebuilds it)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"FDM dictionary not found: {path}")
  try:
    with np.load(path) as z:
      shape = tuple(int(v) for v in z["fdm_shape"])
      fdms = np.unpackbits(z["fdm_bits"])[:int(np.prod(shape))].reshape(shape)
      return fdms, z["mean_masks"].astype(np.float32), json.loads(str(z["metadata"]))
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise files.DamagedFile(
        f"{path} (the FDM dictionary) cannot be read: {type(e).__name__}: {e}; run the "
        "'dictionary' stage again (it rebuilds a damaged file)") from None


def load_change_scores(path: str) -> np.ndarray | None:
  """The not-learned reference's keep-scores (see the dictionary stage), if stored."""
  with np.load(path) as z:
    return z["change_scores"] if "change_scores" in z else None
