"""The index version manifest (``manifest.json``) and the errors raised when reading one.

A version folder (DESIGN.md, "index") holds:

* ``index.faiss``: the FAISS index (labels are line numbers of ``docids``);
* ``docids``: line ``i`` is the docid whose FAISS label is ``i``; an empty line is a label
  that no longer names a document (removed by an incremental rebuild);
* ``doc_hashes.npy``: uint64 per line of ``docids``, a hash of the document text, so a
  rebuild can tell changed documents from unchanged ones (0 on empty lines);
* ``tombstones.npy`` (optional): labels still stored in the index but deleted (HNSW
  cannot remove vectors; searches filter these out with an ``IDSelector``);
* ``manifest.json``: :class:`IndexManifest`, written last, so a folder without it is
  half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_VERSION = 2
"""Bumped when the folder layout changes. 1: pre-release layout (no doc hashes, labels = rows)."""

MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
DOCIDS_FILE = "docids"
DOC_HASHES_FILE = "doc_hashes.npy"
TOMBSTONES_FILE = "tombstones.npy"


class IndexError_(Exception):
    """Base class of index errors (named with a trailing underscore to avoid the builtin)."""


class IndexFormatError(IndexError_, ValueError):
    """An index folder is missing a file, from an older format, or inconsistent; the
    message names the file."""


class EncoderMismatchError(IndexError_, ValueError):
    """The encoder given to a searcher is not the one that encoded the index's documents."""


class EncoderRef(BaseModel):
    """A model that encoded one side: its name (path, alias or hub name) and weights fingerprint."""

    model_config = ConfigDict(extra="forbid")
    name: str
    fingerprint: str


class IndexManifest(BaseModel):
    """Everything needed to know what an index version is and whether it is stale.

    Attributes:
        format_version: layout version (:data:`FORMAT_VERSION`).
        version_id: the version folder's name.
        encoder: the document-side encoder (it encoded every vector in the index).
        query_encoder: the query-side encoder expected at search time (same as ``encoder``
            for symmetric students; a student for asymmetric serving).
        documents_side: who encoded the documents: ``student`` (symmetric serving) or
            ``teacher`` (an embedding teacher; queries by an aligned student).
        dim: vector dimension.
        metric: ``ip`` (inner product) or ``l2``.
        normalized: vectors were L2-normalised before indexing (inner product = cosine).
        factory: the FAISS factory string the user asked for (``Flat``, ``HNSW32``,
            ``IVF256,PQ48``, ``SQ8``); ``faiss_factory`` is what was passed to FAISS.
        params: build and search parameters (``efConstruction``, ``efSearch``, ``nprobe``, ...).
        corpus_fingerprint: fingerprint of the (docid, text) pairs in corpus order.
        corpus: a readable name of the corpus (dataset id or path).
        doc_count: documents answerable by the index (excludes tombstones).
        ntotal: vectors stored in the FAISS index (includes tombstones).
        tombstones: vectors stored but deleted.
        build_seconds: wall-clock seconds to build (encoding excluded; see ``encode_seconds``).
        encode_seconds: wall-clock seconds spent encoding for this version (0 when cached).
        trained_on: documents in the corpus when the coarse quantiser / PQ was last trained
            (IVF/PQ only); ``changed_since_train`` counts documents added or removed since.
        built_from: ``full`` or ``incremental:<parent version id>``.
        libraries: versions of faiss, numpy, torch, sentence-transformers, retrieval-distill.
        created_at: ISO-8601 UTC time.
        extra: caller-supplied fields (``manifest_extra``).
    """

    model_config = ConfigDict(extra="forbid")

    format_version: int
    version_id: str
    encoder: EncoderRef
    query_encoder: EncoderRef | None = None
    documents_side: Literal["student", "teacher"] = "student"
    dim: int = Field(gt=0)
    metric: Literal["ip", "l2"] = "ip"
    normalized: bool = True
    factory: str
    faiss_factory: str
    params: dict[str, Any] = Field(default_factory=dict)
    corpus_fingerprint: str
    corpus: str = ""
    doc_count: int = Field(ge=0)
    ntotal: int = Field(ge=0)
    tombstones: int = 0
    build_seconds: float = 0.0
    encode_seconds: float = 0.0
    trained_on: int | None = None
    changed_since_train: int = 0
    built_from: str = "full"
    libraries: dict[str, str] = Field(default_factory=dict)
    created_at: str = ""
    extra: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "IndexManifest":
        """Read and validate ``folder/manifest.json``.

        Raises:
            IndexFormatError: the file is missing, not JSON, from an older format, or
                fails validation (each message names the file).
        """
        path = Path(folder) / MANIFEST
        if not path.exists():
            hint = ""
            if (Path(folder) / INDEX_FILE).exists():
                hint = " (an index.faiss without a manifest: a half-written version or a pre-manifest layout; rebuild it)"
            raise IndexFormatError(f"{path}: missing manifest{hint}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise IndexFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(raw, dict):
            raise IndexFormatError(f"{path}: expected a JSON object")
        fv = raw.get("format_version")
        if not isinstance(fv, int):
            raise IndexFormatError(f"{path}: no integer 'format_version' (an index from before versioned manifests; rebuild it)")
        if fv < FORMAT_VERSION:
            raise IndexFormatError(
                f"{path}: index format version {fv} is older than this code's {FORMAT_VERSION}; "
                f"rebuild it with `rd index build` or `rd index rebuild SPEC`"
            )
        if fv > FORMAT_VERSION:
            raise IndexFormatError(
                f"{path}: index format version {fv} is newer than this code's {FORMAT_VERSION}; upgrade retrieval-distill"
            )
        if "encoder" not in raw:
            raise IndexFormatError(f"{path}: the manifest names no encoder ('encoder' missing); it cannot be searched or rebuilt")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise IndexFormatError(f"{path}: invalid manifest: {e}") from None

    def write(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/manifest.json`` atomically."""
        from retrieval_distill.utils import write_text_atomic

        path = Path(folder) / MANIFEST
        write_text_atomic(path, self.model_dump_json(indent=2) + "\n")
        return path


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an index's bytes and vectors."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("faiss-cpu", "faiss-gpu", "numpy", "torch", "sentence-transformers", "transformers", "retrieval-distill"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out
