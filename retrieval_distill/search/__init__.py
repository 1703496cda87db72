"""Searchers: BM25 (Pyserini/Lucene), dense FAISS, asymmetric and reranking."""

from retrieval_distill.search.base import Hit

__all__ = ["Hit"]
