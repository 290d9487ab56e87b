"""End-to-end trunk runs in subprocesses: smoke, SIGKILL resume, NaN stop, skip when complete."""

import json
import os
import subprocess

import jax
import numpy as np
import pytest

from pdsn_jax.run import checkpointing
from tests import helpers


def _params(workdir):
  return checkpointing.load_variables(os.path.join(workdir, "trunk", "checkpoints"))


@pytest.mark.slow
def test_trunk_smoke_run_and_skip_when_complete(tmp_path):
  wd = str(tmp_path / "run")
  proc = helpers.run_main(wd, "--config.stages=trunk", "--config.profile_steps=2")
  traces = [f for _, _, fs in os.walk(os.path.join(wd, "trunk", "profile")) for f in fs]
  assert any(f.endswith(".xplane.pb") for f in traces), traces  # jax.profiler, steps 2-3
  summary = json.load(open(os.path.join(wd, "trunk", "summary.json")))
  assert summary["steps"] == 6
  # the summary holds the evaluation the log recorded at the last step, on 40 pairs (20 negative)
  with open(os.path.join(wd, "trunk", "logs", "metrics.jsonl")) as f:
    evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [0, 6]
  assert summary["heldout_verification"]["accuracy"] == evals[-1]["verification_accuracy"]
  assert (summary["heldout_verification_at_start"]["accuracy"] ==
          evals[0]["verification_accuracy"])
  assert summary["heldout_verification"]["negatives"] == 20
  assert "img/s" in proc.stderr and "held-out verification" in proc.stderr
  assert os.listdir(os.path.join(wd, "trunk", "logs"))  # TensorBoard events + metrics.jsonl
  again = helpers.run_main(wd, "--config.stages=trunk")
  assert "starting at step 6 (checkpoint)" in again.stderr
  assert "step 1/6" not in again.stderr


@pytest.mark.slow
def test_sigkill_resume_equals_uninterrupted(tmp_path):
  steps = ("--config.trunk.num_steps=8", "--config.trunk.log_every=1",
           "--config.trunk.checkpoint_every=2", "--config.stages=trunk")
  ref = str(tmp_path / "ref")
  helpers.run_main(ref, *steps)
  wd = str(tmp_path / "killed")
  helpers.run_until(wd, "step 5/8", *steps)
  resumed = helpers.run_main(wd, *steps)
  assert "(checkpoint)" in resumed.stderr  # it resumed, not restarted
  a, b = _params(ref), _params(wd)
  jax.tree.map(np.testing.assert_array_equal, a, b)  # bit for bit
  # what the killed run logged after its last checkpoint is not there twice
  def logged(w):
    with open(os.path.join(w, "trunk", "logs", "metrics.jsonl")) as f:
      return [r["step"] for r in map(json.loads, f) if r["split"] == "train"]
  assert logged(wd) == logged(ref) == list(range(1, 9))


@pytest.mark.slow
def test_nan_loss_stops_with_last_good_checkpoint(tmp_path):
  wd = str(tmp_path / "nan")
  proc = subprocess.run(
      helpers.main_cmd(wd, "--config.trunk.learning_rate=1e12", "--config.trunk.warmup_steps=0",
                       "--config.trunk.checkpoint_every=1", "--config.trunk.num_steps=6",
                       "--config.stages=trunk"),
      cwd=helpers.REPO, env=helpers.env_with_devices(1), capture_output=True, text=True,
      timeout=600, check=False)
  assert proc.returncode != 0
  assert "non-finite" in proc.stderr or "diverging" in proc.stderr
  assert "rerun the same command with a lower learning rate" in proc.stderr or \
      "no checkpoint was saved yet" in proc.stderr
  ckpt = os.path.join(wd, "trunk", "checkpoints")
  steps = [d for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
  if steps:  # whatever was saved is finite
    for leaf in jax.tree.leaves(_params(wd)):
      assert np.isfinite(leaf).all()


@pytest.mark.slow
def test_bad_config_value_names_key_and_choices(tmp_path):
  proc = subprocess.run(helpers.main_cmd(str(tmp_path), "--config.trunk.schedule=linear"),
                        cwd=helpers.REPO, env=helpers.env_with_devices(1), capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode != 0
  assert "trunk.schedule='linear'" in proc.stderr and "cosine" in proc.stderr
  proc = subprocess.run(helpers.main_cmd(str(tmp_path), "--config.stages=trunk,nope"),
                        cwd=helpers.REPO, env=helpers.env_with_devices(1), capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode != 0 and "nope" in proc.stderr and "allowed" in proc.stderr


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_and_ends_bit_identical(tmp_path):
  steps = ("--config.trunk.num_steps=6", "--config.trunk.checkpoint_every=2",
           "--config.trunk.keep_checkpoints=3", "--config.stages=trunk")
  ref = str(tmp_path / "ref")
  helpers.run_main(ref, *steps)
  reference = _params(ref)
  ckpt = os.path.join(ref, "trunk", "checkpoints")
  state = os.path.join(ckpt, "6", "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:  # a crash or a full disk after the rename
    f.truncate(os.path.getsize(biggest) // 3)
  resumed = helpers.run_main(ref, *steps)
  line = [l for l in resumed.stderr.splitlines() if "checkpoint step 6" in l]
  assert line and "cannot be restored" in line[0] and ckpt in line[0]
  assert "starting at step 4 (checkpoint)" in resumed.stderr
  assert os.path.isdir(os.path.join(ckpt, "6.unreadable"))
  jax.tree.map(np.testing.assert_array_equal, reference, _params(ref))  # steps 5, 6 again


@pytest.mark.slow
def test_divergent_pdsn_run_stops_before_saving(tmp_path):
  wd = str(tmp_path / "div")
  proc = subprocess.run(
      helpers.main_cmd(wd, "--config.stages=trunk,pdsn", "--config.pdsn.learning_rate=1e6",
                       "--config.pdsn.warmup_steps=0", "--config.pdsn.checkpoint_every=2"),
      cwd=helpers.REPO, env=helpers.env_with_devices(1), capture_output=True, text=True,
      timeout=600, check=False)
  assert proc.returncode != 0
  assert "[pdsn]" in proc.stderr and "diverging" in proc.stderr
  assert "no checkpoint was saved yet" in proc.stderr
  ckpt = os.path.join(wd, "pdsn", "checkpoints")
  assert not [d for d in os.listdir(ckpt) if d.isdigit()]
