"""Stage I: the stacked 9-generator step equals 9 single-generator steps; end-to-end stages."""

import functools
import json
import os
import re
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from pdsn_jax.method import builders, fdm
from pdsn_jax.run import checkpointing
from pdsn_jax.train import parallel, training
from pdsn_jax.run import workdir as workdir_lib
from pdsn_jax.models.generator import StackedMaskGenerators
from pdsn_jax.data import sources
from pdsn_jax.method import generator_statistics, pdsn_probe
from pdsn_jax.stages import pdsn
from tests import helpers


def _trunk_vars(config, classes=12):
  backbone = builders.backbone(config, False)
  head = builders.classifier(config, classes)
  x = jnp.zeros((1, 112, 96, 3))
  v = backbone.init(jax.random.key(0), x)
  h = head.init(jax.random.key(1), jnp.zeros((1, config.model.embedding_dim)))
  return backbone, head, {"params": {"backbone": v["params"], "classifier": h["params"]},
                          "batch_stats": v["batch_stats"]}


@pytest.mark.slow
def test_stacked_step_equals_separate_generator_steps():
  config = tiny.get_config()
  backbone, head, tv = _trunk_vars(config)
  u_shape = builders.u_shape(config)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (8, 112, 96, 3), dtype=np.uint8),
           "occluded": rng.integers(0, 256, (8, 9, 112, 96, 3), dtype=np.uint8),
           "label": rng.integers(0, 12, (8,), dtype=np.int32)}
  mesh = parallel.make_mesh()  # 8 devices
  tx = training.sgd(config.pdsn, 10)
  sched = training.learning_rate_schedule(config.pdsn, 10)
  stacked = StackedMaskGenerators(9)
  init = pdsn.init_fn(config, tv, stacked, tx, u_shape)
  s9 = init().replace(frozen=tv)
  fn9 = parallel.data_parallel(functools.partial(
      pdsn.train_step, backbone=backbone, head=head, gens=StackedMaskGenerators(9, "data"),
      tx=tx, schedule=sched, cfg=config.pdsn, lam=10.0), mesh, donate_state=False)
  key = jax.random.key(0, impl="rbg")
  out9, _ = fn9(s9, parallel.put_batch(batch, mesh), key)
  fn1 = parallel.data_parallel(functools.partial(
      pdsn.train_step, backbone=backbone, head=head, gens=StackedMaskGenerators(1, "data"),
      tx=tx, schedule=sched, cfg=config.pdsn, lam=10.0), mesh, donate_state=False)
  for j in range(9):
    take = lambda t: jax.tree.map(lambda a: a[j:j + 1], t)  # noqa: E731
    s1 = training.TrainState(step=s9.step, params=take(s9.params),
                             batch_stats=take(s9.batch_stats),
                             opt_state=tx.init(take(s9.params)), rng=s9.rng, frozen=tv)
    b1 = {**batch, "occluded": batch["occluded"][:, j:j + 1]}
    out1, _ = fn1(s1, parallel.put_batch(b1, mesh), key)
    chex.assert_trees_all_close(jax.device_get(out1.params), jax.device_get(take(out9.params)),
                                rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(jax.device_get(out1.batch_stats),
                                jax.device_get(take(out9.batch_stats)), rtol=1e-5, atol=1e-6)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), out9.params, s9.params)
  assert max(jax.tree.leaves(moved)) > 0
  # pdsn.reuse=2: the batch's U serves two updates, as two steps on the same batch
  twice, _ = fn9(out9, parallel.put_batch(batch, mesh), key)
  cfg2 = config.pdsn.copy_and_resolve_references()
  cfg2.reuse = 2
  fn_reuse = parallel.data_parallel(functools.partial(
      pdsn.train_step, backbone=backbone, head=head, gens=StackedMaskGenerators(9, "data"),
      tx=tx, schedule=sched, cfg=cfg2, lam=10.0), mesh, donate_state=False)
  reused, _ = fn_reuse(s9, parallel.put_batch(batch, mesh), key)
  chex.assert_trees_all_close(jax.device_get(reused.params), jax.device_get(twice.params),
                              rtol=1e-5, atol=1e-6)
  assert int(reused.step) == 1 and int(twice.step) == 2


@pytest.mark.parametrize("reuse", [1, 2])
def test_sub_batches_are_consecutive_steps_in_one_program(reuse):
  # pdsn.sub_batches=2 over stored U (the bank's batches): one step on 8 faces is the two steps
  # on its halves, each with its reuse updates; the metrics are the two steps' mean
  config = tiny.get_config()
  backbone, head, tv = _trunk_vars(config)
  u_shape = builders.u_shape(config)
  rng = np.random.default_rng(0)
  batch = {"u_clean": rng.normal(size=(8, *u_shape)).astype(np.float16),
           "u_occ": rng.normal(size=(8, 9, *u_shape)).astype(np.float16),
           "label": rng.integers(0, 12, (8,), dtype=np.int32)}
  mesh = parallel.make_mesh(jax.devices()[:1])  # one device: its batch is the whole batch
  tx = training.sgd(config.pdsn, 10)
  sched = training.learning_rate_schedule(config.pdsn, 10)
  start = pdsn.init_fn(config, tv, StackedMaskGenerators(9), tx, u_shape)().replace(frozen=tv)
  key = jax.random.key(0, impl="rbg")

  def step(sub_batches):
    cfg = config.pdsn.copy_and_resolve_references()
    cfg.reuse, cfg.sub_batches = reuse, sub_batches
    return parallel.data_parallel(functools.partial(
        pdsn.train_step, backbone=backbone, head=head, gens=StackedMaskGenerators(9, "data"),
        tx=tx, schedule=sched, cfg=cfg, lam=10.0), mesh, donate_state=False)

  half = lambda sl: parallel.put_batch({k: v[sl] for k, v in batch.items()}, mesh)  # noqa: E731
  first, m1 = step(1)(start, half(slice(0, 4)), key)
  second, m2 = step(1)(first, half(slice(4, 8)), key)
  both, m = step(2)(start, parallel.put_batch(batch, mesh), key)
  for part in ("params", "batch_stats", "opt_state"):
    chex.assert_trees_all_close(jax.device_get(getattr(both, part)),
                                jax.device_get(getattr(second, part)), rtol=1e-5, atol=1e-6)
  assert int(both.step) == 1 and int(second.step) == 2
  np.testing.assert_allclose(m["loss"], (m1["loss"] + m2["loss"]) / 2, rtol=1e-5)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), both.params, start.params)
  assert max(jax.tree.leaves(moved)) > 0


@pytest.mark.slow
def test_stages_end_to_end_trunk_frozen_and_pdsn_resumes_after_sigkill(tmp_path):
  ref = str(tmp_path / "ref")
  helpers.run_main(ref)
  # trunk bit-identical after stage I: the pdsn checkpoint's frozen copy equals the trunk's
  t = checkpointing.load_variables(os.path.join(ref, "trunk", "checkpoints"))
  p = checkpointing.load_variables(os.path.join(ref, "pdsn", "checkpoints"),
                                   keys=("params", "frozen"))
  jax.tree.map(np.testing.assert_array_equal, p["frozen"]["params"], t["params"])
  jax.tree.map(np.testing.assert_array_equal, p["frozen"]["batch_stats"], t["batch_stats"])
  fdms, _, meta = fdm.load(os.path.join(ref, "dictionary", "dictionary.npz"))
  k = int(np.prod(fdms.shape[1:]))
  assert fdms.shape[0] == 9 and meta["zeros_per_item"] == [int(0.25 * k)] * 9
  assert meta["neighbour_prob"] == 0.0 and len(meta["nearest_block_is_own"]) == 9
  # lambda by the paper's same-scale rule: the measured CE over the measured L1
  summary = json.load(open(os.path.join(ref, "pdsn", "summary.json")))
  assert summary["lambda_rule"] == "same_scale"
  np.testing.assert_allclose(summary["lambda_l1"], summary["scale_ce"] / summary["scale_l1"],
                             rtol=1e-4)

  # the dictionary-convergence rule: any overlap passes 0.01, so it stops at the first
  # checkpoint, before its 4 steps, and a rerun finds the stage complete
  conv = str(tmp_path / "converged")
  shutil.copytree(os.path.join(ref, "trunk"), os.path.join(conv, "trunk"))
  rule = ("--config.pdsn.converge_pairs=8", "--config.pdsn.converge_overlap=0.01")
  proc = helpers.run_main(conv, "--config.stages=pdsn,dictionary", *rule)
  assert "dictionary overlap with the last check" in proc.stderr
  at = json.load(open(os.path.join(conv, "pdsn", "stopped.json")))["step"]
  assert at < 4 and workdir_lib.latest_step(conv, "pdsn") == at
  summary = json.load(open(os.path.join(conv, "pdsn", "summary.json")))
  assert summary["stopped"] == {"step": at, "reason": "converged"}
  assert [c["step"] for c in summary["checks"]] == [at]
  assert summary["checks"][0]["overlap_min"] >= 0.01
  assert os.path.isfile(os.path.join(conv, "pdsn", "convergence.png"))
  again = helpers.run_main(conv, "--config.stages=pdsn", *rule)
  assert f"complete at step {at}" in again.stderr and "same-scale rule" not in again.stderr
  assert workdir_lib.latest_step(conv, "pdsn") == at
  kept = json.load(open(os.path.join(conv, "pdsn", "summary.json")))
  assert kept["stopped"] == summary["stopped"] and kept["lambda_l1"] == summary["lambda_l1"]

  # pdsn.ema_decay: the same trained generators, and stage II built from their running average;
  # this run's trunk also runs on whole batches (model.forward_chunk, speed only: the reference
  # ran 8 faces per call on CPU)
  avg = str(tmp_path / "averaged")
  shutil.copytree(os.path.join(ref, "trunk"), os.path.join(avg, "trunk"))
  proc = helpers.run_main(avg, "--config.stages=pdsn,dictionary", "--config.pdsn.ema_decay=0.5",
                          "--config.model.forward_chunk=100000")
  assert "running average 0.5" in proc.stderr
  keys = ("params", "opt_state")
  r = checkpointing.load_variables(os.path.join(ref, "pdsn", "checkpoints"), keys=keys)
  a = checkpointing.load_variables(os.path.join(avg, "pdsn", "checkpoints"), keys=keys)
  chex.assert_trees_all_close(a["params"], r["params"], rtol=1e-6)
  assert training.params_in_use(r["params"], r["opt_state"]) is r["params"]
  used = training.params_in_use(a["params"], a["opt_state"])
  trained = a["params"]["generators"]["bn"]["scale"]
  assert not np.allclose(used["generators"]["bn"]["scale"], trained)
  _, mean_ref, _ = fdm.load(os.path.join(ref, "dictionary", "dictionary.npz"))
  _, mean_avg, _ = fdm.load(os.path.join(avg, "dictionary", "dictionary.npz"))
  assert not np.allclose(mean_avg, mean_ref)

  # pdsn.generator_statistics="recomputed": the same trained weights (the steps never read the
  # running averages), and the checkpoint's BN statistics are those of the final weights on the
  # fixed pairs, whatever the running averages were
  rec = str(tmp_path / "recomputed")
  shutil.copytree(os.path.join(ref, "trunk"), os.path.join(rec, "trunk"))
  stats = ("--config.pdsn.generator_statistics=recomputed", "--config.pdsn.statistics_pairs=16")
  helpers.run_main(rec, "--config.stages=pdsn,dictionary", *stats)
  keys = ("params", "batch_stats", "frozen")
  r = checkpointing.load_variables(os.path.join(ref, "pdsn", "checkpoints"), keys=keys)
  c = checkpointing.load_variables(os.path.join(rec, "pdsn", "checkpoints"), keys=keys)
  jax.tree.map(np.testing.assert_array_equal, c["params"], r["params"])
  config = tiny.get_config()
  config.pdsn.update(generator_statistics="recomputed", statistics_pairs=16)
  src, _ = sources.build(config.data)
  want = generator_statistics.Recomputer(config, c["frozen"], src)(r)
  chex.assert_trees_all_close(c["batch_stats"], want, rtol=1e-6)
  assert not np.allclose(r["batch_stats"]["generators"]["bn"]["var"],
                         want["generators"]["bn"]["var"])
  summary = json.load(open(os.path.join(rec, "pdsn", "summary.json")))
  assert summary["generator_statistics"] == "recomputed" and summary["statistics_pairs"] == 16
  _, mean_rec, _ = fdm.load(os.path.join(rec, "dictionary", "dictionary.npz"))
  assert not np.allclose(mean_rec, mean_ref)

  # kill during stage I, then resume: same generators as the uninterrupted run
  wd = str(tmp_path / "killed")
  helpers.run_until(wd, "[pdsn] step 3/4")
  resumed = helpers.run_main(wd)
  assert "[pdsn]" in resumed.stderr and "(checkpoint)" in resumed.stderr
  a = checkpointing.load_variables(os.path.join(ref, "pdsn", "checkpoints"), keys=("params",))
  b = checkpointing.load_variables(os.path.join(wd, "pdsn", "checkpoints"), keys=("params",))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  fa, _, _ = fdm.load(os.path.join(ref, "dictionary", "dictionary.npz"))
  fb, _, _ = fdm.load(os.path.join(wd, "dictionary", "dictionary.npz"))
  np.testing.assert_array_equal(fa, fb)


def _ce_by_hand(emb, kernel, labels, scale=30.0, margin=0.35):
  e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  w = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
  logits = scale * (e @ w)
  logits[np.arange(len(labels)), labels] -= scale * margin
  m = logits.max(1, keepdims=True)
  lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
  return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def test_the_bn_scale_start_sets_the_spread_of_the_masks():
  """BN standardises the logits, so their spread is the scale: a larger start reaches near 0
  and 1 where the default's masks stay soft (docs/results.md, Table 2's soft masks)."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 7, 6, 16)), jnp.float32)
  shares = {}
  for scale in (1.0, 4.0):
    gens = StackedMaskGenerators(2, scale_init=scale)
    v = gens.init(jax.random.key(0), x)
    chex.assert_trees_all_close(v["params"]["generators"]["bn"]["scale"],
                                jnp.full((2, 16), scale))
    m, _ = gens.apply(v, x, True, mutable=["batch_stats"])
    shares[scale] = float(jnp.mean((m > 0.9) | (m < 0.1)))
  # standard normal logits: 2 * P(z > 2.2) = 2.8% at scale 1; 2 * P(z > 0.55) = 58% at 4
  assert shares[1.0] < 0.06 and shares[4.0] > 0.5


@pytest.mark.slow
def test_pdsn_loss_by_hand_both_variants():
  """CE on F(m * U(x_j)) (the occluded branch), the L1 a mean over every element, lambda 10;
  the released variant adds the clean branch, each CE weighted 0.5; without differential
  input the generator sees U(x_j) and the loss is the CE alone."""
  config = tiny.get_config()
  backbone, head, tv = _trunk_vars(config)
  gens = StackedMaskGenerators(2)
  rng = np.random.default_rng(3)
  shape = builders.u_shape(config)
  u_clean = rng.normal(size=(4, *shape)).astype(np.float32)
  u_occ = u_clean[None] + rng.normal(size=(2, 4, *shape)).astype(np.float32) * [[[[[1.0]]]], [[[[0.2]]]]]
  v = gens.init(jax.random.key(0), jnp.asarray(u_occ))
  labels = np.array([0, 3, 5, 11])
  masks = np.asarray(gens.apply(v, jnp.abs(jnp.asarray(u_occ) - u_clean[None]), False))
  bvars = {"params": tv["params"]["backbone"], "batch_stats": tv["batch_stats"]}
  f = lambda u: np.asarray(backbone.apply(bvars, jnp.asarray(u), method="head"))  # noqa: E731
  kernel = np.asarray(tv["params"]["classifier"]["kernel"])
  # Table 3's ablation: the generators see U(x_j) itself, and there is no L1 term
  masks_abl = np.asarray(gens.apply(v, jnp.asarray(u_occ), False))
  want = {"paper": [], "released": [], "no differential": []}
  for j in range(2):
    ce_occ = _ce_by_hand(f(masks[j] * u_occ[j]), kernel, labels)
    ce_clean = _ce_by_hand(f(masks[j] * u_clean), kernel, labels)
    l1 = float(np.abs(masks[j] * u_clean - masks[j] * u_occ[j]).sum() / masks[j].size)
    want["paper"].append(ce_occ + 10.0 * l1)
    want["released"].append(0.5 * ce_clean + 0.5 * ce_occ + 10.0 * l1)
    want["no differential"].append(_ce_by_hand(f(masks_abl[j] * u_occ[j]), kernel, labels))
  assert abs(want["paper"][0] - want["paper"][1]) > 1e-3  # the two generators' inputs differ
  for variant in ("paper", "released", "no differential"):
    config.pdsn.loss = "paper" if variant == "no differential" else variant
    config.pdsn.differential = variant != "no differential"
    got, _ = pdsn.pdsn_losses(v["params"], v["batch_stats"], tv, jnp.asarray(u_clean),
                              jnp.asarray(u_occ), jnp.asarray(labels), backbone=backbone,
                              head=head, gens=gens, cfg=config.pdsn, train=False,
                              lam=10.0 if config.pdsn.differential else 0.0)
    np.testing.assert_allclose(np.asarray(got), want[variant], rtol=2e-5)


@pytest.mark.slow
def test_dictionary_probe_overlap_is_one_when_nothing_moved():
  config = tiny.get_config()
  backbone, _, tv = _trunk_vars(config)
  del backbone
  src, _ = sources.build(config.data)
  batches = pdsn_probe.probe_batches(config, src, 16, 8, 0.0)
  assert len(batches) == 2 and batches[0]["occluded"].shape[:2] == (8, 9)
  again = pdsn_probe.probe_batches(config, src, 16, 8, 0.0)  # the same pairs every time
  np.testing.assert_array_equal(batches[1]["occluded"], again[1]["occluded"])
  probe = pdsn_probe.DictionaryProbe(config, tv, batches, tau=0.25)
  gens = builders.generators(config, False)
  v, _ = pdsn.starting_generators(config, gens, builders.u_shape(config))
  probe.reset(v)
  same = probe.check(v)
  np.testing.assert_array_equal(same["overlap"], np.ones(9))
  moved = {**v, "params": jax.tree.map(
      lambda x: x + 0.5 * np.random.default_rng(0).normal(size=x.shape), v["params"])}
  changed = probe.check(moved)
  assert changed["overlap"].min() < 1.0 and changed["overlap"].shape == (9,)
  assert 0 < changed["mask_mean"].mean() < 1 and len(changed["nearest_block_is_own"]) == 9


def test_recomputed_statistics_are_the_batch_statistics_of_all_the_fixed_pairs():
  config = tiny.get_config()
  config.pdsn.update(statistics_pairs=24, batch_size=8)  # 3 batches, merged
  _, _, tv = _trunk_vars(config)
  src, _ = sources.build(config.data)
  recompute = generator_statistics.Recomputer(config, tv, src)
  assert recompute.pairs == 24 and recompute.u_occ.shape[:2] == (9, 24)
  gens = builders.generators(config, False)
  v, _ = pdsn.starting_generators(config, gens, builders.u_shape(config))
  v = {**v, "params": jax.tree.map(
      lambda x: x + 0.3 * np.random.default_rng(1).normal(size=x.shape), v["params"])}
  got = recompute(v)
  chex.assert_trees_all_equal_structs(got, v["batch_stats"])
  # flax's own BatchNorm on all 24 pairs at once, from zero averages: 0.1 * the batch's
  zeros = jax.tree.map(np.zeros_like, v["batch_stats"])
  x = builders.generator_input(jnp.asarray(recompute.u_clean), jnp.asarray(recompute.u_occ),
                               True)
  _, updates = gens.apply({"params": v["params"], "batch_stats": zeros}, x, True,
                          mutable=["batch_stats"])
  want = jax.tree.map(lambda s: s / (1 - 0.9), updates["batch_stats"])
  chex.assert_trees_all_close(got, want, rtol=2e-4, atol=1e-6)
  # a function of the weights: the running averages handed in are not read
  other = {**v, "batch_stats": jax.tree.map(lambda s: s + 3.0, v["batch_stats"])}
  chex.assert_trees_all_equal(recompute(other), got)
  moved = {**v, "params": jax.tree.map(lambda p: 1.1 * p, v["params"])}
  assert not np.allclose(recompute(moved)["generators"]["bn"]["var"],
                         got["generators"]["bn"]["var"])


@pytest.mark.slow
def test_the_plateau_rule_lowers_the_rate_and_a_killed_run_resumes_on_its_path(tmp_path):
  ref = str(tmp_path / "ref")
  helpers.run_main(ref, "--config.stages=trunk")
  # gain 1: every decision lowers the rate; overlap 1.0: the rule never stops the 6 steps
  plateau = ("--config.stages=pdsn", "--config.pdsn.num_steps=6",
             "--config.pdsn.converge_pairs=8", "--config.pdsn.converge_overlap=1.0",
             "--config.pdsn.plateau_decay=0.5", "--config.pdsn.plateau_gain=1.0",
             "--config.pdsn.schedule=constant", "--config.pdsn.generator_statistics=recomputed",
             "--config.pdsn.statistics_pairs=8")
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  for wd in (full, killed):
    shutil.copytree(os.path.join(ref, "trunk"), os.path.join(wd, "trunk"))
  proc = helpers.run_main(full, *plateau)
  # the checks at steps 2, 4, 6: the first decision is at 4 (against 2), so steps 5-6 run at
  # half the rate, and the one at 6 halves it again for a step that never comes
  assert "since step 2: the learning rate's factor 1 -> 0.5" in proc.stderr
  assert "since step 4: the learning rate's factor 0.5 -> 0.25" in proc.stderr
  assert re.search(r"\[pdsn\] step 4/6 \|.*learning_rate 0\.001 ", proc.stderr)
  assert re.search(r"\[pdsn\] step 5/6 \|.*learning_rate 0\.0005 ", proc.stderr)
  summary = json.load(open(os.path.join(full, "pdsn", "summary.json")))
  factors = {c["step"]: c["rate_factor"] for c in summary["checks"]}
  assert {s: factors[s] for s in (2, 4, 6)} == {2: 1.0, 4: 1.0, 6: 0.5}
  assert summary["stopped"]["step"] == 6 and "step budget" in summary["stopped"]["reason"]
  # killed after step 5 (its last checkpoint at 4, the factor 0.5 in it), then resumed
  helpers.run_until(killed, "[pdsn] step 5/6", *plateau)
  helpers.run_main(killed, *plateau)
  keys = ("params", "batch_stats")
  a = checkpointing.load_variables(os.path.join(full, "pdsn", "checkpoints"), keys=keys)
  b = checkpointing.load_variables(os.path.join(killed, "pdsn", "checkpoints"), keys=keys)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # and the rate halved made a difference: the same run without the rule ends elsewhere
  plain = str(tmp_path / "plain")
  shutil.copytree(os.path.join(ref, "trunk"), os.path.join(plain, "trunk"))
  helpers.run_main(plain, *plateau[:-5], "--config.pdsn.schedule=constant",
                   "--config.pdsn.generator_statistics=recomputed",
                   "--config.pdsn.statistics_pairs=8")
  c = checkpointing.load_variables(os.path.join(plain, "pdsn", "checkpoints"), keys=keys)
  assert not np.allclose(c["params"]["generators"]["conv"]["kernel"],
                         a["params"]["generators"]["conv"]["kernel"])
