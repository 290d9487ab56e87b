"""A finished run scored on other data without retraining (``python -m pdsn_jax.cli.evaluate``,
issue 39 item 2): other test occluders and another pairs file, in ``RUN/evaluations/NAME``,
with no stage folder changed and results that name the data they used."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pdsn_jax.cli import evaluate
from pdsn_jax.run import provenance
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax import run_config
from pdsn_jax.data.synthetic import SyntheticFaces
from tests import helpers


def _tree_digest(root: str) -> dict:
  """sha256 of every file under ``root`` (links not followed), by relative path."""
  out = {}
  for d, _, fs in os.walk(root):
    for f in fs:
      p = os.path.join(d, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _cmd(*args, ok=True):
  proc = subprocess.run([sys.executable, "-m", "pdsn_jax.cli.evaluate", *args], cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=600, check=False)
  assert (proc.returncode == 0) == ok, proc.stderr[-4000:]
  return proc


def _user_data(root):
  """A pairs file over 6 people's aligned faces (the LFW layout) and one occluder file."""
  src = SyntheticFaces(6, 3, 0, 7)
  for i in range(len(src)):
    r = src[i]
    name = f"p{r['label']}"
    os.makedirs(root / "faces" / name, exist_ok=True)
    Image.fromarray(r["image"]).save(root / "faces" / name / f"{name}_{i % 3 + 1:04d}.png")
  lines = [f"p{k} 1 2" for k in range(6)] + [f"p{k} 1 p{(k + 1) % 6} 3" for k in range(6)]
  (root / "pairs.txt").write_text("\n".join(lines) + "\n")
  rgba = np.zeros((20, 60, 4), np.uint8)
  rgba[4:16, 5:55] = (20, 20, 20, 255)  # a dark band with transparent margins
  os.makedirs(root / "occluders" / "sunglasses", exist_ok=True)
  Image.fromarray(rgba, "RGBA").save(root / "occluders" / "sunglasses" / "band.png")
  return root


@pytest.mark.slow
def test_a_finished_run_is_scored_on_other_pairs_and_occluders_without_retraining(
    tiny_run, tmp_path):
  wd = str(tmp_path / "run")
  shutil.copytree(tiny_run, wd, symlinks=True)
  data = _user_data(tmp_path)
  stages = evaluate.trained_stages(wd)
  assert {"trunk", "pdsn", "dictionary", "finetune", "detector"} <= set(stages)
  before = {s: _tree_digest(os.path.join(wd, s)) for s in stages + ["evaluate"]}
  own = [open(p, "rb").read() for p in workdir_lib.results_files(wd)]

  _cmd(f"--workdir={wd}", "--name=mine", f"--pairs={data / 'pairs.txt'}",
       f"--pairs_root={data / 'faces'}", "--pairs_pattern={name}/{name}_{num:04d}.png",
       f"--occluders={data / 'occluders'}", "--protocols=verification",
       "--set=eval.protocols.verification.conditions=sunglasses")

  assert {s: _tree_digest(os.path.join(wd, s)) for s in stages + ["evaluate"]} == before
  assert [open(p, "rb").read() for p in workdir_lib.results_files(wd)] == own
  out = workdir_lib.evaluation_dir(wd, "mine")
  with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
    res = json.load(f)
  assert str(data / "pairs.txt") in res["data"]
  assert res["test_occluders"].startswith(str(data / "occluders"))
  rows = res["models"]["PDSN + fine-tune"]
  assert set(rows["occluded"]) == {"sunglasses"} and "ar_p1" not in rows
  assert rows["clean"]["negatives"] == 6  # the user's 12 pairs, not the run's 40 generated ones
  with open(os.path.join(out, "evaluation.json"), encoding="utf-8") as f:
    assert json.load(f)["changes"]["eval.protocols.verification.pairs_file"] == str(
        data / "pairs.txt")
  md = open(os.path.join(out, "results.md"), encoding="utf-8").read()
  assert str(data / "pairs.txt") in md and str(data / "occluders") in md


def test_a_change_a_trained_stage_recorded_is_refused_naming_it(tiny_run, tmp_path):
  wd = str(tmp_path / "run")
  shutil.copytree(tiny_run, wd, symlinks=True)
  with pytest.raises(ValueError, match=r"pdsn: pdsn\.lambda_l1: .* -> 3\.0"):
    evaluate.plan(wd, "x", {"pdsn.lambda_l1": "3"})
  with pytest.raises(KeyError, match="eval.nump: config has no such field; eval has"):
    evaluate.plan(wd, "x", {"eval.nump": "3"})
  with pytest.raises(ValueError, match="expected a number"):
    evaluate.plan(wd, "x", {"eval.num_pairs": "many"})
  with pytest.raises(ValueError, match="a folder name"):
    evaluate.plan(wd, "../x", {})
  c = evaluate.plan(wd, "ok", {"eval.protocols.verification.conditions": "sunglasses,mask",
                               "detector.threshold": "0.4", "eval.num_pairs": "20"})
  assert tuple(c.eval.protocols.verification.conditions) == ("sunglasses", "mask")
  assert c.eval.num_pairs == 20
  # another protocol with its settings, added to the run's (typed like its defaults)
  c = evaluate.plan(wd, "ar", {"eval.protocols": "verification,ar_real",
                               "eval.protocols.ar_real.root": "/data/ar",
                               "eval.protocols.ar_real.distractor_sizes": "10,20"})
  assert list(c.eval.protocols.keys()) == ["ar_real", "verification"]
  assert c.eval.protocols.ar_real.to_dict() == {"root": "/data/ar", "distractor_sizes": (10, 20)}
  with pytest.raises(KeyError, match=r"the 'ar_real' protocol has no setting 'rot'; allowed: "
                                     r"\['root', 'alignment'"):
    evaluate.plan(wd, "x", {"eval.protocols.ar_real.rot": "/data/ar"})
  with pytest.raises(ValueError, match=r"eval.protocols.ar_real.root is empty"):
    evaluate.plan(wd, "x", {"eval.protocols": "ar_real"})
  assert not os.path.exists(workdir_lib.evaluation_dir(wd, "ok"))  # nothing written by a plan


def test_parse_types_values_like_the_field():
  assert evaluate._parse("f", (1, 2), "3,4") == (3, 4)
  assert evaluate._parse("f", ("a",), "['x', 'y']") == ("x", "y")
  assert evaluate._parse("f", True, "false") is False
  assert evaluate._parse("f", 0.5, "1") == 1.0 and isinstance(evaluate._parse("f", 0.5, "1"), float)
  with pytest.raises(ValueError, match="true or false"):
    evaluate._parse("f", True, "maybe")


def test_other_test_globs_leave_every_training_record_as_it_was(tiny_run):
  """The issue's case: only occlusion.splits.test changes, with globs already in use."""
  config = run_config.load_config(tiny_run)
  config.occlusion.splits.train = ("sunglasses/a*",)
  other = config.copy_and_resolve_references()
  other.occlusion.splits.test = ("sunglasses/z*",)
  for kind in ("pdsn", "dictionary", "baseline", "finetune", "detector", "face_finder"):
    assert provenance.fields(other, kind) == provenance.fields(config, kind), kind
  assert provenance.fields(other, "evaluate") != provenance.fields(config, "evaluate")
  # the first glob of any split moves files out of the heldout_every train split: recorded
  plain = run_config.load_config(tiny_run)
  first = plain.copy_and_resolve_references()
  first.occlusion.splits.test = ("sunglasses/z*",)
  assert (provenance.fields(first, "pdsn")[provenance.SPLIT_BY_GLOBS]
          != provenance.fields(plain, "pdsn")[provenance.SPLIT_BY_GLOBS])
