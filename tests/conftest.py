"""Test set-up: 8 fake CPU devices for data-parallel tests, absl flags parsed for grain, one XLA
compilation cache for the session."""

import atexit
import os
import shutil
import sys
import tempfile

# One XLA compilation cache for the session, shared by every process the tests start (they
# inherit the environment): the tiny runs compile the same programs again and again, and loading
# one takes a fraction of compiling it (the tiny config's default run: 38 s cold, 16 s warm). The
# outputs are the same: a cached program is the one the compiler made. Set before JAX is imported
# (chex imports it); a cache the caller set is left alone.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="pdsn_jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  # the tiny runs' programs compile in under a second each, and there are hundreds
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import chex  # noqa: E402

# Must run before JAX initialises its backends.
chex.set_n_cpu_devices(8)

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import subprocess  # noqa: E402

import pytest  # noqa: E402

from tests import helpers  # noqa: E402

TINY_RUN_STAGES = "--config.stages=trunk,bank,pdsn,dictionary,finetune,detector,evaluate"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
  """A finished tiny run of every stage the commands need, made once per session. Tests that
  change a run work on a copy (shutil.copytree). The config fields each stage read are beside
  it, in ``reads.json`` (``tests/record_reads.py``)."""
  wd = str(tmp_path_factory.mktemp("tiny_run") / "run")
  helpers.run_main(wd, TINY_RUN_STAGES, record_reads=os.path.join(os.path.dirname(wd),
                                                                  "reads.json"))
  return wd


# fixtures that train a run: every test that needs one (directly or through another fixture) is
# in the slow tier, whatever it is marked
_TRAINING_FIXTURES = {"tiny_run"}


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if _TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_process(request, monkeypatch):
  """The fast tier (``-m "not slow"``) never starts a process: a test that does is slow."""
  if request.node.get_closest_marker("slow") is None:
    def refuse(*args, **kwargs):
      del args, kwargs
      raise RuntimeError(f"{request.node.nodeid} starts a process: mark it @pytest.mark.slow")
    monkeypatch.setattr(subprocess, "Popen", refuse)
