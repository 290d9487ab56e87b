"""Runs a trained occlusion detector on a folder of photos and writes a contact sheet.

  python -m pdsn_jax.cli.occlusions --workdir=runs/pdsn \\
      --images=DIR [--landmarks=TSV] [--out=detections.png] [--limit=24]

The run's own config (``config.json``, validated) describes the detector; ``--config`` is
only for a run made before that file existed.

Images are aligned to the 112x96 template with the 5-point landmarks TSV when
given (the format of ``data.folders.landmarks``), otherwise centre-cropped and
resized. Each row: the face, the predicted mask, the generator blocks it
assigns (what the FDM would discard), so a person can judge real occlusions.
"""

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (default: the run's "
                                          "config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a run with a 'detector' stage.")
_IMAGES = flags.DEFINE_string("images", None, "Folder of images (searched recursively).")
_LANDMARKS = flags.DEFINE_string("landmarks", "", "Optional 5-point landmarks TSV.")
_OUT = flags.DEFINE_string("out", "detections.png", "Output PNG.")
_LIMIT = flags.DEFINE_integer("limit", 24, "At most this many images.")
flags.mark_flags_as_required(["workdir", "images"])

def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top
  from pdsn_jax import visualize  # pylint: disable=g-import-not-at-top
  from pdsn_jax.faces import finding as faces_lib  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.folders import read_landmarks  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import inference  # pylint: disable=g-import-not-at-top
  from pdsn_jax import run_config
  from pdsn_jax.run import workdir

  if _LIMIT.value < 1:
    raise ValueError(f"--limit={_LIMIT.value}: must be >= 1 (images on the sheet)")
  config = _CONFIG.value or run_config.load_config(_WORKDIR.value)
  if not os.path.isdir(_IMAGES.value):
    raise FileNotFoundError(f"--images folder not found: {_IMAGES.value}")
  workdir.require(_WORKDIR.value, workdir.DETECTOR, needed_by="detect")
  variables = workdir.load(_WORKDIR.value, workdir.DETECTOR)
  paths = faces_lib.list_images(_IMAGES.value)
  marks = read_landmarks(_LANDMARKS.value) if _LANDMARKS.value else {}
  # an unreadable photo is reported and skipped, never the end of the run
  found, skipped = [], []
  for start in range(0, len(paths), 64):  # only as many photos as the sheet needs
    for f in faces_lib.find(paths[start:start + 64], tuple(config.data.image_size),
                            config.data.alignment, marks):
      if len(found) < _LIMIT.value:
        (found if f.face is not None else skipped).append(f)
    if len(found) == _LIMIT.value:
      break
  for f in skipped:
    logging.warning("skipped %s: %s", f.path, f.note)
  if not found:
    raise ValueError(f"no readable image under {_IMAGES.value} ({len(skipped)} skipped)")
  paths = [f.path for f in found]
  faces = np.stack([f.face for f in found])
  pred = inference.occlusion_predictor(config, variables)(faces)
  visualize.detection_sheet(faces, pred, _OUT.value, min_overlap=config.occlusion.min_overlap,
                            overlap=config.occlusion.overlap,
                            names=[os.path.relpath(p, _IMAGES.value) for p in paths])
  logging.info("wrote %s (%d images; mean predicted occluded area %.1f%%)", _OUT.value,
               len(paths), 100 * float(pred.mean()))


def cli():
  """``pdsn-occlusions``: the console script of ``pip install -e .``."""
  from pdsn_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  from pdsn_jax.cli import runner  # pylint: disable=g-import-not-at-top
  main_lib.find_configs(sys.argv)  # --config's siblings (configs/ is not installed)
  runner.run(main, sys.modules[__name__])


if __name__ == "__main__":
  cli()
