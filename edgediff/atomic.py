"""Atomic file writes: a temporary name beside the target, then a rename.

A killed run leaves the old file or none, never half of one.
"""

import errno
import json
import os

from edgediff.errors import EdgediffError


def write_bytes(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def copy_file(src: str, path: str) -> None:
  """An atomic copy of `src` to `path`."""
  import shutil

  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    shutil.copyfile(src, tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, data) -> None:
  write_bytes(path, json.dumps(data, indent=1).encode())


def check_folder(path: str, flag: str = "--out", given: str | None = None) -> None:
  """Raises an EdgediffError naming `path` (as the user gave it: `given`) when it cannot become
  a folder to write into (it, or the nearest part of it that exists, is a file or is not
  writable), before long work."""
  path, given = os.path.abspath(path), given or path
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise EdgediffError(f"{flag} {given}: {probe} is a file, not a folder")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise EdgediffError(f"{flag} {given}: {probe} is not writable"
                        + (" (a read-only file system)" if _read_only(probe) else ""))


def check_file(path: str, flag: str = "--out") -> None:
  """The same for a file to be written: not a folder, and its folder writable."""
  if os.path.isdir(path):
    raise EdgediffError(f"{flag} {path}: is a folder; give a file name")
  check_folder(os.path.dirname(os.path.abspath(path)), flag, given=path)


def check_space(what: str, folder: str, need_bytes: int) -> None:
  """Raises an EdgediffError naming `what` when the file system of `folder` has less than
  `need_bytes` free. Checked before writing because a converter may not fail cleanly on a
  full disk (litert-torch's flatbuffer writer aborts the whole process)."""
  st = os.statvfs(folder)
  free = st.f_bavail * st.f_frsize
  if need_bytes > free:
    raise EdgediffError(f"{what}: needs about {_mb(need_bytes)} of disk in {folder}, "
                        f"{_mb(free)} free: free some or choose another --out")


def _mb(n: int) -> str:
  return f"{n / 1024**3:.2f} GB" if n >= 1024**3 else f"{n / 1024**2:.1f} MB"


def _read_only(path: str) -> bool:
  return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def no_space(e: OSError) -> bool:
  return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
