"""The app without a loaded index (in-process, no model loaded): 503/400 answers, settings,
admin routes off without a key, OpenAPI schema with examples."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.search_api import ServiceSettings, create_app


def _client(**kw) -> TestClient:
    return TestClient(create_app(ServiceSettings(_env_file=None, **kw)))


def _wait_loaded(c: TestClient, mode: str = "symmetric") -> dict:
    for _ in range(200):
        st = c.get("/readyz").json()["modes"][mode]
        if st["loaded"] or st["error"]:
            return st
        time.sleep(0.05)
    raise AssertionError("start-up did not finish")


def test_no_index_configured(monkeypatch):
    monkeypatch.delenv("RD_INDEX_ROOT", raising=False)
    with _client() as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        r = c.post("/search", json={"query": "indexing"})
        assert r.status_code == 400 and "not available on this server" in r.json()["detail"]
        assert c.get("/index").json() == {"modes": {}}
        # admin routes do not exist without a key
        assert c.post("/admin/reload").status_code == 404
        assert "/admin/reload" not in c.get("/openapi.json").json()["paths"]


def test_store_without_current_version_answers_503_and_says_why(tmp_path):
    with _client(index_root=tmp_path / "empty-store", admin_api_key="k") as c:
        st = _wait_loaded(c)
        assert st["loaded"] is False and "no current index version" in st["error"]
        assert c.get("/readyz").status_code == 503
        r = c.post("/search", json={"query": "indexing"})
        assert r.status_code == 503 and "no current index version" in r.json()["detail"]
        r = c.post("/search/batch", json={"queries": ["indexing"]})
        assert r.status_code == 503
        # asymmetric mode is not configured at all: a 400 naming the setting
        r = c.post("/search", json={"query": "indexing", "mode": "asymmetric"})
        assert r.status_code == 400 and "RD_ASYM_INDEX_ROOT" in r.json()["detail"]
        # reload with nothing to load: 409, and the service stays up
        r = c.post("/admin/reload", headers={"X-API-Key": "k"})
        assert r.status_code == 409 and "no current index version" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RD_INDEX_ROOT", str(tmp_path))
    monkeypatch.setenv("RD_MAX_K", "7")
    monkeypatch.setenv("RD_ADMIN_API_KEY", "  ")  # blank key: admin stays off
    monkeypatch.setenv("RD_BATCH_MAX_WAIT_MS", "0.5")
    s = ServiceSettings()
    assert s.index_root == tmp_path and s.max_k == 7 and s.admin_api_key is None
    assert s.batch_max_wait_ms == 0.5 and s.host == "127.0.0.1"
    assert s.configured_modes() == ["symmetric"]
    with TestClient(create_app(s)) as c:
        r = c.post("/search", json={"query": "x", "k": 8})
        assert r.status_code == 422 and "less than or equal to 7" in r.json()["reason"]


def test_bad_settings_are_refused():
    with pytest.raises(ValidationError, match="needs corpus"):
        ServiceSettings(_env_file=None, rerank_teacher="bm25")
    with pytest.raises(ValidationError, match="rerank_default_depth"):
        ServiceSettings(_env_file=None, rerank_default_depth=50, rerank_max_depth=10)
    with pytest.raises(ValidationError):
        ServiceSettings(_env_file=None, rerank_teacher="{not json", corpus="x")
    assert ServiceSettings(_env_file=None, rerank_teacher="bm25", corpus="x").teacher_spec().kind == "bm25"


def test_openapi_documents_examples_and_errors(tmp_path):
    with _client(index_root=tmp_path, admin_api_key="k") as c:
        spec = c.get("/openapi.json").json()
    search = spec["paths"]["/search"]["post"]
    examples = search["requestBody"]["content"]["application/json"]["examples"]
    assert {"symmetric", "asymmetric", "rerank"} <= set(examples)
    assert {"200", "400", "413", "422", "503"} <= set(search["responses"])
    admin = spec["paths"]["/admin/reload"]["post"]
    assert {"401", "403"} <= set(admin["responses"])
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]
    req = spec["components"]["schemas"]["SearchRequest"]["properties"]
    assert req["k"]["maximum"] == 100 and req["k"]["minimum"] == 1
