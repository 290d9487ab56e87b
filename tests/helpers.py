"""Helpers for tests that run the entry point in subprocesses."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")


def env_with_devices(n: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
  env["PYTHONUNBUFFERED"] = "1"
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


def main_cmd(workdir: str, *overrides: str, config: str = "configs/tiny.py",
             record_reads: str = "") -> list[str]:
  """The entry point's command line; ``record_reads``: through ``tests/record_reads.py``, which
  writes the config fields each stage read to that file."""
  entry = (["-m", "pdsn_jax.main"] if not record_reads else
           [os.path.join(REPO, "tests", "record_reads.py"), record_reads])
  return [sys.executable, *entry, f"--config={config}", f"--workdir={workdir}", *overrides]


def run_main(workdir: str, *overrides: str, devices: int = 1, timeout: int = 600,
             config: str = "configs/tiny.py",
             record_reads: str = "") -> subprocess.CompletedProcess:
  proc = subprocess.run(main_cmd(workdir, *overrides, config=config, record_reads=record_reads),
                        cwd=REPO,
                        env=env_with_devices(devices), capture_output=True, text=True,
                        timeout=timeout, check=False)
  if proc.returncode != 0:
    raise AssertionError(f"main failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
  return proc


def run_until(workdir: str, marker: str, *overrides: str, devices: int = 1,
              config: str = "configs/tiny.py") -> None:
  """Runs the entry point and SIGKILLs it as soon as a stderr line contains ``marker``."""
  import signal  # pylint: disable=g-import-not-at-top
  proc = subprocess.Popen(main_cmd(workdir, *overrides, config=config), cwd=REPO,
                          env=env_with_devices(devices), stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, text=True)
  killed = False
  for line in proc.stderr:
    if marker in line:
      proc.send_signal(signal.SIGKILL)
      killed = True
      break
  proc.wait(timeout=120)
  if not killed or proc.returncode != -signal.SIGKILL:
    raise AssertionError(f"{marker!r} never appeared (exit {proc.returncode})")


class Exploit:
  """Pickles as ``os.system("touch <target>")``: a data file that would run code if unpickled
  naively (for tests of the restricted readers)."""

  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.system, (f"touch {self.target}",))
