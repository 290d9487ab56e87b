"""Use a trained run on photos: the embed, verify and identify commands.

  python -m pdsn_jax.embed --workdir=RUN --images=DIR --out=embeddings.npz [--landmarks=TSV]
      [--sheet=PNG]
  python -m pdsn_jax.verify --workdir=RUN A.jpg B.jpg
  python -m pdsn_jax.identify --workdir=RUN --gallery=DIR --probes=DIR --out=ranks.csv [--k=5]
  python -m pdsn_jax.identify --workdir=RUN --store=STORE --probes=DIR --out=ranks.csv

Faces are found and aligned with BlazeFace (``--face_detector``; dlib's ``hog`` / ``cnn``
too) unless a landmarks TSV names the photo; a photo with no face, or that cannot be read, is reported and skipped. Each face's
occlusion is located by the run's detector, its blocks pick the FDM from the run's
dictionary, and the embedding is F(FDM * U) of ``--model`` (default: the run's last model).
"""

import csv
import io
import logging
import os
import time

from absl import flags
import numpy as np

from pdsn_jax import files
from pdsn_jax.data.faces import FINDERS, WEIGHTS

_WORKDIR = flags.DEFINE_string("workdir", None, "A run folder of python -m pdsn_jax.main.")
_MODEL = flags.DEFINE_string("model", "", "One of the run's eval.models (default: the last).")
_LANDMARKS = flags.DEFINE_string("landmarks", "", "5-point landmarks TSV (else the face "
                                 "detector finds the points).")
_FACE_DETECTOR = flags.DEFINE_enum(
    "face_detector", "blazeface", list(FINDERS),
    "'blazeface': MediaPipe's BlazeFace in JAX (finds masked faces; '_full' for small, far "
    "faces), 'hog' / 'cnn': dlib's; 'none': the photos are already aligned crops")
_FALLBACK = flags.DEFINE_float(
    "face_fallback_score", None,
    "BlazeFace: a last try at this lower score on photos where no face was found (e.g. 0.4: "
    "more masked, grey, low-resolution faces found, but also more wrong faces on photos "
    "without one; benchmarks/blazeface_fallback.py). Default: the run's own with its tuned "
    "weights (face_finder.fallback_score), else no last try.")
_FINDER_WEIGHTS = flags.DEFINE_enum(
    "face_finder_weights", "run", list(WEIGHTS),
    "BlazeFace: 'run': the run's tuned short-range weights (its face_finder stage) when it has "
    "them, else the shipped ones; 'shipped': always the shipped ones.")
_IMAGES = flags.DEFINE_string("images", "", "embed: folder of photos (searched recursively).")
_OUT = flags.DEFINE_string("out", "", "embed: .npz to write; identify: .csv to write.")
_SHEET = flags.DEFINE_string("sheet", "", "embed: also a contact sheet PNG (face, mask, blocks).")
_GALLERY = flags.DEFINE_string("gallery", "", "identify: gallery photos, one folder per person.")
_PROBES = flags.DEFINE_string("probes", "", "identify: probe photos.")
_K = flags.DEFINE_integer("k", 5, "identify: ranks written per probe.")
_STORE = flags.DEFINE_string(
    "store", "", "identify: a prebuilt gallery store (python -m pdsn_jax.gallery --images=DIR, "
    "one folder per person) to search instead of --gallery; never re-embedded.")
_OCCLUSION = flags.DEFINE_string(
    "occlusion", "auto",
    "Where the faces are occluded: 'auto' (the run's detector finds it), 'none', 'sunglasses', "
    "'mask' or 'scarf' (that category's place on the template), or generator blocks as "
    "'row,col;row,col' (rows/columns 1-3, e.g. '2,1;2,2;2,3' for the eye row). identify: the "
    "probes' occlusion (the gallery is always 'auto').")
_CHUNK = 64  # faces per progress step
_COMMON = ("workdir", "model", "landmarks", "face_detector", "face_fallback_score",
           "face_finder_weights", "occlusion")
EMBED_FLAGS = _COMMON + ("images", "out", "sheet")
VERIFY_FLAGS = _COMMON
IDENTIFY_FLAGS = _COMMON + ("gallery", "store", "probes", "out", "k")


def _recognizer():
  from pdsn_jax import inference  # pylint: disable=g-import-not-at-top
  logging.getLogger("absl").setLevel(logging.WARNING)
  rec = inference.Recognizer(_WORKDIR.value, _MODEL.value)
  logging.info("model %s of %s%s", rec.spec.name, _WORKDIR.value,
               f"; {rec.note}" if rec.note else "")
  return rec


def _faces(paths: list[str], config):
  """Aligned faces of ``paths`` (the face detector unless the TSV has them); reports what is
  skipped."""
  from pdsn_jax.data import faces as faces_lib  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data.folders import read_landmarks  # pylint: disable=g-import-not-at-top
  marks = read_landmarks(_LANDMARKS.value) if _LANDMARKS.value else None
  need = marks is None or any(os.path.normpath(os.path.abspath(p)) not in marks for p in paths)
  finder = (faces_lib.for_run(_FACE_DETECTOR.value, _WORKDIR.value, _FINDER_WEIGHTS.value,
                              _FALLBACK.value)
            if need and _FACE_DETECTOR.value != "none" else None)
  found = faces_lib.find(paths, config.data.image_size, config.data.alignment, marks, finder)
  for f in found:
    if f.face is None:
      logging.warning("skipped %s: %s", f.path, f.note)
    elif f.note != "ok":
      logging.info("%s: %s", f.path, f.note)
  return [f for f in found if f.face is not None], [f for f in found if f.face is None]


def _analyse(rec, faces: np.ndarray, what: str, where: str = "auto") -> dict:
  """U, masks, flags and embeddings in chunks, with progress and throughput."""
  out, t0 = [], time.time()
  for start in range(0, len(faces), _CHUNK):
    a = rec.analyse(faces[start:start + _CHUNK], where)
    a["embeddings"] = rec.embed(a["u"], a["flags"])
    out.append(a)
    done = min(start + _CHUNK, len(faces))
    rate = done / max(time.time() - t0, 1e-9)
    logging.info("%s: %d/%d faces | %.1f faces/s | ETA %.0f s", what, done, len(faces), rate,
                 (len(faces) - done) / rate)
  return {k: np.concatenate([a[k] for a in out]) for k in out[0]} if out else {}


def _block_names(flags_row) -> str:
  from pdsn_jax.data import occlusion  # pylint: disable=g-import-not-at-top
  names = [f"({b // occlusion.GRID},{b % occlusion.GRID})"
           for b, f in zip(occlusion.CENTRAL_BLOCKS, flags_row) if f]
  return ", ".join(names) or "none"


def embed_main(argv):
  """Embeddings, masks and blocks of every face under --images into --out."""
  del argv
  from pdsn_jax.data import faces as faces_lib  # pylint: disable=g-import-not-at-top
  if not _IMAGES.value or not _OUT.value:
    raise ValueError("embed needs --images=DIR and --out=embeddings.npz")
  rec = _recognizer()
  found, skipped = _faces(faces_lib.list_images(_IMAGES.value), rec.config)
  if not found:
    raise ValueError(f"no face found in any photo under {_IMAGES.value}")
  faces = np.stack([f.face for f in found])
  a = _analyse(rec, faces, "embed", _OCCLUSION.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with files.atomic_path(_OUT.value) as tmp, open(tmp, "wb") as fh:  # never half a file
    np.savez_compressed(
        fh, embeddings=a["embeddings"], masks=a["masks"], blocks=a["flags"],
        paths=np.asarray([f.path for f in found]), notes=np.asarray([f.note for f in found]),
        skipped_paths=np.asarray([f.path for f in skipped], dtype=str),
        skipped_reasons=np.asarray([f.note for f in skipped], dtype=str),
        model=np.asarray(rec.spec.name))
  logging.info("wrote %s: %d faces (%d photos skipped); mean predicted occluded area %.1f%%",
               _OUT.value, len(found), len(skipped), 100 * float(a["masks"].mean()))
  if _SHEET.value:
    from pdsn_jax import visualize  # pylint: disable=g-import-not-at-top
    n = min(len(found), 24)
    visualize.detection_sheet(faces[:n], a["masks"][:n], _SHEET.value,
                              min_overlap=rec.config.occlusion.min_overlap,
                              overlap=rec.config.occlusion.overlap,
                              names=[os.path.relpath(f.path, _IMAGES.value) for f in found[:n]])
    logging.info("contact sheet: %s", _SHEET.value)


def verify(rec, path_a: str, path_b: str, where: str = "auto") -> dict:
  """Score and decision for two photos, both embedded under the AND of both occlusions
  (``where``: how they are located, as ``--occlusion``)."""
  found, skipped = _faces([path_a, path_b], rec.config)
  if skipped:
    raise ValueError("; ".join(f"{f.path}: {f.note}" for f in skipped))
  a = rec.analyse(np.stack([f.face for f in found]), where)
  both = a["flags"][0] | a["flags"][1]
  emb = rec.embed(a["u"], np.stack([both, both]))
  score = float(emb[0] @ emb[1])
  threshold, what = rec.threshold(bool(both.any()))
  return {"score": score, "threshold": threshold, "threshold_from": what,
          "same": None if threshold is None else score > threshold,
          "blocks": [_block_names(f) for f in a["flags"]],
          "occluded_area": [float(m.mean()) for m in a["masks"]], "model": rec.spec.name}


def verify_main(argv):
  if len(argv) != 3:
    raise ValueError("usage: python -m pdsn_jax.verify --workdir=RUN A.jpg B.jpg")
  r = verify(_recognizer(), argv[1], argv[2], _OCCLUSION.value)
  for path, blocks, area in zip(argv[1:], r["blocks"], r["occluded_area"]):
    print(f"{path}: occluded blocks {blocks} ({100 * area:.1f}% of the face)")
  decision = ("no decision" if r["same"] is None else
              "same person" if r["same"] else "different people")
  t = "n/a" if r["threshold"] is None else f"{r['threshold']:.4f}"
  print(f"score {r['score']:.4f} -> {decision} (threshold {t}: {r['threshold_from']})")


def identify(rec, gallery_dir: str, probe_dir: str, k: int, where: str = "auto") -> list[dict]:
  """Rank-k gallery faces for every probe, the gallery embedded under each probe's FDM
  (``where``: how the probes' occlusion is located, as ``--occlusion``)."""
  from pdsn_jax.data import faces as faces_lib  # pylint: disable=g-import-not-at-top
  from pdsn_jax.evaluation import search  # pylint: disable=g-import-not-at-top
  gallery, _ = _faces(faces_lib.list_images(gallery_dir), rec.config)
  probes, _ = _faces(faces_lib.list_images(probe_dir), rec.config)
  if not gallery or not probes:
    raise ValueError("identify needs at least one face in --gallery and in --probes")
  ids = [os.path.relpath(f.path, gallery_dir).split(os.sep)[0] for f in gallery]
  ids = [os.path.splitext(i)[0] for i in ids]
  g = _analyse(rec, np.stack([f.face for f in gallery]), "gallery")
  return _ranks(rec, probes, where, search.ArrayGallery(g["u"], np.arange(len(g["u"]))), k, ids,
                [f.path for f in gallery])


def _ranks(rec, probes, where: str, gallery, k: int, ids: list, paths: list) -> list[dict]:
  """The probes' rank-k rows over ``gallery`` (a store or ``search.ArrayGallery``), searched
  under each probe's FDM; ``ids`` / ``paths`` name the gallery's faces in order."""
  from pdsn_jax.evaluation import search  # pylint: disable=g-import-not-at-top
  p = _analyse(rec, np.stack([f.face for f in probes]), "probes", where)
  k = min(k, gallery.num_faces)
  searcher = search.Searcher(rec.net, rec.u_shape, rec.config.eval.batch_size, k=k)
  scores, index = search.identify(searcher, rec.host, rec.host_table, p["embeddings"],
                                  p["flags"], gallery, rec.host_clean)
  return [{"probe": f.path, "rank": r + 1, "identity": ids[index[i, r]],
           "gallery_image": paths[index[i, r]], "score": float(scores[i, r]),
           "probe_blocks": _block_names(p["flags"][i])}
          for i, f in enumerate(probes) for r in range(k)
          if np.isfinite(scores[i, r])]  # fewer searchable faces than k (unreadable ones)


def identify_store(rec, store_path: str, probe_dir: str, k: int, where: str = "auto") -> list[dict]:
  """Rank-k faces of a prebuilt gallery store for every probe, the stored U embedded under each
  probe's FDM shard by shard (the same search as the evaluation's). A store whose U another
  trunk computed is refused (its fingerprint is checked first); identities are the first
  folder of each stored path."""
  from pdsn_jax import builders  # pylint: disable=g-import-not-at-top
  from pdsn_jax.data import faces as faces_lib  # pylint: disable=g-import-not-at-top
  from pdsn_jax.evaluation import store as store_lib  # pylint: disable=g-import-not-at-top
  st = store_lib.Store(store_path)
  if st.missing():
    raise ValueError(f"the gallery store {store_path} is incomplete (shards {st.missing()[:5]} "
                     "missing): run python -m pdsn_jax.gallery again to finish it")
  try:
    st.check_trunk(f"the {rec.spec.stage} checkpoint of the run", store_lib.fingerprint(
        builders.feature_variables(rec.net, rec.host)))
  except store_lib.TrunkMismatch as e:
    raise store_lib.TrunkMismatch(f"{e} (python -m pdsn_jax.gallery --workdir=... "
                                  f"--stage={rec.spec.stage}, for --model={rec.spec.name!r})"
                                  ) from None
  probes, _ = _faces(faces_lib.list_images(probe_dir), rec.config)
  if not probes:
    raise ValueError(f"identify needs at least one face in --probes={probe_dir}")
  paths = [q for i in range(st.num_shards) for q in st.paths(i)]
  return _ranks(rec, probes, where, st, k, [q.split(os.sep)[0] for q in paths], paths)


def identify_main(argv):
  del argv
  if _K.value < 1:
    raise ValueError(f"--k={_K.value}: must be >= 1")
  if not (_PROBES.value and _OUT.value) or bool(_GALLERY.value) == bool(_STORE.value):
    raise ValueError("identify needs --probes=DIR --out=ranks.csv and one of --gallery=DIR "
                     "and --store=STORE")
  if _STORE.value:
    rows = identify_store(_recognizer(), _STORE.value, _PROBES.value, _K.value,
                          _OCCLUSION.value)
  else:
    rows = identify(_recognizer(), _GALLERY.value, _PROBES.value, _K.value, _OCCLUSION.value)
  text = io.StringIO()
  w = csv.DictWriter(text, fieldnames=list(rows[0]))
  w.writeheader()
  w.writerows(rows)
  files.atomic_write(_OUT.value, text.getvalue())  # a full disk never leaves half a table
  k = max(r["rank"] for r in rows)
  logging.info("wrote %s: %d probes x up to rank %d", _OUT.value, len({r["probe"] for r in rows}),
               k)


def run(main, module, key_flags):
  """Runs a command whose entry module is ``module``; ``--help`` lists ``key_flags``."""
  from pdsn_jax import cli  # pylint: disable=g-import-not-at-top
  flags.mark_flags_as_required(["workdir"])
  cli.run(main, module, key_flags)
