"""Test session set-up: offline models, temporary caches, ranx warmed once."""

import os
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="rd-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("IR_DATASETS_HOME", str(_TMP / "ir_datasets"))
os.environ.setdefault("NUMBA_CACHE_DIR", str(_TMP / "numba"))
os.environ.setdefault("OPENAI_API_KEY", "unused-dummy-key")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"
ADI = SHARED_DATA / "classic" / "adi"
SCIFACT = SHARED_DATA / "beir" / "scifact"
TREC_DL = SHARED_DATA / "msmarco" / "trec-dl-subset"


@pytest.fixture(scope="session", autouse=True)
def _warm_ranx():
    """ranx compiles with numba on first use (minutes on a busy machine): do it once per
    session, for the fixed-width ids that retrieval_distill.evaluation.metrics.evaluate uses."""
    from retrieval_distill.evaluation.metrics import warm_up

    warm_up()


@pytest.fixture
def native_bf16(monkeypatch):
    """As on a CPU with native bf16 (AVX-512-BF16): the bf16 paths of encoders and teachers run
    (emulated, slower, where the CPU lacks it) whatever CPU the tests land on; without it they
    fall back to fp32 on an AVX2-only machine (``models.encoder.resolve_dtype``)."""
    import retrieval_distill.models.encoder as E

    monkeypatch.setattr(E, "cpu_bf16_flags", lambda: ["avx512_bf16"])


@pytest.fixture(scope="session")
def adi():
    from retrieval_distill.data.collections import load_collection

    return load_collection(ADI, split="test")


@pytest.fixture(scope="session")
def minilm():
    from retrieval_distill.models import load_sentence_transformer

    return load_sentence_transformer("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def adi_bm25_run(adi, tmp_path_factory):
    """(Lucene index folder, BM25 top-10 TREC run of the 35 ADI queries) built once."""
    from retrieval_distill.evaluation.runs import write_run
    from retrieval_distill.search.bm25 import BM25Searcher, build_bm25_index

    root = tmp_path_factory.mktemp("adi-bm25")
    index = build_bm25_index(adi, root / "index")
    res = BM25Searcher(index).batch_search(adi.queries, k=10)
    run = write_run(root / "bm25.top10.trec", {q: {h.docid: h.score for h in hs} for q, hs in res.items()}, tag="bm25")
    return index, run
