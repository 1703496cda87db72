"""Small shared helpers: atomic file writes, fingerprints, environment set-up.

Atomic writes follow the usual recipe (write to a temporary file in the same folder,
``fsync``, then ``os.replace``), so a reader never sees a half-written file and a
killed job leaves at most a stray ``*.tmp`` behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator


_UMASK = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    Args:
        path: final destination.
        suffix: suffix for the temporary file (some writers pick a format from it).

    On an exception the temporary file is removed and ``path`` is left untouched. The new
    file gets the mode of the file it replaces, or the usual ``0o666 & ~umask`` for a new one
    (``mkstemp`` alone would leave every rewritten file at 0600).

    A symlink at ``path`` is replaced by the new regular file; the file it points to is never
    written. That is deliberate: links in our work folders point into data that must stay
    read-only (``../shared/data``, a corpus linked into a synthetic-query folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class FolderBusyError(BlockingIOError):
    """Another process holds a folder's lock (:func:`folder_lock`)."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str, *, wait: bool = False,
                on_wait: Any = None, poll_seconds: float = 2.0) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder/.lock`` for the length of the block, so two jobs
    never write one output folder at once (a score folder, an encoding folder).

    POSIX ``flock`` (stdlib ``fcntl``, as :meth:`~retrieval_distill.index.store.IndexStore.lock`):
    the kernel releases it when the holder exits or is killed, so a killed job never leaves a
    stale lock behind and its successor resumes at once. The holder's pid is written into the
    lock file for the messages.

    Args:
        folder: the folder (created).
        what: how messages name the job (``"a scoring job"``).
        wait: block until the holder finishes (then the caller finds its work done and reuses
            it) instead of raising.
        on_wait: called once with a message when ``wait`` and the lock is held elsewhere.
        poll_seconds: seconds between tries while waiting.

    Yields:
        the lock file's path.

    Raises:
        FolderBusyError: the lock is held by another process and ``wait`` is False (the
            message names the folder and the holder's pid).
        ValueError: ``.lock`` is a directory or a symbolic link (never followed), or cannot be
            opened at all.
        NotADirectoryError: ``folder`` is a file.

    A lock file this process may not write (another user made it in a shared folder) is
    locked through a read-only descriptor. A folder where none exists and none can be made
    (read-only storage) is not locked: nothing can write there, and reading a finished folder
    must work.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: a file, not a folder (give an output folder)")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fh = _open_lock_file(path)
    if fh is None:
        # a folder this process cannot write, where no job ever locked (a shared, finished,
        # read-only encoding cache): nothing to guard; a reader goes on, a writer fails on
        # its first write
        yield path
        return
    try:
        told = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                msg = f"{folder}: {what} is already writing this folder (pid {holder}, lock {path})"
                if not wait:
                    raise FolderBusyError(msg + "; wait for it to finish or use another output folder") from None
                if not told and on_wait is not None:
                    on_wait(msg + "; waiting for it, then reusing what it wrote")
                told = True
                time.sleep(poll_seconds)
        if fh.writable():  # another user's lock file is locked through a read-only descriptor
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
        yield path
    finally:
        fh.close()  # closing the descriptor releases the flock


def _open_lock_file(path: Path):
    """Open ``path`` for :func:`folder_lock`: read-write (created), or read-only where this
    process may not write it (a lock file another user created in a shared folder; flock works
    on a read-only descriptor), or ``None`` where there is none and none can be made (read-only
    storage). Never follows a symbolic link.

    Raises:
        ValueError: ``path`` is a directory or a symbolic link, or an existing lock file this
            process cannot open at all (message names it).
    """
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | nofollow, 0o666), "r+")
    except IsADirectoryError:
        raise ValueError(f"{path}: a directory, not a lock file (remove it)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path}: a symbolic link, not a lock file (remove it)") from None
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    try:
        return os.fdopen(os.open(path, os.O_RDONLY | nofollow), "r")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"{path}: the folder's lock file cannot be opened ({e.strerror})") from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint_files(paths: list[str | os.PathLike]) -> str:
    """A stable short fingerprint (16 hex chars) of several files' names and bytes."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


def fingerprint_obj(obj: Any) -> str:
    """A stable short fingerprint (16 hex chars) of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def set_threads(n: int | None = None) -> None:
    """Set torch and FAISS intra-op threads (default: all cores, at most 2 here)."""
    n = n or os.cpu_count() or 1
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass


def read_yaml_mapping(path: str | os.PathLike, what: str = "config file") -> dict:
    """Read a YAML file whose top level must be a mapping.

    Args:
        path: the file.
        what: what the file is, for messages (``"index spec"``, ``"config file"``).

    Raises:
        FileNotFoundError: no such file (``<path>: no such <what>``).
        ValueError: not valid YAML, or the top level is not a mapping (message names the file).
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such {what}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: a {what} must be a mapping at the top level")
    return raw
