"""The skeleton every training stage runs in: mesh, data, checkpoints, restore, the step loop
with logging, divergence checks and evaluations, ``summary.json``.

A stage is a ``plan(ctx) -> Plan`` function: given the run's context (config, mesh, sources,
step count) it returns its initial state, per-device step and hooks. ``run_stage`` does the
rest, the same way for every stage.
"""

import dataclasses
import logging
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax

from pdsn_jax.method import builders
from pdsn_jax.run import checkpointing, provenance
from pdsn_jax.train import parallel
from pdsn_jax.train import metrics as metrics_lib
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.train import training
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.data import pipeline, sources


class Diverged(FloatingPointError):
  pass


def check_divergence(stage: str, metrics: dict, step: int, start_norm: float,
                     max_growth: float, mgr) -> None:
  """Raises ``Diverged`` (before anything is saved) on a non-finite loss or parameter norm, or
  a parameter norm grown more than ``max_growth``-fold since the stage's first step, naming
  the last good checkpoint and how to resume."""
  def where() -> str:  # only when stopping: it lists the checkpoint folder
    last = mgr.latest_step()
    if last is None:
      return f"no checkpoint was saved yet ({mgr.directory}); rerun with a lower learning rate"
    return (f"the last good checkpoint is step {last} in {mgr.directory}; rerun the same "
            "command with a lower learning rate to resume from it")

  try:
    training.finite_or_raise({"loss": metrics["loss"], "param_norm": metrics["param_norm"]},
                             step)
  except FloatingPointError as e:
    raise Diverged(f"[{stage}] {e}; {where()}") from None
  norm = float(metrics["param_norm"])
  if max_growth > 0 and norm > max_growth * start_norm:
    raise Diverged(f"[{stage}] parameter norm grew from {start_norm:.4g} to {norm:.4g} (more "
                   f"than {max_growth:g}x, config.max_param_norm_growth) by step {step}: the "
                   f"run is diverging; stopping before saving; {where()}")


def train_loop(*, stage: str, state: Any, step_fn: Callable, data_iter: Any, mesh, mgr,
               writer: metrics_lib.MetricWriter, root: jax.Array, start: int, total: int,
               images_per_step: int, log_every: int,
               on_metrics: Callable[[int, dict], dict] | None = None,
               on_step: Callable[[int, Any], None] | None = None,
               on_checkpoint: Callable[[int, Any], tuple[dict, bool, Any]] | None = None,
               stop_marker: Callable[[int], None] | None = None,
               max_growth: float = 0.0, profile: tuple[int, str] = (0, "")) -> Any:
  """Runs steps [start, total) and returns the final state.

  Metrics leave the device only at log and checkpoint steps; there the loss and
  the parameter norm must be finite and the norm within ``max_growth`` times the
  starting state's (``check_divergence``), so a checkpoint never holds a diverged
  state. ``on_metrics(step, metrics)`` may pop non-scalar metrics and returns
  extra scalars to log; ``on_step(step, state)`` runs after every step (evals);
  ``on_checkpoint(step, state) -> (scalars, stop, state)`` before every checkpoint: the state
  returned is saved and trained on (a stage may replace there what its steps never read, as
  stage I its generators' BatchNorm statistics); with ``stop`` the loop saves that checkpoint and
  ends there, ``stop_marker(step)`` recording it first (a crash before the save then replays the
  same steps and stops again).
  ``profile=(n, dir)``: a ``jax.profiler`` trace of the n steps after the first (compiling)
  one, into ``dir`` (TensorBoard's profile plugin or Perfetto read it).
  """
  n_profile, profile_dir = profile
  trace = range(start + 1, min(start + 1 + n_profile, total)) if n_profile > 0 else range(0)
  clock = metrics_lib.Throughput(total, images_per_step, start)
  # the params are replicated: this process's first copy is the whole tree
  local = lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x  # noqa: E731
  start_norm = float(optax.tree.norm(jax.tree.map(lambda x: np.asarray(local(x)), state.params)))
  for step in range(start, total):
    if trace and step == trace.start:
      mgr.wait_until_finished()  # the profiler and orbax's save threads crashed together
      jax.profiler.start_trace(profile_dir)
    batch = parallel.put_batch(next(data_iter), mesh)
    state, out = step_fn(state, batch, jax.random.fold_in(root, step))
    if trace and step == trace[-1]:
      jax.block_until_ready(state)
      mgr.wait_until_finished()
      jax.profiler.stop_trace()
      logging.info("[%s] profiler trace of steps %d-%d in %s", stage, trace.start + 1,
                   trace[-1] + 1, profile_dir)
    done = step + 1
    is_log = done % log_every == 0 or done == total or done == start + 1
    is_ckpt = mgr.should_save(done) or done == total
    extra = {}
    if is_log or is_ckpt:
      out = jax.device_get(out)
      check_metrics(out, stage)
      check_divergence(stage, out, done, start_norm, max_growth, mgr)
      if on_metrics is not None:
        extra = on_metrics(done, out)
    if is_log:
      img_s, eta = clock.update(done)
      metrics_lib.log_line(stage, done, total, out, img_s, eta)
      if np.isfinite(img_s):
        extra["images_per_sec"] = img_s
      writer.write(done, {**out, **extra})
    if on_step is not None:
      on_step(done, state)
    stop = False
    if is_ckpt and on_checkpoint is not None:
      scalars, stop, state = on_checkpoint(done, state)
      writer.write(done, scalars)
      if stop and stop_marker is not None:
        stop_marker(done)
    if is_ckpt:
      checkpointing.save(mgr, done, state, data_iter, force=done == total or stop)
    if stop:
      logging.info("[%s] stopped at step %d of %d: the stage's stopping rule was met", stage,
                   done, total)
      break
  mgr.wait_until_finished()
  checkpointing.seal(mgr)
  return state


def stage_root_key(state: Any, mesh, impl: str) -> jax.Array:
  """The stage's root key, replicated, copied out of the state (whose buffers get donated)."""
  return jax.random.wrap_key_data(parallel.put_replicated(jax.device_get(state.rng), mesh),
                                  impl=impl)


@dataclasses.dataclass(frozen=True)
class Context:
  """What a stage's plan is built from."""

  config: ml_collections.ConfigDict
  workdir: str
  name: str  # the stage's folder under the workdir
  cfg: ml_collections.ConfigDict  # its config section (batch, steps, optimizer, logging)
  stream: stage_lib.Stream  # its randomness (``training.init_key``)
  mesh: Any
  train: Any  # the training source
  heldout: Any  # held-out faces of the same data
  steps: int


@dataclasses.dataclass
class Plan:
  """What a training stage gives the skeleton: its contract, checked by ``check_plan``.

  ``init() -> TrainState`` builds the starting state (traced for shapes, jitted);
  ``step(state, batch, rng) -> (state, metrics)`` is per-device (mapped over the mesh), and
  its metrics must hold the scalars ``loss`` and ``param_norm`` (the divergence check and the
  logs read them); ``transforms`` make the batches (after the seeded shuffle of the stage's
  stream); ``init_from``/``merge``/``loader``: a starting
  network (``checkpointing.restore_or_init``); ``prepare(state, origin)`` runs after the
  restore; ``evaluate(state, step, writer) -> dict`` is the held-out evaluation, run at
  the end, every ``eval_every`` steps and, with ``eval_at_start``, before a fresh start;
  ``on_metrics`` and ``on_checkpoint`` (a stopping rule, what a checkpoint holds) as in ``train_loop``; ``source``: the
  records the batches are made of, when not the training faces (the same number of them: the
  step count is the faces'); a stage that
  stopped is complete at that step (``workdir.stopped_at``); ``summary(results)`` adds to
  ``summary.json``.
  """

  init: Callable[[], Any]
  step: Callable
  transforms: tuple = ()
  init_from: str = ""
  merge: Callable | None = None
  loader: Callable | None = None
  prepare: Callable[[Any, str], Any] | None = None
  evaluate: Callable[[Any, int, Any], dict] | None = None
  eval_at_start: bool = False
  eval_every: int = 0
  images_per_step: int = 0  # 0: the batch size
  on_metrics: Callable[[int, dict], dict] | None = None
  on_checkpoint: Callable[[int, Any], tuple[dict, bool, Any]] | None = None
  summary: Callable[[dict], dict] | None = None
  description: str = ""
  source: Any = None


REQUIRED_METRICS = ("loss", "param_norm")


def check_metrics(metrics: dict, name: str) -> None:
  missing = [k for k in REQUIRED_METRICS if k not in metrics]
  if missing:
    raise ValueError(f"stage '{name}': its Plan.step returned metrics {sorted(metrics)} without "
                     f"{missing}; return them from the step (see loop.Plan)")


def run_stage(config: ml_collections.ConfigDict, workdir: str, stage: stage_lib.Stage,
              plan_fn: Callable[[Context], Plan], *, name: str = "", upstream=None,
              overrides: dict | None = None, raw_photos: bool = False) -> dict:
  """Trains (or resumes) ``stage`` into ``<workdir>/<name>`` (default: its name) with its
  config section, stream and upstream (``upstream`` replaces that: Table 3's generators read
  another folder); returns its summary, which process 0 also writes to ``summary.json``.
  ``overrides``: config fields it changed (Table 3's), part of its provenance: outputs made
  under another config are never resumed (``provenance``). ``raw_photos``: the training
  records are photos with their landmarks (``sources.build``)."""
  name = name or stage.name
  if stage.stream is None or not stage.section:
    raise ValueError(f"stage {stage.name!r} trains, so its Stage needs a stream and a config "
                     f"section (stream={stage.stream}, section={stage.section!r})")
  cfg = config[stage.section]
  record = provenance.begin(config, workdir, name, stage.name,
                            stage.upstream if upstream is None else upstream, overrides)
  mesh = parallel.make_mesh()
  pcount, pindex = jax.process_count(), jax.process_index()
  pipeline.check_batch_size(cfg.batch_size, mesh.size, pcount, f"{name}.batch_size")
  train_src, heldout_src = sources.build(config.data, raw_photos)
  steps = builders.total_steps(cfg, len(train_src))
  ctx = Context(config, workdir, name, cfg, stage.stream, mesh, train_src, heldout_src, steps)
  plan = plan_fn(ctx)
  if plan.source is not None and len(plan.source) != len(train_src):
    raise ValueError(f"[{name}] its source has {len(plan.source)} records for the "
                     f"{len(train_src)} training faces ({getattr(plan.source, 'description', '')})"
                     "; it was made from other data: build it again")
  ds = pipeline.train_dataset(train_src if plan.source is None else plan.source, cfg.batch_size,
                              training.data_seed(config, stage.stream), pindex, pcount,
                              plan.transforms)
  data_iter = pipeline.to_iterator(ds, config.data.num_workers)
  mgr = checkpointing.manager(workdir_lib.checkpoints(workdir, name), cfg.keep_checkpoints,
                              cfg.checkpoint_every)
  state, start, origin = checkpointing.restore_or_init(
      mgr, plan.init, mesh, data_iter, plan.init_from, plan.merge, plan.loader)
  if plan.prepare is not None:
    state = plan.prepare(state, origin)
  # a crash between the stop marker and its checkpoint replays the steps up to it
  end = workdir_lib.final_step(workdir, name, steps)
  if workdir_lib.is_complete(workdir, name, steps):
    logging.info("[%s] complete at step %d: nothing to train, only its summary", name, start)
  logging.info("[%s] %s: %d images, %d identities; %d steps of %d on %d devices (%d "
               "processes)%s; starting at step %d (%s)", name,
               getattr(train_src, "description", ""), len(train_src), train_src.num_classes,
               steps, cfg.batch_size, mesh.size, pcount, plan.description, start, origin)
  writer = metrics_lib.MetricWriter(workdir_lib.logs(workdir, name), name, resume_step=start)
  step_fn = parallel.data_parallel(plan.step, mesh)
  root = stage_root_key(state, mesh, config.prng_impl)
  results, t0 = {}, time.time()

  def periodic_eval(done, state):
    if plan.eval_every > 0 and done % plan.eval_every == 0 and done != steps:
      plan.evaluate(state, done, writer)

  try:
    if plan.evaluate is not None and plan.eval_at_start and start == 0:
      results["at_start"] = plan.evaluate(state, 0, writer)
    state = train_loop(stage=name, state=state, step_fn=step_fn, data_iter=data_iter, mesh=mesh,
                       mgr=mgr, writer=writer, root=root, start=start, total=end,
                       images_per_step=plan.images_per_step or cfg.batch_size,
                       log_every=cfg.log_every, on_metrics=plan.on_metrics,
                       on_step=periodic_eval if plan.evaluate is not None else None,
                       on_checkpoint=plan.on_checkpoint,
                       stop_marker=lambda step: workdir_lib.mark_stopped(workdir, name, step),
                       max_growth=config.max_param_norm_growth,
                       profile=(config.profile_steps,
                                workdir_lib.stage_file(workdir, name, "profile")))
    if plan.evaluate is not None:
      results["final"] = plan.evaluate(state, steps, writer)
  finally:
    mgr.close()
    writer.close()
  summary = {"stage": name, "data": getattr(train_src, "description", ""), "steps": steps,
             "provenance": record["fingerprint"]}
  if start < end:  # a run that trained: a complete stage's rerun keeps the time that trained it
    summary.update(seconds_this_run=round(time.time() - t0, 1), started_at_step=start)
  summary.update(plan.summary(results) if plan.summary is not None else {})
  # a resumed or skipped run measures less (no evaluation at step 0): what an earlier run of
  # the same outputs measured stays in the summary
  old = workdir_lib.read_summary(workdir, name)
  if old.get("provenance") == record["fingerprint"]:
    summary = {**old, **summary}
  if pindex == 0:
    workdir_lib.write_summary(workdir, name, summary)
  return summary
