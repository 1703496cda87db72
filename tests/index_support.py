"""Shared, once-per-session set-up for tests/test_index_*.py (kept out of conftest.py).

ADI (82 docs) is encoded once with all-MiniLM-L6-v2 into a session folder laid out as a
rebuild job's encoding cache (``<encodings>/<encoder fp[:8]>-<corpus fp>-shard16``, 16 docs
per shard), so specs that point ``encodings`` here never re-encode the unchanged corpus.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
ADI = PROJECT.parent / "shared" / "data" / "classic" / "adi"
SHARD = 16
_ROOT = Path(tempfile.mkdtemp(prefix="rd-index-tests-"))


@lru_cache(maxsize=None)
def adi():
    from retrieval_distill.data.collections import load_collection

    return load_collection(ADI, split="test")


@lru_cache(maxsize=None)
def encoder():
    from retrieval_distill.models.encoder import Encoder

    return Encoder("all-MiniLM-L6-v2", show_progress=False)


def encodings_root() -> Path:
    return _ROOT / "encodings"


@lru_cache(maxsize=None)
def adi_encoded() -> tuple[list[str], np.ndarray, Path]:
    """(docids, float32 (82, 384) embeddings, encoding folder)."""
    from retrieval_distill.index.build import corpus_fingerprint, corpus_items, doc_hashes, encode_corpus, encoder_refs

    docids, texts, _ = corpus_items(adi())
    fp = encoder_refs(encoder())[0].fingerprint
    from retrieval_distill.index.rebuild import _cache_suffix

    out = encodings_root() / f"{fp[:8]}-{corpus_fingerprint(docids, doc_hashes(docids, texts))}{_cache_suffix(encoder(), SHARD)}"
    ids, emb = encode_corpus(encoder(), adi(), out, shard_size=SHARD, show_progress=False)
    return ids, emb, out


@lru_cache(maxsize=None)
def adi_query_vectors() -> tuple[list[str], np.ndarray]:
    qids = list(adi().queries)
    return qids, encoder().encode_queries([adi().queries[q] for q in qids])


def copy_beir(dst: Path, drop: list[str] = (), edit: dict[str, str] | None = None, add: dict[str, str] | None = None) -> Path:
    """A copy of ADI in BEIR layout with documents dropped, texts edited and documents added."""
    dst.mkdir(parents=True, exist_ok=True)
    edit, add = edit or {}, add or {}
    lines = []
    for docid, d in adi().corpus.items():
        if docid in drop:
            continue
        text = edit.get(docid, d["text"])
        lines.append(json.dumps({"_id": docid, "title": d["title"], "text": text}))
    for docid, text in add.items():
        lines.append(json.dumps({"_id": docid, "title": "", "text": text}))
    (dst / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(ADI / "queries.jsonl", dst / "queries.jsonl")
    (dst / "qrels").mkdir(exist_ok=True)
    qrels = [ln for ln in (ADI / "qrels" / "test.tsv").read_text().splitlines()
             if ln.split("\t")[1] not in drop or ln.startswith("query-id")]
    (dst / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return dst


def spec(tmp: Path, dataset: Path | str = ADI, **kw):
    """An IndexSpec over ``dataset`` with the shared encoding cache."""
    from retrieval_distill.index.rebuild import IndexSpec

    fields = dict(name="adi", dataset=str(dataset), model="all-MiniLM-L6-v2", factory="Flat", root=str(tmp / "store"),
                  shard_size=SHARD, encodings=str(encodings_root()), keep=3)
    fields.update(kw)
    return IndexSpec(**fields)
