"""The Python API: a finished run, from photos to decisions (the embed, verify and identify
commands are thin wrappers of it).

  import pdsn_jax
  run = pdsn_jax.load("runs/real_mobilefacenet")    # its last model, e.g. "PDSN + fine-tune"
  r = run.verify("a.jpg", "b.jpg")                   # r.score, r.same, r.threshold, r.blocks
  faces = run.find_faces([photo], faces="all")       # boxes, points, scores, aligned crops
  e = run.embed(faces)                               # e.embeddings (N, D), e.masks, e.blocks
  g = run.gallery("people/")                         # one folder per person
  for m in run.identify(["probe.jpg"], g, k=5)[0]:  # best first
    print(m.rank, m.identity, m.score)

Images are paths, PIL images or uint8 numpy arrays ((H, W), (H, W, 1), (H, W, 3) RGB,
(H, W, 4) RGBA), one or a list. Every face is embedded as the run's evaluation does it: its
occlusion located (``occlusion``: "auto" = the run's detector, or named), its blocks pick the
FDM of the run's dictionary, the embedding is F(FDM * U). Stable: the names in ``__all__`` and
the fields of the dataclasses they return (docs/api.md).
"""

import csv
import dataclasses
import io
import json
import logging
import os
import time

import numpy as np

from pdsn_jax.method import builders
from pdsn_jax.run import files
from pdsn_jax import recognizer
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.faces import finding as faces_lib
from pdsn_jax.data import occlusion as occlusion_lib
from pdsn_jax.data.folders import read_landmarks
from pdsn_jax.gallery import search
from pdsn_jax.gallery import store as store_lib

__all__ = ["load", "Run", "Faces", "Embeddings", "Verification", "Match", "Gallery",
           "load_embeddings", "save_embeddings", "load_ranks", "save_ranks", "load_results",
           "open_store"]

_CHUNK = 64  # faces per progress line

open_store = store_lib.Store  # a gallery store (python -m pdsn_jax.cli.gallery) to identify against


@dataclasses.dataclass
class Faces:
  """The faces found in one photo, largest first (n = 0 when none: ``note`` says why)."""

  source: str  # the path, or "<image i>" for an image given in memory
  boxes: np.ndarray  # (n, 4) float: x0, y0, x1, y1 in the photo's pixels (NaN: not found by a detector)
  points: np.ndarray  # (n, P, 2) float: the points it was aligned by (P = 4 BlazeFace, 5 dlib)
  scores: np.ndarray  # (n,) float: the detector's confidence (NaN: not found by a detector)
  crops: np.ndarray  # (n, H, W, 3) uint8: aligned to the run's template
  note: str  # "ok", "2 faces, the largest taken", "no face found", "unreadable: ..."


@dataclasses.dataclass
class Embeddings:
  """One row per face: what the recognizer saw and what it made of it."""

  embeddings: np.ndarray  # (N, D) float32, L2-normalised F(FDM * U)
  masks: np.ndarray  # (N, H, W) bool: the occluded pixels of each aligned face
  blocks: np.ndarray  # (N, 9) bool: the central blocks taken as occluded (row-major 3x3)
  faces: np.ndarray | None  # (N, H, W, 3) uint8: the aligned faces (None: read from a file)
  sources: list  # (N,) the photo of each row
  notes: list  # (N,) the face finder's note of each row
  skipped: list  # [(source, reason)] photos without a face (missing="skip")
  model: str

  def block_names(self, i: int) -> str:
    """The occluded blocks of row ``i`` as "(row,col), ..." (rows/columns 1-3), or "none"."""
    return block_names(self.blocks[i])


@dataclasses.dataclass
class Verification:
  """Same person? Both faces embedded under the AND of both occlusions."""

  score: float  # cosine of the two embeddings
  same: bool | None  # score > threshold; None when the run has no usable threshold
  threshold: float | None  # the evaluation's: mean of its 10 fold thresholds
  threshold_from: str  # where the threshold came from, or why there is none
  blocks: list  # [str, str] each face's occluded blocks
  occluded_area: list  # [float, float] fraction of each aligned face predicted occluded
  model: str


@dataclasses.dataclass
class Match:
  """One gallery face among a probe's best k."""

  probe: str
  rank: int  # 1 = best
  identity: str
  gallery_item: str  # the gallery photo (a store's stored path)
  score: float
  probe_blocks: str


@dataclasses.dataclass
class Gallery:
  """Gallery faces kept as U (the trunk's top conv feature), searched under each probe's FDM.
  Larger galleries: a store (``python -m pdsn_jax.cli.gallery``, ``open_store``)."""

  u: np.ndarray  # (N, h, w, c) float32
  identities: list  # (N,)
  items: list  # (N,) the photo of each face
  skipped: list  # [(source, reason)]


def block_names(flags_row) -> str:
  names = [f"({b // occlusion_lib.GRID},{b % occlusion_lib.GRID})"
           for b, f in zip(occlusion_lib.CENTRAL_BLOCKS, flags_row) if f]
  return ", ".join(names) or "none"


def load(run_dir: str, model: str | None = None, face_finder: str = "blazeface",
         face_finder_weights: str = "run", face_fallback_score: float | None = None,
         landmarks: str = "") -> "Run":
  """A finished run of ``python -m pdsn_jax.main`` ready to use (``Run``).

  ``model``: one of the run's ``eval.models`` (default: the last whose stage ran).
  ``face_finder``: how faces are found in photos (``faces.finding.FINDERS``; "none": photos
  are aligned crops already). ``face_finder_weights``: "run" (the run's tuned BlazeFace when
  it has one) or "shipped". ``face_fallback_score``: BlazeFace's last try at a lower score
  (default: the run's). ``landmarks``: a 5-point TSV naming photos by path (used before the
  detector)."""
  return Run(run_dir, model, face_finder, face_finder_weights, face_fallback_score, landmarks)


class Run:
  """A finished run's networks on photos (``load``)."""

  def __init__(self, run_dir, model=None, face_finder="blazeface", face_finder_weights="run",
               face_fallback_score=None, landmarks=""):
    if face_finder not in faces_lib.FINDERS:
      raise ValueError(f"face_finder={face_finder!r}: allowed values {faces_lib.FINDERS}")
    if face_finder_weights not in faces_lib.WEIGHTS:
      raise ValueError(f"face_finder_weights={face_finder_weights!r}: allowed values "
                       f"{faces_lib.WEIGHTS}")
    self.run_dir = run_dir
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax's notes on every restore are not the user's concern
    try:
      self.recognizer = recognizer.Recognizer(run_dir, model or "")
    finally:
      absl.setLevel(level)
    self.config = self.recognizer.config
    self.model = self.recognizer.spec.name
    self.face_size = tuple(self.config.data.image_size)
    self._finder_args = (face_finder, face_finder_weights, face_fallback_score)
    self._finder = None  # made on first use: photos with landmarks or aligned crops need none
    self._marks = read_landmarks(landmarks) if landmarks else None

  def __repr__(self):
    return f"pdsn_jax.Run({self.run_dir!r}, model={self.model!r})"

  @property
  def note(self) -> str:
    """What the run lacks ("" when nothing), e.g. no detector stage: faces taken as clean."""
    return self.recognizer.note

  def _face_finder(self):
    detector, weights, fallback = self._finder_args
    if detector == "none":
      return None
    if self._finder is None:
      self._finder = recognizer.face_finder(detector, self.run_dir, weights, fallback)
    return self._finder

  def _find(self, images, faces: str = "largest", min_face: int = 0) -> list:
    images = _as_list(images)
    needs = self._marks is None or any(
        not isinstance(x, (str, os.PathLike))
        or os.path.normpath(os.path.abspath(os.fspath(x))) not in self._marks for x in images)
    return faces_lib.find(images, self.face_size, self.config.data.alignment, self._marks,
                          self._face_finder() if needs else None, faces=faces,
                          min_face=min_face)

  def find_faces(self, images, faces: str = "largest", min_face: int = 0) -> list[Faces]:
    """The faces of each photo (one ``Faces`` per image, in order), aligned to the run's
    template. ``faces``: "largest" (at most one per photo) or "all"; ``min_face``: leave out
    faces whose box is narrower than this many pixels of the photo."""
    images = _as_list(images)
    per_photo: list[list] = [[] for _ in images]
    for f in self._find(images, faces, min_face):
      per_photo[f.index].append(f)
    h, w = self.face_size
    out = []
    for found in per_photo:
      mine = [f for f in found if f.face is not None]
      nan_points = np.full((5, 2), np.nan)
      out.append(Faces(
          found[0].path,
          np.array([np.full(4, np.nan) if f.box is None else f.box for f in mine],
                   np.float64).reshape(-1, 4),
          (np.array([nan_points if f.points is None else f.points for f in mine], np.float64)
           if mine else np.zeros((0, 5, 2))),
          np.array([np.nan if f.score is None else f.score for f in mine], np.float64),
          np.stack([f.face for f in mine]) if mine else np.zeros((0, h, w, 3), np.uint8),
          "ok" if len(mine) > 1 else found[0].note))
    return out

  def _is_crop(self, x) -> bool:
    return isinstance(x, np.ndarray) and x.ndim == 3 and x.shape[:2] == self.face_size

  def _aligned(self, images, aligned, missing: str):
    """(crops, sources, notes, skipped) of ``images``: aligned crops (``aligned``; None: when
    every image is an array of the run's face size), ``Faces`` (their crops), or photos
    (``find_faces``: their largest face)."""
    if missing not in ("raise", "skip"):
      raise ValueError(f"missing={missing!r}: allowed values ('raise', 'skip')")
    items = _as_list(images)
    if aligned or (aligned is None and items and all(self._is_crop(x) for x in items)):
      rows, skipped = [], []
      for i, x in enumerate(items):
        a = faces_lib.as_image(x, f"aligned face {i}")[0]
        if a.shape[:2] != self.face_size:
          raise ValueError(f"aligned face {i}: {a.shape[1]}x{a.shape[0]} px; the run's faces are "
                           f"{self.face_size[1]}x{self.face_size[0]} (pass photos, or "
                           "aligned=False, to find and align them)")
        rows.append((a, f"<face {i}>", "ok"))
    else:
      photos = [x for x in items if not isinstance(x, Faces)]
      new = iter(self.find_faces(photos) if photos else ())
      found = [x if isinstance(x, Faces) else next(new) for x in items]
      rows = [(c, f.source, f.note) for f in found for c in f.crops]
      skipped = [(f.source, f.note) for f in found if not len(f.crops)]
    if not rows:
      raise ValueError(f"no face found in any of the {len(items)} inputs: " + "; ".join(
          f"{s}: {r}" for s, r in skipped[:5]) + ("; ..." if len(skipped) > 5 else ""))
    if skipped and missing == "raise":
      raise ValueError("no face in " + "; ".join(f"{s}: {r}" for s, r in skipped))
    return np.stack([r[0] for r in rows]), [r[1] for r in rows], [r[2] for r in rows], skipped

  def _chunked(self, fn, crops: np.ndarray, what: str) -> dict:
    """``fn`` (aligned faces -> dict of arrays) over ``_CHUNK`` faces at a time, with a
    progress line (faces/s, ETA), concatenated."""
    out, t0 = [], time.time()
    for start in range(0, len(crops), _CHUNK):
      out.append(fn(crops[start:start + _CHUNK]))
      done = min(start + _CHUNK, len(crops))
      rate = done / max(time.time() - t0, 1e-9)
      if len(crops) > _CHUNK:
        logging.info("%s: %d/%d faces | %.1f faces/s | ETA %.0f s", what, done, len(crops),
                     rate, (len(crops) - done) / rate)
    if not out:
      raise ValueError(f"{what}: no face to embed")
    return {k: np.concatenate([a[k] for a in out]) for k in out[0]}

  def analyse(self, crops: np.ndarray, occlusion: str = "auto", what: str = "faces") -> dict:
    """U, masks, block flags and embeddings of aligned uint8 faces (``_chunked``)."""
    def one(c):
      a = self.recognizer.analyse(c, occlusion)
      return {**a, "embeddings": self.recognizer.embed(a["u"], a["flags"])}
    return self._chunked(one, crops, what)

  def embed(self, images_or_faces, occlusion: str = "auto", aligned: bool | None = None,
            missing: str = "raise") -> Embeddings:
    """Embeddings, masks and blocks of every face: ``Faces`` from ``find_faces`` (every crop),
    aligned crops (``aligned=True``; with None, arrays that all have the run's face size are
    taken as crops), or photos (the largest face of each). ``occlusion``: "auto" (the run's
    detector), "none", a category ("sunglasses", "mask", "scarf") or blocks
    "row,col;row,col". ``missing``: "raise" on a photo without a face, or "skip" it (listed
    in ``skipped``)."""
    crops, sources, notes, skipped = self._aligned(images_or_faces, aligned, missing)
    a = self.analyse(crops, occlusion, "embed")
    return Embeddings(a["embeddings"], a["masks"], a["flags"], crops, sources, notes, skipped,
                      self.model)

  def verify(self, a, b, occlusion: str = "auto") -> Verification:
    """Same person? Two photos (or aligned faces, or ``Faces``), each face's occlusion located
    as ``occlusion`` says; both embedded under the AND of both occlusions, and decided with
    the threshold the run's evaluation chose (clean or occluded)."""
    crops = [self._aligned([x], None, "raise")[0][:1] for x in (a, b)]
    r = self.recognizer.analyse(np.concatenate(crops), occlusion)
    both = r["flags"][0] | r["flags"][1]
    emb = self.recognizer.embed(r["u"], np.stack([both, both]))
    score = float(emb[0] @ emb[1])
    threshold, what = self.recognizer.threshold(bool(both.any()))
    return Verification(score, None if threshold is None else score > threshold, threshold, what,
                        [block_names(f) for f in r["flags"]],
                        [float(m.mean()) for m in r["masks"]], self.model)

  def gallery(self, photos, identities=None) -> Gallery:
    """Gallery faces to ``identify`` against: a folder (one subfolder per person; a photo
    directly in it is its own identity, by file name), {identity: [photos]}, or photos with
    ``identities``. Photos without a face are left out (``skipped``)."""
    if isinstance(photos, (str, os.PathLike)):
      root = os.fspath(photos)
      photos = faces_lib.list_images(root)
      identities = [os.path.splitext(os.path.relpath(p, root).split(os.sep)[0])[0]
                    for p in photos]
    elif isinstance(photos, dict):
      identities = [k for k, v in photos.items() for _ in _as_list(v)]
      photos = [x for v in photos.values() for x in _as_list(v)]
    photos = _as_list(photos)
    if identities is None or len(identities) != len(photos):
      raise ValueError(f"gallery: {len(photos)} photos need as many identities, got "
                       f"{None if identities is None else len(identities)}")
    found = self._find(photos)
    kept = [f for f in found if f.face is not None]
    if not kept:
      raise ValueError("gallery: no face found in any photo")
    # only U: the gallery is embedded under each probe's FDM when it is searched
    rec = self.recognizer
    u = self._chunked(lambda c: {"u": rec.embedder.features(rec.variables, c)},
                      np.stack([f.face for f in kept]), "gallery")["u"]
    return Gallery(u, [str(identities[f.index]) for f in kept], [f.path for f in kept],
                   [(f.path, f.note) for f in found if f.face is None])

  def identify(self, probes, gallery, k: int = 5, occlusion: str = "auto") -> list[list[Match]]:
    """The best ``k`` gallery faces of every probe photo (one list per probe that has a face,
    best first), the gallery searched under each probe's FDM. ``gallery``: a ``Gallery``, a
    store (``open_store`` or its folder: U computed by this run's network is required), or
    anything ``gallery()`` takes."""
    if k < 1:
      raise ValueError(f"k={k}: must be >= 1")
    g, ids, items = self._searchable(gallery)
    found = self._find(_as_list(probes))
    for f in found:
      if f.face is None:
        logging.warning("probe %s left out: %s", f.path, f.note)
    found = [f for f in found if f.face is not None]
    if not found:
      raise ValueError("identify: no face found in any probe")
    p = self.analyse(np.stack([f.face for f in found]), occlusion, "probes")
    rec = self.recognizer
    k = min(k, g.num_faces)
    searcher = search.Searcher(rec.net, rec.u_shape, self.config.eval.batch_size, k=k)
    scores, index = search.identify(searcher, rec.host, rec.host_table, p["embeddings"],
                                    p["flags"], g, rec.host_clean)
    return [[Match(f.path, r + 1, ids[index[i, r]], items[index[i, r]], float(scores[i, r]),
                   block_names(p["flags"][i]))
             for r in range(k) if np.isfinite(scores[i, r])]  # fewer searchable faces than k
            for i, f in enumerate(found)]

  def _searchable(self, gallery):
    """(searchable gallery, identities, items) of what ``identify`` was given."""
    if isinstance(gallery, (str, os.PathLike)) and store_lib.is_store(os.fspath(gallery)):
      gallery = store_lib.Store(os.fspath(gallery))
    if isinstance(gallery, store_lib.Store):
      self._check_store(gallery)
      paths = [q for i in range(gallery.num_shards) for q in gallery.paths(i)]
      return gallery, [q.split(os.sep)[0] for q in paths], paths
    if not isinstance(gallery, Gallery):
      gallery = self.gallery(gallery)
    return (search.ArrayGallery(gallery.u, np.arange(len(gallery.u))), gallery.identities,
            gallery.items)

  def _check_store(self, st) -> None:
    rec = self.recognizer
    if st.missing():
      raise ValueError(f"the gallery store {st.path} is incomplete (shards {st.missing()[:5]} "
                       "missing): run python -m pdsn_jax.cli.gallery again to finish it")
    try:
      st.check_trunk(f"the {rec.spec.stage} checkpoint of the run", store_lib.fingerprint(
          builders.feature_variables(rec.net, rec.host)))
    except store_lib.TrunkMismatch as e:
      raise store_lib.TrunkMismatch(f"{e} (python -m pdsn_jax.cli.gallery --workdir=... "
                                    f"--stage={rec.spec.stage}, for model={rec.spec.name!r})"
                                    ) from None


_EMBEDDING_FIELDS = ("embeddings", "masks", "blocks", "paths", "notes", "skipped_paths",
                     "skipped_reasons", "model")


def save_embeddings(e: Embeddings, path: str) -> str:
  """``embeddings.npz`` (the embed command's file; fields in docs/api.md), written whole or
  not at all."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with files.atomic_path(path) as tmp, open(tmp, "wb") as fh:
    np.savez_compressed(
        fh, embeddings=e.embeddings, masks=e.masks, blocks=e.blocks,
        paths=np.asarray(e.sources, dtype=str), notes=np.asarray(e.notes, dtype=str),
        skipped_paths=np.asarray([s for s, _ in e.skipped], dtype=str),
        skipped_reasons=np.asarray([r for _, r in e.skipped], dtype=str),
        model=np.asarray(e.model))
  return path


def load_embeddings(path: str) -> Embeddings:
  """An ``embeddings.npz`` of the embed command (or ``save_embeddings``) back as
  ``Embeddings`` (``faces`` None: the file keeps no pixels)."""
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in _EMBEDDING_FIELDS if k not in z.files]
      if missing:
        raise ValueError(f"{path}: not an embeddings file of pdsn_jax.cli.embed (no {missing})")
      d = {k: z[k] for k in _EMBEDDING_FIELDS}
  except (OSError, EOFError) as e:
    raise files.DamagedFile(f"{path}: cannot be read ({e}); embed the photos again") from None
  return Embeddings(d["embeddings"], d["masks"], d["blocks"], None, d["paths"].tolist(),
                    d["notes"].tolist(), list(zip(d["skipped_paths"].tolist(),
                                                  d["skipped_reasons"].tolist())),
                    str(d["model"]))


RANK_FIELDS = ("probe", "rank", "identity", "gallery_image", "score", "probe_blocks")


def save_ranks(matches: list, path: str) -> str:
  """``ranks.csv`` (the identify command's file): one row per probe and rank, written whole or
  not at all."""
  text = io.StringIO()
  w = csv.writer(text)
  w.writerow(RANK_FIELDS)
  for m in (m for probe in matches for m in probe):
    w.writerow([m.probe, m.rank, m.identity, m.gallery_item, m.score, m.probe_blocks])
  return files.atomic_write(path, text.getvalue())


def load_ranks(path: str) -> list[list[Match]]:
  """A ``ranks.csv`` back as ``identify`` returned it: per probe, its matches best first."""
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f))
  if rows and set(RANK_FIELDS) - set(rows[0]):
    raise ValueError(f"{path}: not a ranks file of pdsn_jax.cli.identify (columns {list(rows[0])}, "
                     f"expected {list(RANK_FIELDS)})")
  out: dict[str, list] = {}
  for line, r in enumerate(rows, 2):
    try:
      out.setdefault(r["probe"], []).append(Match(r["probe"], int(r["rank"]), r["identity"],
                                                  r["gallery_image"], float(r["score"]),
                                                  r["probe_blocks"]))
    except ValueError as e:
      raise ValueError(f"{path}:{line}: {e}") from None
  return [sorted(v, key=lambda m: m.rank) for v in out.values()]


def load_results(path: str) -> dict:
  """``results.json`` of a run or of an evaluation (``path``: the file, the run folder, or
  ``RUN/evaluations/NAME``) as a dict (fields in docs/api.md)."""
  if os.path.isdir(path):
    path = workdir_lib.results_files(path)[1]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: run the 'evaluate' stage (or "
                            "python -m pdsn_jax.cli.evaluate) first")
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise files.DamagedFile(f"{path}: not JSON ({e}); run the evaluation again") from None


def _as_list(images) -> list:
  """One image or a sequence of them, as a list (a 4-D array: its rows)."""
  if isinstance(images, np.ndarray):
    return list(images) if images.ndim == 4 else [images]
  if isinstance(images, (str, os.PathLike, Faces)) or not hasattr(images, "__iter__"):
    return [images]
  if hasattr(images, "mode") and hasattr(images, "size"):  # a PIL image
    return [images]
  return list(images)
