"""The face finder of configs/real_mobilefacenet.py's runs, trained on its own: BlazeFace's
short-range model tuned on CelebA's occluded, grey, low-resolution training photos
(stages/face_finder.py), which the photo commands of every such run use
(``face_finder.weights_from``). Its settings are that config's ``face_finder`` section.

Command (with the real config, in one line):
  python -m pdsn_jax.main --config=configs/face_finder.py --workdir=runs/face_finder && \\
      python -m pdsn_jax.main --config=configs/real_mobilefacenet.py --workdir=runs/real_mfn

Cost: 21.8 min on 2 CPU cores, measured alone 2026-12-06 at b70ca80 (2,000 steps and the
held-out scoring), as a stage of configs/real_mobilefacenet.py then.
"""

from configs import real_mobilefacenet


def get_config():
  c = real_mobilefacenet.get_config()
  c.stages = "face_finder"
  c.face_finder.weights_from = ""  # this run makes them
  return c
