"""Default run on the built-in SYNTHETIC faces, sized for a 2-core CPU.

Command:
  python -m pdsn_jax.main --config=configs/pdsn.py --workdir=runs/pdsn

Cost on a 2-core CPU (measured): 14.5 minutes in all - trunk 8 min (IResNet-18
at width 0.25, 112x96 input, 300 steps of 32), stage I 3.7 min (150 steps of
16 faces x 10 images), stage II 1.7 min (1024 pairs per block). Every field can be overridden,
e.g. --config.trunk.num_epochs=2 --config.model.width=0.5.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.prng_impl = "rbg"  # or "threefry2x32"; see pdsn_jax.training.root_key
  c.stages = "trunk,pdsn,dictionary"  # comma-separated, run in order

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # "synthetic" (built-in, no files) or "folders"
  c.data.image_size = (112, 96)  # (height, width) of the aligned face
  c.data.flip = True
  c.data.num_workers = 0  # grain worker processes (0: load in the main process)
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_identities=200, images_per_identity=12, eval_identities=100,
      eval_images_per_identity=6, seed=0, cache=True))
  c.data.folders = ml_collections.ConfigDict(dict(
      root="", landmarks="", skip_bad_images=False, min_images=2, heldout_identities=50))

  c.model = ml_collections.ConfigDict()
  c.model.depth = 18
  c.model.width = 0.25  # stage widths 16-32-64-128
  c.model.embedding_dim = 256
  c.model.dropout = 0.0
  c.model.dtype = "float32"

  c.cosface = ml_collections.ConfigDict(dict(scale=30.0, margin=0.35))

  c.trunk = ml_collections.ConfigDict()
  c.trunk.batch_size = 32  # global, over all devices
  c.trunk.num_epochs = 4.0
  c.trunk.num_steps = -1  # > 0 overrides num_epochs
  c.trunk.learning_rate = 0.1
  c.trunk.momentum = 0.9
  c.trunk.nesterov = False
  c.trunk.weight_decay = 5e-4
  c.trunk.warmup_steps = 30
  c.trunk.schedule = "cosine"  # "cosine", "step", "constant"
  c.trunk.step_boundaries = (0.5, 0.75)  # fractions of the run, for schedule="step"
  c.trunk.step_decay = 0.1
  c.trunk.log_every = 20
  c.trunk.eval_every = 100  # <= 0: only at the end
  c.trunk.checkpoint_every = 50
  c.trunk.keep_checkpoints = 3
  c.trunk.init_from = ""  # a checkpoints/ folder of another run (params + BN stats)

  c.eval = ml_collections.ConfigDict(dict(num_pairs=600, batch_size=64, seed=1))

  # Occlusion synthesis (pdsn_jax/data/occlusion.py).
  c.occlusion = ml_collections.ConfigDict(dict(
      occluder_dir="",  # folder of <category>/**/*.png; "" = built-in procedural set only
      procedural=True,  # include the built-in occluders
      neighbour_prob=0.5,  # also occlude one 4-neighbour of the target block
      min_overlap=0.5,  # block counts as occluded at this overlap
      overlap="coverage",  # "coverage" (intersection / block area) or "iou"
  ))

  # Stage I: the 9 mask generators (trunk frozen).
  c.pdsn = ml_collections.ConfigDict(dict(
      batch_size=16, num_epochs=1.0, num_steps=-1, learning_rate=0.01, momentum=0.9,
      nesterov=False, weight_decay=5e-4, warmup_steps=10, schedule="cosine",
      step_boundaries=(0.5, 0.75), step_decay=0.1,
      lambda_l1=10.0,  # paper, Eq. 5
      loss="paper",  # "paper": CE(occluded) + lambda*L1; "released": 0.5 CE(clean) + 0.5 CE(occ)
      differential=True,  # False: Table 3's ablation, input U(x_j) and lambda taken as 0
      log_every=10, checkpoint_every=25, keep_checkpoints=2))

  # Stage II: the dictionary of binary Feature Discarding Masks.
  c.dictionary = ml_collections.ConfigDict(dict(
      pairs_per_block=1024, batch_size=32, tau=0.25, log_every=8))
  return c
