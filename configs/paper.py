"""The paper's trunk: IResNet-50 ("LResNet50E-IR") at 112x96, CosFace s=30 m=0.35.

Command (multi-GPU node or TPU slice, CASIA-WebFace as a folder tree aligned
by 5-point landmarks):
  python -m pdsn_jax.main --config=configs/paper.py \
      --config.data.folders.root=/data/casia/images \
      --config.data.folders.landmarks=/data/casia/landmarks.tsv --workdir=runs/paper

Cost: not measured here; estimated at about a day on 8 V100-class GPUs (28 epochs of ~490k
images at batch 512, ~27k steps). Not meant for a CPU.
"""

from configs import pdsn


def get_config():
  c = pdsn.get_config()
  c.data.source = "folders"
  c.data.num_workers = 8
  c.data.folders.heldout_identities = 100
  c.model.update(depth=50, width=1.0, embedding_dim=512, dropout=0.0)
  c.trunk.update(batch_size=512, num_epochs=28.0, learning_rate=0.1, weight_decay=5e-4,
                 warmup_steps=1000, schedule="step", step_boundaries=(0.43, 0.71, 0.86),
                 log_every=100, eval_every=2000, checkpoint_every=1000)
  c.eval.update(num_pairs=6000, batch_size=512)
  return c
