"""What the service holds per mode: one loaded index version with its searcher and encoder.

A :class:`Runtime` is immutable once built. Hot reload builds a new one completely (load
the FAISS index, load or reuse the query encoder, run a warm-up query) and then the app
swaps one reference; requests already holding the old runtime finish on it, so nothing
in flight is dropped and every answer names the version that produced it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval_distill.search.base import Hit

log = logging.getLogger("rd.search_api")


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
        query_backend: what encodes queries: ``{"backend": "onnx"|"onnx-int8"|"torch",
            "requested": ..., "min_cosine": worst cosine to torch on the check sample or None,
            "fallback_reason": why the requested ONNX backend is not used, or None}``.
        loaded_at: Unix time the runtime finished loading and warming.
    """

    mode: str
    version_id: str
    path: Path
    manifest: dict[str, Any]
    searcher: Any
    encoder: Any
    encoder_key: tuple = ()
    query_backend: dict[str, Any] = field(default_factory=dict)
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

    Args:
        query_backend: ``onnx`` puts each new encoder's query side on ONNX Runtime
            (:meth:`Encoder.use_onnx_queries`); if the export or its fidelity check fails the
            encoder stays on torch and :meth:`backend_info` says why. ``torch``: plain
            ``SentenceTransformer.encode``.
        query_quantize: ``none`` or ``int8`` (ONNX only).
        onnx_threads: ORT intra-op threads.
        min_cosine: fidelity floor of the ONNX encoder (``None``: its default for ``query_quantize``).
    """

    def __init__(
        self, query_backend: str = "torch", query_quantize: str = "none", onnx_threads: int = 1,
        min_cosine: float | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._encoders: dict[tuple, Any] = {}
        self._info: dict[tuple, dict[str, Any]] = {}
        self.query_backend = query_backend
        self.query_quantize = query_quantize
        self.onnx_threads = onnx_threads
        self.min_cosine = min_cosine

    def _requested(self) -> str:
        if self.query_backend != "onnx":
            return "torch"
        return "onnx" if self.query_quantize == "none" else f"onnx-{self.query_quantize}"

    def get(self, model: str, query_model: str | None = None, normalize: bool = True) -> Any:
        from retrieval_distill.models.encoder import Encoder

        key = (str(model), str(query_model) if query_model else None, bool(normalize))
        with self._lock:
            enc = self._encoders.get(key)
            if enc is None:
                enc = Encoder(model, query_model=query_model, normalize=normalize, show_progress=False)
                info: dict[str, Any] = {"requested": self._requested(), "min_cosine": None, "fallback_reason": None}
                if self.query_backend == "onnx":
                    try:
                        onnx = enc.use_onnx_queries(
                            quantize=self.query_quantize, threads=self.onnx_threads, min_cosine=self.min_cosine
                        )
                        info["min_cosine"] = round(float(onnx.min_cosine_seen), 5)
                    except Exception as e:  # noqa: BLE001 - fidelity failure or export error: serve with torch
                        info["fallback_reason"] = f"{type(e).__name__}: {e}"
                        log.error("query encoder %s: ONNX backend not used, falling back to torch: %s", key[1] or key[0], e)
                info["backend"] = enc.query_backend
                self._encoders[key] = enc
                self._info[key] = info
            return enc

    def backend_info(self, model: str, query_model: str | None = None, normalize: bool = True) -> dict[str, Any]:
        """How the encoder of this key encodes queries (see :attr:`Runtime.query_backend`)."""
        key = (str(model), str(query_model) if query_model else None, bool(normalize))
        with self._lock:
            return dict(self._info.get(key, {}))

    def retain(self, keys: set[tuple]) -> None:
        """Drop encoders not in ``keys`` (called after a swap so old models can be freed)."""
        with self._lock:
            for k in list(self._encoders):
                if k not in keys:
                    del self._encoders[k]
                    self._info.pop(k, None)


def current_version_id(root: str | Path) -> str | None:
    """The version id the store's ``CURRENT`` names (``None`` when nothing is published)."""
    from retrieval_distill.index.store import IndexStore

    return IndexStore(root).current_id()


def load_runtime(mode: str, settings: Any, encoders: EncoderCache) -> Runtime:
    """Load the store's current version for ``mode`` with its query encoder (blocking).

    ``symmetric``: the query encoder is ``settings.model`` or the manifest's encoder; a
    query-side student as ``settings.model`` encodes queries beside the index's document
    encoder (refused if its card names another document encoder).
    ``asymmetric``: documents by the manifest's encoder (the teacher), queries by
    ``settings.asym_query_model`` or the manifest's query encoder (the aligned student).

    Raises:
        FileNotFoundError: the store has no current version.
        IndexFormatError: the version does not load (message names the file).
        EncoderMismatchError: the query encoder does not fit the index (fingerprint or dim).
        ValueError: asymmetric mode without a distinct student query model.
    """
    from retrieval_distill.distill.query_side import document_encoder_of
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
    elif settings.model and document_encoder_of(settings.model) is not None:
        # a query-side student (rd student train, mode: query_side) beside the unchanged index;
        # the searcher refuses it if it was trained against another document encoder
        key = (m.encoder.name, settings.model)
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
        query_backend=encoders.backend_info(*key),
    )
