"""FAISS indexes: build, manifest, versioned store with atomic swap, rebuild jobs.

Public API (imported lazily, so ``rd --help`` stays fast)::

    from retrieval_distill.index import encode_corpus, build_index, IndexStore, IndexVersion, IndexSpec
    from retrieval_distill.index.rebuild import rebuild
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "encode_corpus": "build", "build_index": "build", "apply_changes": "build", "CorpusError": "build",
    "IndexManifest": "manifest", "IndexFormatError": "manifest", "EncoderMismatchError": "manifest",
    "IndexStore": "store", "IndexVersion": "store", "open_version": "store",
    "IndexSpec": "rebuild", "plan": "rebuild",
    "verify_version": "verify", "build_sharded": "shards", "ShardedSearcher": "shards",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"retrieval_distill.index.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'retrieval_distill.index' has no attribute {name!r}")
