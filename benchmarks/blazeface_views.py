"""Can extra views of a photo make BlazeFace find low-resolution grey masked faces without
giving faces to non-faces? Training-side data only (the sets of ``blazeface_fallback.py``:
CelebA held-out faces with the *select* occluder files, occluders alone, face-erased crops).

  python -m benchmarks.blazeface_views [--celeba=../shared/data/celeba] \\
      [--occluders=../shared/data/occluders]      # ~4 min on 2 cores

Table 1, found %: views tried in turn on the photos still without a face, each by the short-
and then the full-range model at their own thresholds: the photo, its mirror ("flip"), a centre
crop enlarged 1.4x or 2x ("zoom").
Table 2, found %: the per-anchor logits of the photo and its mirror averaged (anchor mirrored),
against the photo alone, with both models' thresholds moved by the same logit offset.

Outcome (2026-12-02): no view or threshold separates a grey masked face from a head whose face
was erased; reaching 98% of grey masked faces gives a face to most erased crops. Nothing here
became a default (issue 24's note).
"""


from absl import app, flags
import numpy as np

from benchmarks.blazeface_fallback import build_sets, define_set_flags


def mirror_index(name: str) -> np.ndarray:
  """For each anchor of model ``name``, the anchor at the mirrored position (same slot)."""
  from pdsn_jax.faces import blazeface  # pylint: disable=g-import-not-at-top
  out, base = [], 0
  for stride, per_cell in blazeface.MODELS[name][2]:
    n = blazeface.MODELS[name][1] // stride
    idx = np.arange(n * n * per_cell).reshape(n, n, per_cell)
    out.append(base + idx[:, ::-1, :].ravel())
    base += n * n * per_cell
  return np.concatenate(out)


def best_logits(model, images):
  """Per photo, the best anchor logit of the photo and of the mirror-averaged logits."""
  mirror = mirror_index(model.model)
  plain, averaged = [], []
  for start in range(0, len(images), model.batch):
    chunk = images[start:start + model.batch]
    x = np.zeros((model.batch, model.side, model.side, 3), np.float32)
    x[:len(chunk)] = np.stack([model._letterbox(np.asarray(im))[0] for im in chunk])  # pylint: disable=protected-access
    cls = np.asarray(model._run(model.params, x)[1])[:len(chunk), :, 0]  # pylint: disable=protected-access
    flipped = np.asarray(model._run(model.params, x[:, :, ::-1])[1])[:len(chunk), :, 0]  # pylint: disable=protected-access
    plain.append(cls.max(1))
    averaged.append(((cls + flipped[:, mirror]) / 2).max(1))
  return np.concatenate(plain), np.concatenate(averaged)


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  define_set_flags()


def main(argv):
  del argv
  args = flags.FLAGS
  from pdsn_jax.faces import blazeface  # pylint: disable=g-import-not-at-top
  sets, nonfaces, erased, _ = build_sets(args)
  data = {k: v[0] for k, v in sets.items() if k != "clean"}
  data.update({"occluders alone": nonfaces, "face-erased crops": erased})
  models = [blazeface.BlazeFace("short"), blazeface.BlazeFace("full")]

  def zoom(im, f):
    h, w = im.shape[:2]
    ch, cw = int(h / f), int(w / f)
    return im[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]

  views = {"photo": lambda x: x, "flip": lambda x: np.ascontiguousarray(x[:, ::-1]),
           "zoom 1.4": lambda x: zoom(x, 1.4), "zoom 2": lambda x: zoom(x, 2.0)}
  hit = {(s, v): np.any([[bool(d) for d in m.detect([fn(x) for x in ims])] for m in models], 0)
         for s, ims in data.items() for v, fn in views.items()}
  head = ["views"] + [f"{s} found %" for s in data]
  print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
  for combo in (("photo",), ("photo", "flip"), ("photo", "zoom 1.4"),
                ("photo", "flip", "zoom 1.4"), ("photo", "zoom 2"),
                ("photo", "flip", "zoom 1.4", "zoom 2")):
    row = [" + ".join(combo)]
    for s in data:
      row.append(f"{100 * np.any([hit[s, v] for v in combo], 0).mean():.2f}")
    print("| " + " | ".join(row) + " |", flush=True)

  logits = {s: [best_logits(m, ims) for m in models] for s, ims in data.items()}
  own = [np.log(m.threshold / (1 - m.threshold)) for m in models]
  head = ["scores", "threshold offset (logit)"] + [f"{s} found %" for s in data]
  print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
  for which, name in ((0, "photo"), (1, "photo + mirror averaged")):
    for d in (0.0, -0.5, -1.0, -1.5, -2.0):
      row = [name, f"{d:+.1f}"]
      for s in data:
        found = np.any([logits[s][k][which] >= own[k] + d for k in range(len(models))], 0)
        row.append(f"{100 * found.mean():.2f}")
      print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
