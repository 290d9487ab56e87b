"""The occlusion detector stage: a segmentation network trained on synthetically occluded faces.

Faces from the configured source get occluders pasted on the fly (every
category, natural placements and random size/position ones, a share of clean
faces); the synthesizer's pixel masks are the labels. Per-pixel sigmoid
cross-entropy, data-parallel step, checkpoints and resume like every stage.
Evaluation on held-out faces: mean IU (over the two classes, from the confusion
counts of the whole set, as for FCN), pixel accuracy and block-assignment
accuracy (the 9 generator blocks flagged from the predicted vs the true mask),
for the occluders seen in training and, when ``occlusion.occluder_dir`` is set,
for held-out occluder files never seen in training.
"""

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

from pdsn_jax import checkpointing, loop, metrics as metrics_lib, parallel, training
from pdsn_jax.data import occlusion, pipeline, placement, sources
from pdsn_jax.models.detector import OcclusionDetector
from pdsn_jax.stages import trunk as trunk_stage

STAGE = "detector"


class DetectorOcclusion:
  """grain transform: pastes 0-2 occluders (natural or random placement); adds ``mask`` (uint8)."""

  def __init__(self, library: occlusion.OccluderLibrary, clean_prob: float = 0.15):
    self.library, self.clean_prob = library, clean_prob

  def __call__(self, rec: dict, rng: np.random.Generator) -> dict:
    image = rec["image"]
    mask = np.zeros(image.shape[:2], bool)
    if rng.uniform() >= self.clean_prob:
      for _ in range(1 + int(rng.uniform() < 0.25)):
        if rng.uniform() < 0.5:
          cond = placement.CONDITIONS[rng.integers(len(placement.CONDITIONS))]
          image, m = placement.occlude(image, rng, self.library, cond)
        else:
          image, m = occlusion.random_occlusion(image, rng, self.library, area=(0.03, 0.35))
        mask |= m
    rec["image"], rec["mask"] = image, mask.astype(np.uint8)
    return rec


def build(config, train: bool) -> OcclusionDetector:
  return OcclusionDetector(tuple(config.detector.widths), parallel.AXIS if train else None,
                           trunk_stage.DTYPES[config.model.dtype])


def _inputs(images: jax.Array, scale: float) -> jax.Array:
  x = trunk_stage.normalize(images)
  if scale != 1.0:
    b, h, w, c = x.shape
    x = jax.image.resize(x, (b, int(round(h * scale)), int(round(w * scale)), c), "linear")
  return x


def logits_fn(model, variables, images: jax.Array, scale: float, train: bool = False,
              mutable=False):
  """Full-resolution occlusion logits; the net may run at ``scale`` of the input size."""
  out = model.apply(variables, _inputs(images, scale), train, mutable=mutable)
  logits, updates = out if mutable else (out, None)
  if scale != 1.0:
    logits = jax.image.resize(logits, images.shape[:3], "linear")
  return (logits, updates) if mutable else logits


def train_step(state: training.TrainState, batch: dict, rng: jax.Array, *, model, tx, schedule,
               scale: float):
  """Per-device step: mean per-pixel sigmoid cross-entropy; grads and BN statistics pmean-ed."""
  del rng
  labels = batch["mask"].astype(jnp.float32)

  def loss_fn(params):
    logits, updates = logits_fn(model, {"params": params, "batch_stats": state.batch_stats},
                                batch["image"], scale, True, ["batch_stats"])
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean(), (updates, logits)

  (loss, (updates, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, parallel.AXIS)
  upd, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, upd)
  pred = logits > 0
  inter = jnp.sum(pred & (labels > 0))
  union = jnp.sum(pred | (labels > 0))
  out = jax.lax.pmean({"loss": loss, "pixel_accuracy": jnp.mean(pred == (labels > 0))},
                      parallel.AXIS)
  out["iou_occluded"] = jax.lax.psum(inter, parallel.AXIS) / jnp.maximum(
      jax.lax.psum(union, parallel.AXIS), 1)
  out["learning_rate"] = schedule(state.step)
  out["param_norm"] = optax.tree.norm(params)
  return state.replace(step=state.step + 1, params=params, batch_stats=updates["batch_stats"],
                       opt_state=opt_state), out


def init_fn(config, model, tx):
  def init() -> training.TrainState:
    k, k_run = jax.random.split(jax.random.fold_in(training.root_key(config), 3))
    h, w = config.data.image_size
    s = config.detector.input_scale
    v = model.init(k, jnp.zeros((1, int(round(h * s)), int(round(w * s)), 3)))
    return training.TrainState(step=jnp.zeros((), jnp.int32), params=v["params"],
                               batch_stats=v["batch_stats"], opt_state=tx.init(v["params"]),
                               rng=jax.random.key_data(k_run))
  return init


def predictor(config, variables: dict, mesh=None):
  """``images (N, H, W, 3) uint8 -> (N, H, W) bool`` occlusion masks, data-parallel, jitted."""
  mesh = mesh or parallel.make_mesh()
  model, cfg = build(config, False), config.detector
  rep = parallel.put_replicated(variables, mesh)

  def step(v, batch, rng):
    del rng
    return v, jax.nn.sigmoid(logits_fn(model, v, batch["image"], cfg.input_scale)) >= cfg.threshold

  fn = parallel.data_parallel(step, mesh, donate_state=False, batch_out=True)
  batch = config.eval.batch_size

  def predict(images: np.ndarray) -> np.ndarray:
    out = []
    for local, real in pipeline.eval_batches(np.asarray(images), batch, jax.process_index(),
                                             jax.process_count()):
      _, m = fn(rep, parallel.put_batch({"image": local}, mesh), jax.random.key(0))
      out.append(np.asarray(parallel.fetch(m))[:real])
    return np.concatenate(out) if out else np.zeros((0, *np.shape(images)[1:3]), bool)

  return predict


def segmentation_metrics(pred: np.ndarray, true: np.ndarray, min_overlap: float = 0.5,
                         overlap: str = "coverage") -> dict:
  """Mean IU over {background, occluded} from whole-set counts, pixel accuracy, block accuracy."""
  pred, true = np.asarray(pred, bool), np.asarray(true, bool)
  ious = []
  for cls in (False, True):
    p, t = pred == cls, true == cls
    union = np.sum(p | t)
    ious.append(np.sum(p & t) / union if union else 1.0)
  fp = placement.occluded_block_flags(pred, min_overlap, overlap)
  ft = placement.occluded_block_flags(true, min_overlap, overlap)
  return {"mean_iu": float(np.mean(ious)), "iou_occluded": float(ious[1]),
          "pixel_accuracy": float(np.mean(pred == true)),
          "block_accuracy": float(np.mean(fp == ft)),
          "image_block_pattern_accuracy": float(np.mean(np.all(fp == ft, axis=1)))}


def heldout_sets(config) -> dict:
  """name -> (images, true masks) of held-out faces with seen and, if files exist, unseen
  occluders (seeded)."""
  heldout = sources.build_eval(config.data, 0)[0]
  o, n = config.occlusion, min(config.detector.eval_images, len(heldout))
  faces = [heldout[int(i)]["image"] for i in np.linspace(0, len(heldout) - 1, n).astype(int)]
  libs = {"seen occluders": occlusion.OccluderLibrary(o.occluder_dir, o.procedural,
                                                      split="train" if o.occluder_dir else "all",
                                                      heldout_every=config.detector.heldout_every,
                                                      face_template=config.data.alignment,
                                                      heldout=tuple(o.heldout))}
  if o.occluder_dir:
    libs["unseen occluder files"] = occlusion.OccluderLibrary(
        o.occluder_dir, False, split="heldout", heldout_every=config.detector.heldout_every,
        face_template=config.data.alignment, heldout=tuple(o.heldout))
  out = {}
  for k, (name, lib) in enumerate(libs.items()):
    t = DetectorOcclusion(lib, clean_prob=0.1)
    recs = [t({"image": f}, np.random.default_rng([config.eval.seed, 50 + k, i]))
            for i, f in enumerate(faces)]
    out[name] = (np.stack([r["image"] for r in recs]), np.stack([r["mask"] for r in recs]) > 0)
  return out


def evaluate(config, variables: dict, mesh=None, sets: dict | None = None) -> dict:
  """Segmentation metrics per held-out set (``sets`` from ``heldout_sets``, built if None)."""
  predict = predictor(config, variables, mesh)
  o = config.occlusion
  return {name: segmentation_metrics(predict(images), masks, o.min_overlap, o.overlap)
          for name, (images, masks) in (sets or heldout_sets(config)).items()}


def load_variables(workdir: str) -> dict | None:
  path = os.path.join(workdir, STAGE, "checkpoints")
  if not os.path.isdir(path) or not any(d.isdigit() for d in os.listdir(path)):
    return None
  return checkpointing.load_variables(path)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the detector; writes ``<workdir>/detector/summary.json``."""
  cfg, o = config.detector, config.occlusion
  stage_dir = os.path.join(workdir, STAGE)
  mesh = parallel.make_mesh()
  pcount, pindex = jax.process_count(), jax.process_index()
  pipeline.check_batch_size(cfg.batch_size, mesh.size, pcount, "detector.batch_size")
  train_src, _ = sources.build(config.data)
  steps = trunk_stage.total_steps(cfg, len(train_src))
  library = occlusion.OccluderLibrary(o.occluder_dir, o.procedural,
                                      split="train" if o.occluder_dir else "all",
                                      heldout_every=cfg.heldout_every,
                                      face_template=config.data.alignment,
                                      heldout=tuple(o.heldout))
  flip = (pipeline.RandomFlip(),) if config.data.flip else ()
  ds = pipeline.train_dataset(train_src, cfg.batch_size, config.seed + 4, pindex, pcount,
                              flip + (DetectorOcclusion(library, cfg.clean_prob),))
  data_iter = pipeline.to_iterator(ds, config.data.num_workers)
  schedule = training.learning_rate_schedule(cfg, steps)
  tx = training.optimizer(cfg, steps)
  mgr = checkpointing.manager(os.path.join(stage_dir, "checkpoints"), cfg.keep_checkpoints,
                              cfg.checkpoint_every)
  state, start, origin = checkpointing.restore_or_init(mgr, init_fn(config, build(config, False),
                                                                    tx), mesh, data_iter)
  logging.info("[detector] widths %s at %gx input, %d steps of %d; starting at step %d (%s)",
               tuple(cfg.widths), cfg.input_scale, steps, cfg.batch_size, start, origin)
  writer = metrics_lib.MetricWriter(os.path.join(stage_dir, "logs"), STAGE)
  step_fn = parallel.data_parallel(functools.partial(
      train_step, model=build(config, True), tx=tx, schedule=schedule, scale=cfg.input_scale),
                                   mesh)
  t0 = time.time()
  try:
    state = loop.train_loop(stage=STAGE, state=state, step_fn=step_fn, data_iter=data_iter,
                            mesh=mesh, mgr=mgr, writer=writer, root=loop.stage_root_key(
                                state, mesh, config.prng_impl), start=start, total=steps,
                            images_per_step=cfg.batch_size, log_every=cfg.log_every,
                            max_growth=config.max_param_norm_growth)
  finally:
    mgr.close()
  variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  t = time.time()
  sets = heldout_sets(config)  # built once: metrics and the contact sheet
  results = evaluate(config, variables, mesh, sets)
  for name, r in results.items():
    writer.write(steps, {f"{name.replace(' ', '_')}/{k}": v for k, v in r.items()},
                 prefix="eval")
    logging.info("[detector] held-out faces, %s: mean IU %.4f, pixel accuracy %.4f, block "
                 "assignment accuracy %.4f (%.1fs)", name, r["mean_iu"], r["pixel_accuracy"],
                 r["block_accuracy"], time.time() - t)
  writer.close()
  summary = {"stage": STAGE, "steps": steps, "seconds_this_run": round(time.time() - t0, 1),
             "heldout": results}
  if pindex == 0:
    with open(os.path.join(stage_dir, "summary.json"), "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
    _sheet(config, variables, sets, os.path.join(stage_dir, "detections.png"))
  return summary


def _sheet(config, variables, sets: dict, path: str, num: int = 8) -> str:
  from pdsn_jax import visualize  # pylint: disable=g-import-not-at-top
  images, masks = next(iter(sets.values()))
  pred = predictor(config, variables)(images[:num])
  return visualize.detection_sheet(images[:num], pred, path, true_masks=masks[:num],
                                   min_overlap=config.occlusion.min_overlap,
                                   overlap=config.occlusion.overlap)
