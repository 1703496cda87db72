"""The service's query backends (in-process app over an ADI index with MiniLM): ONNX fp32 gives
torch's answers, int8 stays close, a failed fidelity check falls back to torch and says so."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.search_api import ServiceSettings, create_app

QUERIES = [
    "How can computer-based systems help with indexing documents?",
    "automatic abstracting and the evaluation of abstracts",
    "citation indexing",
]


@pytest.fixture(scope="module")
def store(adi, tmp_path_factory):
    from retrieval_distill.index.build import build_index
    from retrieval_distill.index.store import IndexStore
    from retrieval_distill.models.encoder import Encoder

    enc = Encoder("all-MiniLM-L6-v2", show_progress=False)
    texts = adi.doc_texts()
    s = IndexStore(tmp_path_factory.mktemp("onnx-service") / "sym")
    s.publish(build_index(enc.encode_documents(texts), adi.docids, s.new_version_dir("flat"), encoder=enc, texts=texts))
    return s, enc


@pytest.fixture(scope="module")
def torch_searcher(store):
    from retrieval_distill.search.dense import DenseSearcher

    s, enc = store
    return DenseSearcher(s.current(), enc)  # a plain Encoder: queries by SentenceTransformer.encode


def _serve(store, **kw):
    s, _ = store
    return TestClient(create_app(ServiceSettings(_env_file=None, index_root=s.root, encode_workers=1, **kw)))


def _ready(c: TestClient) -> dict:
    for _ in range(1200):
        r = c.get("/readyz")
        st = r.json()["modes"]["symmetric"]
        if st["loaded"] or st["error"]:
            assert r.status_code == 200, r.json()
            return st
        time.sleep(0.1)
    raise AssertionError("start-up did not finish in 120 s")


def _search(c: TestClient, q: str) -> list[dict]:
    r = c.post("/search", json={"query": q, "k": 10})
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def test_onnx_fp32_is_the_default_and_answers_like_torch(store, torch_searcher):
    with _serve(store) as c:
        st = _ready(c)
        qb = st["query_backend"]
        assert qb["backend"] == qb["requested"] == "onnx" and qb["fallback_reason"] is None
        assert qb["min_cosine"] > 0.9999
        assert c.get("/index").json()["modes"]["symmetric"]["query_backend"] == qb
        for q in QUERIES:
            hits = _search(c, q)
            expected = torch_searcher.search(q, 10)
            assert [h["docid"] for h in hits] == [h.docid for h in expected]
            assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], abs=1e-4)


def test_onnx_int8_stays_close_to_torch(store, torch_searcher):
    with _serve(store, query_quantize="int8") as c:
        qb = _ready(c)["query_backend"]
        assert qb["backend"] == qb["requested"] == "onnx-int8" and 0.98 <= qb["min_cosine"] < 1.0
        for q in QUERIES:
            hits = _search(c, q)
            expected = torch_searcher.search(q, 10)
            assert len({h["docid"] for h in hits} & {h.docid for h in expected}) >= 8
            assert hits[0]["score"] == pytest.approx(expected[0].score, abs=0.03)


def test_failed_fidelity_check_falls_back_to_torch_and_says_so(store, torch_searcher):
    with _serve(store, query_min_cosine=1.5) as c:  # no encoder can reach a cosine of 1.5
        qb = _ready(c)["query_backend"]
        assert qb["requested"] == "onnx" and qb["backend"] == "torch"
        assert "OnnxFidelityError" in qb["fallback_reason"] and "< 1.5" in qb["fallback_reason"]
        assert c.get("/index").json()["modes"]["symmetric"]["query_backend"]["backend"] == "torch"
        hits = _search(c, QUERIES[2])
        expected = torch_searcher.search(QUERIES[2], 10)
        assert [h["docid"] for h in hits] == [h.docid for h in expected]
        assert [h["score"] for h in hits] == pytest.approx([h.score for h in expected], abs=1e-5)


def test_torch_backend_on_request(store):
    with _serve(store, query_backend="torch") as c:
        qb = _ready(c)["query_backend"]
        assert qb == {"backend": "torch", "requested": "torch", "min_cosine": None, "fallback_reason": None}


def test_backend_settings_from_environment(monkeypatch):
    monkeypatch.setenv("RD_QUERY_BACKEND", "torch")
    monkeypatch.setenv("RD_QUERY_QUANTIZE", "int8")
    monkeypatch.setenv("RD_ENCODE_WORKERS", "3")
    s = ServiceSettings(_env_file=None)
    assert (s.query_backend, s.query_quantize, s.encode_workers, s.onnx_threads) == ("torch", "int8", 3, 1)
    with pytest.raises(ValidationError, match="query_backend"):
        ServiceSettings(_env_file=None, query_backend="tensorrt")
    with pytest.raises(ValidationError, match="query_quantize"):
        ServiceSettings(_env_file=None, query_quantize="int4")
