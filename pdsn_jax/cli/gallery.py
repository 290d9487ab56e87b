"""Builds a gallery feature store (``pdsn_jax.gallery.store``) from a trained run.

  python -m pdsn_jax.cli.gallery --workdir=RUN --out=STORE \\
      (--images=DIR [--landmarks=TSV] | --source=distractors | --source=synthetic:N) \\
      [--dtype=float16|int8|float32] [--shard_size=4096] [--stage=STAGE]

U of every face is computed once with the run's ``--stage`` network (default: that of the
run's default model, the one ``identify --store`` searches with; data-parallel over every
device) and written in shards; a killed build resumes at the first missing shard. Faces from
``--images`` are aligned with the landmarks TSV when it names the photo, else found by
``--face_finder`` (BlazeFace by default, a shard at a time; ``none``: centre crop); a photo
that cannot be read or holds no face keeps its place, listed, and is never found. Their label
is the index of their first-level subfolder (sorted), -1 for files directly in DIR.
``--source=distractors``: the run's evaluation distractors; ``synthetic:N``: N built-in faces
of identities no stage trained on (for benchmarks).
"""

import logging
import os
import sys

import numpy as np
from absl import flags

from pdsn_jax.cli import face_flags
from pdsn_jax.faces.finding import IMAGE_EXTENSIONS

_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (python -m pdsn_jax.main).")
_OUT = flags.DEFINE_string("out", None, "Store folder to create or resume.")
_IMAGES = flags.DEFINE_string("images", "", "Folder of face images (searched recursively).")
_LANDMARKS = flags.DEFINE_string("landmarks", "", "5-point landmarks TSV for --images.")
_SOURCE = flags.DEFINE_string("source", "", "'distractors' or 'synthetic:N' instead of --images.")
_DTYPE = flags.DEFINE_enum("dtype", "float16", ["float32", "float16", "int8"], "Stored U.")
_SHARD = flags.DEFINE_integer("shard_size", 4096, "Faces per shard.")
_STAGE = flags.DEFINE_string("stage", "", "The run's network computing U (default: identify's).")
flags.adopt_module_key_flags(face_flags)  # --face_finder: each face not in --landmarks
flags.mark_flags_as_required(["workdir", "out"])


class _Folder:
  """Images under a folder, aligned to the run's template (labels: first-level subfolder), a
  shard at a time (``batch``: the face finder runs on the shard's photos together)."""

  def __init__(self, root: str, landmarks: str, size, template: str, detector: str = "none",
               workdir: str = "", weights: str = "run"):
    from pdsn_jax.data.folders import read_landmarks  # pylint: disable=g-import-not-at-top
    self.root, self.size, self.template = root, tuple(size), template
    self.finder = None
    if detector != "none":
      from pdsn_jax import recognizer  # pylint: disable=g-import-not-at-top
      self.finder = recognizer.face_finder(detector, workdir, weights)
    self.paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                        if f.lower().endswith(IMAGE_EXTENSIONS))
    if not self.paths:
      raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    self.marks = read_landmarks(landmarks) if landmarks else {}
    top = sorted({os.path.relpath(p, root).split(os.sep)[0] for p in self.paths
                  if os.sep in os.path.relpath(p, root)})
    self.ids = {name: i for i, name in enumerate(top)}

  def __len__(self):
    return len(self.paths)

  def inventory(self) -> list[list]:
    """[path under the root, bytes, mtime_ns] of every photo in store order: what a resumed
    build must find again."""
    out = []
    for p in self.paths:
      st = os.stat(p)
      out.append([os.path.relpath(p, self.root), st.st_size, st.st_mtime_ns])
    return out

  def label(self, i: int) -> int:
    rel = os.path.relpath(self.paths[i], self.root)
    return self.ids.get(rel.split(os.sep)[0], -1) if os.sep in rel else -1

  def __getitem__(self, i: int) -> dict:
    return self.batch([i])[0]

  def batch(self, indices) -> list[dict]:
    """The aligned faces of ``indices``; a photo that cannot be read or holds no face is kept
    in place (so the shards stay valid) with the reason, and never found."""
    from pdsn_jax.faces import finding as faces  # pylint: disable=g-import-not-at-top
    paths = [self.paths[i] for i in indices]
    found = faces.find(paths, self.size, self.template, self.marks, self.finder)
    return [{"image": f.face, "label": self.label(i)} if f.face is not None else
            {"image": np.zeros((*self.size, 3), np.uint8), "label": self.label(i),
             "unreadable": f.note} for i, f in zip(indices, found)]


def source_from_flags(config):
  """(source, description, label_fn, path_fn) named by --images / --source."""
  if bool(_IMAGES.value) == bool(_SOURCE.value):
    raise ValueError("give exactly one of --images=DIR and --source=distractors|synthetic:N")
  if _IMAGES.value:
    src = _Folder(_IMAGES.value, _LANDMARKS.value, config.data.image_size, config.data.alignment,
                  face_flags.FINDER.value, _WORKDIR.value, face_flags.FINDER_WEIGHTS.value)
    return (src, f"images:{os.path.abspath(_IMAGES.value)}", src.label,
            lambda i: os.path.relpath(src.paths[i], _IMAGES.value))
  from pdsn_jax.data import sources  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.synthetic import SyntheticFaces  # pylint: disable=g-import-not-at-top
  if _SOURCE.value == "distractors":
    src = sources.build_eval(config.data, config.eval.num_distractors)[1]
    return src, "distractors", lambda i: -1, None
  if _SOURCE.value.startswith("synthetic:"):
    n = int(_SOURCE.value.split(":", 1)[1])
    s = config.data.synthetic
    src = SyntheticFaces(n, 1, s.seed, 10_000_000, tuple(config.data.image_size))
    return src, f"synthetic:{n}", lambda i: -1, None
  raise ValueError(f"--source={_SOURCE.value!r}: expected 'distractors' or 'synthetic:N'")


def main(argv):
  del argv
  # jax and the networks load after the flags (a fast --help)
  from pdsn_jax.method import builders, inference  # pylint: disable=g-import-not-at-top
  from pdsn_jax.train import parallel
  from pdsn_jax.run import provenance
  from pdsn_jax import recognizer, run_config  # pylint: disable=g-import-not-at-top
  from pdsn_jax.run import workdir
  from pdsn_jax.evaluation import evaluators, masked  # pylint: disable=g-import-not-at-top
  from pdsn_jax.gallery import store

  logging.getLogger("absl").setLevel(logging.WARNING)
  if _SHARD.value < 1:
    raise ValueError(f"--shard_size={_SHARD.value}: must be >= 1 (faces per shard)")
  config = run_config.load_config(_WORKDIR.value)
  networks = sorted({workdir.TRUNK} | {m.stage for m in evaluators.parse_models(
      config.eval.models)})
  trained = recognizer.trained_models(config, _WORKDIR.value)  # the commands' default: the last
  stage = _STAGE.value or (trained[-1].stage if trained else workdir.TRUNK)
  if stage not in networks:  # a name, never a path into another run
    raise ValueError(f"--stage={stage!r}: must be one of this run's networks {networks}")
  workdir.require(_WORKDIR.value, stage, needed_by="gallery")
  provenance.require_fresh(config, _WORKDIR.value, [stage], "gallery")
  variables = workdir.backbone_variables(_WORKDIR.value, stage)
  backbone = builders.backbone(config, False)
  inference.check_shapes(backbone, variables, config.data.image_size,
                         f"the '{stage}' checkpoint of {_WORKDIR.value}")
  logging.info("U by the '%s' stage's network", stage)
  mesh = parallel.make_mesh()
  embedder = masked.Embedder(backbone, mesh, config.eval.batch_size, builders.normalize,
                             builders.forward_chunk(config))
  rep = parallel.put_replicated(variables, mesh)
  src, desc, label_fn, path_fn = source_from_flags(config)
  out, stats = store.build_from_source(
      _OUT.value, src, lambda images: embedder.features(rep, images),
      u_shape=builders.u_shape(config), dtype=_DTYPE.value, shard_size=_SHARD.value,
      trunk_checkpoint=workdir.checkpoints(_WORKDIR.value, stage),
      trunk_fingerprint=store.fingerprint(builders.feature_variables(backbone, variables)),
      description=desc, label_fn=label_fn, path_fn=path_fn)
  logging.info("store %s: %d faces in %d shards (%s); %s", out.path, out.num_faces,
               out.num_shards, out.meta["dtype"], stats)


def cli():
  """``pdsn-gallery``: the console script of ``pip install -e .``."""
  from pdsn_jax.cli import runner as cli_lib  # pylint: disable=g-import-not-at-top
  cli_lib.run(main, sys.modules[__name__])


if __name__ == "__main__":
  cli()
