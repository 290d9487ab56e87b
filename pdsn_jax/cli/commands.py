"""Use a trained run on photos: the embed, verify and identify commands.

  python -m pdsn_jax.cli.embed --workdir=RUN --images=DIR --out=embeddings.npz [--landmarks=TSV]
      [--sheet=PNG]
  python -m pdsn_jax.cli.verify --workdir=RUN A.jpg B.jpg
  python -m pdsn_jax.cli.identify --workdir=RUN --gallery=DIR --probes=DIR --out=ranks.csv [--k=5]
  python -m pdsn_jax.cli.identify --workdir=RUN --store=STORE --probes=DIR --out=ranks.csv

Faces are found and aligned with BlazeFace (``--face_finder``; dlib's ``hog`` / ``cnn``
too) unless a landmarks TSV names the photo; a photo with no face, or that cannot be read, is reported and skipped. Each face's
occlusion is located by the run's detector, its blocks pick the FDM from the run's
dictionary, and the embedding is F(FDM * U) of ``--model`` (default: the run's last model).
"""

import logging
import os

from absl import flags

from pdsn_jax.cli import face_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A run folder of python -m pdsn_jax.main.")
_MODEL = flags.DEFINE_string("model", "", "One of the run's eval.models (default: the last).")
_LANDMARKS = flags.DEFINE_string("landmarks", "", "5-point landmarks TSV (else the face "
                                 "detector finds the points).")
_FALLBACK = flags.DEFINE_float(
    "face_fallback_score", None,
    "BlazeFace: a last try at this lower score on photos where no face was found (e.g. 0.4: "
    "more masked, grey, low-resolution faces found, but also more wrong faces on photos "
    "without one; benchmarks/blazeface_fallback.py). Default: the run's own with its tuned "
    "weights (face_finder.fallback_score), else no last try.")
flags.adopt_module_key_flags(face_flags)
_IMAGES = flags.DEFINE_string("images", "", "embed: folder of photos (searched recursively).")
_OUT = flags.DEFINE_string("out", "", "embed: .npz to write; identify: .csv to write.")
_SHEET = flags.DEFINE_string("sheet", "", "embed: also a contact sheet PNG (face, mask, blocks).")
_GALLERY = flags.DEFINE_string("gallery", "", "identify: gallery photos, one folder per person.")
_PROBES = flags.DEFINE_string("probes", "", "identify: probe photos.")
_K = flags.DEFINE_integer("k", 5, "identify: ranks written per probe.")
_STORE = flags.DEFINE_string(
    "store", "", "identify: a prebuilt gallery store (python -m pdsn_jax.cli.gallery --images=DIR, "
    "one folder per person) to search instead of --gallery; never re-embedded.")
_OCCLUSION = flags.DEFINE_string(
    "occlusion", "auto",
    "Where the faces are occluded: 'auto' (the run's detector finds it), 'none', 'sunglasses', "
    "'mask' or 'scarf' (that category's place on the template), or generator blocks as "
    "'row,col;row,col' (rows/columns 1-3, e.g. '2,1;2,2;2,3' for the eye row). identify: the "
    "probes' occlusion (the gallery is always 'auto').")
_FACES = flags.DEFINE_enum("faces", "largest", ["largest", "all"],
                           "embed: the largest face of each photo, or every face found.")
_MIN_FACE = flags.DEFINE_integer(
    "min_face", 0, "embed: leave out faces narrower than this (pixels of the photo), and look "
    "for faces down to this width in overlapping tiles of each photo (BlazeFace; slower: "
    "benchmarks/small_faces.py).")
_COMMON = ("workdir", "model", "landmarks", "face_finder", "face_fallback_score",
           "face_finder_weights", "occlusion")
EMBED_FLAGS = _COMMON + ("images", "out", "sheet", "faces", "min_face")
VERIFY_FLAGS = _COMMON
IDENTIFY_FLAGS = _COMMON + ("gallery", "store", "probes", "out", "k")


def _run():
  """The API's ``Run`` of the flags (the commands are thin wrappers of ``pdsn_jax.api``)."""
  from pdsn_jax import api  # pylint: disable=g-import-not-at-top  (jax after the flags)
  logging.getLogger("absl").setLevel(logging.WARNING)
  run = api.load(_WORKDIR.value, _MODEL.value or None, face_flags.FINDER.value,
                 face_flags.FINDER_WEIGHTS.value, _FALLBACK.value, _LANDMARKS.value)
  logging.info("model %s of %s%s", run.model, _WORKDIR.value, f"; {run.note}" if run.note else "")
  return run


def _report(skipped) -> None:
  for path, why in skipped:
    logging.warning("skipped %s: %s", path, why)


def embed_main(argv):
  """Embeddings, masks and blocks of every face under --images into --out."""
  del argv
  from pdsn_jax import api  # pylint: disable=g-import-not-at-top
  from pdsn_jax.faces import finding as faces_lib  # pylint: disable=g-import-not-at-top
  if not _IMAGES.value or not _OUT.value:
    raise ValueError("embed needs --images=DIR and --out=embeddings.npz")
  run = _run()
  photos = faces_lib.list_images(_IMAGES.value)
  e = run.embed(run.find_faces(photos, _FACES.value, _MIN_FACE.value), _OCCLUSION.value,
                missing="skip")
  _report(e.skipped)
  api.save_embeddings(e, _OUT.value)  # never half a file
  logging.info("wrote %s: %d faces (%d photos skipped); mean predicted occluded area %.1f%%",
               _OUT.value, len(e.sources), len(e.skipped), 100 * float(e.masks.mean()))
  if _SHEET.value:
    from pdsn_jax import visualize  # pylint: disable=g-import-not-at-top
    n = min(len(e.sources), 24)
    o = run.config.occlusion
    visualize.detection_sheet(e.faces[:n], e.masks[:n], _SHEET.value,
                              min_overlap=o.min_overlap, overlap=o.overlap,
                              names=[os.path.relpath(p, _IMAGES.value) for p in e.sources[:n]])
    logging.info("contact sheet: %s", _SHEET.value)


def verify_main(argv):
  if len(argv) != 3:
    raise ValueError("usage: python -m pdsn_jax.cli.verify --workdir=RUN A.jpg B.jpg")
  r = _run().verify(argv[1], argv[2], _OCCLUSION.value)
  for path, blocks, area in zip(argv[1:], r.blocks, r.occluded_area):
    print(f"{path}: occluded blocks {blocks} ({100 * area:.1f}% of the face)")
  decision = ("no decision" if r.same is None else
              "same person" if r.same else "different people")
  t = "n/a" if r.threshold is None else f"{r.threshold:.4f}"
  print(f"score {r.score:.4f} -> {decision} (threshold {t}: {r.threshold_from})")


def identify_main(argv):
  del argv
  from pdsn_jax import api  # pylint: disable=g-import-not-at-top
  from pdsn_jax.faces import finding as faces_lib  # pylint: disable=g-import-not-at-top
  if _K.value < 1:
    raise ValueError(f"--k={_K.value}: must be >= 1")
  if not (_PROBES.value and _OUT.value) or bool(_GALLERY.value) == bool(_STORE.value):
    raise ValueError("identify needs --probes=DIR --out=ranks.csv and one of --gallery=DIR "
                     "and --store=STORE")
  run = _run()
  if _STORE.value:
    gallery = api.open_store(_STORE.value)
  else:
    gallery = run.gallery(_GALLERY.value)
    _report(gallery.skipped)
  matches = run.identify(faces_lib.list_images(_PROBES.value), gallery, _K.value,
                         _OCCLUSION.value)
  api.save_ranks(matches, _OUT.value)  # a full disk never leaves half a table
  logging.info("wrote %s: %d probes x up to rank %d", _OUT.value, len(matches),
               max(len(m) for m in matches))


def run(main, module, key_flags):
  """Runs a command whose entry module is ``module``; ``--help`` lists ``key_flags``."""
  from pdsn_jax.cli import runner as cli  # pylint: disable=g-import-not-at-top
  flags.mark_flags_as_required(["workdir"])
  cli.run(main, module, key_flags)
