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
