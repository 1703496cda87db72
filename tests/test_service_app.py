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


# ------------------------------------------------------------------ input JSON cannot carry
def _strict_json(text: str):
    """Parse as RFC 8259 JSON: no NaN/Infinity (what a strict client accepts)."""
    import json

    def no_constant(name):
        raise ValueError(f"{name} in a response")

    return json.loads(text, parse_constant=no_constant)


@pytest.mark.parametrize("path", ["/search", "/search/batch"])
@pytest.mark.parametrize(
    "raw, loc",
    [
        (b'{"query": "x", "k": NaN}', "k"),
        (b'{"query": "x", "k": 1e999}', "k"),
        (b'{"query": "x", "k": -Infinity}', "k"),
        (b'{"query": "x", "rerank_depth": Infinity}', "rerank_depth"),
        (b'{"query": "x", "colour": NaN}', "colour"),
        (b'{"query": "\\ud800"}', "query"),
        (b'{"queries": ["fine", "\\udfff"], "k": 2}', "queries.1"),
        (b'{"query": "x", "mode": "sym\\udc00"}', "mode"),
        (b'{"\\ud800": 1}', "\\ud800"),
        (b"[NaN, 1]", "0"),
        (b"NaN", "body"),
    ],
)
def test_non_finite_numbers_and_lone_surrogates_are_422_with_the_field(path, raw, loc):
    """Was: 500, because the 422 handler echoed the input and JSON encoding failed."""
    with _client() as c:
        r = c.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    body = _strict_json(r.content.decode("utf-8"))  # encodable, strictly
    assert body["reason"].startswith(f"{loc}: ") and ("non-finite number" in body["reason"] or "lone surrogate" in body["reason"])
    assert body["detail"][0]["loc"][0] == "body"


def test_validation_error_echo_is_always_encodable():
    """The 422 handler's last line of defence, whatever reaches it."""
    import math

    from services.search_api.jsonsafe import json_safe, non_json_errors, redact_paths

    safe = json_safe({"a": math.nan, "b": [math.inf, -math.inf, "x\ud800"], "\udfff": (1, 2.5), "c": ValueError("boom")})
    assert safe == {"a": "NaN", "b": ["Infinity", "-Infinity", "x\\ud800"], "\\udfff": [1, 2.5], "c": "boom"}
    assert _strict_json(__import__("json").dumps(safe, allow_nan=False)) == safe
    errs = non_json_errors({"q": [1, {"r": math.nan}]})
    assert errs[0]["loc"] == ("body", "q", 1, "r") and errs[0]["input"] == "NaN"
    assert len(non_json_errors([math.nan] * 50)) == 10  # bounded
    assert redact_paths("/srv/idx/versions/v1/index.faiss: bad; see ../x and a/b") == "index.faiss: bad; see ../x and a/b"


def test_docs_pages_need_no_cdn_they_are_off_and_the_schema_is_served():
    """/docs and /redoc loaded their scripts from a CDN (blank offline): off; /openapi.json stays."""
    with _client() as c:
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        spec = c.get("/openapi.json").json()
    assert "/search" in spec["paths"] and "/openapi.json" in spec["info"]["description"]


# ------------------------------------------------------------------ slow bodies
def test_body_deadline_answers_408_and_the_request_is_not_in_flight_meanwhile():
    """The middleware alone: a body that stops half-way gets 408 + Connection: close once the
    deadline passes (one deadline for the whole body), and is never counted in flight."""
    import asyncio

    from services.search_api.metrics import ServiceMetrics
    from services.search_api.middleware import InFlight, ServiceMiddleware

    seen_app = []

    async def app(scope, receive, send):  # pragma: no cover - must not be reached
        seen_app.append(scope["path"])

    async def run() -> tuple[list[dict], list[int]]:
        inflight = InFlight()
        mw = ServiceMiddleware(app, ServiceMetrics(), inflight, max_body_bytes=1 << 20, body_timeout_s=0.3)
        chunks = [{"type": "http.request", "body": b'{"query"', "more_body": True}] + [
            {"type": "http.request", "body": b" ", "more_body": True}
        ] * 100
        counts: list[int] = []

        async def receive():  # a byte every 50 ms: each chunk is quick, the body never ends
            await asyncio.sleep(0.05)
            counts.append(inflight())
            return chunks.pop(0)

        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/search", "headers": [(b"content-type", b"application/json")]}
        await asyncio.wait_for(mw(scope, receive, send), timeout=10)
        return sent, counts

    sent, counts = asyncio.run(run())
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert b"not received within 0.3 s" in sent[1]["body"]
    assert 3 <= len(counts) <= 8 and set(counts) == {0} and not seen_app
