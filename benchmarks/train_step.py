"""Trunk train-step throughput: img/s, peak memory, FLOPs/image, achieved GFLOP/s; PyTorch side by side.

Run:
  python -m benchmarks.train_step --config=configs/pdsn.py [--steps=10] [--torch]
  python -m benchmarks.train_step --config=configs/paper.py --batch=8 --steps=3

Synthetic random uint8 batches (no input pipeline: that is benchmarks/input_pipeline.py);
prints one table. FLOPs come from XLA's cost analysis of the compiled step.
"""

import functools
import resource
import time


from absl import app, flags
from ml_collections import config_flags


def _jax_step(config, batch_size, steps):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from pdsn_jax.method import builders, recognition  # pylint: disable=g-import-not-at-top
  from pdsn_jax.train import parallel, training

  classes = 1000
  mesh = parallel.make_mesh()
  head = builders.classifier(config, classes)
  tx = training.sgd(config.trunk, 1000)
  init = recognition.init_fn(config, builders.backbone(config, False), head, tx)
  step = functools.partial(recognition.train_step, backbone=builders.backbone(config, True),
                           head=head, tx=tx,
                           schedule=training.learning_rate_schedule(config.trunk, 1000))
  fn = parallel.data_parallel(step, mesh)
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))()
  rng = np.random.default_rng(0)
  local = {"image": rng.integers(0, 256, (batch_size, *config.data.image_size, 3), np.uint8),
           "label": rng.integers(0, classes, (batch_size,), np.int32)}
  batch = parallel.put_batch(local, mesh)
  key = jax.random.key(0, impl=config.prng_impl)
  t = time.perf_counter()
  compiled = fn.lower(state, batch, key).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  state, m = compiled(state, batch, key)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = compiled(state, batch, key)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / steps
  mem = None
  try:
    stats = jax.devices()[0].memory_stats()
    mem = stats.get("peak_bytes_in_use") if stats else None
  except Exception:  # noqa: BLE001
    pass
  if mem is None:
    mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"img_s": batch_size / dt, "step_s": dt, "flops_img": flops / batch_size,
          "gflops_s": flops / dt / 1e9, "peak_mem_gb": mem / 2**30, "compile_s": compile_s,
          "device": f"{jax.device_count()}x {jax.devices()[0].device_kind}"}


def _torch_step(config, batch_size, steps):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from benchmarks.torch_iresnet import make_iresnet  # pylint: disable=g-import-not-at-top

  m = config.model
  net, head = make_iresnet(m.depth, m.width, m.embedding_dim, config.data.image_size, 1000)
  params = list(net.parameters()) + [head]
  opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
  x = torch.randn(batch_size, 3, *config.data.image_size)
  y = torch.randint(0, 1000, (batch_size,))

  def step():
    opt.zero_grad()
    e = torch.nn.functional.normalize(net(x))
    w = torch.nn.functional.normalize(head, dim=0)
    logits = 30.0 * (e @ w - 0.35 * torch.nn.functional.one_hot(y, 1000))
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    opt.step()

  step()
  t = time.perf_counter()
  for _ in range(steps):
    step()
  dt = (time.perf_counter() - t) / steps
  return {"img_s": batch_size / dt, "step_s": dt, "threads": torch.get_num_threads()}


def define_flags() -> None:
  """This script's flags (defined when it runs, so that importing it defines none)."""
  config_flags.DEFINE_config_file("config", "configs/pdsn.py", "config file")
  flags.DEFINE_integer("steps", 10, "timed steps")
  flags.DEFINE_integer("batch", 0, "global batch (0: the config's)")
  flags.DEFINE_bool("torch", True, "also time the same step in PyTorch if installed")


def main(argv):
  del argv
  config = flags.FLAGS.config
  batch = flags.FLAGS.batch or config.trunk.batch_size
  r = _jax_step(config, batch, flags.FLAGS.steps)
  m = config.model
  print(f"\nTrunk train step: IResNet-{m.depth} width {m.width} {tuple(config.data.image_size)} "
        f"batch {batch}, {m.dtype}, {r['device']}")
  print("| framework | img/s | s/step | GFLOP/img | GFLOP/s | peak mem GiB | compile s |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  print(f"| jax | {r['img_s']:.1f} | {r['step_s']:.3f} | {r['flops_img'] / 1e9:.3f} | "
        f"{r['gflops_s']:.1f} | {r['peak_mem_gb']:.2f} | {r['compile_s']:.1f} |")
  if flags.FLAGS.torch:
    t = _torch_step(config, batch, flags.FLAGS.steps)
    if t is None:
      print("| torch | not installed (pip install torch==2.13.0) | | | | | |")
    else:
      print(f"| torch ({t['threads']} threads) | {t['img_s']:.1f} | {t['step_s']:.3f} | "
            f"{r['flops_img'] / 1e9:.3f} | {r['flops_img'] * t['img_s'] / 1e9:.1f} | | |")
      print(f"\njax/torch img/s ratio: {r['img_s'] / t['img_s']:.2f}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
