"""Checks config values up front, naming the key and the allowed values."""

import ml_collections

from pdsn_jax.method import builders, generator_statistics, pdsn_probe, recognition
from pdsn_jax import stages
from pdsn_jax.train import training
from pdsn_jax.run import stage as stage_lib
from pdsn_jax.data import alignment, ar_photos, feature_bank, occlusion, placement, sources
from pdsn_jax.evaluation import evaluators
from pdsn_jax.gallery import search, store
from pdsn_jax.evaluation import sets as sets_lib
from pdsn_jax.models import trunks


def _choices() -> dict:
  """key -> allowed values, each from the module that acts on the key."""
  out = {
      "prng_impl": training.PRNG_IMPLS,
      "data.source": sources.SOURCES,
      "data.alignment": tuple(alignment.TEMPLATES),
      "model.kind": tuple(trunks.KINDS),
      "model.dtype": tuple(builders.DTYPES),
      "pdsn.loss": stages.pdsn.LOSSES,
      "pdsn.lambda_rule": pdsn_probe.LAMBDA_RULES,
      "pdsn.source": feature_bank.SOURCES,
      "pdsn.generator_statistics": generator_statistics.MODES,
      "dictionary.source": feature_bank.SOURCES,
      "bank.dtype": tuple(feature_bank.DTYPES),
      "occlusion.overlap": occlusion.OVERLAPS,
      "finetune.loss": recognition.LOSSES,
      # "classifier" is the trunk stage's freeze_backbone, not a fine-tuning choice
      "finetune.trainable": tuple(t for t in recognition.TRAINABLE if t != "classifier"),
      "eval.occlusion_source": sets_lib.OCCLUSION_SOURCES,
      "eval.gallery_dtype": store.DTYPES,
      "eval.search_path": search.PATHS,
      "eval.occluder_split": ("select", "test"),
  }
  return out


# Fields checked by name wherever they occur (batch sizes, learning rates, ...) are in
# _BY_NAME below; these are the one-off ones.
_POSITIVE = ("model.width", "model.embedding_dim", "eval.num_pairs", "cosface.scale",
             "dictionary.pairs_per_block", "eval.ar_gallery_images", "detector.input_scale",
             "detector.heldout_every", "detector.eval_images", "eval.gallery_shard_size",
             "pdsn.scale_batches", "pdsn.reuse", "face_finder.eval_images", "bank.variants",
             "bank.batch_size", "bank.shard_faces", "pdsn.mask_scale_init",
             "pdsn.statistics_pairs", "pdsn.sub_batches")
_NON_NEGATIVE = ("trunk.momentum", "trunk.warmup_steps", "model.dropout", "cosface.margin",
                 "data.num_workers", "eval.num_distractors", "pdsn.converge_pairs",
                 "eval.bottom_cache_gib", "model.forward_chunk", "pdsn.plateau_gain")


# sections a run made before they existed lacks (its config.json still loads): not checked
# when absent
OPTIONAL_SECTIONS = ("face_finder", "bank")


def _skip(config, dotted: str) -> bool:
  section = dotted.split(".")[0]
  return section in OPTIONAL_SECTIONS and section not in config


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


# Checked wherever they occur (found by walking the config, so a new stage's fields are
# covered without being listed): field name -> (test, what it must be).
_BY_NAME = {
    "learning_rate": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "log_every": (lambda v: v > 0, "> 0"),
    "checkpoint_every": (lambda v: v > 0, "> 0"),
    "keep_checkpoints": (lambda v: v > 0, "> 0"),
    "batch_size": (lambda v: v > 0, "> 0"),
}


def _walk(node, prefix=""):
  for key, value in node.items():
    path = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from _walk(value, path + ".")
    else:
      yield path, key, value


# choices checked wherever they occur: every training section's optimizer and schedule
_CHOICES_BY_NAME = {"schedule": training.SCHEDULES, "optimizer": training.OPTIMIZERS}


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad key and what it allows."""
  for path, key, value in _walk(config):
    if key in _BY_NAME and isinstance(value, (int, float)):
      ok, what = _BY_NAME[key]
      if not ok(value):
        raise ValueError(f"config.{path}={value!r} must be {what}")
    if key in _CHOICES_BY_NAME and value not in _CHOICES_BY_NAME[key]:
      raise ValueError(f"config.{path}={value!r} is not one of {_CHOICES_BY_NAME[key]}")
  for key, allowed in _choices().items():
    if _skip(config, key):
      continue
    value = _get(config, key)
    if value not in allowed:
      raise ValueError(f"config.{key}={value!r} is not one of {allowed}")
  trunks.get(config.model.kind).validate(config.model)  # the kind's own model.* fields
  for key in _POSITIVE:
    if not _skip(config, key) and not _get(config, key) > 0:
      raise ValueError(f"config.{key}={_get(config, key)!r} must be > 0")
  for key in _NON_NEGATIVE:
    if not _get(config, key) >= 0:
      raise ValueError(f"config.{key}={_get(config, key)!r} must be >= 0")
  if not 0 <= config.dictionary.tau < 1:
    raise ValueError(f"config.dictionary.tau={config.dictionary.tau!r} must be in [0, 1)")
  if not 0 <= config.model.dropout < 1:
    raise ValueError(f"config.model.dropout={config.model.dropout!r} must be in [0, 1)")
  if not 0 <= config.pdsn.ema_decay < 1:
    raise ValueError(f"config.pdsn.ema_decay={config.pdsn.ema_decay!r} must be in [0, 1) "
                     "(0: no running average)")
  if not 0 <= config.pdsn.plateau_decay < 1:
    raise ValueError(f"config.pdsn.plateau_decay={config.pdsn.plateau_decay!r} must be in [0, 1) "
                     "(0: no plateau rule)")
  if config.pdsn.plateau_decay > 0 and config.pdsn.converge_pairs <= 0:
    raise ValueError(f"config.pdsn.plateau_decay={config.pdsn.plateau_decay!r} lowers the rate "
                     "when the overlap rule's dictionary stops rising: set "
                     "config.pdsn.converge_pairs > 0")
  if config.pdsn.sub_batches > 0 and config.pdsn.batch_size % config.pdsn.sub_batches:
    raise ValueError(f"config.pdsn.sub_batches={config.pdsn.sub_batches!r} must divide "
                     f"config.pdsn.batch_size={config.pdsn.batch_size!r} (each update takes "
                     "batch_size / sub_batches faces)")
  if not 0 < config.pdsn.converge_overlap <= 1:
    raise ValueError(f"config.pdsn.converge_overlap={config.pdsn.converge_overlap!r} must be in "
                     "(0, 1]")
  for key in ("finetune.clean_prob", "detector.clean_prob", "detector.threshold",
              "dictionary.neighbour_prob", "finetune.clean_fdm_prob", "face_finder.grey_prob",
              "face_finder.lowres_prob", "face_finder.erased_occluder_prob",
              "face_finder.fallback_score"):
    if not _skip(config, key) and not 0 <= _get(config, key) <= 1:
      raise ValueError(f"config.{key}={_get(config, key)!r} must be in [0, 1]")
  bad = [c for c in config.finetune.conditions if c not in placement.CONDITIONS]
  if bad or not config.finetune.conditions:
    raise ValueError(f"config.finetune.conditions={tuple(config.finetune.conditions)!r}: allowed "
                     f"values {placement.CONDITIONS}")
  evaluators.plan(config)  # the protocols (each checks its own settings) and the models
  splits = config.occlusion.splits
  bad = sorted(set(splits) - {"train", "select", "test"})
  if bad:
    raise ValueError(f"config.occlusion.splits has {bad}: allowed keys train, select, test")
  for tau in config.eval.tau_sweep:
    if not 0 <= tau < 1:
      raise ValueError(f"config.eval.tau_sweep has {tau!r}; every tau must be in [0, 1)")
  size = tuple(config.data.image_size)
  if len(size) != 2 or min(size) < 16:
    raise ValueError(f"config.data.image_size={size!r} must be (height, width), each >= 16")
  stages.parse_stages(config.stages)
  networks = stage_lib.networks()
  for m in evaluators.parse_models(config.eval.models):
    if m.stage not in networks:  # a folder of this workdir, never a path to another run's
      raise ValueError(f"config.eval.models entry {m.name!r}={m.stage!r}: the stage must be "
                       f"one of this workdir's networks {networks}")
  stage_lib.parse(config.get("overwrite", ""), "config.overwrite")
  _check_detector_ar(config.detector)
  if not config.detector.input_scale <= 4:
    raise ValueError(f"config.detector.input_scale={config.detector.input_scale!r} must be "
                     "in (0, 4]: the detector sees the face at this scale")


def _check_detector_ar(d) -> None:
  """AR's photos in the detector's training: development subjects only (test subjects are the
  evaluation's), a share below 1 and a folder when the share is above 0."""
  share = d.get("ar_share", 0.0)  # a run made before these fields has none
  if not 0 <= share < 1:
    raise ValueError(f"config.detector.ar_share={share!r} must be in [0, 1)")
  bad = sorted(set(d.get("ar_subjects", ())) - set(ar_photos.DEVELOPMENT_SUBJECTS))
  if bad:
    raise ValueError(f"config.detector.ar_subjects has {bad}: only AR's development subjects "
                     f"{ar_photos.DEVELOPMENT_SUBJECTS[0]}-{ar_photos.DEVELOPMENT_SUBJECTS[-1]} "
                     "may train the detector (the test subjects are scored by the evaluation)")
  how = d.get("ar_alignment", "landmarks")
  if how not in ar_photos.ALIGNMENTS:
    raise ValueError(f"config.detector.ar_alignment={how!r} is not one of "
                     f"{ar_photos.ALIGNMENTS}")
  if share and not d.get("ar_root", ""):
    raise ValueError("config.detector.ar_share > 0 needs config.detector.ar_root: AR's "
                     "real-occlusion folder (labels.tsv; docs/data.md)")
