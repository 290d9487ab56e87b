"""What several stages build from the config: the networks, the training occluders, U's shape,
the frozen trunk's features, step counts. Stages import this, never each other."""

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections

from pdsn_jax import checkpointing, parallel
from pdsn_jax.data import occlusion
from pdsn_jax.models import CosFaceHead, IResNet, dlib_files, dlib_resnet, mobilefacenet
from pdsn_jax.models.detector import OcclusionDetector
from pdsn_jax.models.generator import StackedMaskGenerators

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
KINDS = ("iresnet", "dlib", "mobilefacenet")


def normalize(images: jax.Array) -> jax.Array:
  """uint8 RGB -> float32 in about [-1, 1] (insightface's (x - 127.5) / 128)."""
  return (images.astype(jnp.float32) - 127.5) / 128.0


def backbone(config: ml_collections.ConfigDict, train: bool):
  """The trunk: IResNet, MobileFaceNet (trained here or loaded from the original's checkpoint),
  or dlib's pretrained ResNet (``model.kind="dlib"``). ``train``: BatchNorm statistics are
  averaged over the mesh (inference mode needs no mesh axis)."""
  m = config.model
  if m.dtype not in DTYPES:
    raise ValueError(f"model.dtype={m.dtype!r} is not one of {tuple(DTYPES)}")
  if m.kind == "dlib":
    if m.dlib_u not in dlib_resnet.U_BLOCKS:
      raise ValueError(f"model.dlib_u={m.dlib_u!r} is not one of {tuple(dlib_resnet.U_BLOCKS)}")
    return dlib_resnet.DlibResNet(dlib_resnet.U_BLOCKS[m.dlib_u], dtype=DTYPES[m.dtype])
  if m.kind == "mobilefacenet":
    return mobilefacenet.MobileFaceNet(width=m.width, embedding_dim=m.embedding_dim,
                                       bn_axis_name=parallel.AXIS if train else None,
                                       dtype=DTYPES[m.dtype])
  if m.kind != "iresnet":
    raise ValueError(f"model.kind={m.kind!r} is not one of {KINDS}")
  return IResNet(depth=m.depth, width=m.width, embedding_dim=m.embedding_dim,
                 dropout=m.dropout, bn_axis_name=parallel.AXIS if train else None,
                 dtype=DTYPES[m.dtype])


def classifier(config: ml_collections.ConfigDict, num_classes: int) -> CosFaceHead:
  return CosFaceHead(num_classes, config.cosface.scale, config.cosface.margin)


def generators(config: ml_collections.ConfigDict, train: bool) -> StackedMaskGenerators:
  """The 9 mask generators as one stacked module (stage I's model; stage II runs it)."""
  return StackedMaskGenerators(len(occlusion.CENTRAL_BLOCKS), parallel.AXIS if train else None,
                               config.pdsn.mask_bias_init)


def detector(config: ml_collections.ConfigDict, train: bool) -> OcclusionDetector:
  return OcclusionDetector(tuple(config.detector.widths), parallel.AXIS if train else None,
                           DTYPES[config.model.dtype])


def u_shape(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """(h, w, c) of the trunk's top conv feature U, by shape inference (nothing is computed)."""
  net = backbone(config, False)
  x = jnp.zeros((1, *config.data.image_size, 3))
  v = jax.eval_shape(lambda: net.init(jax.random.key(0), x))
  return tuple(jax.eval_shape(lambda v: net.apply(v, x, method="features"), v).shape[1:])


def trunk_variables(trunk: dict) -> dict:
  """Inference variables of the backbone from a checkpointed ``{params: {backbone, ...}}``."""
  return {"params": trunk["params"]["backbone"], "batch_stats": trunk["batch_stats"]}


def frozen_features(trunk: dict, batch: dict, net) -> tuple[jax.Array, jax.Array]:
  """U of the clean batch (B, ...) and of its occluded copies (J, B, ...), no gradient."""
  bvars = trunk_variables(trunk)
  occ = normalize(batch["occluded"])  # (B, J, H, W, 3)
  b, j = occ.shape[:2]
  u_clean = net.apply(bvars, normalize(batch["image"]), method="features")
  u_occ = net.apply(bvars, occ.reshape(b * j, *occ.shape[2:]), method="features")
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


def every_block_occlusion(config: ml_collections.ConfigDict) -> occlusion.OccludeEveryBlock:
  """Stage I/II's transform: each face and its 9 copies, copy j occluded on block j."""
  o = config.occlusion
  return occlusion.OccludeEveryBlock(training_occluders(config), occlusion.CENTRAL_BLOCKS,
                                     o.neighbour_prob, o.min_overlap, o.overlap, o.exact_blocks)


def total_steps(cfg: ml_collections.ConfigDict, num_train: int) -> int:
  """``cfg.num_steps`` when > 0, else ``cfg.num_epochs`` of ``num_train`` images."""
  if cfg.num_steps > 0:
    return int(cfg.num_steps)
  return max(1, int(cfg.num_epochs * num_train // cfg.batch_size))


def init_from_loader(config: ml_collections.ConfigDict):
  """Reads ``init_from`` into ``{params: {backbone}, batch_stats}``: orbax checkpoints; with
  ``model.kind="dlib"`` a dlib network file (``"dlib"``: face_recognition_models' one); with
  ``model.kind="mobilefacenet"`` the original's legacy PyTorch checkpoint."""
  kind = config.model.kind

  def load(path: str) -> dict:
    if kind == "mobilefacenet" and not os.path.isdir(path):
      v = mobilefacenet.load(path)
      logging.info("loaded MobileFaceNet weights from %s", path)
    elif kind == "dlib" and (path == "dlib" or path.endswith(".dat")):
      path = dlib_files.path() if path == "dlib" else path
      v = dlib_resnet.to_variables(dlib_resnet.read_network(path))
      logging.info("loaded dlib's ResNet from %s", path)
    else:  # another run's checkpoints
      return checkpointing.load_variables(path)
    return {"params": {"backbone": v["params"]}, "batch_stats": v["batch_stats"]}

  return load


def feature_variables(net, variables: dict) -> dict:
  """The variables U depends on: all but F's (``net.head_params()``); two checkpoints that
  differ only in F share them, and so their U and their gallery stores."""
  head = set(net.head_params())
  return {coll: {k: v for k, v in tree.items() if k not in head}
          for coll, tree in variables.items()}
