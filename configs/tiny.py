"""A seconds-long configuration for tests and smoke runs (SYNTHETIC faces, tiny trunk).

Command:
  python -m pdsn_jax.main --config=configs/tiny.py --workdir=/tmp/pdsn_tiny

Cost: about a minute on 2 CPU cores (its default stages; every stage: under 2 min), most of it
compilation.
"""

from configs import pdsn


def get_config():
  c = pdsn.get_config()
  c.data.synthetic.update(num_identities=12, images_per_identity=4, eval_identities=6,
                          eval_images_per_identity=4)
  c.model.update(depth=18, width=0.0625, embedding_dim=32)
  c.trunk.update(batch_size=8, num_steps=6, warmup_steps=2, log_every=2, eval_every=-1,
                 checkpoint_every=2)
  c.eval.update(num_pairs=40, batch_size=8)
  # a 6-step trunk's U is far from normalised and SGD on the generators diverges at step 1
  # (the divergence guard stops it); Adam's step size does not depend on U's scale
  c.pdsn.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=1, checkpoint_every=2,
                optimizer="adam", learning_rate=1e-3, weight_decay=0.0)
  c.dictionary.update(pairs_per_block=16, batch_size=8, log_every=1)
  c.finetune.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=1, checkpoint_every=2)
  c.detector.update(widths=(4, 8), batch_size=8, num_steps=4, warmup_steps=1, log_every=1,
                   checkpoint_every=2, eval_images=16)
  c.face_finder.update(batch_size=8, num_steps=4, log_every=1, checkpoint_every=2, eval_images=8)
  c.eval.update(num_distractors=10, ar_gallery_images=2, tau_sweep=(0.0, 0.25))
  # a 6-step trunk's U reaches 7e5, past float16's range (the bank refuses it)
  c.bank.update(dtype="float32", shard_faces=20, batch_size=32)
  c.stages = "trunk,pdsn,dictionary"  # tests ask for the later stages explicitly
  return c
