"""Dense first-stage search over a FAISS index version (DESIGN.md, Searcher seam).

* :class:`DenseSearcher`: queries are encoded by the encoder's query side and searched in an
  :class:`~retrieval_distill.index.store.IndexVersion`; the encoder's document side must
  be the one that encoded the index (weights fingerprint checked against the manifest).
* :class:`AsymmetricSearcher`: the same, for indexes whose documents were encoded by an
  embedding *teacher* while queries are encoded by a small *student* aligned to the
  teacher's space (``Encoder(model=teacher, query_model=student)``), the set-up of
  "asymmetric" distillation (e.g. LEAF, Vujanic & Rueckstiess 2025; Campos et al. 2023,
  "Quick Dense Retrievers Consume KALE").

Threads: FAISS uses OpenMP; a single query is fastest with one thread (no fork/join per
query), a batch with all cores. ``threads=None`` picks 1 for :meth:`search` and
``os.cpu_count()`` for batches; an integer fixes both. ``faiss.omp_set_num_threads`` is
process-wide.

Command line: ``rd index search ROOT "a query" --k 10``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retrieval_distill.index.manifest import EncoderMismatchError, IndexFormatError
from retrieval_distill.index.store import IndexVersion, open_version
from retrieval_distill.search.base import Hit

if TYPE_CHECKING:  # pragma: no cover
    from retrieval_distill.models.encoder import Encoder


def _load_encoder_for(version: IndexVersion, max_length: int | None = None) -> "Encoder":
    """The encoder the manifest names; ``max_length`` truncates its documents (verification
    re-encodes them as the build did; searching leaves it unset, so queries keep the model's
    own limit)."""
    from retrieval_distill.models.encoder import Encoder
    from retrieval_distill.models.resolve import ModelNotFoundError

    m = version.manifest
    q = m.query_encoder.name if m.query_encoder and m.query_encoder.name != m.encoder.name else None
    try:
        return Encoder(m.encoder.name, query_model=q, normalize=m.normalized, max_length=max_length)
    except ModelNotFoundError as e:
        raise IndexFormatError(
            f"{version.path / 'manifest.json'}: the index's encoder cannot be loaded ({e}); pass encoder= explicitly"
        ) from None


class DenseSearcher:
    """Search one index version with an encoder.

    Args:
        index_version_or_path: an :class:`IndexVersion`, a version folder, or a store root
            (its current version is used).
        encoder: the encoder; ``None`` loads the one named in the manifest.
        threads: FAISS OpenMP threads (see module docstring).
        params: search parameters overriding the manifest's (``efSearch``, ``nprobe``).
        check_encoder: refuse an encoder whose document side is not the manifest's encoder.

    Raises:
        IndexFormatError: the version does not load (see :class:`IndexVersion`), or the
            manifest's encoder cannot be found.
        EncoderMismatchError: wrong encoder (fingerprint or dimension).
    """

    def __init__(
        self,
        index_version_or_path: IndexVersion | str | os.PathLike,
        encoder: "Encoder | None" = None,
        threads: int | None = None,
        params: dict | None = None,
        check_encoder: bool = True,
    ):
        from retrieval_distill.index.build import apply_search_params

        v = index_version_or_path
        self.version = v if isinstance(v, IndexVersion) else open_version(Path(v))
        self.version.load()
        self.manifest = self.version.manifest
        self.index = self.version.index
        if params:
            apply_search_params(self.index, params)
        self.docids = np.array(self.version.docids + [""], dtype=object)  # label -1 -> ""
        self.threads = threads
        self._selector_params = self._make_selector()
        self.encoder = encoder if encoder is not None else (_load_encoder_for(self.version) if check_encoder else None)
        if self.encoder is not None and check_encoder:
            self._check_encoder(self.encoder)

    @property
    def index_version(self) -> str:
        return self.manifest.version_id

    def _make_selector(self):
        import faiss

        tomb = self.version.tombstones
        if not len(tomb):
            return None
        self._tomb_batch = faiss.IDSelectorBatch(tomb)  # keep a reference: FAISS does not own it
        self._tomb_not = faiss.IDSelectorNot(self._tomb_batch)
        return faiss.SearchParameters(sel=self._tomb_not)

    def _check_encoder(self, encoder: "Encoder") -> None:
        from retrieval_distill.index.build import encoder_refs

        from retrieval_distill.distill.query_side import check_query_encoder, refuse_as_document_encoder

        doc, _ = encoder_refs(encoder)
        m = self.manifest
        if doc.fingerprint != m.encoder.fingerprint:
            refuse_as_document_encoder(doc.name, "pass it as the query encoder (rd eval run --query-encoder, rd serve --model) "
                                                 "beside the index of those documents")
            raise EncoderMismatchError(
                f"{self.version.path / 'manifest.json'}: documents were encoded by {m.encoder.name!r} "
                f"(fingerprint {m.encoder.fingerprint}), but the encoder's document side is {doc.name!r} "
                f"(fingerprint {doc.fingerprint}); query vectors would not be comparable"
            )
        if not getattr(encoder, "symmetric", True):
            check_query_encoder(encoder.query_model_name, m.encoder.fingerprint, where=f"index {self.version.path}")
        if int(encoder.dim) != m.dim:
            raise EncoderMismatchError(f"{self.version.path}: index dim {m.dim}, encoder dim {encoder.dim}")

    def _threads(self, nq: int) -> int:
        if self.threads:
            return int(self.threads)
        return 1 if nq == 1 else (os.cpu_count() or 1)

    def search_vectors(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search query vectors.

        Args:
            q: float32 ``(n, dim)`` query vectors (normalised like the index's documents).
            k: hits per query (clamped to the number of documents).

        Returns:
            ``(scores, docids)``: float32 ``(n, k)`` (higher is better; negated squared L2
            for ``l2`` indexes) and an object array ``(n, k)`` of docids (``""`` where
            fewer than ``k`` hits exist).

        Raises:
            ValueError: ``k < 1`` or a wrong shape.
        """
        import faiss

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.manifest.dim:
            raise ValueError(f"query vectors must have shape (n, {self.manifest.dim}), got {q.shape}")
        k = min(k, self.version.doc_count)
        faiss.omp_set_num_threads(self._threads(len(q)))
        if self._selector_params is not None:
            scores, labels = self.index.search(q, k, params=self._selector_params)
        else:
            scores, labels = self.index.search(q, k)
        if self.manifest.metric == "l2":
            scores = -scores
        return scores.astype(np.float32), self.docids[labels]

    def _hits(self, scores: np.ndarray, docids: np.ndarray) -> list[Hit]:
        return [Hit(str(d), float(s), r) for r, (s, d) in enumerate(zip(scores, docids), 1) if d]

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.encoder is None:
            raise ValueError("this searcher has no encoder: use search_vectors")
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise ValueError("empty query")
        return self.encoder.encode_queries(texts)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """Top-``k`` hits for one query, best first.

        Raises:
            ValueError: empty query or ``k < 1``.
        """
        scores, docids = self.search_vectors(self._encode([query]), k)
        return self._hits(scores[0], docids[0])

    def batch_search(self, queries: dict[str, str] | list[str], k: int = 10) -> dict[str, list[Hit]] | list[list[Hit]]:
        """Top-``k`` hits for many queries: a dict qid -> hits for a dict input, a list for a list.

        Raises:
            ValueError: an empty query or ``k < 1``.
        """
        if isinstance(queries, dict):
            qids, texts = list(queries), list(queries.values())
        else:
            qids, texts = None, list(queries)
        if not texts:
            return {} if qids is not None else []
        scores, docids = self.search_vectors(self._encode(texts), k)
        hits = [self._hits(s, d) for s, d in zip(scores, docids)]
        return dict(zip(qids, hits)) if qids is not None else hits


class AsymmetricSearcher(DenseSearcher):
    """A :class:`DenseSearcher` over an index whose documents a teacher encoded, queried
    by a student: ``encoder`` must be ``Encoder(model=teacher, query_model=student)``.

    Raises:
        EncoderMismatchError: the encoder's document side is not the index's document
            encoder, the encoder has no separate query model, or dims differ.
    """

    def __init__(self, index_version_or_path, encoder: "Encoder", threads: int | None = None, params: dict | None = None):
        if encoder is None:
            raise ValueError("AsymmetricSearcher needs an encoder (Encoder(model=teacher, query_model=student))")
        if getattr(encoder, "symmetric", False):
            raise EncoderMismatchError(
                "AsymmetricSearcher: the encoder is symmetric (one model); pass Encoder(model=teacher, query_model=student)"
            )
        super().__init__(index_version_or_path, encoder=encoder, threads=threads, params=params, check_encoder=True)
