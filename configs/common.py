"""Pieces shared by the config files (not a config itself)."""

import ml_collections


def training(**overrides) -> ml_collections.ConfigDict:
  """A training stage's section: batch, budget, optimizer, schedule, logging, checkpoints.
  Keyword arguments override the defaults or add the stage's own fields."""
  c = ml_collections.ConfigDict(dict(
      batch_size=32,  # global, over all devices
      num_epochs=1.0,
      num_steps=-1,  # > 0 overrides num_epochs
      optimizer="sgd",  # "sgd" (momentum, L2 decay) or "adam" (AdamW, decoupled decay)
      learning_rate=0.1,
      momentum=0.9,  # sgd
      nesterov=False,  # sgd
      weight_decay=5e-4,
      warmup_steps=0,  # linear warm-up, then the schedule
      schedule="cosine",  # "cosine", "step", "constant"
      step_boundaries=(0.5, 0.75),  # fractions of the run, for schedule="step"
      step_decay=0.1,
      log_every=10,
      checkpoint_every=25,
      keep_checkpoints=2))
  c.update(overrides)
  return c
