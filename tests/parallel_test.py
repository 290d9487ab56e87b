"""The data-parallel trunk step: 8 devices equal 1 device; no retracing across steps."""

import functools

import chex
import jax
import numpy as np
import pytest

from configs import tiny
from pdsn_jax.method import builders, recognition
from pdsn_jax.train import parallel, training


def _setup(config, num_classes=12):
  head = builders.classifier(config, num_classes)
  tx = training.sgd(config.trunk, 10)
  init = recognition.init_fn(config, builders.backbone(config, False), head, tx)
  step = functools.partial(recognition.train_step, backbone=builders.backbone(config, True),
                           head=head, tx=tx, schedule=training.learning_rate_schedule(config.trunk, 10))
  return init, step


def _batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 112, 96, 3), dtype=np.uint8),
          "label": rng.integers(0, 12, (n,), dtype=np.int32)}


@pytest.mark.slow
def test_eight_devices_equal_one_device():
  assert jax.device_count() == 8, "conftest must set 8 CPU devices"
  config = tiny.get_config()
  config.model.dropout = 0.0
  init, step = _setup(config)
  state0 = init()
  results = []
  for devices in (jax.devices(), jax.devices()[:1]):
    mesh = parallel.make_mesh(devices)
    fn = parallel.data_parallel(step, mesh, donate_state=False)
    state = jax.device_put(state0, parallel.replicated(mesh))
    rng = jax.device_put(jax.random.key(3, impl="rbg"), parallel.replicated(mesh))
    for k in range(2):
      state, metrics = fn(state, parallel.put_batch(_batch(seed=k), mesh), rng)
    results.append((jax.device_get(state), jax.device_get(metrics)))
  (s8, m8), (s1, m1) = results
  # accuracy is an argmax: float-level differences may flip a near tie, so allow one example.
  assert abs(float(m8.pop("accuracy")) - float(m1.pop("accuracy"))) <= 1 / 16 + 1e-6
  chex.assert_trees_all_close(m8, m1, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(s8.params, s1.params, rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(s8.batch_stats, s1.batch_stats, rtol=1e-4, atol=1e-5)
  assert int(s8.step) == 2
  # The step really changed the parameters (the comparison is not vacuous).
  diff = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                      s1.params, jax.device_get(state0.params))
  assert max(jax.tree.leaves(diff)) > 1e-4


@pytest.mark.slow
def test_no_retracing_across_steps():
  config = tiny.get_config()
  init, step = _setup(config)
  mesh = parallel.make_mesh()
  traced = chex.assert_max_traces(lambda *a: step(*a), n=1)
  fn = parallel.data_parallel(traced, mesh)
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))()
  rng = jax.device_put(jax.random.key(0, impl="rbg"), parallel.replicated(mesh))
  for k in range(3):
    state, _ = fn(state, parallel.put_batch(_batch(seed=k), mesh), jax.random.fold_in(rng, k))
  assert int(jax.device_get(state.step)) == 3


def test_batch_not_divisible_by_devices_fails_clearly():
  from pdsn_jax.data.pipeline import check_batch_size
  with pytest.raises(ValueError, match=r"trunk.batch_size=12 .* number of devices \(8\)"):
    check_batch_size(12, 8, 1, "trunk.batch_size")
  assert check_batch_size(16, 8, 2, "trunk.batch_size") == 8
