"""One run per workdir: a second process fails at once naming the holder's pid."""

import os
import subprocess
import sys
import time

import pytest

from pdsn_jax.run import workdir
from tests import helpers


@pytest.mark.slow
def test_second_run_on_a_locked_workdir_fails_at_once(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from pdsn_jax.run import workdir\n"
       f"with workdir.locked({str(tmp_path)!r}):\n  print('held', flush=True); time.sleep(60)"],
      cwd=helpers.REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    t = time.time()
    proc = subprocess.run(helpers.main_cmd(str(tmp_path)), cwd=helpers.REPO, capture_output=True,
                          text=True, timeout=120, env=helpers.env_with_devices(1), check=False)
    assert proc.returncode != 0
    assert f"in use by pid {holder.pid}" in proc.stderr
    assert time.time() - t < 60
  finally:
    holder.kill()
    holder.wait()
  with workdir.locked(str(tmp_path)):  # released when its process died
    with pytest.raises(workdir.WorkdirInUse, match="in use by pid"):
      with workdir.locked(str(tmp_path)):
        pass


def test_every_stage_answers_complete_through_workdir(tmp_path):
  wd = str(tmp_path)
  assert not workdir.is_complete(wd, workdir.DICTIONARY)
  os.makedirs(workdir.stage_dir(wd, workdir.DICTIONARY))
  open(workdir.dictionary_file(wd), "w").close()
  assert workdir.is_complete(wd, workdir.DICTIONARY)
  assert not workdir.is_complete(wd, workdir.EVALUATE)  # it always reruns
  assert not workdir.is_complete(wd, workdir.TRUNK, steps=10)  # no checkpoint yet
  assert workdir.results_files(wd) == (os.path.join(wd, "results.md"),
                                       os.path.join(wd, "results.json"))
  assert workdir.replaced(wd, "results.md", "T") == os.path.join(wd, "results.replaced-T.md")
