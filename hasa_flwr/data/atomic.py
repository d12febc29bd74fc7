"""Atomic writes: a file or folder appears whole or not at all (a temp path beside it, then a rename).

Every output of the package goes through here: results.json, checkpoints, saved models, exports,
prepared data and the device's cache. Temp paths from ``tempfile`` are private (0600 / 0700), and a
rename keeps that, so each one is given the permissions ``open`` would give it under the process's
umask: a results folder written by a service account stays readable by the people who read it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    """This process's umask, read without changing it where Linux shows it (other threads may be
    creating files: setting it even for a moment would change theirs)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_if_opened(path: Path) -> None:
    """Give a temp file 0666, a temp folder (and what is in it) 0777, less the umask."""
    mask = umask()
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    if path.is_dir():
        for child in path.rglob("*"):
            os.chmod(child, (0o777 if child.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_path(out: Path | str, folder: bool = False) -> Iterator[Path]:
    """A temporary file (or empty folder) beside ``out``, renamed to ``out`` if the block succeeds,
    else removed. A folder replaces an older one at ``out``; readers see the old or the new."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    else:
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix or ".tmp")
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        as_if_opened(tmp)
        if folder and out.exists():  # a folder cannot be renamed over a full one: swap it out first
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
