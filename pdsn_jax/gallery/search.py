"""Top-k identification of masked probes against a gallery streamed from disk.

Every gallery face is compared under each probe's FDM, so its embedding depends on the probe's
block pattern. The gallery is read once per probe set: each process takes its own shards
(shard i goes to process i mod P), each of its devices embeds its slice of a shard under every
distinct pattern of the probes and keeps a running top-k per probe; only top-k scores and
indices cross devices (an all-gather inside the step) and hosts (at the end). Host memory holds
one shard at a time, whatever the gallery's size.

When F is affine (MobileFaceNet's and the paper's FC heads are, BatchNorm folded at
inference), F(m * U) = W (m * U) + b = (W * m) U + b: the embeddings under all K patterns are
one matrix product of the shard's U with the K masked matrices stacked, (N, D) @ (D, K*E).
``head_matrix`` finds W and b by differentiation and checks affinity numerically; a head that is
not affine uses the general path, F applied to m * U per pattern.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from pdsn_jax.method import fdm
from pdsn_jax.train import parallel
from pdsn_jax.gallery import store as store_lib
from pdsn_jax.models.layers import l2_normalize

PATHS = ("auto", "affine", "general")


def head_matrix(head_fn, u_shape, rtol: float = 1e-4) -> tuple[np.ndarray, np.ndarray] | None:
  """(W (D, E), b (E,)) with ``head_fn(u) == u.reshape(-1) @ W + b`` for every U, or None when
  ``head_fn`` (one U -> one embedding) is not affine to ``rtol`` on random inputs."""
  d = int(np.prod(u_shape))
  f = jax.jit(lambda x: head_fn(x.reshape(1, *u_shape))[0])
  b = np.asarray(f(jnp.zeros((d,), jnp.float32)), np.float64)
  w = np.asarray(jax.jit(jax.jacrev(f))(jnp.zeros((d,), jnp.float32))).T  # (D, E)
  rng = np.random.default_rng(0)
  for _ in range(2):
    x = rng.normal(size=(d,)).astype(np.float32) * rng.uniform(0.1, 3.0)
    want = np.asarray(f(jnp.asarray(x)), np.float64)
    got = x.astype(np.float64) @ w + b
    if np.abs(got - want).max() > rtol * max(np.abs(want).max(), 1e-6):
      return None
  return w.astype(np.float32), b.astype(np.float32)


class ArrayGallery:
  """An in-memory gallery with a store's reading interface (tests, small galleries)."""

  def __init__(self, u: np.ndarray, labels: np.ndarray, shard_size: int = 1 << 14):
    self.u, self.lab, self.shard_size = u, np.asarray(labels), shard_size
    self.num_faces = len(u)
    self.num_shards = max(1, -(-len(u) // shard_size))

  def shard(self, i: int):
    s = slice(i * self.shard_size, (i + 1) * self.shard_size)
    return self.u[s], None, self.lab[s]

  def offset(self, i: int) -> int:
    return i * self.shard_size

  def labels(self) -> np.ndarray:
    return self.lab


def _merge_topk(s_a, i_a, s_b, i_b, k):
  s = jnp.concatenate([s_a, s_b], -1)
  i = jnp.concatenate([i_a, i_b], -1)
  top, arg = jax.lax.top_k(s, k)
  return top, jnp.take_along_axis(i, arg, -1)


def _search_step(state: dict, batch: dict, *, k: int, affine: bool, head):
  """Per device: embed the rows under every pattern, score the probes of each pattern, merge
  into the running top-k, then the top-k of every device's top-k."""
  u = store_lib.dequantize(batch["u"], batch.get("scale"))
  n = u.shape[0]
  if affine:
    g = (u.reshape(n, -1) @ state["w"]).reshape(n, *state["b"].shape) + state["b"][None]
  else:
    g = jax.vmap(lambda m: head(state["variables"], u * m), out_axes=1)(state["masks"])
    if "clean_variables" in state:  # (n, K, E); the all-clear pattern under its own network
      plain = head(state["clean_variables"], u)
      g = jnp.where(state["clean"][None, :, None], plain[:, None], g)
  g = l2_normalize(g)
  s = jnp.einsum("kpe,nke->kpn", state["probes"], g)
  s = jnp.where(batch["valid"][None, None, :], s, -jnp.inf)
  top, arg = jax.lax.top_k(s, min(k, n))  # this device's rows
  # every device's top-k (only these cross devices), then merged into the replicated best
  all_s = jax.lax.all_gather(top, parallel.AXIS, axis=2, tiled=True)
  all_i = jax.lax.all_gather(batch["index"][arg], parallel.AXIS, axis=2, tiled=True)
  best, best_index = _merge_topk(state["best"], state["best_index"], all_s, all_i, k)
  return {**state, "best": best, "best_index": best_index}


class Searcher:
  """Streaming masked top-k search for one network over this process's devices.

  ``path``: "affine" (needs an affine head), "general", or "auto": when F is affine, the faster
  of the two in a short timed trial on this machine, per network and number of block patterns
  (FLOP counts mislead: on a CPU the affine path beat the general one for MobileFaceNet, whose
  dense matrix costs ~30x F's FLOPs).
  ``batch_size``: gallery rows per step over this process's devices.
  """

  def __init__(self, backbone, u_shape, batch_size: int = 256, k: int = 1, path: str = "auto",
               devices=None):
    if path not in PATHS:
      raise ValueError(f"search path {path!r} is not one of {PATHS}")
    self.backbone, self.u_shape, self.k, self.path = backbone, tuple(u_shape), k, path
    self.mesh = Mesh(np.asarray(devices or jax.local_devices()), (parallel.AXIS,))
    if batch_size % self.mesh.size:
      raise ValueError(f"search batch {batch_size} must divide by the {self.mesh.size} local "
                       "devices")
    self.batch = batch_size
    self._fns = {}
    self._matrices, self._flops = {}, {}
    # "auto": per (network, clean network, probe groups) the trial's seconds per batch of each
    # path, and the path it chose
    self.trial_seconds: dict = {}
    self.choices: dict = {}

  def _head(self, variables, u):
    return self.backbone.apply(variables, u, method="head")

  def _matrix(self, variables) -> tuple[np.ndarray, np.ndarray] | None:
    key = store_lib.fingerprint(variables)
    if key not in self._matrices:
      host = jax.device_get(variables)
      self._matrices[key] = head_matrix(functools.partial(self._head, host), self.u_shape)
    return self._matrices[key]

  def _fn(self, affine: bool, keys: tuple):
    if (affine, keys) not in self._fns:
      step = functools.partial(_search_step, k=self.k, affine=affine, head=self._head)
      mapped = jax.shard_map(step, mesh=self.mesh, in_specs=(P(), P(parallel.AXIS)),
                             out_specs=P(), check_vma=False)
      self._fns[(affine, keys)] = jax.jit(mapped, donate_argnums=(0,))
    return self._fns[(affine, keys)]

  def head_flops(self, variables) -> float:
    """XLA's FLOP count of F on one U (what the general path spends per face and pattern);
    compiled once per network, not once per search."""
    key = store_lib.fingerprint(variables)
    if key not in self._flops:
      u = jnp.zeros((1, *self.u_shape), jnp.float32)
      cost = jax.jit(self._head).lower(jax.device_get(variables), u).compile().cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      self._flops[key] = float(cost.get("flops", 0.0))
    return self._flops[key]

  def can_use_affine(self, variables, clean_variables=None) -> bool:
    return self._matrix(variables) is not None and (
        clean_variables is None or self._matrix(clean_variables) is not None)

  def uses_affine(self, variables, table, patterns, grouped, clean_variables=None) -> bool:
    """"affine" / "general" as asked; "auto": the faster in a timed trial when F is affine."""
    if self.path == "general":
      return False
    ok = self.can_use_affine(variables, clean_variables)
    if self.path == "affine":
      if not ok:
        raise ValueError("search path 'affine' asked for, but the network's head is not affine")
      return True
    if not ok:
      return False
    key = (store_lib.fingerprint(variables), None if clean_variables is None else
           store_lib.fingerprint(clean_variables), grouped.shape[:2])
    if key not in self.choices:
      t = self.trial_seconds[key] = self._trial(variables, table, patterns, grouped,
                                                clean_variables)
      self.choices[key] = "affine" if t["affine"] <= t["general"] else "general"
    return self.choices[key] == "affine"

  def _trial(self, variables, table, patterns, grouped, clean_variables, repeats: int = 3):
    """Seconds per gallery batch of each path (compiled first), on zero faces."""
    sharding = jax.sharding.NamedSharding(self.mesh, P(parallel.AXIS))
    batch = {"u": np.zeros((self.batch, *self.u_shape), np.float32),
             "valid": np.ones(self.batch, bool), "index": np.arange(self.batch, dtype=np.int32)}
    batch = {k: jax.device_put(v, sharding) for k, v in batch.items()}
    out = {}
    for affine in (True, False):
      state = jax.device_put(self._state(variables, table, patterns, grouped, clean_variables,
                                         affine), jax.sharding.NamedSharding(self.mesh, P()))
      fn = self._fn(affine, tuple(sorted(batch)))
      state = jax.block_until_ready(fn(state, batch))  # compile
      t = time.perf_counter()
      for _ in range(repeats):
        state = fn(state, batch)
      jax.block_until_ready(state)
      out["affine" if affine else "general"] = (time.perf_counter() - t) / repeats
    return out

  def _state(self, variables, table, patterns, probes, clean_variables, affine: bool) -> dict:
    num, pk, _ = probes.shape
    masks = np.asarray(fdm.compose(jnp.asarray(patterns), jnp.asarray(table)), np.float32)
    clean = ~patterns.any(axis=1)
    st: dict = {"probes": probes, "best": np.full((num, pk, self.k), -np.inf, np.float32),
                "best_index": np.full((num, pk, self.k), -1, np.int32)}
    if affine:
      w, b = self._matrix(variables)
      ws, bs = [], []
      for m, c in zip(masks, clean):
        wc, bc = (self._matrix(clean_variables) if c and clean_variables is not None else (w, b))
        ws.append(wc * m.reshape(-1, 1))
        bs.append(bc)
      st["w"] = np.concatenate(ws, axis=1)  # (D, K*E): column block k is pattern k's
      st["b"] = np.stack(bs)
    else:
      st.update(variables=jax.device_get(variables), masks=masks, clean=clean)
      if clean_variables is not None:
        st["clean_variables"] = jax.device_get(clean_variables)
    return st

  def search(self, variables, table, probe_emb: np.ndarray, probe_flags: np.ndarray, gallery,
             clean_variables=None, shards=None) -> tuple[np.ndarray, np.ndarray]:
    """(scores (P, k), gallery indices (P, k)) of this process's ``shards`` (default: every
    i with i mod process_count == process_index); ``merge_processes`` combines processes."""
    probe_flags = np.asarray(probe_flags, bool)
    patterns, inverse = np.unique(probe_flags, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    counts = np.bincount(inverse, minlength=len(patterns))
    pk = 1 << int(np.ceil(np.log2(max(counts.max(), 1))))
    slot = np.zeros(len(inverse), np.int64)
    grouped = np.zeros((len(patterns), pk, probe_emb.shape[1]), np.float32)
    for g in range(len(patterns)):
      rows = np.flatnonzero(inverse == g)
      slot[rows] = np.arange(len(rows))
      grouped[g, :len(rows)] = probe_emb[rows]
    affine = self.uses_affine(variables, table, patterns, grouped, clean_variables)
    state = self._state(variables, table, patterns, grouped, clean_variables, affine)
    state = jax.device_put(state, jax.sharding.NamedSharding(self.mesh, P()))
    if shards is None:
      shards = range(jax.process_index(), gallery.num_shards, jax.process_count())
    for i in shards:
      u, scale, labels = gallery.shard(i)
      for start in range(0, len(u), self.batch):
        batch = self._batch(u, scale, start, gallery.offset(i), labels)
        state = self._fn(affine, tuple(sorted(batch)))(state, batch)
    best, idx = jax.device_get((state["best"], state["best_index"]))
    return best[inverse, slot], idx[inverse, slot]

  def _batch(self, u, scale, start: int, offset: int, labels=None) -> dict:
    stop = min(start + self.batch, len(u))
    real, pad = stop - start, self.batch - (stop - start)
    rows = np.asarray(u[start:stop])
    valid = np.arange(self.batch) < real
    if labels is not None:  # rows of images that could not be read are never found
      valid[:real] &= np.asarray(labels[start:stop]) != store_lib.UNREADABLE
    out = {"u": np.concatenate([rows, np.zeros((pad, *rows.shape[1:]), rows.dtype)]),
           "valid": valid,
           "index": (offset + start + np.arange(self.batch)).astype(np.int32)}
    if scale is not None:
      s = np.asarray(scale[start:stop])
      out["scale"] = np.concatenate([s, np.ones((pad, s.shape[1]), s.dtype)])
    sharding = jax.sharding.NamedSharding(self.mesh, P(parallel.AXIS))
    return {k: jax.device_put(v, sharding) for k, v in out.items()}


def merge_processes(scores: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Every process's (P, k) top-k -> the global top-k, identical on every process; only
  these small arrays cross hosts."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    scores = np.concatenate(list(multihost_utils.process_allgather(scores)), axis=1)
    index = np.concatenate(list(multihost_utils.process_allgather(index)), axis=1)
  # ties: the lower gallery index first, whatever the process order
  order = np.lexsort((index, -scores), axis=1)[:, :k]
  return np.take_along_axis(scores, order, 1), np.take_along_axis(index, order, 1)


def identify(searcher: Searcher, variables, table, probe_emb, probe_flags, gallery,
             clean_variables=None) -> tuple[np.ndarray, np.ndarray]:
  """The global top-k over every process's shards: (scores (P, k), gallery indices (P, k))."""
  s, i = searcher.search(variables, table, probe_emb, probe_flags, gallery, clean_variables)
  return merge_processes(s, i, searcher.k)



class ConcatGallery:
  """Several galleries read as one, indices running on (e.g. a gallery plus a distractor
  store)."""

  def __init__(self, parts):
    self.parts = list(parts)
    self._where = [(p, j) for p in self.parts for j in range(p.num_shards)]
    self._base = np.cumsum([0] + [p.num_faces for p in self.parts])
    self.num_shards = len(self._where)
    self.num_faces = int(self._base[-1])

  def shard(self, i: int):
    part, j = self._where[i]
    return part.shard(j)

  def offset(self, i: int) -> int:
    part, j = self._where[i]
    return int(self._base[self.parts.index(part)]) + part.offset(j)

  def labels(self) -> np.ndarray:
    return np.concatenate([p.labels() for p in self.parts])


class Prefix:
  """The first ``n`` faces of a gallery (a store), read through its shards (MegaFace's curve:
  the same distractors, fewer of them)."""

  def __init__(self, gallery, n: int):
    if not 0 < n <= gallery.num_faces:
      raise ValueError(f"a prefix of {n} faces of a gallery of {gallery.num_faces}")
    self.gallery, self.num_faces = gallery, n
    self._shards = [i for i in range(gallery.num_shards) if gallery.offset(i) < n]
    self.num_shards = len(self._shards)

  def shard(self, i: int):
    u, scale, labels = self.gallery.shard(self._shards[i])
    m = min(len(u), self.num_faces - self.gallery.offset(self._shards[i]))
    return u[:m], (None if scale is None else scale[:m]), labels[:m]

  def offset(self, i: int) -> int:
    return self.gallery.offset(self._shards[i])

