"""The workdir: one run at a time (an advisory lock per process)."""

import contextlib
import fcntl
import os


class WorkdirInUse(RuntimeError):
  pass


@contextlib.contextmanager
def locked(workdir: str, process_index: int = 0):
  """Holds ``<workdir>/.lock.<process_index>`` (flock) for the run; a second run on the same
  workdir fails at once naming the pid that holds it. The lock dies with its process, so a
  killed run never leaves the workdir locked."""
  path = os.path.join(workdir, f".lock.{process_index}")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
      raise WorkdirInUse(f"workdir {os.path.abspath(workdir)} in use by pid {holder} (lock "
                         f"{path}); wait for it or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    yield
  finally:
    os.close(fd)
