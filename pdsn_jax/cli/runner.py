"""Running a command, the same for ``python -m pdsn_jax.cli.<cmd>`` and the console scripts of
``pip install -e .`` (``pdsn-train``, ``pdsn-embed``, ...): ``--help`` shows the command's
docstring and its own flags (the rest under ``--helpfull``)."""

import functools
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
  app.run(functools.partial(_one_line_errors, main))


def _one_line_errors(main: Callable, argv) -> None:
  """``main(argv)``; a full disk anywhere under it (orbax's wrapped errors too) ends the command
  with one line naming the file and the free space, and stale stages with the fields that
  changed, not a traceback."""
  from pdsn_jax.run import files, provenance  # pylint: disable=g-import-not-at-top
  try:
    main(argv)
  except provenance.StaleStage as e:  # the stages, the fields and the ways out: no traceback
    logging.error("%s", e)
    sys.exit(1)
  except Exception as e:  # noqa: BLE001
    line = files.disk_full(e)
    if line is None:
      raise
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # orbax's thread noise
    logging.error("%s", line)
    sys.exit(1)
