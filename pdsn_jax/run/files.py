"""Writing and reading the run's small files safely: atomic writes (a crash leaves the old file
or the new one, never half of one), checksums, a damaged file named, a full disk in one line.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
from typing import Any


class DamagedFile(ValueError):
  """A file that exists but cannot be read back, or whose bytes do not match its checksum."""


class InUse(RuntimeError):
  """A folder another process is writing (its lock is held)."""


@contextlib.contextmanager
def locked(folder: str, what: str, name: str = ".lock", way_out: str = "another folder",
           error: type = InUse):
  """Holds ``<folder>/<name>`` (flock) while the block runs; a second holder fails at once
  with ``error`` naming the pid that holds it. The lock dies with its process: a killed run
  never leaves the folder locked."""
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, name)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
      raise error(f"{what} {os.path.abspath(folder)} is in use by pid {holder} (lock {path}); "
                  f"wait for it to finish or use {way_out}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    yield
  finally:
    os.close(fd)


def atomic_write(path: str, data: bytes | str) -> str:
  """Writes ``data`` to ``path`` through a temporary name in the same folder, then renames."""
  mode = "wb" if isinstance(data, bytes) else "w"
  with atomic_path(path) as tmp:
    with open(tmp, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
      f.write(data)
  return path


def inside(root: str, rel: str, where: str) -> str:
  """``root/rel``, refusing a ``rel`` that is absolute or climbs out of ``root`` (a list file
  must not make a reader open files elsewhere); ``where`` names the file and row."""
  full = os.path.normpath(os.path.join(root, rel))
  base = os.path.normpath(os.path.abspath(root))
  if os.path.isabs(rel) or not os.path.abspath(full).startswith(base + os.sep):
    raise ValueError(f"{where}: path {rel!r} is outside {root} (absolute, or '..' climbs out); "
                     "list files name paths under their own folder")
  return full


@contextlib.contextmanager
def atomic_path(path: str):
  """A temporary name in ``path``'s folder (same extension, so writers that go by it, Pillow
  or ``np.save``, keep the format) to write to; renamed to ``path`` when the block ends, removed
  if it raises (a full disk leaves the old file or none, never half of one)."""
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp{os.getpid()}{ext}"
  try:
    yield tmp
    fd = os.open(tmp, os.O_RDONLY)  # the bytes reach the disk before the name does
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(tmp, path)
  except OSError as e:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):  # name the file the user asked for
      raise OSError(e.errno, e.strerror, path) from e
    raise
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj: Any) -> str:
  return atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str, what: str = "", fix: str = "") -> Any:
  """The JSON in ``path``; ``DamagedFile`` naming the file (and ``what`` it is, ``fix``) when
  it is not JSON. FileNotFoundError is left to the caller."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  try:
    return json.loads(text)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DamagedFile(f"{path}{f' ({what})' if what else ''} is damaged: {e}"
                      f"{f'; {fix}' if fix else ''}") from None


def sha256(path: str, chunk: int = 1 << 22) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def describe(path: str) -> dict:
  """{"bytes", "sha256"} of a file: what ``verify`` checks it against later."""
  return {"bytes": os.path.getsize(path), "sha256": sha256(path)}


def verify_size(path: str, expected: dict, fix: str = "") -> None:
  """Raises ``DamagedFile`` naming ``path`` if it is missing or its size is not
  ``expected["bytes"]``: the cheap check, without reading it."""
  if not os.path.isfile(path):
    raise DamagedFile(f"{path} is missing{f'; {fix}' if fix else ''}")
  size = os.path.getsize(path)
  if size != expected["bytes"]:
    raise DamagedFile(f"{path} has {size} bytes, {expected['bytes']} when written (truncated or "
                      f"replaced){f'; {fix}' if fix else ''}")


def verify(path: str, expected: dict, fix: str = "") -> None:
  """Raises ``DamagedFile`` naming ``path`` unless its size and sha256 are ``expected``'s
  (``describe``); the size first, so a truncated file is named without reading it."""
  verify_size(path, expected, fix)
  if sha256(path) != expected["sha256"]:
    raise DamagedFile(f"{path}: checksum mismatch (the bytes changed since it was written)"
                      f"{f'; {fix}' if fix else ''}")


def read_verified(path: str, expected: dict, fix: str = "") -> bytes:
  """The bytes of ``path``, read once, after checking them as ``verify`` does."""
  verify_size(path, expected, fix)
  with open(path, "rb") as f:
    blob = f.read()
  if len(blob) != expected["bytes"] or hashlib.sha256(blob).hexdigest() != expected["sha256"]:
    raise DamagedFile(f"{path}: checksum mismatch (the bytes changed since it was written)"
                      f"{f'; {fix}' if fix else ''}")
  return blob


# orbax's writer (tensorstore) reports a full disk as text in a ValueError / XlaRuntimeError:
# "RESOURCE_EXHAUSTED: ... [os_error_code='28'] ... No space left on device"
_WRAPPED_ENOSPC = re.compile(r"os_error_code=.?(28|122)\b|No space left on device|"
                             r"Disk quota exceeded")
_QUOTED_PATH = re.compile(r"[\"'](?:file://)?(/[^\"']+)[\"']")


def disk_full(e: BaseException) -> str | None:
  """One line for an exception chain caused by a full disk (errno ENOSPC or EDQUOT): the
  file and the free space left; None for any other error."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    wrapped = not isinstance(e, OSError) and _WRAPPED_ENOSPC.search(str(e))
    if wrapped or isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      name = e.filename or "" if isinstance(e, OSError) else ""
      if wrapped:  # tensorstore's message names the file it was writing, when it does
        hit = _QUOTED_PATH.search(str(e))
        name = hit.group(1) if hit else ""
      where = name or os.getcwd()
      probe = where
      while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
      try:
        free = shutil.disk_usage(probe or ".").free
        left = f"{free / 2**20:.1f} MiB free on that disk"
      except OSError:
        left = "free space unknown"
      return (f"disk full{f' writing {name}' if name else ''} ({left}): free some space and "
              "run the same command again; it resumes from the last finished checkpoint")
    e = e.__cause__ or e.__context__
  return None
