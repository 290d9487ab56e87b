"""Exports a run's inference as serialized ``jax.export`` functions, usable without this code.

  python -m pdsn_jax.cli.export --workdir=RUN [--model=NAME]

writes ``RUN/export/``:
  embed.jaxexport      (faces uint8 (b, H, W, 3), fdm float32 (b, h, w, c)) -> L2-normalised
                       embeddings float32 (b, E): F(fdm * U(faces)); all-ones fdm = plain
  occlusion.jaxexport  faces uint8 (b, H, W, 3) -> occlusion masks bool (b, H, W) (with a
                       detector stage)
  dictionary.npy       the FDM items (9, h, w, c) uint8, to compose a face's fdm (AND of the
                       items of its occluded blocks)
  meta.json            shapes, the model, the blocks, the decision thresholds, and the size
                       and sha256 of every file above
The batch dimension b is symbolic. Load with only jax and numpy, checking the checksum:

  meta = json.load(open("export/meta.json"))
  blob = open("export/embed.jaxexport", "rb").read()
  assert hashlib.sha256(blob).hexdigest() == meta["files"]["embed"]["sha256"], "damaged"
  emb = jax.export.deserialize(bytearray(blob)).call(faces, fdm)

or ``pdsn_jax.cli.export.load("export", "embed")``, which checks it and names a damaged file.
"""

import io
import logging
import os
import sys

from absl import flags

from pdsn_jax.run import files
from pdsn_jax.run import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A run folder of python -m pdsn_jax.main.")
_MODEL = flags.DEFINE_string("model", "", "One of the run's eval.models (default: the last).")


def export(workdir: str, model: str = "") -> dict:
  """Writes the exported functions of ``workdir``'s ``model``; returns the paths."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders, inference  # pylint: disable=g-import-not-at-top
  from pdsn_jax import recognizer
  from pdsn_jax.data import occlusion  # pylint: disable=g-import-not-at-top
  from pdsn_jax.models.layers import l2_normalize  # pylint: disable=g-import-not-at-top

  rec = recognizer.Recognizer(workdir, model)
  config, net = rec.config, rec.net
  h, w = tuple(config.data.image_size)
  variables = jax.device_get(rec.host)
  clean = None if rec.host_clean is None else jax.device_get(rec.host_clean)

  def embed(faces, fdm_masks):
    u = net.apply(variables, builders.normalize(faces), method="features")
    e = net.apply(variables, u * fdm_masks, method="head")
    if clean is not None:  # faces with nothing discarded: the trunk's own F
      plain = net.apply(clean, u, method="head")
      e = jnp.where(jnp.all(fdm_masks > 0, axis=(1, 2, 3))[:, None], plain, e)
    return l2_normalize(e)

  (b,) = jax.export.symbolic_shape("b")
  faces = jax.ShapeDtypeStruct((b, h, w, 3), jnp.uint8)
  out_dir = workdir_lib.export_dir(workdir)
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  exp = jax.export.export(jax.jit(embed))(faces, jax.ShapeDtypeStruct((b, *rec.u_shape),
                                                                      jnp.float32))
  paths["embed"] = files.atomic_write(os.path.join(out_dir, "embed.jaxexport"),
                                      bytes(exp.serialize()))
  if rec.detector_variables is not None:
    det, cfg = builders.detector(config, False), config.detector
    dvars = jax.device_get(rec.detector_variables)

    def occluded(faces):
      logits = inference.detector_logits(det, dvars, faces, cfg.input_scale)
      return jax.nn.sigmoid(logits) >= cfg.threshold

    exp = jax.export.export(jax.jit(occluded))(faces)
    paths["occlusion"] = files.atomic_write(os.path.join(out_dir, "occlusion.jaxexport"),
                                            bytes(exp.serialize()))
  with files.atomic_path(os.path.join(out_dir, "dictionary.npy")) as tmp:
    np.save(tmp, rec.host_table.astype(np.uint8))
  paths["dictionary"] = os.path.join(out_dir, "dictionary.npy")
  meta = {"model": rec.spec.name, "image_size": [h, w], "u_shape": list(rec.u_shape),
          "alignment": config.data.alignment, "blocks": list(occlusion.CENTRAL_BLOCKS),
          "grid": occlusion.GRID, "min_overlap": config.occlusion.min_overlap,
          "overlap": config.occlusion.overlap, "thresholds": rec.thresholds,
          "files": {k: {"file": os.path.basename(v), **files.describe(v)}
                    for k, v in paths.items()}}
  files.write_json(os.path.join(out_dir, "meta.json"), meta)
  return paths


def load(export_dir: str, name: str = "embed"):
  """The exported function ``name`` ("embed", "occlusion"), or the dictionary items
  ("dictionary"), after checking its size and sha256 against ``meta.json``;
  ``files.DamagedFile`` naming the file otherwise."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  fix = f"export the run again (python -m pdsn_jax.cli.export) into {export_dir}"
  meta = files.read_json(os.path.join(export_dir, "meta.json"), "the export's metadata", fix)
  entry = meta.get("files", {}).get(name)
  if not isinstance(entry, dict):
    raise files.DamagedFile(f"{os.path.join(export_dir, 'meta.json')} lists no checksummed "
                            f"'{name}' (files: {list(meta.get('files', {}))}); {fix}")
  path = os.path.join(export_dir, entry["file"])
  blob = files.read_verified(path, entry, fix)
  if name == "dictionary":
    return np.load(io.BytesIO(blob), allow_pickle=False)
  return jax.export.deserialize(bytearray(blob))


def main(argv):
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)
  for name, path in export(_WORKDIR.value, _MODEL.value).items():
    logging.info("%s: %s (%d bytes)", name, path, os.path.getsize(path))


def cli():
  """``pdsn-export``: the console script of ``pip install -e .``."""
  from pdsn_jax.cli import runner as cli_lib  # pylint: disable=g-import-not-at-top
  flags.mark_flags_as_required(["workdir"])
  cli_lib.run(main, sys.modules[__name__])


if __name__ == "__main__":
  cli()
