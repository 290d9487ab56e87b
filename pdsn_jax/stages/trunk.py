"""Stage 0: the trunk CNN trained with the large-margin cosine loss (CosFace)."""

import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pdsn_jax import checkpointing, fdm, loop, metrics as metrics_lib, parallel, training
from pdsn_jax.data import pipeline, sources
from pdsn_jax.data.pairs import generate_pairs
from pdsn_jax.evaluation import verification
from pdsn_jax.models import CosFaceHead, IResNet, dlib_files, dlib_resnet, mobilefacenet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
STAGE = "trunk"


def normalize(images: jax.Array) -> jax.Array:
  """uint8 RGB -> float32 in about [-1, 1] (insightface's (x - 127.5) / 128)."""
  return (images.astype(jnp.float32) - 127.5) / 128.0


KINDS = ("iresnet", "dlib", "mobilefacenet")


def build_backbone(config: ml_collections.ConfigDict, train: bool):
  """The trunk: IResNet, MobileFaceNet (trained here or loaded from the original's checkpoint),
  or dlib's pretrained ResNet (``model.kind="dlib"``)."""
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


def build_head(config: ml_collections.ConfigDict, num_classes: int) -> CosFaceHead:
  return CosFaceHead(num_classes, config.cosface.scale, config.cosface.margin)


LOSSES = ("cosface", "distill")
TRAINABLE = ("all", "head", "classifier")


def trainable_mask(backbone, trainable: str, loss: str):
  """None (everything trains) or a function params -> bool tree for ``training.freeze``.

  "all": backbone and, with CosFace, the classifier; "head": only F (``backbone.head_params()``);
  "classifier": only the CosFace classifier (a frozen pretrained trunk). Distillation uses
  no classifier, so it stays fixed.
  """
  if trainable not in TRAINABLE:
    raise ValueError(f"trainable={trainable!r} is not one of {TRAINABLE}")
  if loss not in LOSSES:
    raise ValueError(f"loss={loss!r} is not one of {LOSSES}")
  if trainable == "all" and loss == "cosface":
    return None

  def mask(params):
    head = set(backbone.head_params()) if trainable == "head" else set()
    bb = {k: jax.tree.map(lambda _, t=(trainable == "all" or k in head): t, v)
          for k, v in params["backbone"].items()}
    cls = jax.tree.map(lambda _: loss == "cosface", params["classifier"])
    return {"backbone": bb, "classifier": cls}

  return mask


def init_fn(config, backbone: IResNet, head: CosFaceHead, tx: optax.GradientTransformation,
            with_teacher: bool = False):
  """A function of no arguments returning the initial TrainState (for eval_shape / jit).
  ``with_teacher``: room for the frozen starting network (filled in from init_from)."""

  def init() -> training.TrainState:
    root = training.root_key(config)
    k_backbone, k_head, k_run = jax.random.split(root, 3)
    x = jnp.zeros((1, *config.data.image_size, 3), jnp.float32)
    variables = backbone.init({"params": k_backbone, "dropout": k_backbone}, x)
    head_params = head.init(k_head, jnp.zeros((1, backbone.embedding_dim)))["params"]
    params = {"backbone": variables["params"], "classifier": head_params}
    teacher = ({"params": variables["params"], "batch_stats": variables["batch_stats"]}
               if with_teacher else None)
    return training.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
        opt_state=tx.init(params), rng=jax.random.key_data(k_run), teacher=teacher)

  return init


def _unit(e: jax.Array) -> jax.Array:
  return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


def train_step(state: training.TrainState, batch: dict, rng: jax.Array, *, backbone: IResNet,
               head: CosFaceHead, tx: optax.GradientTransformation,
               schedule: optax.Schedule, dictionary: jax.Array | None = None,
               trainable: str = "all", loss: str = "cosface") -> tuple[training.TrainState, dict]:
  """Per-device step; gradients and BatchNorm statistics averaged over the mesh.

  With a ``dictionary`` (stage III fine-tuning) the embedding is F(M * U(x)), M the
  FDM composed from the batch's ``blocks`` flags (all ones for a clean face).
  ``loss``: "cosface" on the identity labels, or "distill": 1 - cos(student's embedding of
  ``image``, the frozen teacher's F(U(``clean``)) of the same face), label-free.
  ``trainable`` (see ``trainable_mask``): when the backbone below F is fixed ("head",
  "classifier") U is computed once in inference mode with no backward pass through it.
  Distillation keeps BatchNorm in inference mode (the pretrained statistics).
  """
  rng = parallel.per_device_rng(rng)
  images, labels = normalize(batch["image"]), batch["label"]
  masks = None if dictionary is None else fdm.compose(batch["blocks"], dictionary)
  masked = lambda u: u if masks is None else u * masks.astype(u.dtype)  # noqa: E731
  bn_train = trainable == "all" and loss == "cosface"

  def forward(module, x, train):
    return module.head(masked(module.features(x, train)), train)

  if trainable != "all":  # U needs no gradient
    u_fixed = jax.lax.stop_gradient(backbone.apply(
        {"params": state.params["backbone"], "batch_stats": state.batch_stats}, images,
        False, method="features"))
  if loss == "distill":
    target = jax.lax.stop_gradient(_unit(backbone.apply(state.teacher, normalize(batch["clean"]))))

  def loss_fn(params):
    variables = {"params": params["backbone"], "batch_stats": state.batch_stats}
    if trainable != "all":
      emb = backbone.apply(variables, masked(u_fixed), False, method="head")
      stats = state.batch_stats
    elif bn_train:
      emb, updates = backbone.apply(variables, images, train=True, rngs={"dropout": rng},
                                    mutable=["batch_stats"], method=forward)
      stats = updates["batch_stats"]
    else:
      emb, stats = backbone.apply(variables, images, False, method=forward), state.batch_stats
    if loss == "distill":
      cos = jnp.sum(_unit(emb) * target, axis=-1)
      return jnp.mean(1.0 - cos), (stats, cos)
    logits, cosine = head.apply({"params": params["classifier"]}, emb, labels)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
            (stats, cosine))

  (loss_value, (batch_stats, cosine)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  grads = jax.lax.pmean(grads, parallel.AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if loss == "distill":  # "accuracy": mean cosine to the teacher
    accuracy = jnp.mean(cosine)
  else:
    accuracy = jnp.mean(jnp.argmax(cosine, -1) == labels)
  out = jax.lax.pmean({"loss": loss_value, "accuracy": accuracy}, parallel.AXIS)
  out["learning_rate"] = schedule(state.step)
  # Non-finite if any parameter is: checked on the host before every save.
  out["param_norm"] = optax.tree.norm(params)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, out


def embed_step(variables: dict, batch: dict, rng: jax.Array, *, backbone: IResNet):
  """Per-device embeddings in inference mode (the 'state' slot holds the variables)."""
  del rng
  emb = backbone.apply(variables, normalize(batch["image"]))
  return variables, emb


class Verifier:
  """Held-out pair verification: images rendered/decoded once, embedded data-parallel."""

  def __init__(self, config, heldout_source, mesh, backbone: IResNet):
    self.mesh = mesh
    self.batch = config.eval.batch_size
    pipeline.check_batch_size(self.batch, mesh.size, jax.process_count(), "eval.batch_size")
    pairs, self.issame = generate_pairs(heldout_source.labels, config.eval.num_pairs,
                                        config.eval.seed)
    used, inverse = np.unique(pairs.reshape(-1), return_inverse=True)
    self.pairs = inverse.reshape(-1, 2)
    self.images = np.stack([heldout_source[int(i)]["image"] for i in used])
    self.embed = parallel.data_parallel(functools.partial(embed_step, backbone=backbone), mesh,
                                        donate_state=False, batch_out=True)

  def embeddings(self, variables: dict) -> np.ndarray:
    out, key = [], jax.random.key(0)
    for local, real in pipeline.eval_batches(self.images, self.batch, jax.process_index(),
                                             jax.process_count()):
      _, emb = self.embed(variables, parallel.put_batch({"image": local}, self.mesh), key)
      out.append(np.asarray(parallel.fetch(emb))[:real])
    return np.concatenate(out)

  def __call__(self, variables: dict) -> dict:
    emb = self.embeddings(variables)
    scores = verification.cosine_scores(emb[self.pairs[:, 0]], emb[self.pairs[:, 1]])
    res = verification.ten_fold_accuracy(scores, self.issame)
    res["tar_at_far_1e-3"] = verification.tar_at_far(scores, self.issame, 1e-3)
    res["negatives"] = int(np.sum(~np.asarray(self.issame, bool)))
    return res


def inference_variables(state: training.TrainState) -> dict:
  return {"params": state.params["backbone"], "batch_stats": state.batch_stats}


def _loader(config):
  """init_from loader: orbax checkpoints; with ``model.kind="dlib"`` a dlib network file
  (``"dlib"``: the one installed by face_recognition_models); with
  ``model.kind="mobilefacenet"`` the original's legacy PyTorch checkpoint (``*.ckpt|.pth|.pt``)."""
  kind = config.model.kind
  if kind == "mobilefacenet":
    def load_torch(path: str) -> dict:
      if os.path.isdir(path):  # another run's checkpoints
        return checkpointing.load_variables(path)
      v = mobilefacenet.load(path)
      logging.info("loaded MobileFaceNet weights from %s", path)
      return {"params": {"backbone": v["params"]}, "batch_stats": v["batch_stats"]}
    return load_torch
  if kind != "dlib":
    return None

  def load(path: str) -> dict:
    if path != "dlib" and not path.endswith(".dat"):  # another run's checkpoints
      return checkpointing.load_variables(path)
    path = dlib_files.path() if path == "dlib" else path
    v = dlib_resnet.to_variables(dlib_resnet.read_network(path))
    logging.info("loaded dlib's ResNet from %s", path)
    return {"params": {"backbone": v["params"]}, "batch_stats": v["batch_stats"]}

  return load


def total_steps(cfg: ml_collections.ConfigDict, num_train: int) -> int:
  if cfg.num_steps > 0:
    return int(cfg.num_steps)
  return max(1, int(cfg.num_epochs * num_train // cfg.batch_size))


def _merge_init_from(state: training.TrainState, loaded: dict) -> training.TrainState:
  """Takes the backbone (and classifier when shapes agree) from another run; a state with a
  teacher gets a copy of that backbone as its frozen teacher."""
  params = dict(state.params)
  src = loaded["params"]
  params["backbone"] = jax.tree.map(lambda new, old: jnp.asarray(old, new.dtype).reshape(new.shape),
                                    state.params["backbone"], src["backbone"])
  if jax.tree.map(np.shape, src.get("classifier")) == jax.tree.map(np.shape,
                                                                   state.params["classifier"]):
    params["classifier"] = src["classifier"]
  batch_stats = jax.tree.map(lambda new, old: jnp.asarray(old, new.dtype), state.batch_stats,
                             loaded["batch_stats"])
  teacher = state.teacher
  if teacher is not None:  # separate buffers: the state is donated every step
    teacher = jax.tree.map(jnp.copy, {"params": params["backbone"], "batch_stats": batch_stats})
  return state.replace(params=params, batch_stats=batch_stats, teacher=teacher)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the trunk; returns and writes ``<workdir>/trunk/summary.json``."""
  return train(config, workdir, stage=STAGE, cfg=config.trunk, init_from=config.trunk.init_from)


def train(config: ml_collections.ConfigDict, workdir: str, *, stage: str,
          cfg: ml_collections.ConfigDict, transforms: tuple = (),
          dictionary: np.ndarray | None = None, init_from: str = "") -> dict:
  """Trains (or resumes) a trunk with CosFace; shared by the trunk, baseline and fine-tune stages.

  ``transforms`` run after the flip (e.g. occlusion), ``dictionary`` turns on the
  masked loss, ``init_from`` names the checkpoints/ folder the run starts from.
  Writes ``<workdir>/<stage>/summary.json``.
  """
  stage_dir = os.path.join(workdir, stage)
  mesh = parallel.make_mesh()
  pcount, pindex = jax.process_count(), jax.process_index()
  pipeline.check_batch_size(cfg.batch_size, mesh.size, pcount, f"{stage}.batch_size")
  train_src, heldout_src = sources.build(config.data)
  steps = total_steps(cfg, len(train_src))
  logging.info("[%s] %s: %d images, %d identities; held-out %d images; %d steps of %d on "
               "%d devices (%d processes)", stage, getattr(train_src, "description", ""),
               len(train_src), train_src.num_classes, len(heldout_src), steps, cfg.batch_size,
               mesh.size, pcount)

  backbone, head = build_backbone(config, True), build_head(config, train_src.num_classes)
  schedule = training.learning_rate_schedule(cfg, steps)
  trainable = "classifier" if cfg.get("freeze_backbone", False) else cfg.get("trainable", "all")
  loss = cfg.get("loss", "cosface")
  tx = training.optimizer(cfg, steps, trainable_mask(backbone, trainable, loss))
  if loss == "distill" and not init_from:
    raise ValueError(f"{stage}.loss='distill' needs a starting network to distil from (init_from)")
  init = init_fn(config, build_backbone(config, False), head, tx, with_teacher=loss == "distill")

  flip = (pipeline.RandomFlip(),) if config.data.flip else ()
  ds = pipeline.train_dataset(train_src, cfg.batch_size, config.seed, pindex, pcount,
                              flip + tuple(transforms))
  data_iter = pipeline.to_iterator(ds, config.data.num_workers)
  mgr = checkpointing.manager(os.path.join(stage_dir, "checkpoints"), cfg.keep_checkpoints,
                              cfg.checkpoint_every)
  state, start, origin = checkpointing.restore_or_init(
      mgr, init, mesh, data_iter, init_from, _merge_init_from, _loader(config))
  logging.info("[%s] starting at step %d (%s)", stage, start, origin)

  verifier = Verifier(config, heldout_src, mesh, build_backbone(config, False))
  writer = metrics_lib.MetricWriter(os.path.join(stage_dir, "logs"), stage)
  table = None if dictionary is None else jnp.asarray(dictionary, jnp.float32)
  step_fn = parallel.data_parallel(
      functools.partial(train_step, backbone=backbone, head=head, tx=tx, schedule=schedule,
                        dictionary=table, trainable=trainable, loss=loss), mesh)
  root = loop.stage_root_key(state, mesh, config.prng_impl)
  t_start = time.time()
  evals = {}

  def periodic_eval(done, state):
    if cfg.eval_every > 0 and done % cfg.eval_every == 0 and done != steps:
      _evaluate(stage, verifier, state, done, writer)

  try:
    if start == 0:  # the starting net's accuracy, for reference
      evals["start"] = _evaluate(stage, verifier, state, 0, writer)
    state = loop.train_loop(stage=stage, state=state, step_fn=step_fn, data_iter=data_iter,
                            mesh=mesh, mgr=mgr, writer=writer, root=root, start=start,
                            total=steps, images_per_step=cfg.batch_size,
                            log_every=cfg.log_every, on_step=periodic_eval,
                            max_growth=config.max_param_norm_growth)
    eval_result = _evaluate(stage, verifier, state, steps, writer)
  finally:
    mgr.close()
    writer.close()
  keys = ("accuracy", "std", "tar_at_far_1e-3", "negatives")
  summary = {"stage": stage, "data": getattr(train_src, "description", ""), "steps": steps,
             "train_seconds_this_run": round(time.time() - t_start, 1),
             "heldout_verification": {k: eval_result[k] for k in keys}}
  if "start" in evals:
    summary["heldout_verification_at_start"] = {k: evals["start"][k] for k in keys}
  if pindex == 0:
    with open(os.path.join(stage_dir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
  return summary


def _evaluate(stage: str, verifier: Verifier, state: training.TrainState, step: int,
              writer) -> dict:
  t = time.time()
  res = verifier(inference_variables(state))
  scalars = {"verification_accuracy": res["accuracy"], "verification_std": res["std"]}
  if res["tar_at_far_1e-3"] is not None:
    scalars["tar_at_far_1e-3"] = res["tar_at_far_1e-3"]
  writer.write(step, scalars, prefix="eval")
  if jax.process_index() == 0:
    logging.info("[%s] step %d held-out verification: %.2f%% +- %.2f (10-fold), "
                 "TAR@FAR=1e-3 %s (%.1fs)", stage, step, 100 * res["accuracy"], 100 * res["std"],
                 verification.format_tar(res["tar_at_far_1e-3"], res["negatives"]),
                 time.time() - t)
  return res
