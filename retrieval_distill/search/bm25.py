"""BM25 through Pyserini (Lucene): build an index from a collection and search it.

Settings follow Pyserini's BEIR "flat" regression (one ``contents`` field holding
``title text``; BM25 k1=0.9, b=0.4; Lucene's default English analyzer with Porter
stemming), which gives nDCG@10 0.679 on SciFact test.

Command line::

    rd bm25 index beir/scifact work/bm25/scifact
    rd bm25 search work/bm25/scifact beir/scifact/test runs/bm25.test.trec --k 100
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from retrieval_distill.data.collections import Collection
from retrieval_distill.search.base import Hit
from retrieval_distill.search.jvm import ensure_jvm


def build_bm25_index(collection: Collection, index_dir: str | os.PathLike, threads: int = 2) -> Path:
    """Index ``collection.corpus`` with Lucene into ``index_dir`` (replaced atomically).

    The index stores document vectors, so BM25 scores of arbitrary (query, docid) pairs can
    be computed later (:meth:`BM25Searcher.score_pairs`).

    Returns:
        the index folder.
    """
    ensure_jvm()
    from pyserini.index.lucene import LuceneIndexer

    index_dir = Path(index_dir)
    tmp = index_dir.with_name(index_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    indexer = LuceneIndexer(
        str(tmp), threads=threads, args=["-index", str(tmp), "-threads", str(threads), "-storeDocvectors", "-storeRaw"]
    )
    batch = []
    for docid in tqdm(collection.corpus, desc="bm25 index", unit="doc"):
        batch.append({"id": docid, "contents": collection.doc_text(docid)})
        if len(batch) == 1000:
            indexer.add_batch_dict(batch)
            batch = []
    if batch:
        indexer.add_batch_dict(batch)
    indexer.close()
    (tmp / "rd-bm25.json").write_text(json.dumps({"docs": len(collection.corpus), "collection": collection.name}))
    if index_dir.exists():
        shutil.rmtree(index_dir)
    os.replace(tmp, index_dir)
    return index_dir


class BM25Searcher:
    """BM25 over a Lucene index (Pyserini ``LuceneSearcher``).

    Args:
        index_dir: a folder made by :func:`build_bm25_index` (or any Pyserini index).
        k1, b: BM25 parameters (Pyserini's BEIR defaults 0.9 / 0.4).
        threads: threads for :meth:`batch_search`.

    Raises:
        FileNotFoundError: ``index_dir`` does not exist, or holds no Lucene index (Lucene's
            reason in the message).
    """

    def __init__(self, index_dir: str | os.PathLike, k1: float = 0.9, b: float = 0.4, threads: int = 2):
        if not Path(index_dir).is_dir():
            raise FileNotFoundError(f"{index_dir}: no BM25 index here (build one with `rd bm25 index`)")
        ensure_jvm()
        from pyserini.search.lucene import LuceneSearcher  # first: it puts Anserini on the JVM's class path

        from jnius import JavaException  # noqa: I001 - after pyserini (importing jnius starts the JVM)

        self.index_dir = str(index_dir)
        try:
            self.searcher = LuceneSearcher(self.index_dir)
        except JavaException as e:
            why = str(e).splitlines()[0].replace("JVM exception occurred: ", "")
            raise FileNotFoundError(
                f"{index_dir}: no BM25 index here (build one with `rd bm25 index`): Lucene cannot open it ({why[:200]})"
            ) from None
        self.searcher.set_bm25(k1, b)
        self.k1, self.b, self.threads = k1, b, threads
        self._jq = None

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """Top-``k`` hits for one query (scores are BM25 sums, rank 1-based)."""
        return [Hit(h.docid, float(h.score), i + 1) for i, h in enumerate(self.searcher.search(query, k))]

    def batch_search(self, queries: dict[str, str], k: int = 100) -> dict[str, list[Hit]]:
        """Search many queries: qid -> hits. ``queries`` maps qid -> text."""
        qids, texts = list(queries), list(queries.values())
        out: dict[str, list[Hit]] = {}
        step = 256
        for i in tqdm(range(0, len(qids), step), desc="bm25 search", unit="batch"):
            res = self.searcher.batch_search(texts[i : i + step], qids[i : i + step], k=k, threads=self.threads)
            for q in qids[i : i + step]:
                out[q] = [Hit(h.docid, float(h.score), r + 1) for r, h in enumerate(res.get(q, []))]
        return out

    def score_pairs(self, query: str, docids: list[str]) -> list[float]:
        """BM25 score of ``query`` against each docid (0.0 where no query term matches).

        Runs one Lucene query per call: the bag-of-words BM25 query (Pyserini's analyzer, as
        :meth:`search`) with a non-scoring ``TermInSetQuery`` filter on the ``id`` field, so
        Lucene scores exactly the given documents. Scores equal :meth:`search`'s. Measured on
        SciFact candidates: about 1,000 pairs/s, against 48 pairs/s for Pyserini's
        ``compute_query_document_score`` one pair at a time.
        """
        if not docids:
            return []
        from jnius import autoclass, cast

        if self._jq is None:
            from pyserini.analysis import get_lucene_analyzer

            self._jq = {
                "builder": autoclass("org.apache.lucene.search.BooleanQuery$Builder"),
                "occur": autoclass("org.apache.lucene.search.BooleanClause$Occur"),
                "terms": autoclass("org.apache.lucene.search.TermInSetQuery"),
                "bytes": autoclass("org.apache.lucene.util.BytesRef"),
                "string": autoclass("java.lang.String"),
                "list": autoclass("java.util.ArrayList"),
                "bow": autoclass("io.anserini.search.query.BagOfWordsQueryGenerator")(),
                "analyzer": get_lucene_analyzer(),
            }
        j = self._jq
        ids = j["list"]()
        unique = list(dict.fromkeys(docids))
        for d in unique:
            ids.add(j["bytes"](cast("java.lang.CharSequence", j["string"](d))))
        q = j["builder"]()
        q.add(j["bow"].buildQuery("contents", j["analyzer"], query), j["occur"].MUST)
        q.add(j["terms"]("id", ids), j["occur"].FILTER)
        found = {h.docid: float(h.score) for h in self.searcher.search(q.build(), len(unique))}
        return [found.get(d, 0.0) for d in docids]
