"""Index versions on disk and the store that switches between them atomically.

Layout of a store ``ROOT``::

    ROOT/CURRENT                      one line: the current version id (replaced with os.replace)
    ROOT/versions/<version-id>/       a complete version (manifest.json present)
    ROOT/versions/.<id>.tmp-<pid>/    a version being written by process <pid>
    ROOT/encodings/...                encoding caches (see encode_corpus)

A version folder is renamed into place only once every file is written, and ``CURRENT``
only ever names a complete version, so a reader (the search service, a searcher) sees the
old version or the new one, never a mixture; a process killed at any moment leaves at most
a ``.tmp-<pid>`` folder, which :meth:`IndexStore.cleanup` removes once that process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np

from retrieval_distill.index.manifest import (
    DOC_HASHES_FILE,
    DOCIDS_FILE,
    INDEX_FILE,
    MANIFEST,
    TOMBSTONES_FILE,
    IndexFormatError,
    IndexManifest,
)
from retrieval_distill.utils import folder_lock, write_text_atomic

CURRENT = "CURRENT"
VERSIONS = "versions"
TMP_RE = re.compile(r"^\.(?P<vid>.+)\.tmp-(?P<pid>\d+)$")


class IndexVersion:
    """One index version folder (read side).

    Args:
        path: the version folder (``index.faiss``, ``docids``, ``manifest.json``, ...).

    Attributes (lazy): ``manifest`` (:class:`IndexManifest`), ``docids`` (list of str, line
    ``i`` = docid of FAISS label ``i``; ``""`` for a removed label), ``doc_hashes``
    (uint64 array), ``tombstones`` (int64 labels to exclude), ``index`` (the FAISS index,
    search parameters from the manifest applied), ``label_of`` (docid -> label).

    Raises (on access or :meth:`load`):
        FileNotFoundError: the folder does not exist.
        IndexFormatError: missing manifest or index file, older format, no encoder named,
            duplicate docid (``docids:LINE``), empty corpus, counts or dims that disagree.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no index version folder here")

    def __repr__(self) -> str:
        return f"IndexVersion({str(self.path)!r})"

    @property
    def version_id(self) -> str:
        return self.path.name

    @cached_property
    def manifest(self) -> IndexManifest:
        return IndexManifest.read(self.path)

    @cached_property
    def docids(self) -> list[str]:
        path = self.path / DOCIDS_FILE
        if not path.exists():
            raise IndexFormatError(f"{path}: missing docids file (row -> docid map)")
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        seen: dict[str, int] = {}
        for i, d in enumerate(lines, 1):
            if not d:
                continue
            if d in seen:
                raise IndexFormatError(f"{path}:{i}: duplicate docid {d!r} (first on line {seen[d]})")
            seen[d] = i
        if not seen:
            raise IndexFormatError(f"{path}: empty corpus (no docids)")
        return lines

    @cached_property
    def label_of(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.docids) if d}

    @cached_property
    def doc_hashes(self) -> np.ndarray:
        path = self.path / DOC_HASHES_FILE
        if not path.exists():
            raise IndexFormatError(f"{path}: missing per-document hashes")
        arr = np.load(path, allow_pickle=False)
        if arr.shape != (len(self.docids),):
            raise IndexFormatError(f"{path}: {arr.shape[0]} hashes for {len(self.docids)} docids lines")
        return arr

    @cached_property
    def tombstones(self) -> np.ndarray:
        path = self.path / TOMBSTONES_FILE
        if not path.exists():
            return np.zeros(0, dtype=np.int64)
        return np.load(path, allow_pickle=False).astype(np.int64)

    @cached_property
    def index(self):
        import faiss

        from retrieval_distill.index.build import apply_search_params

        path = self.path / INDEX_FILE
        if not path.exists():
            raise IndexFormatError(f"{path}: missing FAISS index file")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise IndexFormatError(f"{path}: FAISS cannot read it: {str(e).splitlines()[0]}") from None
        apply_search_params(index, self.manifest.params)
        return index

    @property
    def doc_count(self) -> int:
        return len(self.label_of)

    def live_docids(self) -> list[str]:
        """Docids answerable by this version, in label order."""
        return [d for d in self.docids if d]

    def load(self) -> "IndexVersion":
        """Read everything and check it agrees; returns ``self``.

        Raises:
            IndexFormatError: see the class docstring; every message names the file.
        """
        m = self.manifest
        docids_path = self.path / DOCIDS_FILE
        _ = self.docids
        if self.doc_count != m.doc_count:
            raise IndexFormatError(f"{docids_path}: {self.doc_count} docids, the manifest says {m.doc_count}")
        _ = self.doc_hashes
        index = self.index
        ipath = self.path / INDEX_FILE
        if index.d != m.dim:
            raise IndexFormatError(f"{ipath}: dimension {index.d}, the manifest says {m.dim}")
        if index.ntotal != m.ntotal:
            raise IndexFormatError(f"{ipath}: {index.ntotal} vectors, the manifest says {m.ntotal}")
        if len(self.tombstones) != m.tombstones:
            raise IndexFormatError(f"{self.path / TOMBSTONES_FILE}: {len(self.tombstones)} tombstones, the manifest says {m.tombstones}")
        return self


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's live process
        return True
    return True


class IndexStore:
    """Versioned index folders under ``root`` with an atomically switched ``CURRENT`` pointer.

    Args:
        root: the store folder (created on first write).
        keep: complete versions to keep on :meth:`cleanup` (the current one always stays).
    """

    def __init__(self, root: str | os.PathLike, keep: int = 3):
        self.root = Path(root)
        self.keep = keep

    def __repr__(self) -> str:
        return f"IndexStore({str(self.root)!r})"

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS

    def current_id(self) -> str | None:
        """The id named by ``CURRENT``, or None when nothing was published.

        Raises:
            IndexFormatError: ``CURRENT`` is unreadable or names something that is not a
                version folder name (a path such as ``../../etc`` or ``/etc``, several
                components, a hidden or half-written folder): the store never follows it
                outside ``versions/``.
        """
        path = self.root / CURRENT
        if not path.exists():
            return None
        try:
            vid = path.read_text(encoding="utf-8").strip()
        except (UnicodeDecodeError, IsADirectoryError) as e:
            raise IndexFormatError(f"{path}: cannot be read as a version id ({e})") from None
        if not vid:
            return None
        if (
            len(vid.split()) != 1
            or "/" in vid
            or "\\" in vid
            or "\0" in vid
            or vid.startswith(".")
            or Path(vid).is_absolute()
        ):
            raise IndexFormatError(
                f"{path}: names {vid[:200]!r}, which is not a version folder name; CURRENT must name one "
                f"folder inside {self.versions_dir} (refused, nothing outside the store is read)"
            )
        return vid

    def current(self) -> IndexVersion:
        """The current version (not yet loaded; call ``.load()``).

        Raises:
            FileNotFoundError: nothing published, or ``CURRENT`` names a missing folder.
            IndexFormatError: ``CURRENT`` names something outside ``versions/`` (see
                :meth:`current_id`), or a version folder that is a link leading out of it.
        """
        vid = self.current_id()
        if vid is None:
            raise FileNotFoundError(f"{self.root / CURRENT}: no current index version (build one with `rd index build`)")
        path = self.versions_dir / vid
        if not path.is_dir():
            raise FileNotFoundError(f"{self.root / CURRENT}: names version {vid!r}, but {path} does not exist")
        if path.is_symlink() or path.resolve().parent != self.versions_dir.resolve():
            raise IndexFormatError(
                f"{self.root / CURRENT}: names version {vid!r}, but {path} is a link leading outside "
                f"{self.versions_dir}; refused"
            )
        return IndexVersion(path)

    def versions(self) -> list[IndexVersion]:
        """Complete versions (folders with a manifest), oldest first (ids sort by time)."""
        if not self.versions_dir.is_dir():
            return []
        return [
            IndexVersion(p)
            for p in sorted(self.versions_dir.iterdir())
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()
        ]

    def new_version_dir(self, tag: str = "") -> Path:
        """A fresh, unused version folder path ``versions/<UTC time>-<tag>`` (not created)."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        tag = re.sub(r"[^A-Za-z0-9]+", "-", tag).strip("-").lower()
        base = f"{stamp}-{tag}" if tag else stamp
        path, i = self.versions_dir / base, 1
        while path.exists() or any(self.versions_dir.glob(f".{path.name}.tmp-*")):
            i += 1
            path = self.versions_dir / f"{base}-{i}"
        return path

    def publish(self, version_dir: str | os.PathLike | IndexVersion, cleanup: bool = True) -> IndexVersion:
        """Make ``version_dir`` current: load and check it, then replace ``CURRENT`` atomically.

        Args:
            version_dir: a complete version inside ``root/versions``.
            cleanup: then remove old versions beyond ``keep`` and dead half-written folders.

        Raises:
            ValueError: the folder is not inside this store's ``versions``.
            IndexFormatError: the version does not load (it is not published).
        """
        v = version_dir if isinstance(version_dir, IndexVersion) else IndexVersion(version_dir)
        if v.path.resolve().parent != self.versions_dir.resolve():
            raise ValueError(f"{v.path}: not a version of {self.root} (expected a folder in {self.versions_dir})")
        v.load()
        write_text_atomic(self.root / CURRENT, v.version_id + "\n")
        if cleanup:
            self.cleanup()
        return v

    def half_written(self) -> list[Path]:
        """Folders under ``versions`` that are not complete versions: ``.tmp-<pid>`` folders
        (of any process, alive or not) and folders without a manifest."""
        if not self.versions_dir.is_dir():
            return []
        out = []
        for p in sorted(self.versions_dir.iterdir()):
            if not p.is_dir():
                continue
            if TMP_RE.match(p.name) or not (p / MANIFEST).exists():
                out.append(p)
        return out

    def cleanup(self, keep: int | None = None) -> list[Path]:
        """Remove half-written folders of processes that no longer run, and complete versions
        beyond the newest ``keep`` (never the current one). Returns the removed paths."""
        keep = self.keep if keep is None else keep
        removed = []
        for p in self.half_written():
            m = TMP_RE.match(p.name)
            if m and _pid_alive(int(m.group("pid"))) and int(m.group("pid")) != os.getpid():
                continue  # another process is writing it right now
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        cur = self.current_id()
        versions = self.versions()
        old = [v for v in versions[: max(0, len(versions) - keep)] if v.version_id != cur]
        for v in old:
            shutil.rmtree(v.path, ignore_errors=True)
            removed.append(v.path)
        return removed

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the store (``ROOT/.lock``, flock, :func:`~retrieval_distill.utils.folder_lock`)
        for the length of a rebuild.

        Raises:
            BlockingIOError: another rebuild holds it (:class:`~retrieval_distill.utils.FolderBusyError`).
        """
        with folder_lock(self.root, "another rebuild of this index"):
            yield


def open_version(path: str | os.PathLike) -> IndexVersion:
    """An :class:`IndexVersion` from a version folder or a store root (its current version)."""
    p = Path(path)
    if (p / CURRENT).exists() or (p / VERSIONS).is_dir():
        return IndexStore(p).current()
    return IndexVersion(p)
