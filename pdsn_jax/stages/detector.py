"""The occlusion detector stage: a segmentation network trained on synthetically occluded faces.

Faces from the configured source get occluders pasted on the fly (every
category, natural placements and random size/position ones, a share of clean
faces); the synthesizer's pixel masks are the labels. Per-pixel sigmoid
cross-entropy, data-parallel step, checkpoints and resume like every stage.
Evaluation on held-out faces: mean IU (over the two classes, from the confusion
counts of the whole set, as for FCN), pixel accuracy and block-assignment
accuracy (the 9 generator blocks flagged from the predicted vs the true mask),
for the occluders seen in training and, when ``occlusion.occluder_dir`` is set,
for held-out occluder files never seen in training.

With ``detector.ar_share`` > 0, that share of the training records are AR's real photos of the
development subjects (``detector.ar_subjects``; never a test subject), aligned like the
evaluation's, labelled by their ground-truth masks (``data/ar_photos.py``), as the paper trains
its FCN on synthetic occlusions plus 26 AR subjects outside its test subjects.
"""

import functools
import logging
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from PIL import Image

from pdsn_jax.method import builders, inference
from pdsn_jax.train import loop, parallel, training
from pdsn_jax import visualize
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.data import ar_photos, occlusion, pipeline, placement, sources
from pdsn_jax.evaluation.segmentation import segmentation_metrics



AUGMENTS = ("scarf", "eyeglasses", "cloth", "highlights", "grey", "lowres", "blur", "light",
            "border", "knit")


class DetectorOcclusion:
  """grain transform: pastes 0-2 occluders (natural or random placement). ``augment`` adds:
  "scarf", masks stretched like a scarf from the nose to below the chin ("cloth": half of them
  a drawn woven or striped cloth instead; "knit": half of those knitted wool,
  ``placement.knitted``); "eyeglasses", clear eyeglass frames on some faces,
  left *unlabelled* (they hide nothing the recognizer needs); "highlights", bright specular
  spots on some occluders (labelled occluded: glossy lenses reflect the light). Adds ``mask``
  (uint8)."""

  def __init__(self, library: occlusion.OccluderLibrary, clean_prob: float = 0.15,
               augment=()):
    self.library, self.clean_prob, self.augment = library, clean_prob, _checked(augment)
    # the natural placements of the categories the library has (a real-data config trains
    # the detector on its training categories only)
    have = set(library.available())
    self.conditions = tuple(c for c in placement.CONDITIONS if c == "blocks" or c in have)
    if "scarf" in self.augment and "mask" in have:
      self.conditions += ("scarf",)

  def __call__(self, rec: dict, rng: np.random.Generator) -> dict:
    image = rec["image"]
    mask = np.zeros(image.shape[:2], bool)
    if "eyeglasses" in self.augment and rng.uniform() < 0.2:
      image = placement.eyeglasses(image, rng, self.library.face_template)
    if rng.uniform() >= self.clean_prob:
      for _ in range(1 + int(rng.uniform() < 0.25)):
        if rng.uniform() < 0.5:
          cond = self.conditions[rng.integers(len(self.conditions))]
          if cond == "scarf":
            cloth = "cloth" in self.augment and rng.uniform() < 0.5
            image, m = placement.scarf(image, rng, self.library, cloth, "knit" in self.augment)
          else:
            image, m = placement.occlude(image, rng, self.library, cond)
        else:
          image, m = occlusion.random_occlusion(image, rng, self.library, area=(0.03, 0.35))
        if "highlights" in self.augment and rng.uniform() < 0.3:
          image = _highlights(image, m, rng)
        mask |= m
    rec["image"], rec["mask"] = image, mask.astype(np.uint8)
    return rec


class ArPhotos:
  """grain transform: with probability ``share`` the record's image and mask become one of
  ``photos`` (an ``ar_photos.ArReal``: every kind, clean ones with an empty mask), drawn
  uniformly and mirrored with probability 0.5; else the record is left as it is."""

  def __init__(self, photos: ar_photos.ArReal, share: float):
    self.images, self.masks, self.share = photos.images, photos.masks.astype(np.uint8), share

  def __call__(self, rec: dict, rng: np.random.Generator) -> dict:
    if rng.uniform() < self.share:
      k = rng.integers(len(self.images))
      image, mask = self.images[k], self.masks[k]
      if rng.uniform() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
      rec["image"], rec["mask"] = np.ascontiguousarray(image), np.ascontiguousarray(mask)
    return rec


def ar_training_subjects(cfg, development: tuple) -> tuple:
  """The development subjects a detector section ``cfg`` trains on: ``ar_subjects``, or all of
  ``development`` when it names none (no subject at all when ``ar_share`` is 0)."""
  if not cfg.get("ar_share", 0.0):
    return ()
  return tuple(cfg.ar_subjects) or tuple(development)


def ar_training_photos(config) -> ar_photos.ArReal | None:
  """AR's development photos the detector trains on (``detector.ar_subjects``, all of them when
  empty), aligned like the evaluation's; None when ``detector.ar_share`` is 0."""
  cfg = config.detector
  if not cfg.ar_share:
    return None
  photos = ar_photos.load(cfg.ar_root, tuple(config.data.image_size), config.data.alignment,
                          cfg.ar_alignment,
                          subjects=ar_training_subjects(cfg, ar_photos.DEVELOPMENT_SUBJECTS))
  logging.info("[detector] %d AR development photos of %d subjects (%d occluded) join %.0f%% of "
               "the training records", len(photos.images), len(np.unique(photos.subjects)),
               int(np.isin(photos.kinds, ar_photos.OCCLUDED_KINDS).sum()), 100 * cfg.ar_share)
  return photos


def _checked(augment) -> tuple:
  bad = [a for a in augment if a not in AUGMENTS]
  if bad:
    raise ValueError(f"detector.augment: unknown part(s) {bad}; allowed {AUGMENTS}")
  return tuple(augment)


def _highlights(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """1-3 bright soft spots inside ``mask`` (specular reflections)."""
  ys, xs = np.nonzero(mask)
  if not len(ys):
    return image
  h, w = mask.shape
  yy, xx = np.mgrid[0:h, 0:w] + 0.5
  out = image.astype(np.float32)
  for _ in range(rng.integers(1, 4)):
    k = rng.integers(len(ys))
    r = rng.uniform(1.5, 5.0)
    spot = np.exp(-((yy - ys[k]) ** 2 + (xx - xs[k]) ** 2) / (2 * r * r)) * mask
    out = out + spot[..., None] * (rng.uniform(200, 255) - out)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class Appearance:
  """grain transform: what users' photos look like and the training faces do not, on the
  (occluded) image only, each part of ``augment`` drawn independently: "grey" (luminance in 3
  channels), "lowres" (down to 20-60 px wide and back up), "blur", "light" (contrast,
  brightness, gamma and a side-light ramp), "border" (a tight crop whose sides are the edge
  pixels repeated, as an aligned tight crop has)."""

  def __init__(self, augment=()):
    self.augment = _checked(augment)

  def __call__(self, rec: dict, rng: np.random.Generator) -> dict:
    rec["image"] = appearance(rec["image"], rng, self.augment)
    return rec


def appearance(image: np.ndarray, rng: np.random.Generator, augment) -> np.ndarray:
  """One draw of ``Appearance`` on a uint8 (H, W, 3) image."""
  from PIL import ImageFilter  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  x = image
  if "border" in augment and rng.uniform() < 0.3:
    l, r = int(rng.uniform(0, 0.15) * w), int(rng.uniform(0, 0.15) * w)
    t = int(rng.uniform(0, 0.1) * h)
    x = np.pad(x[t:, l:w - r], ((t, 0), (l, r), (0, 0)), mode="edge")
  if "lowres" in augment and rng.uniform() < 0.5:
    small = int(rng.uniform(20, 60))
    size = (small, max(8, int(round(small * h / w))))
    x = np.asarray(Image.fromarray(x).resize(size, Image.BILINEAR).resize((w, h),
                                                                           Image.BILINEAR))
  if "blur" in augment and rng.uniform() < 0.2:
    x = np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))))
  x = x.astype(np.float32)
  if "grey" in augment and rng.uniform() < 0.35:
    x = np.repeat((x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None], 3, -1)
  if "light" in augment and rng.uniform() < 0.6:
    x = 255 * (x / 255) ** rng.uniform(0.6, 1.6)
    x = (x - 128) * rng.uniform(0.6, 1.4) + 128 + rng.uniform(-40, 40)
    if rng.uniform() < 0.4:  # light from one side
      ramp = np.linspace(*(rng.uniform(0.5, 1.0), rng.uniform(1.0, 1.5))[::rng.choice([1, -1])], w)
      x = x * ramp[None, :, None]
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def train_step(state: training.TrainState, batch: dict, rng: jax.Array, *, model, tx, schedule,
               scale: float):
  """Per-device step: mean per-pixel sigmoid cross-entropy; grads and BN statistics pmean-ed."""
  del rng
  labels = batch["mask"].astype(jnp.float32)

  def loss_fn(params):
    logits, updates = inference.detector_logits(
        model, {"params": params, "batch_stats": state.batch_stats}, batch["image"], scale, True,
        ["batch_stats"])
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean(), (updates, logits)

  (loss, (updates, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, parallel.AXIS)
  upd, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, upd)
  pred = logits > 0
  inter = jnp.sum(pred & (labels > 0))
  union = jnp.sum(pred | (labels > 0))
  out = jax.lax.pmean({"loss": loss, "pixel_accuracy": jnp.mean(pred == (labels > 0))},
                      parallel.AXIS)
  out["iou_occluded"] = jax.lax.psum(inter, parallel.AXIS) / jnp.maximum(
      jax.lax.psum(union, parallel.AXIS), 1)
  out["learning_rate"] = schedule(state.step)
  out["param_norm"] = optax.tree.norm(params)
  return state.replace(step=state.step + 1, params=params, batch_stats=updates["batch_stats"],
                       opt_state=opt_state), out


def init_fn(config, model, tx):
  def init() -> training.TrainState:
    k, k_run = jax.random.split(training.init_key(config, STAGE.stream))
    h, w = config.data.image_size
    s = config.detector.input_scale
    v = model.init(k, jnp.zeros((1, int(round(h * s)), int(round(w * s)), 3)))
    return training.TrainState(step=jnp.zeros((), jnp.int32), params=v["params"],
                               batch_stats=v["batch_stats"], opt_state=tx.init(v["params"]),
                               rng=jax.random.key_data(k_run))
  return init


def heldout_sets(config) -> dict:
  """name -> (images, true masks) of held-out faces: clean, with the training occluders, and,
  with an occluder folder, with the *select* split's files (where the detector's settings are
  chosen; never the test files) and those masks stretched like scarves, and with drawn
  knitted scarves; each occluded set also as grey, low-resolution photos under changed light
  ("..., grey low-res", drawn like ``Appearance``) (seeded)."""
  heldout = sources.build_eval(config.data, 0)[0]
  o, n = config.occlusion, min(config.detector.eval_images, len(heldout))
  faces = [heldout[int(i)]["image"] for i in np.linspace(0, len(heldout) - 1, n).astype(int)]
  libs = {"seen occluders": builders.training_occluders(config)}
  if o.occluder_dir:
    libs["select occluder files"] = builders.occluders(config, "select", procedural=False)
  seed, none = config.eval.seed, np.zeros((n, *np.shape(faces[0])[:2]), bool)
  out = {"clean faces": (np.stack(faces), none),
         "clean faces, grey low-res": (np.stack([_hard(f, seed, 59, i)
                                                 for i, f in enumerate(faces)]), none)}

  def add(name: str, drawn: list, grey_salt: int) -> None:
    """``drawn`` (image, mask) pairs as set ``name`` and its grey low-res copy."""
    out[name] = (np.stack([d[0] for d in drawn]), np.stack([d[1] for d in drawn]) > 0)
    out[f"{name}, grey low-res"] = (np.stack([_hard(d[0], seed, grey_salt, i)
                                              for i, d in enumerate(drawn)]), out[name][1])

  for k, (name, lib) in enumerate(libs.items()):
    t = DetectorOcclusion(lib, clean_prob=0.1)
    recs = [t({"image": f}, np.random.default_rng([seed, 50 + k, i])) for i, f in enumerate(faces)]
    add(name, [(r["image"], r["mask"]) for r in recs], 60 + k)
  lib = libs.get("select occluder files")
  if lib is not None and "mask" in lib.available():
    # the select masks stretched like a scarf (nose to below the chin): the first rule's two
    # select sets had no scarf, and scarves are where AR's real photos were missed
    add("select occluder files as scarves",
        [placement.scarf(f, np.random.default_rng([seed, 52, i]), lib)
         for i, f in enumerate(faces)], 62)
  # knitted wool stretched the same way (drawn, no file; seeds no training draw uses): a thick
  # winter scarf is dark and low in contrast, and no select file looks like one
  rngs = [np.random.default_rng([seed, 53, i]) for i in range(n)]
  add("knitted scarves", [placement.scarf(f, r, libs["seen occluders"], piece=placement.knitted(r))
                          for f, r in zip(faces, rngs)], 63)
  return out


def _hard(image: np.ndarray, *seed) -> np.ndarray:
  """A face as a grey, low-resolution photo under changed light (held-out sets)."""
  grey = np.asarray(Image.fromarray(image).convert("L").convert("RGB"))
  return appearance(grey, np.random.default_rng(list(seed)), ("lowres", "light"))


def evaluate(config, variables: dict, mesh=None, sets: dict | None = None) -> dict:
  """Segmentation metrics per held-out set (``sets`` from ``heldout_sets``, built if None)."""
  predict = inference.occlusion_predictor(config, variables, mesh)
  o = config.occlusion
  out = {}
  for name, (images, masks) in (sets or heldout_sets(config)).items():
    pred = predict(images)
    out[name] = {**segmentation_metrics(pred, masks, o.min_overlap, o.overlap),
                 "predicted_area": float(pred.mean())}  # on "clean faces": false alarms
  return out


def plan(ctx: loop.Context) -> loop.Plan:
  config, cfg = ctx.config, ctx.cfg
  schedule = training.learning_rate_schedule(cfg, ctx.steps)
  tx = training.optimizer(cfg, ctx.steps)
  flip = (pipeline.RandomFlip(),) if config.data.flip else ()
  photos = ar_training_photos(config)
  # added only when used, so that a detector without AR photos draws what it drew before
  ar = (ArPhotos(photos, cfg.ar_share),) if photos is not None else ()

  def evaluate_hook(state, step, writer) -> dict:
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    t = time.time()
    sets = heldout_sets(config)  # built once: metrics and the contact sheet
    results = evaluate(config, variables, ctx.mesh, sets)
    for name, r in results.items():
      writer.write(step, {f"{name.replace(' ', '_')}/{k}": v for k, v in r.items()},
                   prefix="eval")
      logging.info("[detector] held-out faces, %s: mean IU %.4f, pixel accuracy %.4f, block "
                   "assignment accuracy %.4f, predicted occluded area %.2f%% (%.1fs)", name,
                   r["mean_iu"], r["pixel_accuracy"], r["block_accuracy"],
                   100 * r["predicted_area"], time.time() - t)
    if jax.process_index() == 0:
      images, masks = sets["seen occluders"]
      pred = inference.occlusion_predictor(config, variables, ctx.mesh)(images[:8])
      visualize.detection_sheet(images[:8], pred, workdir_lib.stage_file(
          ctx.workdir, ctx.name, "detections.png"), true_masks=masks[:8],
                                min_overlap=config.occlusion.min_overlap,
                                overlap=config.occlusion.overlap)
    return results

  return loop.Plan(
      init=init_fn(config, builders.detector(config, False), tx),
      step=functools.partial(train_step, model=builders.detector(config, True), tx=tx,
                             schedule=schedule, scale=cfg.input_scale),
      transforms=flip + (DetectorOcclusion(builders.training_occluders(config), cfg.clean_prob,
                                           cfg.augment),) + ar + (Appearance(cfg.augment),),
      evaluate=evaluate_hook, summary=lambda results: {"heldout": results["final"]},
      description=f", widths {tuple(cfg.widths)} at {cfg.input_scale:g}x input")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the detector; writes ``<workdir>/detector/summary.json``."""
  return loop.run_stage(config, workdir, STAGE, plan)


STAGE = stage_lib.Stage(
    name=workdir_lib.DETECTOR, run=run, section="detector",
    stream=stage_lib.Stream(data_offset=4, init_fold=3),
    depends_on=stage_lib.BASE + ("detector", "model.dtype") + stage_lib.OCCLUDERS,
    # the pixel threshold is applied at inference (the evaluation, the photo commands), so
    # choosing it never retrains
    excluded=(stage_lib.TEST_GLOBS, "detector.threshold"))
