"""The Plan contract of ``loop.run_stage`` (issue 23): a stage that breaks it fails saying what
to add."""

import dataclasses

import pytest

from configs import tiny
from pdsn_jax import loop, recognition


def _run(tmp_path, change):
  config = tiny.get_config()
  config.trunk.num_steps = 1
  return loop.run_stage(config, str(tmp_path), "toy", config.trunk,
                        lambda ctx: change(recognition.plan(ctx)), kind="trunk")


def test_an_unregistered_stream_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"Plan.stream='toy' is not registered; add it to "
                                       r"training.STREAMS"):
    _run(tmp_path, lambda plan: dataclasses.replace(plan, stream="toy"))


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
