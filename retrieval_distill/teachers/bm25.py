"""BM25 as a teacher (a member of ensembles): Lucene BM25 of (query, docid) pairs.

Scores come from a Pyserini/Lucene index built by
:func:`retrieval_distill.search.bm25.build_bm25_index` (Robertson & Zaragoza 2009, "The
Probabilistic Relevance Framework: BM25 and Beyond"; Lucene's BM25Similarity with
Pyserini's BEIR settings k1=0.9, b=0.4), through
:meth:`retrieval_distill.search.bm25.BM25Searcher.score_pairs`. BM25 needs the index's
term statistics, so only :meth:`BM25Teacher.score_ids` works; :meth:`BM25Teacher.score`
(texts only) raises.

Spec options: ``index`` (Lucene index folder, required), ``k1`` (0.9), ``b`` (0.4).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from retrieval_distill.teachers.base import TeacherSpec, check_options, register_teacher, spec_fingerprint
from retrieval_distill.utils import fingerprint_files

log = logging.getLogger(__name__)


@register_teacher("bm25")
class BM25Teacher:
    """BM25 scores from a Lucene index (scale ``bm25``: unbounded, query-dependent sums).

    Raises:
        ValueError: no ``index`` option, or an option other than ``index``, ``k1``, ``b``.
        FileNotFoundError: the index folder does not exist.
    """

    scale = "bm25"
    OPTIONS = frozenset({"index", "k1", "b"})

    def __init__(self, spec: TeacherSpec):
        check_options(spec, self.OPTIONS)
        from retrieval_distill.search.bm25 import BM25Searcher

        self.spec = spec
        index = spec.options.get("index")
        if not index:
            raise ValueError('bm25 teacher needs options={"index": <Lucene index folder>} (build one with `rd bm25 index`)')
        self.index_dir = Path(index)
        if not self.index_dir.is_dir():
            raise FileNotFoundError(f"{self.index_dir}: BM25 index folder does not exist (build it with `rd bm25 index`)")
        self.k1 = float(spec.options.get("k1", 0.9))
        self.b = float(spec.options.get("b", 0.4))
        self.searcher = BM25Searcher(self.index_dir, k1=self.k1, b=self.b)
        self._fp: str | None = None
        self._known: set[str] = set()
        self._empty: set[str] = set()

    @property
    def fingerprint(self) -> str:
        """Spec (index path excluded) plus a fingerprint of the index's segment files."""
        if self._fp is None:
            files = [p for p in self.index_dir.iterdir() if p.is_file() and (p.name.startswith("segments") or p.suffix in (".si", ".json"))]
            spec = self.spec.model_copy(deep=True)
            spec.options = {k: v for k, v in spec.options.items() if k != "index"}
            self._fp = spec_fingerprint(spec, fingerprint_files(files) if files else "")
        return self._fp

    def score(self, queries: list[str], passages: list[str]) -> np.ndarray:
        """Not available: BM25 needs the index (term statistics); use :meth:`score_ids`.

        Raises:
            TypeError: always.
        """
        raise TypeError(
            "the bm25 teacher scores (qid, docid) pairs against its Lucene index; call score_ids(...) or "
            "retrieval_distill.teachers.score_pairs(...), not score(queries, passages)"
        )

    def score_ids(self, qids: list[str], queries: list[str], docids: list[str], passages: list[str]) -> np.ndarray:
        """BM25 of each (query, docid) pair; ``passages`` is unused (the index holds the text).

        Returns:
            float32 (n,); 0.0 where no query term occurs in the document, and for an empty
            passage that Lucene did not index (Cranfield 471, 995: BM25 of an empty
            document is 0 by definition; counted in ``empty_unindexed``).

        Raises:
            KeyError: a docid with a non-empty passage is not in the index.
        """
        if not (len(qids) == len(queries) == len(docids)):
            raise ValueError("qids, queries and docids must have the same length")
        out = np.zeros(len(docids), dtype=np.float32)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, (q, t) in enumerate(zip(qids, queries)):
            groups.setdefault((q, t), []).append(i)
        text_of: dict[str, str] | None = None  # built only if some docid is missing from the index
        for d in dict.fromkeys(docids):
            if d not in self._known and d not in self._empty:
                # Lucene scores an unknown docid 0.0 without complaint: refuse instead,
                # unless the passage is empty (Lucene does not index empty documents)
                if self.searcher.searcher.doc(d) is None:
                    if text_of is None:
                        ok = passages is not None and len(passages) == len(docids)
                        text_of = dict(zip(docids, passages)) if ok else {}
                    if d in text_of and not str(text_of[d]).strip():
                        self._empty.add(d)
                        log.warning("docid %r: empty passage, not in the BM25 index %s: scored 0.0", d, self.index_dir)
                        continue
                    raise KeyError(f"docid {d!r} is not in the BM25 index {self.index_dir}")
                self._known.add(d)
        for (_, text), idx in groups.items():
            keep = [i for i in idx if docids[i] not in self._empty]
            if keep:
                out[keep] = self.searcher.score_pairs(text, [docids[i] for i in keep])
        return out

    @property
    def empty_unindexed(self) -> int:
        """How many distinct empty, unindexed documents were scored 0.0 so far."""
        return len(self._empty)
