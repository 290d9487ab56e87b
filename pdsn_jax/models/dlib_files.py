"""Where the files of ``pip install face_recognition_models`` are (without importing it:
its __init__ needs setuptools' pkg_resources)."""

import importlib.util
import os

MODEL = "dlib_face_recognition_resnet_model_v1.dat"


def path(name: str = MODEL) -> str:
  """Absolute path of ``name`` in face_recognition_models, or FileNotFoundError saying how to get it."""
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"{name}: the face_recognition_models package is not installed "
                            "(pip install face_recognition_models)")
  full = os.path.join(list(spec.submodule_search_locations)[0], "models", name)
  if not os.path.isfile(full):
    raise FileNotFoundError(f"{full} not found in face_recognition_models")
  return full
