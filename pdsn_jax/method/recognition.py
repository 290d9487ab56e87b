"""The recognition network's training, shared by the trunk, Baseline and fine-tune stages: its
state, its loss (CosFace, or distillation toward a frozen teacher), optionally under FDMs,
and held-out pair verification as the stages' evaluation."""

import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pdsn_jax.method import builders, fdm
from pdsn_jax.train import loop, parallel, training
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.data import pipeline
from pdsn_jax.data.pairs import generate_pairs
from pdsn_jax.evaluation import verification
from pdsn_jax.models.layers import l2_normalize

LOSSES = ("cosface", "distill")
TRAINABLE = ("all", "top", "head", "classifier")
# the trunk's randomness; the Baseline and fine-tune stages draw it too (the same face order)
STREAM = stage_lib.Stream(data_offset=0, init_fold=None)


def trainable_mask(backbone, trainable: str, loss: str):
  """None (everything trains) or a function params -> bool tree for ``training.freeze``.

  "all": backbone and, with CosFace, the classifier; "top": the trunk's layers at U's
  resolution up to U (``backbone.top_params()``) and F; "head": only F
  (``backbone.head_params()``); "classifier": only the CosFace classifier (a frozen pretrained
  trunk). Distillation uses no classifier, so it stays fixed.
  """
  if trainable not in TRAINABLE:
    raise ValueError(f"trainable={trainable!r} is not one of {TRAINABLE}")
  if trainable == "top" and not hasattr(backbone, "top_params"):
    raise ValueError(f"finetune.trainable='top' needs a trunk with bottom/top/top_params "
                     f"(models/trunks.py); {type(backbone).__name__} has none: use 'head' or "
                     "'all'")
  if loss not in LOSSES:
    raise ValueError(f"loss={loss!r} is not one of {LOSSES}")
  if trainable == "all" and loss == "cosface":
    return None

  def mask(params):
    head = set(backbone.head_params()) if trainable in ("head", "top") else set()
    if trainable == "top":
      head |= set(backbone.top_params())
    bb = {k: jax.tree.map(lambda _, t=(trainable == "all" or k in head): t, v)
          for k, v in params["backbone"].items()}
    cls = jax.tree.map(lambda _: loss == "cosface", params["classifier"])
    return {"backbone": bb, "classifier": cls}

  return mask


def init_fn(config, backbone, head, tx: optax.GradientTransformation, with_teacher: bool = False,
            stream: stage_lib.Stream = STREAM):
  """A function of no arguments returning the initial TrainState (for eval_shape / jit).
  ``with_teacher``: room in ``frozen`` for the starting network (filled in from init_from)."""

  def init() -> training.TrainState:
    k_backbone, k_head, k_run = jax.random.split(training.init_key(config, stream), 3)
    x = jnp.zeros((1, *config.data.image_size, 3), jnp.float32)
    variables = backbone.init({"params": k_backbone, "dropout": k_backbone}, x)
    head_params = head.init(k_head, jnp.zeros((1, backbone.embedding_dim)))["params"]
    params = {"backbone": variables["params"], "classifier": head_params}
    teacher = ({"params": variables["params"], "batch_stats": variables["batch_stats"]}
               if with_teacher else None)
    return training.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
        opt_state=tx.init(params), rng=jax.random.key_data(k_run), frozen=teacher)

  return init


def _unit(e: jax.Array) -> jax.Array:
  return l2_normalize(e)


def train_step(state: training.TrainState, batch: dict, rng: jax.Array, *, backbone, head,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               dictionary: jax.Array | None = None, trainable: str = "all",
               loss: str = "cosface", chunk: int = 0) -> tuple[training.TrainState, dict]:
  """Per-device step; gradients and BatchNorm statistics averaged over the mesh.

  With a ``dictionary`` (stage III fine-tuning) the embedding is F(M * U(x)), M the
  FDM composed from the batch's ``blocks`` flags (all ones for a clean face).
  ``loss``: "cosface" on the identity labels, or "distill": 1 - cos(student's embedding of
  ``image``, the frozen teacher's F(U(``clean``)) of the same face), label-free.
  ``trainable`` (see ``trainable_mask``): when the backbone below F is fixed ("head",
  "classifier") U is computed once in inference mode with no backward pass through it; with
  "top", the same for the layers below the trunk's ``top``.
  Distillation keeps BatchNorm in inference mode (the pretrained statistics). ``chunk``: faces
  per call of those passes without a backward (``builders.forward_chunk``).
  """
  rng = parallel.per_device_rng(rng)
  images, labels = builders.normalize(batch["image"]), batch["label"]
  masks = None if dictionary is None else fdm.compose(batch["blocks"], dictionary)
  masked = lambda u: u if masks is None else u * masks.astype(u.dtype)  # noqa: E731
  bn_train = trainable == "all" and loss == "cosface"

  def forward(module, x, train):
    return module.head(masked(module.features(x, train)), train)

  if trainable != "all":  # U (with "top": the input of the trunk's top) needs no gradient
    u_fixed = jax.lax.stop_gradient(builders.frozen_apply(
        backbone, {"params": state.params["backbone"], "batch_stats": state.batch_stats}, images,
        "bottom" if trainable == "top" else "features", chunk))

  def from_fixed(module, v):
    return module.head(masked(module.top(v, False) if trainable == "top" else v), False)
  if loss == "distill":
    target = jax.lax.stop_gradient(_unit(builders.frozen_apply(
        backbone, state.frozen, builders.normalize(batch["clean"]), None, chunk)))

  def loss_fn(params):
    variables = {"params": params["backbone"], "batch_stats": state.batch_stats}
    if trainable != "all":
      emb = backbone.apply(variables, u_fixed, method=from_fixed)
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


def embed_step(variables: dict, batch: dict, rng: jax.Array, *, backbone):
  """Per-device embeddings in inference mode (the 'state' slot holds the variables)."""
  del rng
  return variables, backbone.apply(variables, builders.normalize(batch["image"]))


class Verifier:
  """Held-out pair verification: images rendered/decoded once, embedded data-parallel."""

  def __init__(self, config, heldout_source, mesh, backbone):
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
    for local, real in pipeline.eval_batches({"image": self.images}, self.batch,
                                             jax.process_index(), jax.process_count()):
      _, emb = self.embed(variables, parallel.put_batch(local, self.mesh), key)
      out.append(np.asarray(parallel.fetch(emb))[:real])
    return np.concatenate(out)

  def __call__(self, variables: dict) -> dict:
    emb = self.embeddings(variables)
    scores = verification.cosine_scores(emb[self.pairs[:, 0]], emb[self.pairs[:, 1]])
    res = verification.report(scores, self.issame)
    del res["correct"]
    return res


def merge_init_from(state: training.TrainState, loaded: dict) -> training.TrainState:
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
  teacher = state.frozen
  if teacher is not None:  # separate buffers: the state is donated every step
    teacher = jax.tree.map(jnp.copy, {"params": params["backbone"], "batch_stats": batch_stats})
  return state.replace(params=params, batch_stats=batch_stats, frozen=teacher)


_SUMMARY_KEYS = ("accuracy", "std", "tar_at_far_1e-3", "negatives")


def plan(ctx: loop.Context, *, transforms: tuple = (), dictionary: np.ndarray | None = None,
         init_from: str = "") -> loop.Plan:
  """The recognition network trained with ``ctx.cfg``'s loss on faces made by ``transforms``
  (after the flip); ``dictionary``: the loss on F(M * U); ``init_from``: the starting
  network. Evaluated by held-out pair verification."""
  config, cfg = ctx.config, ctx.cfg
  backbone = builders.backbone(config, True)
  head = builders.classifier(config, ctx.train.num_classes)
  schedule = training.learning_rate_schedule(cfg, ctx.steps)
  trainable = "classifier" if cfg.get("freeze_backbone", False) else cfg.get("trainable", "all")
  loss = cfg.get("loss", "cosface")
  tx = training.optimizer(cfg, ctx.steps, trainable_mask(backbone, trainable, loss))
  if loss == "distill" and not init_from:
    raise ValueError(f"{ctx.name}.loss='distill' needs a starting network to distil from "
                     "(init_from)")
  verifier = Verifier(config, ctx.heldout, ctx.mesh, builders.backbone(config, False))

  def evaluate(state, step, writer) -> dict:
    t = time.time()
    res = verifier({"params": state.params["backbone"], "batch_stats": state.batch_stats})
    scalars = {"verification_accuracy": res["accuracy"], "verification_std": res["std"]}
    if res["tar_at_far_1e-3"] is not None:
      scalars["tar_at_far_1e-3"] = res["tar_at_far_1e-3"]
    writer.write(step, scalars, prefix="eval")
    if jax.process_index() == 0:
      logging.info("[%s] step %d held-out verification: %.2f%% +- %.2f (10-fold), "
                   "TAR@FAR=1e-3 %s (%.1fs)", ctx.name, step, 100 * res["accuracy"],
                   100 * res["std"],
                   verification.format_tar(res["tar_at_far_1e-3"], res["negatives"]),
                   time.time() - t)
    return res

  def summary(results: dict) -> dict:
    out = {"heldout_verification": {k: results["final"][k] for k in _SUMMARY_KEYS}}
    if "at_start" in results:
      out["heldout_verification_at_start"] = {k: results["at_start"][k] for k in _SUMMARY_KEYS}
    return out

  table = None if dictionary is None else jnp.asarray(dictionary, jnp.float32)
  flip = (pipeline.RandomFlip(),) if config.data.flip else ()
  return loop.Plan(
      init=init_fn(config, builders.backbone(config, False), head, tx,
                   with_teacher=loss == "distill", stream=ctx.stream),
      step=functools.partial(train_step, backbone=backbone, head=head, tx=tx,
                             schedule=schedule, dictionary=table, trainable=trainable, loss=loss,
                             chunk=builders.forward_chunk(config)),
      transforms=flip + tuple(transforms), init_from=init_from,
      merge=merge_init_from, loader=builders.init_from_loader(config), evaluate=evaluate,
      eval_at_start=True, eval_every=cfg.eval_every, summary=summary,
      description=f", loss {loss}, training {trainable}")
