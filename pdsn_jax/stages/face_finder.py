"""The face finder stage: BlazeFace's short-range model fine-tuned to find occluded, grey,
low-resolution faces, by distillation from the shipped model on the clean photo
(``faces.tuning``).

Trains on the run's training photos as read (the head around the face, their landmarks) with
the *training* occluder files; every weight of the model trains, from the shipped ones. At
the end it scores the shipped and the tuned weights on held-out photos framed and degraded the
same way (the *select* occluder files where the run has them): faces found per kind, and the
face-erased photos given a face (``found.png``: some of them, shipped and tuned, side by
side). Writes ``<workdir>/face_finder/short_range.npz``, which the
photo commands use (``--face_finder_weights``); ``benchmarks/blazeface_tuned.py`` judges it on
the selection sets.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pdsn_jax.method import builders
from pdsn_jax.models.layers import in_chunks
from pdsn_jax.run import files
from pdsn_jax.train import loop, parallel, training
from pdsn_jax import visualize
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.faces import blazeface
from pdsn_jax.faces import tuning as face_tuning



def shipped_params() -> tuple:
  """(graph, float32 weights) of the shipped short-range model."""
  from pdsn_jax.models import tflite_graph  # pylint: disable=g-import-not-at-top
  graph, params = tflite_graph.read(blazeface.model_file("short"))
  return graph, {k: np.asarray(v, np.float32) for k, v in params.items()}


def train_step(state: training.TrainState, batch: dict, rng: jax.Array, *, apply, tx, schedule,
               reg_weight: float, chunk: int = 0):
  """Per-device step: the distillation loss toward the frozen shipped model on the clean
  frames; grads pmean-ed. ``chunk``: frames per call of the teacher
  (``builders.forward_chunk``; the same outputs, faster on CPU)."""
  del rng
  teacher = jax.lax.stop_gradient(
      in_chunks(lambda x: apply(state.frozen, x), batch["teacher"], chunk))

  def loss_fn(params):
    return face_tuning.distillation_loss(apply(params, batch["image"]), teacher,
                                         batch["negative"], reg_weight)

  (loss, (score, box)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, parallel.AXIS)
  upd, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, upd)
  out = jax.lax.pmean({"loss": loss, "score_loss": score, "box_loss": box}, parallel.AXIS)
  out["learning_rate"] = schedule(state.step)
  out["param_norm"] = optax.tree.norm(params)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), out


def heldout_frames(config, heldout, n: int) -> dict:
  """kind -> (n, 128, 128, 3) uint8 frames of held-out photos, each kind drawn as in training
  (seeded), once as they come and once grey and low-resolution; the occluders are the select
  files when the run has an occluder folder (never the test files)."""
  cfg = config.face_finder
  lib = (builders.occluders(config, "select", procedural=False) if config.occlusion.occluder_dir
         else builders.training_occluders(config))
  idx = np.linspace(0, len(heldout) - 1, min(n, len(heldout))).astype(int)
  out = {}
  for k, kind in enumerate(face_tuning.KINDS):
    if not face_tuning.drawable(kind, lib):
      continue
    probs = np.eye(len(face_tuning.KINDS))[k]
    for hard in (False, True):
      t = face_tuning.TuningSample(lib, probs, cfg.face_px, float(hard), float(hard),
                                   cfg.lowres_px)
      frames = [t(dict(heldout[int(i)]), np.random.default_rng([config.eval.seed, 70 + k, i]))
                ["image"] for i in idx]
      out[kind + (", grey low-res" if hard else "")] = np.stack(
          [np.rint((f + 1) * 127.5).astype(np.uint8) for f in frames])
  return out


def found_points(frames: dict, params: dict | None) -> dict:
  """kind -> the points (None: no face) the default finder (these short-range weights, then
  the full range) gives each frame."""
  from pdsn_jax.faces import finding as faces  # pylint: disable=g-import-not-at-top
  finder = faces.FaceFinder("blazeface", short_params=params)
  return {k: [p for p, _ in finder.points_batch(list(v))] for k, v in frames.items()}


def plan(ctx: loop.Context) -> loop.Plan:
  config, cfg = ctx.config, ctx.cfg
  schedule = training.learning_rate_schedule(cfg, ctx.steps)
  tx = training.optimizer(cfg, ctx.steps)
  graph, stock = shipped_params()
  from pdsn_jax.models import tflite_graph  # pylint: disable=g-import-not-at-top
  apply = functools.partial(tflite_graph.apply, graph)

  def init() -> training.TrainState:
    k = training.init_key(config, STAGE.stream)
    params = jax.tree.map(jnp.asarray, stock)
    return training.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               batch_stats={}, opt_state=tx.init(params),
                               rng=jax.random.key_data(k), frozen=params)

  def evaluate(state, step, writer) -> dict:
    tuned = {k: np.asarray(v) for k, v in jax.device_get(state.params).items()}
    frames = heldout_frames(config, ctx.heldout, cfg.eval_images)
    points = {"shipped": found_points(frames, None), "tuned": found_points(frames, tuned)}
    out = {w: {k: 100 * float(np.mean([p is not None for p in v])) for k, v in r.items()}
           for w, r in points.items()}
    writer.write(step, {f"{w}/{k.replace(' ', '_')}": v for w, r in out.items()
                        for k, v in r.items()}, prefix="eval")
    for kind in frames:
      logging.info("[face_finder] held-out photos, %s: found %.1f%% (shipped weights %.1f%%)",
                   kind, out["tuned"][kind], out["shipped"][kind])
    if jax.process_index() == 0 and step == ctx.steps:
      with files.atomic_path(workdir_lib.face_finder_weights(ctx.workdir)) as tmp:
        np.savez(tmp, **tuned)
      files.write_json(workdir_lib.face_finder_settings(ctx.workdir),
                       {"fallback_score": cfg.get("fallback_score", 0.0) or None})
      visualize.finder_sheet(frames, points, workdir_lib.stage_file(ctx.workdir, ctx.name,
                                                                    "found.png"))
    return out

  return loop.Plan(
      init=init,
      step=functools.partial(train_step, apply=apply, tx=tx, schedule=schedule,
                             reg_weight=cfg.reg_weight, chunk=builders.forward_chunk(config)),
      transforms=(face_tuning.TuningSample(builders.training_occluders(config), cfg.kind_probs,
                                           cfg.face_px, cfg.grey_prob, cfg.lowres_prob,
                                           cfg.lowres_px, cfg.get("cloth_prob", 0.0),
                                           cfg.get("erased_occluder_prob", 0.0)),),
      evaluate=evaluate,
      summary=lambda results: {"heldout_found_percent": results["final"],
                               "weights": workdir_lib.face_finder_weights(ctx.workdir)},
      description=" (BlazeFace short range, distilled from the shipped weights)")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Tunes (or resumes) the face finder; writes ``<workdir>/face_finder/short_range.npz`` and
  ``summary.json``."""
  return loop.run_stage(config, workdir, STAGE, plan, raw_photos=True)


STAGE = stage_lib.Stage(
    name=workdir_lib.FACE_FINDER, run=run, section="face_finder",
    stream=stage_lib.Stream(data_offset=6, init_fold=5),
    depends_on=stage_lib.BASE + ("face_finder", "eval.seed") + stage_lib.OCCLUDERS)

