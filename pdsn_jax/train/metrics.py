"""Metric logging from process 0: one console line per log step and TensorBoard events."""

import json
import logging
import os
import re
import time

import jax
import numpy as np


class MetricWriter:
  """Console + tensorboardX scalars + a JSON-lines file; silent on processes other than 0.

  ``resume_step``: the checkpoint step a resumed run starts from. What an interrupted run
  logged after it is dropped (metrics.jsonl rewritten, TensorBoard's ``purge_step``), so the
  resumed run's steps are never there twice."""

  def __init__(self, logdir: str, stage: str, resume_step: int = 0):
    self.stage = stage
    self.active = jax.process_index() == 0
    self._tb = None
    self._jsonl = None
    if self.active:
      os.makedirs(logdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      path = os.path.join(logdir, "metrics.jsonl")
      if resume_step > 0 and os.path.isfile(path):
        _truncate(path, resume_step)
      self._tb = SummaryWriter(logdir, flush_secs=30,
                               purge_step=resume_step + 1 if resume_step > 0 else None)
      self._jsonl = open(path, "a", encoding="utf-8")

  def write(self, step: int, scalars: dict, prefix: str = "train") -> None:
    if not self.active:
      return
    clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for k, v in clean.items():  # TensorBoard's tag characters (it would warn per tag)
      self._tb.add_scalar(re.sub(r"[^\w./-]", "_", f"{prefix}/{k}"), v, step)
    self._jsonl.write(json.dumps({"step": step, "split": prefix, **clean}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.active:
      self._tb.close()
      self._jsonl.close()


def _truncate(path: str, last_step: int) -> None:
  """Keeps the records of ``path`` up to ``last_step`` (and any unreadable tail is dropped)."""
  from pdsn_jax.run import files  # pylint: disable=g-import-not-at-top
  keep = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= last_step:
          keep.append(line if line.endswith("\n") else line + "\n")
      except (json.JSONDecodeError, KeyError, TypeError):
        continue
  files.atomic_write(path, "".join(keep))


class Throughput:
  """images/s and ETA between log steps (excludes the first, compiling, step)."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int):
    self.total, self.batch = total_steps, batch_size
    self.t0, self.s0 = None, start_step

  def update(self, step: int) -> tuple[float, float]:
    now = time.perf_counter()
    if self.t0 is None:
      self.t0, self.s0 = now, step
      return float("nan"), float("nan")
    rate = (step - self.s0) / max(now - self.t0, 1e-9)
    self.t0, self.s0 = now, step
    return rate * self.batch, (self.total - step) / max(rate, 1e-9)


def log_line(stage: str, step: int, total: int, metrics: dict, img_s: float, eta_s: float) -> None:
  if jax.process_index() != 0:
    return
  parts = [f"[{stage}] step {step}/{total}"]
  parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
  if np.isfinite(img_s):
    parts += [f"{img_s:.1f} img/s", f"ETA {_fmt(eta_s)}"]
  logging.info(" | ".join(parts))


def _fmt(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
