"""Test set-up: 8 fake CPU devices for data-parallel tests, absl flags parsed for grain."""

import os
import sys

import chex

# Must run before JAX initialises its backends.
chex.set_n_cpu_devices(8)

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
