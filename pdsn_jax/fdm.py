"""Feature Discarding Masks: from a pixel occlusion mask to the FDM that removes its effect.

pixel mask (H, W) -> blocks whose overlap with it is >= threshold -> AND of those
blocks' dictionary items -> FDM with the shape of U. Batched and jittable; a
face with no occluded block gets all ones.
"""

import jax
import jax.numpy as jnp
import numpy as np

from pdsn_jax.data import occlusion


def occluded_blocks(pixel_masks: jax.Array, image_size: tuple[int, int],
                    blocks=occlusion.CENTRAL_BLOCKS, threshold: float = 0.5,
                    overlap: str = "coverage") -> jax.Array:
  """(..., H, W) bool -> (..., len(blocks)) bool: which dictionary blocks are occluded."""
  block_px = jnp.asarray(occlusion.block_pixel_masks(image_size)[np.asarray(blocks)])
  return occlusion.blocks_occluded(jnp.asarray(pixel_masks), block_px, threshold, overlap)


def compose(flags: jax.Array, dictionary: jax.Array) -> jax.Array:
  """(..., J) bool block flags, (J, h, w, c) {0,1} items -> (..., h, w, c) AND of flagged items."""
  items = dictionary.astype(jnp.float32)
  f = flags.astype(jnp.float32)[..., None, None, None]
  # item where flagged, 1 elsewhere; product over blocks = logical AND for {0,1} values
  return jnp.prod(f * items + (1.0 - f), axis=-4)


def fdm_from_pixel_mask(pixel_masks: jax.Array, dictionary: jax.Array,
                        image_size: tuple[int, int], threshold: float = 0.5,
                        overlap: str = "coverage") -> jax.Array:
  """(..., H, W) pixel masks -> (..., h, w, c) FDMs."""
  return compose(occluded_blocks(pixel_masks, image_size, threshold=threshold, overlap=overlap),
                 dictionary)
