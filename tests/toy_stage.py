"""A stage a newcomer could add: one module (this one) plus one registry line
(``stage.register(toy_stage.STAGE)``, in ``tests/stage_test.py``) and its config section
(``section()``). It fits three numbers to the mean colour of the training faces, through the
same skeleton as every training stage (``loop.run_stage``: provenance, checkpoints, resume)."""

import jax
import jax.numpy as jnp
import optax

from configs import common
from pdsn_jax.train import loop, parallel, training
from pdsn_jax.run import stage as stage_lib

NAME = "toy"


def section():
  return common.training(batch_size=8, num_steps=6, learning_rate=0.5, checkpoint_every=3,
                         keep_checkpoints=3, log_every=3, target=1.0)


def _step(state, batch, rng, cfg):
  del rng

  def loss_fn(w):
    x = batch["image"].astype(jnp.float32).mean((1, 2)) / 255.0
    return jnp.mean((x @ w - cfg.target) ** 2)

  loss, grad = jax.value_and_grad(loss_fn)(state.params["w"])
  grad, loss = jax.lax.pmean((grad, loss), parallel.AXIS)
  w = state.params["w"] - cfg.learning_rate * grad
  return (state.replace(step=state.step + 1, params={"w": w}),
          {"loss": loss, "param_norm": optax.tree.norm(w)})


def plan(ctx: loop.Context) -> loop.Plan:
  def init():
    key = training.init_key(ctx.config, ctx.stream)
    return training.TrainState(step=jnp.zeros((), jnp.int32),
                               params={"w": 0.1 * jax.random.normal(key, (3,))},
                               batch_stats={}, opt_state=(), rng=jax.random.key_data(key))

  return loop.Plan(init=init, step=lambda s, b, r: _step(s, b, r, ctx.cfg),
                   summary=lambda results: {"toy": True})


def run(config, workdir: str) -> dict:
  return loop.run_stage(config, workdir, STAGE, plan)


STAGE = stage_lib.Stage(name=NAME, run=run, section=NAME,
                        stream=stage_lib.Stream(data_offset=90, init_fold=90),
                        depends_on=stage_lib.BASE + (NAME,))
