"""The optimizer's running average of the parameters (stage I's ``pdsn.ema_decay``) and its
learning-rate factor (``pdsn.plateau_decay``)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pdsn_jax.train import training


def _loss(p):
  return jnp.sum((p["w"] - 3.0) ** 2) + jnp.sum(p["b"] ** 2)


def test_the_average_leaves_the_updates_alone_and_follows_the_ema_by_hand():
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
  plain, averaged = optax.sgd(0.1, momentum=0.9), training.with_params_average(
      optax.sgd(0.1, momentum=0.9), 0.8)
  p_plain, s_plain = params, plain.init(params)
  p_avg, s_avg = params, averaged.init(params)
  by_hand = jax.tree.map(np.asarray, params)
  for _ in range(4):
    u, s_plain = plain.update(jax.grad(_loss)(p_plain), s_plain, p_plain)
    p_plain = optax.apply_updates(p_plain, u)
    u, s_avg = averaged.update(jax.grad(_loss)(p_avg), s_avg, p_avg)
    p_avg = optax.apply_updates(p_avg, u)
    by_hand = jax.tree.map(lambda a, p: 0.8 * a + 0.2 * np.asarray(p), by_hand, p_avg)
  chex.assert_trees_all_equal(p_avg, p_plain)  # the trained parameters are tx's own
  average = training.params_in_use(p_avg, s_avg)
  chex.assert_trees_all_close(average, by_hand, rtol=1e-6)
  assert not np.allclose(average["w"], p_avg["w"])  # it lags the trained ones


def test_params_in_use_reads_a_restored_state_and_falls_back_to_the_params():
  params = {"w": np.ones(3, np.float32)}
  average = {"w": np.full(3, 0.5, np.float32)}
  # a checkpoint restored without a target: the chain's tuple is a list, the average a dict
  restored = [[{"trace": {"w": np.zeros(3)}}], {"average": average}]
  chex.assert_trees_all_equal(training.params_in_use(params, restored), average)
  live = training.with_params_average(optax.sgd(0.1), 0.9).init(average)
  chex.assert_trees_all_equal(training.params_in_use(params, live), average)
  for plain in (optax.sgd(0.1, momentum=0.9).init(params), [[{"trace": params}], {}], (), None):
    assert training.params_in_use(params, plain) is params


def test_the_rate_factor_scales_the_rate_and_is_found_and_replaced_inside_any_chain():
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
  grads = jax.grad(_loss)(params)
  tx = training.with_params_average(training.with_rate_factor(optax.sgd(0.1, momentum=0.9)),
                                    0.9)
  state = tx.init(params)
  found = training.rate_factor(state)
  assert float(found.factor) == 1.0 and int(found.last_step) == -1
  u_one, _ = tx.update(grads, state, params)
  chex.assert_trees_all_close(u_one, optax.sgd(0.1, momentum=0.9).update(
      grads, optax.sgd(0.1, momentum=0.9).init(params), params)[0])
  state = training.replace_rate_factor(state, training.RateFactor(
      jnp.float32(0.25), jnp.float32(0.6), jnp.int32(50)))
  assert int(training.rate_factor(state).last_step) == 50
  u_quarter, state = tx.update(grads, state, params)
  chex.assert_trees_all_close(u_quarter, jax.tree.map(lambda u: 0.25 * u, u_one), rtol=1e-6)
  # the momentum acts on gradients: the next update is the rate 0.025's, not 0.25 of 0.25's
  by_hand = optax.sgd(0.025, momentum=0.9)
  s_hand = by_hand.init(params)
  _, s_hand = by_hand.update(grads, s_hand, params)
  chex.assert_trees_all_close(tx.update(grads, state, params)[0],
                              by_hand.update(grads, s_hand, params)[0], rtol=1e-6)
  assert training.rate_factor(optax.sgd(0.1).init(params)) is None
