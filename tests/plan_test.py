"""The Plan contract of ``loop.run_stage`` (issue 23): a stage that breaks it fails saying what
to add."""

import dataclasses

import pytest

from configs import tiny
from pdsn_jax.train import loop
from pdsn_jax.method import recognition
from pdsn_jax import stages


def _run(tmp_path, change, stage=None):
  config = tiny.get_config()
  config.trunk.num_steps = 1
  return loop.run_stage(config, str(tmp_path), stage or stages.trunk.STAGE,
                        lambda ctx: change(recognition.plan(ctx)), name="toy")


@pytest.mark.parametrize("missing", ["stream", "section"])
def test_a_training_stage_without_stream_or_section_is_named(tmp_path, missing):
  stage = dataclasses.replace(stages.trunk.STAGE, **{missing: None if missing == "stream" else ""})
  with pytest.raises(ValueError, match=r"stage 'trunk' trains, so its Stage needs a stream and a "
                                       r"config section"):
    _run(tmp_path, lambda plan: plan, stage)


@pytest.mark.slow
def test_metrics_without_loss_are_named(tmp_path):
  def drop_loss(plan):
    step = plan.step

    def without_loss(state, batch, rng):
      state, metrics = step(state, batch, rng)
      return state, {k: v for k, v in metrics.items() if k != "loss"}
    return dataclasses.replace(plan, step=without_loss)

  with pytest.raises(ValueError, match=r"stage 'toy': its Plan.step returned metrics .* without "
                                       r"\['loss'\]; return them from the step"):
    _run(tmp_path, drop_loss)
