"""What the service holds per mode: one loaded index version with its searcher and encoder.

A :class:`Runtime` is immutable once built. Hot reload builds a new one completely (load
the FAISS index, load or reuse the query encoder, run a warm-up query) and then the app
swaps one reference; requests already holding the old runtime finish on it, so nothing
in flight is dropped and every answer names the version that produced it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval_distill.search.base import Hit


class ModeNotReady(RuntimeError):
    """The mode is configured but has no loaded index version (answers 503)."""


@dataclass
class Runtime:
    """A loaded index version of one mode.

    Attributes:
        mode: ``symmetric`` or ``asymmetric``.
        version_id: the version folder's name (answers carry it as ``index_version``).
        path: the version folder.
        manifest: the version's manifest as a JSON-ready dict.
        searcher: a :class:`retrieval_distill.search.dense.DenseSearcher` (or asymmetric one).
        encoder: the query encoder (``encode_queries(list[str]) -> float32 (n, d)``).
        loaded_at: Unix time the runtime finished loading and warming.
    """

    mode: str
    version_id: str
    path: Path
    manifest: dict[str, Any]
    searcher: Any
    encoder: Any
    encoder_key: tuple = ()
    loaded_at: float = field(default_factory=time.time)

    def search_texts(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Encode ``queries`` in one forward pass and search the index.

        Args:
            queries: n query strings (n >= 1).
            k: hits per query.

        Returns:
            n lists of at most ``k`` :class:`Hit`, best first.
        """
        return self.searcher.batch_search(list(queries), k)


class EncoderCache:
    """Query encoders by (document model, query model), reused across index versions.

    A reload to a version encoded by the same model then costs only the FAISS load.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._encoders: dict[tuple, Any] = {}

    def get(self, model: str, query_model: str | None = None, normalize: bool = True) -> Any:
        from retrieval_distill.models.encoder import Encoder

        key = (str(model), str(query_model) if query_model else None, bool(normalize))
        with self._lock:
            enc = self._encoders.get(key)
            if enc is None:
                enc = Encoder(model, query_model=query_model, normalize=normalize, show_progress=False)
                self._encoders[key] = enc
            return enc

    def retain(self, keys: set[tuple]) -> None:
        """Drop encoders not in ``keys`` (called after a swap so old models can be freed)."""
        with self._lock:
            for k in list(self._encoders):
                if k not in keys:
                    del self._encoders[k]


def current_version_id(root: str | Path) -> str | None:
    """The version id the store's ``CURRENT`` names (``None`` when nothing is published)."""
    from retrieval_distill.index.store import IndexStore

    return IndexStore(root).current_id()


def load_runtime(mode: str, settings: Any, encoders: EncoderCache) -> Runtime:
    """Load the store's current version for ``mode`` with its query encoder (blocking).

    ``symmetric``: the query encoder is ``settings.model`` or the manifest's encoder.
    ``asymmetric``: documents by the manifest's encoder (the teacher), queries by
    ``settings.asym_query_model`` or the manifest's query encoder (the aligned student).

    Raises:
        FileNotFoundError: the store has no current version.
        IndexFormatError: the version does not load (message names the file).
        EncoderMismatchError: the query encoder does not fit the index (fingerprint or dim).
        ValueError: asymmetric mode without a distinct student query model.
    """
    from retrieval_distill.index.manifest import EncoderMismatchError
    from retrieval_distill.index.store import IndexStore
    from retrieval_distill.search.dense import AsymmetricSearcher, DenseSearcher

    root = settings.index_root_for(mode)
    if root is None:
        raise ValueError(f"mode {mode!r} has no index root configured")
    version = IndexStore(root).current().load()
    m = version.manifest
    if mode == "asymmetric":
        student = settings.asym_query_model or (m.query_encoder.name if m.query_encoder else None)
        if not student or student == m.encoder.name:
            raise ValueError(
                f"{version.path}: asymmetric mode needs a student query model distinct from the document "
                f"encoder {m.encoder.name!r}; set RD_ASYM_QUERY_MODEL (or build the index with query_encoder)"
            )
        key = (m.encoder.name, student)
    else:
        doc_model = settings.model or m.encoder.name
        q = m.query_encoder.name if m.query_encoder and m.query_encoder.name != m.encoder.name else None
        key = (doc_model, q)
    key = (*key, bool(m.normalized))
    encoder = encoders.get(*key)
    qm = encoder.query_model
    qdim = int(qm.get_embedding_dimension() if hasattr(qm, "get_embedding_dimension") else qm.get_sentence_embedding_dimension())
    if qdim != m.dim:
        raise EncoderMismatchError(f"{version.path}: index dim {m.dim}, query encoder {key[1] or key[0]!r} gives dim {qdim}")
    threads = getattr(settings, "faiss_threads", None)
    if key[1] is not None:
        searcher = AsymmetricSearcher(version, encoder, threads=threads)
    else:
        searcher = DenseSearcher(version, encoder, threads=threads)
    return Runtime(
        mode=mode,
        version_id=version.version_id,
        path=version.path,
        manifest=m.model_dump(mode="json"),
        searcher=searcher,
        encoder=encoder,
        encoder_key=key,
    )
