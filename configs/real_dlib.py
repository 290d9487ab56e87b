"""Real faces with the pretrained dlib trunk: CelebA for the classifier and stages I-III, LFW
pairs for verification, AR for identification, the real occluders of ../shared/data.

  pip install dlib-bin face_recognition_models
  python -m pdsn_jax.main --config=configs/real_dlib.py --workdir=runs/real_dlib

Data root: ``--config.data.folders.root`` etc. default to ../shared/data; a missing
folder fails naming it.

Cost: 53.6 min on 2 CPU cores, measured alone at an earlier commit (per stage: docs/history.md).

AR images are 60x43 grayscale crops without landmarks: read as RGB (channels
replicated) and upsampled to the 150x150 chip by a centre crop to the aspect.
"""

import os

from configs import dlib_trunk, real_mobilefacenet

ROOT = os.environ.get("PDSN_DATA", "../shared/data")


def get_config():
  c = dlib_trunk.get_config()
  c.stages = "trunk,pdsn,dictionary,baseline,finetune,evaluate"
  c.data.source = "folders"
  c.data.num_workers = 0
  c.data.folders.update(root=f"{ROOT}/celeba/images", landmarks=f"{ROOT}/celeba/landmarks.tsv",
                        min_images=2, heldout_identities=30, skip_bad_images=False,
                        # distractors come from identities no stage trains on (before this
                        # was added they were training images: docs/history.md's dlib run)
                        distractor_identities=40)
  # test occluders are files no training stage sees (the same split as
  # configs/real_mobilefacenet.py); training draws only sunglasses and masks
  c.occlusion.splits.update(real_mobilefacenet.OCCLUDER_SPLITS)
  c.occlusion.update(occluder_dir=f"{ROOT}/occluders",
                     procedural_categories=("sunglasses", "mask"))
  c.trunk.update(num_epochs=1.0, batch_size=32, log_every=20, checkpoint_every=100)
  c.pdsn.update(num_epochs=0.3, log_every=10)
  # dlib's net has no batch norm and an unnormalised descriptor: fine-tune gently
  c.finetune.update(num_epochs=0.3, log_every=10, learning_rate=1e-4,
                    conditions=("sunglasses", "mask", "blocks"))
  c.eval.protocols.verification.update(
      pairs_file=f"{ROOT}/lfw/pairs.txt", pairs_root=f"{ROOT}/lfw",
      pairs_pattern="lfw/{name}_{num:04d}.jpg", pairs_landmarks=f"{ROOT}/lfw/landmarks.tsv",
      conditions=("sunglasses", "mask"))
  c.eval.update(num_pairs=6000, batch_size=64, procedural_categories=("hand", "object"),
                identification_root=f"{ROOT}/ar_clean",
                ar_gallery_images=3, num_distractors=500, tau_sweep=(0.0, 0.15, 0.25, 0.35))
  return c
