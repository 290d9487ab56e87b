"""The pretrained trunk: dlib's ResNet face model (Flax port), frozen, with a CosFace head fitted.

  pip install dlib-bin face_recognition_models   # the weights (CC0); dlib itself only for tests
  python -m pdsn_jax.main --config=configs/dlib_trunk.py --workdir=runs/dlib

Faces are 150x150 chips aligned with the dlib-chip 5-point template; U is the
4x4x256 map (``--config.model.dlib_u=8x8`` for the 8x8x128 one). The trunk
stage only fits the classifier PDSN's loss needs, on the frozen 128-d
descriptors; then stages I-III run as with any trunk. On the built-in SYNTHETIC
faces this mainly checks the wiring (dlib's model was trained on real faces);
point data.folders at real faces for meaningful numbers.

Cost: not measured on its own (the default config's stages on 150x150 chips).
"""

from configs import pdsn


def get_config():
  c = pdsn.get_config()
  c.data.image_size = (150, 150)
  c.data.alignment = "dlib_chip"
  c.model.update(kind="dlib", dlib_u="4x4", embedding_dim=128)
  c.trunk.update(init_from="dlib", freeze_backbone=True, num_epochs=2.0, learning_rate=0.1,
                 warmup_steps=10, weight_decay=0.0, eval_every=-1)
  return c
