"""Collections (corpus, queries, qrels), candidates and splits."""

from retrieval_distill.data.collections import Collection, DataFormatError, load_collection, load_qrels

__all__ = ["Collection", "DataFormatError", "load_collection", "load_qrels"]
