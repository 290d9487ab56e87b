"""Two local processes x 2 CPU devices (jax.distributed, gloo) equal one process x 4 devices."""

import json
import os
import shutil
import socket
import subprocess

import jax
import numpy as np
import pytest

from pdsn_jax.run import checkpointing, provenance
from tests import helpers

# A small learning rate keeps training out of the chaotic regime in which float
# rounding differences between the two reduction orders would grow step by step.
_STEPS = ("--config.trunk.num_steps=4", "--config.trunk.checkpoint_every=2", "--config.trunk.log_every=1",
          "--config.data.synthetic.num_identities=16", "--config.trunk.learning_rate=0.01",
          "--config.stages=trunk")


def _losses(workdir):
  out = {}
  with open(os.path.join(workdir, "trunk", "logs", "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      if rec["split"] == "train":
        out[rec["step"]] = rec["loss"]
  return out


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
  single = str(tmp_path / "single")
  helpers.run_main(single, *_STEPS, devices=4)

  multi = str(tmp_path / "multi")
  outs = _two_processes(multi)
  assert "process 0 of 2, 2 local / 4 global devices" in outs[0]
  ckpt = os.path.join(multi, "trunk", "checkpoints", "4", "data")
  assert sorted(f for f in os.listdir(ckpt) if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]

  a = checkpointing.load_variables(os.path.join(single, "trunk", "checkpoints"))
  b = checkpointing.load_variables(os.path.join(multi, "trunk", "checkpoints"))
  # Same data, same math: the logged losses agree to float rounding at every step ...
  la, lb = _losses(single), _losses(multi)
  assert la.keys() == lb.keys() and len(la) >= 3
  gaps = {s: abs(la[s] - lb[s]) / abs(la[s]) for s in la}
  print("relative loss gap per step, 1x4 vs 2x2:", gaps)
  # step 1 runs on identical parameters: only the reduction order differs
  assert gaps[min(gaps)] <= 1e-5, gaps
  # later steps inherit that rounding through the updates; measured up to 1.1e-3 at step 4
  # on a 2-core x86 machine (the same with the code before this check was relaxed)
  for step, gap in gaps.items():
    assert gap <= 5e-3, (step, la[step], lb[step])
  # ... and so do the parameters, as a whole: reductions run in another order across
  # processes (gloo) than within one, and BatchNorm over 8 faces amplifies that rounding
  # (measured on a 2-core x86 machine: global relative L2 difference 6.2e-4, max 3.6e-3
  # absolute; single leaves near zero differ relatively more).
  la_, lb_ = jax.tree.leaves(a), jax.tree.leaves(b)
  rel = np.sqrt(sum(float(((x - y) ** 2).sum()) for x, y in zip(la_, lb_)) /
                sum(float((x ** 2).sum()) for x in la_))
  assert rel <= 5e-3, rel
  diff = max(float(np.abs(x - y).max()) for x, y in zip(la_, lb_))
  print(f"max |param difference| 1x4 vs 2x2: {diff:.3g}")

  # Provenance across processes: process 0 moves the stale stage aside and records the new
  # one; the barriers keep process 1 from reading the folder while it moves.
  outs = _two_processes(multi, "--config.trunk.learning_rate=0.02", "--config.overwrite=trunk")
  assert "config changed (trunk.learning_rate: 0.01 -> 0.02)" in outs[0]
  assert [d for d in os.listdir(multi) if d.startswith("trunk.replaced-")]
  assert provenance.read(multi, "trunk")["fields"]["trunk.learning_rate"] == 0.02
  assert max(checkpointing.finished_steps(os.path.join(multi, "trunk", "checkpoints"))) == 4


def _two_processes(workdir, *extra):
  port = _free_port()
  procs = [
      subprocess.Popen(
          helpers.main_cmd(workdir, *_STEPS, *extra, f"--coordinator_address=127.0.0.1:{port}",
                           "--num_processes=2", f"--process_id={i}"),
          cwd=helpers.REPO, env=helpers.env_with_devices(2), stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True)
      for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-5000:]
  return outs


@pytest.mark.slow
def test_two_processes_build_the_banks_bytes_one_process_builds(tmp_path):
  """Each process builds its own shards of the feature bank (shard s by process s mod 2);
  process 0 writes the manifest after the barrier. The bytes equal one process's."""
  single = str(tmp_path / "single")
  helpers.run_main(single, *_STEPS, devices=4)
  multi = str(tmp_path / "multi")
  shutil.copytree(single, multi)
  bank = ("--config.stages=bank", "--config.bank.shard_faces=16")
  helpers.run_main(single, *_STEPS, *bank, devices=4)
  outs = _two_processes(multi, *bank)
  assert "this process builds 2" in outs[0] and "this process builds 2" in outs[1]
  shards = lambda wd: json.load(open(os.path.join(wd, "bank", "bank.json")))["shards"]  # noqa: E731
  assert len(shards(single)) == 4
  assert [s["sha256"] for s in shards(multi)] == [s["sha256"] for s in shards(single)]
