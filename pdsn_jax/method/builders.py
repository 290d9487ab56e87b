"""What several stages build from the config: the networks, the training occluders, U's shape,
the frozen trunk's features, step counts. Stages import this, never each other."""

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections

from pdsn_jax.run import checkpointing
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.train import parallel, training
from pdsn_jax.data import occlusion
from pdsn_jax.models import CosFaceHead, trunks
from pdsn_jax.models.layers import in_chunks
from pdsn_jax.models.detector import OcclusionDetector
from pdsn_jax.models.generator import StackedMaskGenerators

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def normalize(images: jax.Array) -> jax.Array:
  """uint8 RGB -> float32 in about [-1, 1] (insightface's (x - 127.5) / 128)."""
  return (images.astype(jnp.float32) - 127.5) / 128.0


def backbone(config: ml_collections.ConfigDict, train: bool):
  """The trunk of ``model.kind`` (``models.trunks``: IResNet, MobileFaceNet, dlib's ResNet, or
  a registered one). ``train``: BatchNorm statistics are averaged over the mesh (inference
  mode needs no mesh axis)."""
  m = config.model
  if m.dtype not in DTYPES:
    raise ValueError(f"model.dtype={m.dtype!r} is not one of {tuple(DTYPES)}")
  kind = trunks.get(m.kind)
  kind.validate(m)
  return kind.build(m, parallel.AXIS if train else None, DTYPES[m.dtype])


def forward_chunk(config: ml_collections.ConfigDict) -> int:
  """Faces per call of a network in inference mode inside a jitted step
  (``model.forward_chunk``; 0: 8 on CPU, where it is about twice as fast, the whole batch on
  accelerators). Speed only: the outputs are the same."""
  n = int(config.model.get("forward_chunk", 0))
  if n > 0:
    return n
  return 8 if jax.default_backend() == "cpu" else 0


def frozen_apply(net, variables, x: jax.Array, method: str | None, chunk: int) -> jax.Array:
  """``net.apply(variables, x, method=method)`` (None: ``__call__``) in inference mode,
  ``chunk`` faces at a time."""
  return in_chunks(lambda c: net.apply(variables, c, method=method), x, chunk)


def classifier(config: ml_collections.ConfigDict, num_classes: int) -> CosFaceHead:
  return CosFaceHead(num_classes, config.cosface.scale, config.cosface.margin)


def generators(config: ml_collections.ConfigDict, train: bool) -> StackedMaskGenerators:
  """The 9 mask generators as one stacked module (stage I's model; stage II runs it)."""
  return StackedMaskGenerators(len(occlusion.CENTRAL_BLOCKS), parallel.AXIS if train else None,
                               config.pdsn.mask_bias_init, config.pdsn.mask_scale_init)


def generator_input(u_clean: jax.Array, u_occ: jax.Array, differential: bool) -> jax.Array:
  """What generator j sees of the pair (x, x_j), for U(x) (B, ...) and U(x_j) (J, B, ...):
  |U(x_j) - U(x)| (PDSN), or U(x_j) alone (Table 3's ablation, lambda = 0)."""
  return jnp.abs(u_occ - u_clean[None]) if differential else u_occ


def trained_generators(workdir: str, stage: str = workdir_lib.PDSN,
                       keys=("params", "batch_stats")) -> dict | None:
  """``keys`` of a stage I run's latest checkpoint, ``params`` being the generators its output
  stands for (their running average where it kept one, ``pdsn.ema_decay``); None without one."""
  v = workdir_lib.load(workdir, stage, keys=(*keys, "opt_state"))
  if v is not None:
    v["params"] = training.params_in_use(v["params"], v.pop("opt_state"))
  return v


def detector(config: ml_collections.ConfigDict, train: bool) -> OcclusionDetector:
  return OcclusionDetector(tuple(config.detector.widths), parallel.AXIS if train else None,
                           DTYPES[config.model.dtype])


def u_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """(h, w, c) of the trunk's top conv feature U, by shape inference (nothing is computed)."""
  net = backbone(config, False)
  x = jnp.zeros((1, *config.data.image_size, 3))
  v = jax.eval_shape(lambda: net.init(jax.random.key(0), x))
  return tuple(jax.eval_shape(lambda v: net.apply(v, x, method="features"), v).shape[1:])


def frozen_features(trunk: dict, batch: dict, net, chunk: int = 0
                    ) -> tuple[jax.Array, jax.Array]:
  """U of the clean batch (B, ...) and of its occluded copies (J, B, ...), no gradient: the
  feature bank's stored U when the batch carries it (``u_clean``, ``u_occ`` (B, J, ...)), else
  the trunk's forward pass of ``image`` and ``occluded``, ``chunk`` faces per call
  (``forward_chunk``)."""
  if "u_occ" in batch:
    return (batch["u_clean"].astype(jnp.float32),
            jnp.swapaxes(batch["u_occ"].astype(jnp.float32), 0, 1))
  bvars = checkpointing.backbone_of(trunk)
  occ = normalize(batch["occluded"])  # (B, J, H, W, 3)
  b, j = occ.shape[:2]
  u_clean = frozen_apply(net, bvars, normalize(batch["image"]), "features", chunk)
  u_occ = frozen_apply(net, bvars, occ.reshape(b * j, *occ.shape[2:]), "features", chunk)
  u_occ = u_occ.reshape(b, j, *u_occ.shape[1:]).swapaxes(0, 1)
  return jax.lax.stop_gradient(u_clean), jax.lax.stop_gradient(u_occ)


def occluders(config: ml_collections.ConfigDict, split: str, procedural: bool | None = None,
              categories=None) -> occlusion.OccluderLibrary:
  """The occluder files of ``split`` ("train" / "select" / "test", by ``occlusion.splits``)
  under ``occlusion.occluder_dir`` (with no folder: the drawings only) and the drawings of
  ``categories`` (default: training's ``occlusion.procedural_categories``)."""
  o = config.occlusion
  return occlusion.OccluderLibrary(
      o.occluder_dir, o.procedural if procedural is None else procedural,
      tuple(o.procedural_categories if categories is None else categories),
      split=split if o.occluder_dir else "all", heldout_every=config.detector.heldout_every,
      face_template=config.data.alignment, splits=split_globs(config))


def test_occluders(config: ml_collections.ConfigDict) -> occlusion.OccluderLibrary:
  """The occluders of the evaluation's test faces: ``eval.occluder_dir`` (every file), else the
  ``eval.occluder_split`` files of ``occlusion.occluder_dir`` (the test split; "select" for
  choosing settings); both with the drawings of ``eval.procedural_categories``."""
  cfg = config.eval
  if cfg.occluder_dir:
    return occlusion.OccluderLibrary(cfg.occluder_dir, cfg.procedural,
                                     tuple(cfg.procedural_categories),
                                     face_template=config.data.alignment)
  return occluders(config, cfg.occluder_split, cfg.procedural, cfg.procedural_categories)


def split_globs(config: ml_collections.ConfigDict) -> dict:
  """``occlusion.splits`` as {split: tuple of globs}."""
  return {k: tuple(v) for k, v in config.occlusion.splits.items()}


def occluder_splits(config: ml_collections.ConfigDict) -> dict:
  """{"train" / "select" / "test": the occluder files of that split, relative to
  ``occlusion.occluder_dir``} (empty without a folder); nothing is opened."""
  o = config.occlusion
  if not o.occluder_dir:
    return {}
  return {s: sorted(os.path.relpath(p, o.occluder_dir) for v in occlusion.list_files(
      o.occluder_dir, s, split_globs(config), config.detector.heldout_every).values() for p in v)
          for s in ("train", "select", "test")}


def training_occluders(config: ml_collections.ConfigDict) -> occlusion.OccluderLibrary:
  """The occluders stages I-III and the detector train with: the train split's files and the
  drawings of ``occlusion.procedural_categories``."""
  return occluders(config, "train")


def every_block_occlusion(config: ml_collections.ConfigDict,
                          neighbour_prob: float | None = None) -> occlusion.OccludeEveryBlock:
  """Stage I/II's transform: each face and its 9 copies, copy j occluded on block j (and, with
  probability ``neighbour_prob``, default ``occlusion.neighbour_prob``, a 4-neighbour too)."""
  o = config.occlusion
  return occlusion.OccludeEveryBlock(
      training_occluders(config), occlusion.CENTRAL_BLOCKS,
      o.neighbour_prob if neighbour_prob is None else neighbour_prob, o.min_overlap, o.overlap,
      o.exact_blocks)


def update_batch(cfg: ml_collections.ConfigDict) -> int:
  """Stage I's faces per generator update (its lambda, overlap and statistics batches too): a
  step's ``pdsn.batch_size`` is ``pdsn.sub_batches`` of these."""
  return cfg.batch_size // cfg.sub_batches


def total_steps(cfg: ml_collections.ConfigDict, num_train: int) -> int:
  """``cfg.num_steps`` when > 0, else ``cfg.num_epochs`` of ``num_train`` images."""
  if cfg.num_steps > 0:
    return int(cfg.num_steps)
  return max(1, int(cfg.num_epochs * num_train // cfg.batch_size))


def init_from_loader(config: ml_collections.ConfigDict):
  """Reads ``init_from`` into ``{params: {backbone}, batch_stats}``: the trunk kind's own
  weight files (``TrunkKind.load``: dlib's network file, ``"dlib"`` for face_recognition_models'
  one; the original MobileFaceNet's PyTorch checkpoint), else another run's orbax checkpoints."""
  kind = config.model.kind

  def load(path: str) -> dict:
    v = trunks.get(kind).load(path)
    if v is None:  # another run's checkpoints
      return checkpointing.load_variables(path)
    logging.info("loaded model.kind=%s weights from %s", kind, path)
    return {"params": {"backbone": v["params"]}, "batch_stats": v["batch_stats"]}

  return load


def feature_variables(net, variables: dict) -> dict:
  """The variables U depends on: all but F's (``net.head_params()``); two checkpoints that
  differ only in F share them, and so their U and their gallery stores."""
  head = set(net.head_params())
  return {coll: {k: v for k, v in tree.items() if k not in head}
          for coll, tree in variables.items()}
