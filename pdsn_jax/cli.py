"""Running a command, the same for ``python -m pdsn_jax.<cmd>`` and the console scripts of
``pip install -e .`` (``pdsn-train``, ``pdsn-embed``, ...): ``--help`` shows the command's
docstring and its own flags (the rest under ``--helpfull``)."""

import logging
import sys
from typing import Callable


def run(main: Callable, module, key_flags=()) -> None:
  """``absl.app.run(main)`` with ``module``'s docstring as the usage and ``key_flags`` (default:
  the flags ``module`` defines) listed by ``--help``."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  names = list(key_flags) or [f.name for f in flags.FLAGS.get_key_flags_for_module(module)]
  for name in names:  # absl lists the key flags of the program it was started as
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
  sys.modules["__main__"].__doc__ = module.__doc__
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  app.run(main)
