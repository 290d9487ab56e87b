"""Masked recognition: embeddings F(M * U(x)) under Feature Discarding Masks (stage III core).

Verification: both faces of a pair use the same FDM, the AND of the items of
every block occluded in either image. Identification: the probe's FDM applies
to every gallery face; gallery U is computed once, and gallery embeddings once
per distinct block pattern (at most 2^9), never once per probe, streamed with a
running top-k in ``evaluation/search.py``.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pdsn_jax.method import fdm
from pdsn_jax.train import parallel
from pdsn_jax.data import pipeline
from pdsn_jax.models.layers import in_chunks, l2_normalize


def masked_embeddings(head_fn: Callable[[jax.Array], jax.Array], u: jax.Array,
                      masks: jax.Array) -> jax.Array:
  """L2-normalised F(M * U): ``u`` (N, h, w, c), ``masks`` (N, h, w, c) or (h, w, c)."""
  e = head_fn(u * masks)
  return l2_normalize(e)


# ------------------------------------------------------- data-parallel engine


class Embedder:
  """Data-parallel U(x) and masked embeddings F(M * U) for one trunk architecture.

  ``variables`` and ``table`` (the (J, h, w, c) dictionary items the flags
  select, binary or soft) are passed already replicated (``parallel.put_replicated``).
  A row with no flagged block gets the all-ones mask, i.e. the plain embedding; with
  ``clean_variables`` such a row is embedded by that network instead (a fine-tuned F used
  only under an FDM, the trunk's own F elsewhere). ``chunk``: faces per call of the layers
  below U (``builders.forward_chunk``; ``top`` alone is fastest on the whole batch).
  """

  def __init__(self, backbone, mesh, batch_size: int, normalize_fn: Callable, chunk: int = 0):
    self.mesh, self.batch = mesh, batch_size

    def apply_step(method, variables, batch, rng):
      del rng
      if method == "top":
        return variables, backbone.apply(variables, batch["x"], method=method)
      return variables, in_chunks(lambda x: backbone.apply(variables, x, method=method),
                                  normalize_fn(batch["x"]), chunk)

    def embed_step(state, batch, rng):
      del rng
      masks = fdm.compose(batch["flags"], state["table"])
      head = functools.partial(backbone.apply, state["variables"], method="head")
      e = masked_embeddings(head, batch["u"], masks)
      if "clean_variables" in state:
        plain = masked_embeddings(
            functools.partial(backbone.apply, state["clean_variables"], method="head"),
            batch["u"], jnp.ones((), batch["u"].dtype))
        e = jnp.where(jnp.any(batch["flags"], axis=-1, keepdims=True), e, plain)
      return state, e

    methods = ("features", "bottom", "top") if hasattr(backbone, "top_params") else ("features",)
    self._apply = {m: parallel.data_parallel(functools.partial(apply_step, m), mesh,
                                             donate_state=False, batch_out=True)
                   for m in methods}
    self._embed = parallel.data_parallel(embed_step, mesh, donate_state=False, batch_out=True)
    self._key = jax.random.key(0)

  def _batches(self, arrays: dict):
    for chunk, real in pipeline.eval_batches(arrays, self.batch, jax.process_index(),
                                             jax.process_count()):
      yield parallel.put_batch(chunk, self.mesh), real

  def features(self, variables, images: np.ndarray, method: str = "features") -> np.ndarray:
    """U of ``images`` (uint8), as host float32; ``method="bottom"``: the trunk's layers below
    ``top`` (V), ``"top"``: U from ``images`` that are V (trunks with ``top_params``)."""
    if method not in self._apply:
      raise ValueError(f"method={method!r}: this trunk has {tuple(self._apply)}")
    out = []
    for batch, real in self._batches({"x": images}):
      _, u = self._apply[method](variables, batch, self._key)
      out.append(np.asarray(parallel.fetch(u))[:real])
    return np.concatenate(out)

  def embed_device(self, variables, table, u: np.ndarray, flags: np.ndarray,
                   clean_variables=None):
    """Yields (embeddings split over the mesh, number of real rows) per global batch."""
    flags = np.broadcast_to(np.asarray(flags, bool), (len(u), np.shape(flags)[-1]))
    state = {"variables": variables, "table": table}
    if clean_variables is not None:
      state["clean_variables"] = clean_variables
    for batch, real in self._batches({"u": u, "flags": np.ascontiguousarray(flags)}):
      _, e = self._embed(state, batch, self._key)
      yield e, real

  def embed(self, variables, table, u: np.ndarray, flags: np.ndarray,
            clean_variables=None) -> np.ndarray:
    """L2-normalised F(M * U) per row, M composed from the row's flags; host float32."""
    return np.concatenate([np.asarray(parallel.fetch(e))[:real] for e, real in
                           self.embed_device(variables, table, u, flags, clean_variables)])
