"""Real faces with a trunk trained here: IResNet on CelebA (299 identities), then stages I-III,
LFW pairs and AR identification with the real occluders of ../shared/data.

  python -m pdsn_jax.main --config=configs/real_celeba.py --workdir=runs/real_celeba

Cost: not measured: never run in full on the development machine (2 CPU cores). A trunk
trained from scratch on ~5,800 faces is weak, which is why configs/real_dlib.py exists. The
evaluation settings are those of configs/real_dlib.py at the 112x96 ArcFace alignment.
"""

from configs import pdsn, real_dlib


def get_config():
  c = pdsn.get_config()
  real = real_dlib.get_config()
  c.stages = "trunk,pdsn,dictionary,baseline,finetune,evaluate"
  c.data.source = "folders"
  c.data.folders.update(real.data.folders.to_dict())
  c.occlusion.update(real.occlusion.to_dict())
  c.finetune.conditions = real.finetune.conditions
  c.eval.update({k: v for k, v in real.eval.to_dict().items()})
  c.trunk.update(num_epochs=10.0, learning_rate=0.1, warmup_steps=100, eval_every=500)
  return c
