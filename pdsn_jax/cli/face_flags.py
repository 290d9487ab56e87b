"""The face finder's flags, one definition for every command that reads photos (embed, verify,
identify: ``commands.py``; gallery), each of which adopts them as its own (``--help``)."""

from absl import flags

from pdsn_jax.faces.finding import FINDERS, WEIGHTS

FINDER = flags.DEFINE_enum(
    "face_finder", "blazeface", list(FINDERS),
    "'blazeface': MediaPipe's BlazeFace in JAX (finds masked faces; '_full' for small, far "
    "faces), 'hog' / 'cnn': dlib's; 'none': the photos are already aligned crops (centre-cropped "
    "to the face size)")
flags.DEFINE_alias("face_detector", "face_finder")  # its name before 0.4
FINDER_WEIGHTS = flags.DEFINE_enum(
    "face_finder_weights", "run", list(WEIGHTS),
    "BlazeFace: 'run': the run's tuned short-range weights (its face_finder stage) when it has "
    "them, else the shipped ones; 'shipped': always the shipped ones.")
