"""The FastAPI search service of DESIGN.md ("The service").

``create_app(settings)`` returns the ASGI app; ``rd serve`` runs it under uvicorn.

Endpoints:

* ``POST /search`` ``{query, k=10, mode="symmetric"|"asymmetric", rerank=false, rerank_depth}``
  -> ``{hits: [{docid, score, rank, title, text}], index_version, mode, took_ms, truncated}``
* ``POST /search/batch`` ``{queries: [...], k, mode, rerank, rerank_depth}`` -> one result per query,
  all answered by the same index version.
* ``GET /healthz`` (process alive), ``GET /readyz`` (every configured mode loaded and warm, else 503;
  a failed reload's error until a later reload succeeds), ``GET /metrics`` (Prometheus),
  ``GET /index`` (manifests of the versions served; full paths only with the admin key).
* ``POST /admin/reload`` (header ``X-API-Key``; 401 without, 403 wrong; routes absent when no key
  is configured): switch each mode to its store's ``CURRENT`` version. The new version is loaded
  and warmed on a loader thread while the old one keeps serving; then one reference is swapped.

Errors: validation 422 (``detail`` lists each problem, ``reason`` sums them up in one line;
the echoed input is made JSON-safe); NaN/Infinity/out-of-range numbers and lone surrogates
anywhere in a JSON body 422 (:mod:`services.search_api.jsonsafe`); unknown mode 422; mode
not configured 400; rerank not configured 400; no index loaded 503; body over the limit 413;
body not complete within ``body_timeout_s`` 408; undecodable body 400/422. Handlers never
answer 500 for bad input. ``/docs`` and ``/redoc`` are off (their UIs load from a CDN); the
schema is ``/openapi.json``. Answers anyone may read (``/readyz``, ``/index`` without the
admin key, 503 reasons) show no absolute server path.

Concurrency: queries of concurrent ``/search`` requests are micro-batched per mode
(:mod:`services.search_api.batching`) and encoded + searched on ``encode_workers`` threads
(default one per core, at most 4), each running one batch at a time. Queries are encoded by
ONNX Runtime (``query_backend=onnx``, 1 intra-op thread by default; fp32 or int8) or by torch;
torch and FAISS intra-op threads come from settings (default: half the cores for torch, 1 for
FAISS), so the workers, the event loop and the loader do not oversubscribe 2 cores.
"""

# no `from __future__ import annotations`: FastAPI must see the request models built inside create_app

import asyncio
import contextlib
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, field_validator

from retrieval_distill.search.base import Hit
from services.search_api.batching import MicroBatcher
from services.search_api.jsonsafe import StrictJSONRoute, json_safe, redact, redact_paths
from services.search_api.metrics import ServiceMetrics
from services.search_api.middleware import InFlight, ServiceMiddleware, release_inflight
from services.search_api.runtime import EncoderCache, ModeNotReady, Runtime
from services.search_api.settings import MODES, ServiceSettings

log = logging.getLogger("rd.search_api")

API_KEY_HEADER = "X-API-Key"


# ---------------------------------------------------------------------------------------------
# response models (request models depend on settings and are built in create_app)
# ---------------------------------------------------------------------------------------------
class HitOut(BaseModel):
    """One retrieved document."""

    docid: str = Field(description="document id of the corpus")
    score: float = Field(description="similarity (inner product of normalised vectors), or the teacher score when reranked")
    rank: int = Field(ge=1, description="1-based rank")
    title: str | None = Field(None, description="document title (null when the service has no corpus)")
    text: str | None = Field(None, description="document text (null when the service has no corpus)")
    dense_score: float | None = Field(None, description="first-stage score, present when the hit was reranked")


class SearchResponse(BaseModel):
    hits: list[HitOut]
    index_version: str = Field(description="the index version that answered")
    mode: Literal["symmetric", "asymmetric"]
    took_ms: float = Field(description="server-side time (milliseconds)")
    truncated: bool = Field(description="the query was cut to max_query_chars characters")
    reranked: bool = False


class BatchItem(BaseModel):
    hits: list[HitOut]
    truncated: bool


class BatchResponse(BaseModel):
    results: list[BatchItem] = Field(description="one result per query, in request order")
    index_version: str
    mode: Literal["symmetric", "asymmetric"]
    took_ms: float
    reranked: bool = False


class ErrorResponse(BaseModel):
    detail: Any = Field(description="what was wrong (a message, or a list of validation errors)")
    reason: str | None = Field(None, description="one-line summary (validation errors)")


class QueryBackend(BaseModel):
    backend: str = Field(description="what encodes queries: `onnx` (fp32), `onnx-int8` or `torch`")
    requested: str = Field(description="the configured backend (RD_QUERY_BACKEND, RD_QUERY_QUANTIZE)")
    min_cosine: float | None = Field(None, description="ONNX: worst cosine to the torch vectors on the check sample")
    fallback_reason: str | None = Field(None, description="why the requested ONNX backend is not used (torch serves instead)")


class ModeStatus(BaseModel):
    configured: bool
    loaded: bool
    version: str | None = None
    error: str | None = None
    query_backend: QueryBackend | None = None


class ReadyResponse(BaseModel):
    ready: bool
    modes: dict[str, ModeStatus]
    rerank_teacher: ModeStatus = Field(description="the rerank teacher (configured, loaded, error)")


class IndexInfo(BaseModel):
    version: str | None
    path: str | None
    loaded_at: float | None
    manifest: dict[str, Any] | None
    error: str | None = None
    query_backend: QueryBackend | None = None


class IndexResponse(BaseModel):
    modes: dict[str, IndexInfo]


class ReloadOutcome(BaseModel):
    previous: str | None
    current: str | None
    changed: bool


class ReloadResponse(BaseModel):
    modes: dict[str, ReloadOutcome]
    took_ms: float


def _integral(v: Any) -> Any:
    """JSON-Schema integers: 3 and 3.0 pass; "3", true and 3.5 do not (pydantic's lax mode
    alone would take "3" and true, its strict mode would refuse 3.0)."""
    if isinstance(v, (bool, str, bytes)):
        raise ValueError("Input should be a valid integer")
    return v


Int = Annotated[int, BeforeValidator(_integral)]
# documented in the schema (JSON Schema patterns are unanchored: "some non-space character");
# enforced by validators that say "empty or only whitespace" rather than quoting a regex
NON_BLANK = r"\S"


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    desc = {
        400: "bad request (mode or reranking not configured, malformed body)",
        401: "API key missing",
        403: "API key wrong",
        409: "the new index version could not be loaded; the old one keeps serving",
        413: "request body too large",
        422: "validation error",
        503: "no index loaded for this mode (yet)",
    }
    return {c: {"model": ErrorResponse, "description": desc[c]} for c in codes}


# ---------------------------------------------------------------------------------------------
# service state
# ---------------------------------------------------------------------------------------------
class ModeState:
    def __init__(self, mode: str, configured: bool):
        self.mode = mode
        self.configured = configured
        self.runtime: Runtime | None = None
        self.error: str | None = None
        self.batcher: MicroBatcher | None = None


class ServiceState:
    """Everything the handlers share; one per app."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.inflight = InFlight()
        self.metrics.in_flight.set_function(self.inflight)
        self.encoders = EncoderCache(
            settings.query_backend, settings.query_quantize, settings.onnx_threads, settings.query_min_cosine
        )
        self.modes = {m: ModeState(m, settings.index_root_for(m) is not None) for m in MODES}
        self.encode_pool = ThreadPoolExecutor(settings.encode_workers, thread_name_prefix="rd-encode")
        self.rerank_pool = ThreadPoolExecutor(1, thread_name_prefix="rd-rerank")
        self.load_pool = ThreadPoolExecutor(1, thread_name_prefix="rd-load")
        self.reload_lock = asyncio.Lock()
        self.corpus: dict[str, dict[str, str]] | None = None
        self.corpus_error: str | None = None
        self.teacher: Any = None
        self.teacher_error: str | None = None
        self.startup_task: asyncio.Task | None = None
        for st in self.modes.values():
            st.batcher = MicroBatcher(
                self._make_process(st),
                self.encode_pool,
                max_size=settings.batch_max_size,
                max_wait_ms=settings.batch_max_wait_ms,
                pending_hint=self.inflight,
                on_batch=self._make_on_batch(st.mode),
                workers=settings.encode_workers,
            )

    # -- batching ----------------------------------------------------------------------------
    def _make_process(self, st: ModeState):
        def process(items: list[tuple[str, int]]) -> list[tuple[str, list[Hit]]]:
            rt = st.runtime  # one reference for the whole batch: one version answers it
            if rt is None:
                raise ModeNotReady(f"no index loaded for mode {st.mode!r}")
            kmax = max(k for _, k in items)
            hits = rt.search_texts([q for q, _ in items], kmax)
            return [(rt.version_id, h[:k]) for (_, k), h in zip(items, hits)]

        return process

    def _make_on_batch(self, mode: str):
        def on_batch(n: int, seconds: float) -> None:
            self.metrics.batch_size.labels(mode).observe(n)
            self.metrics.batch_seconds.labels(mode).observe(seconds)

        return on_batch

    # -- loading -----------------------------------------------------------------------------
    def load_runtime(self, mode: str) -> Runtime:
        """Load and warm the CURRENT version of ``mode`` (blocking; runs on the loader thread)."""
        from services.search_api.runtime import load_runtime

        rt = load_runtime(mode, self.settings, self.encoders)
        if self.settings.warmup:
            # the warm-up goes through the encode thread, like real queries
            self.encode_pool.submit(rt.search_texts, ["warm up query"], 1).result()
        return rt

    def install(self, rt: Runtime) -> None:
        """Swap ``rt`` in for its mode (on the event loop thread: a single reference assignment)."""
        st = self.modes[rt.mode]
        st.runtime = rt
        st.error = None
        self.metrics.set_version(rt.mode, rt.version_id, int(rt.manifest.get("doc_count", 0)))
        keep = {(m.runtime.encoder_key) for m in self.modes.values() if m.runtime is not None}
        self.encoders.retain(keep)

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        if s.corpus:
            try:
                t0 = time.perf_counter()
                self.corpus = await loop.run_in_executor(self.load_pool, _load_corpus, s.corpus)
                log.warning("corpus %s: %d documents loaded in %.1f s", s.corpus, len(self.corpus), time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - reported by /readyz and hits carry no text
                self.corpus_error = redact_paths(f"{type(e).__name__}: {e}")
                log.error("corpus %s could not be loaded: %s", s.corpus, e)
        for st in self.modes.values():
            if not st.configured:
                continue
            try:
                t0 = time.perf_counter()
                rt = await loop.run_in_executor(self.load_pool, self.load_runtime, st.mode)
                self.install(rt)
                log.warning(
                    "mode %s: serving index version %s (loaded and warmed in %.1f s; queries by %s)",
                    st.mode, rt.version_id, time.perf_counter() - t0, rt.query_backend.get("backend", "?"),
                )
            except Exception as e:  # noqa: BLE001 - the service stays up, /readyz says why
                st.error = redact_paths(f"{type(e).__name__}: {e}")
                self.metrics.loaded.labels(st.mode).set(0)
                log.error("mode %s: no index loaded: %s: %s", st.mode, type(e).__name__, e)
        if s.rerank_teacher is not None:
            try:
                from retrieval_distill.teachers.base import build_teacher

                t0 = time.perf_counter()
                self.teacher = await loop.run_in_executor(self.load_pool, build_teacher, s.teacher_spec())
                log.warning("rerank teacher %s built in %.1f s", s.teacher_spec().display_name(), time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - rerank requests answer 503 with this message
                self.teacher_error = redact_paths(f"{type(e).__name__}: {e}")
                log.error("rerank teacher could not be built: %s: %s", type(e).__name__, e)

    async def shutdown(self) -> None:
        if self.startup_task is not None and not self.startup_task.done():
            self.startup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.startup_task
        for st in self.modes.values():
            if st.batcher is not None:
                await st.batcher.stop()
        for pool in (self.encode_pool, self.rerank_pool, self.load_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    # -- helpers for handlers ----------------------------------------------------------------
    def require_mode(self, mode: str) -> ModeState:
        st = self.modes[mode]
        if not st.configured:
            env = "RD_INDEX_ROOT" if mode == "symmetric" else "RD_ASYM_INDEX_ROOT (and RD_ASYM_QUERY_MODEL)"
            raise HTTPException(400, f"mode {mode!r} is not available on this server: no index configured for it (set {env})")
        if st.runtime is None:
            why = f": {st.error}" if st.error else " (still loading)"
            raise HTTPException(503, f"no index loaded for mode {mode!r}{why}")
        return st

    def require_teacher(self) -> Any:
        if self.settings.rerank_teacher is None:
            raise HTTPException(400, "rerank=true but no rerank teacher is configured on this server (set RD_RERANK_TEACHER)")
        if self.teacher is None:
            why = self.teacher_error or "still loading"
            raise HTTPException(503, f"rerank teacher not available: {why}")
        return self.teacher

    def hit_out(self, h: Hit, dense_score: float | None = None) -> HitOut:
        doc = self.corpus.get(h.docid) if self.corpus is not None else None
        return HitOut(
            docid=h.docid,
            score=float(h.score),
            rank=int(h.rank),
            title=doc.get("title", "") if doc is not None else None,
            text=doc.get("text", "") if doc is not None else None,
            dense_score=dense_score,
        )


def _load_corpus(spec: str) -> dict[str, dict[str, str]]:
    """The documents only (a corpus.jsonl, a BEIR folder that may hold nothing else, a local
    dataset id); an ir_datasets id loads through its collection."""
    from retrieval_distill.data.collections import load_collection, load_corpus
    from retrieval_distill.distill.synth import resolve_corpus_path

    try:
        path = resolve_corpus_path(spec)
    except FileNotFoundError:
        return load_collection(spec).corpus
    return load_corpus(path)


def _rerank(teacher: Any, corpus: dict[str, dict[str, str]], query: str, hits: list[Hit], k: int) -> list[tuple[Hit, float]]:
    """Score (query, passage) for ``hits`` with the teacher; the best ``k`` as (hit, dense score)."""
    from retrieval_distill.teachers.base import score_pairs

    if not hits:
        return []
    docids = [h.docid for h in hits]
    passages = [f"{corpus[d].get('title', '')} {corpus[d].get('text', '')}".strip() if d in corpus else "" for d in docids]
    scores = score_pairs(teacher, [query] * len(hits), [query] * len(hits), docids, passages)
    order = sorted(range(len(hits)), key=lambda i: (-float(scores[i]), hits[i].rank))[:k]
    return [(Hit(hits[i].docid, float(scores[i]), r), float(hits[i].score)) for r, i in enumerate(order, 1)]


def _reason(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------
def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the search service.

    Args:
        settings: service settings (default: read from ``RD_*`` environment variables).

    Returns:
        The FastAPI app, with the size-limit/metrics middleware installed (``app.state.service``
        holds the :class:`ServiceState`). Indexes, corpus and teacher load in the background
        after start-up; ``/readyz`` answers 200 once every configured mode is loaded and warm.
    """
    settings = settings or ServiceSettings()
    s = settings
    Mode = Literal["symmetric", "asymmetric"]
    # bounds inside the integer branch of the optional (so the schema has minimum/maximum)
    Depth = Annotated[int, Field(ge=1, le=s.rerank_max_depth), BeforeValidator(_integral)]  # this order: pydantic emits minimum/maximum

    class SearchRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"query": "information retrieval evaluation", "k": 10, "mode": "symmetric"}]},
        )
        query: str = Field(
            min_length=1, json_schema_extra={"pattern": NON_BLANK},
            description=f"query text (not blank); cut to {s.max_query_chars} characters (see `truncated`)",
        )
        k: Int = Field(10, ge=1, le=s.max_k, description="number of hits")
        mode: Mode = Field("symmetric", description="`symmetric`: student index; `asymmetric`: teacher-encoded documents, student queries")
        rerank: StrictBool = Field(False, description="rerank the top `rerank_depth` hits with the configured teacher")
        rerank_depth: Depth | None = Field(None, description=f"hits reranked (default {s.rerank_default_depth}; at least k)")

        @field_validator("query")
        @classmethod
        def _not_blank(cls, v: str) -> str:
            if not v.strip():
                raise ValueError("query is empty or only whitespace")
            return v

    class BatchRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"queries": ["indexing of documents", "automatic abstracting"], "k": 5}]},
        )
        queries: list[Annotated[str, Field(min_length=1, json_schema_extra={"pattern": NON_BLANK})]] = Field(
            min_length=1, max_length=s.max_batch_queries, description="query texts (not blank)"
        )
        k: Int = Field(10, ge=1, le=s.max_k)
        mode: Mode = "symmetric"
        rerank: StrictBool = False
        rerank_depth: Depth | None = None

        @field_validator("queries")
        @classmethod
        def _not_blank(cls, v: list[str]) -> list[str]:
            blank = [i for i, q in enumerate(v) if not q.strip()]
            if blank:
                raise ValueError(f"queries {blank[:10]} are empty or only whitespace")
            return v

    state = ServiceState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        from retrieval_distill.utils import set_threads

        set_threads(s.torch_threads)
        with contextlib.suppress(Exception):
            import faiss

            faiss.omp_set_num_threads(s.faiss_threads)
        with contextlib.suppress(Exception):
            import torch

            torch.set_num_interop_threads(1)
        state.startup_task = asyncio.create_task(state.startup(), name="rd-startup")
        try:
            yield
        finally:
            await state.shutdown()

    app = FastAPI(
        title="retrieval-distill search",
        version="1.0",
        description=(
            "Dense first-stage retrieval over a FAISS index built from a distilled bi-encoder, "
            "with optional teacher reranking. Every answer names the index version that produced it. "
            "This schema is served at `/openapi.json`; the browser UIs (`/docs`, `/redoc`) are off "
            "because they load their scripts from a CDN, which an offline deployment cannot reach."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    # every route refuses JSON bodies holding NaN/Infinity or lone surrogates with a 422
    app.router.route_class = StrictJSONRoute

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # the echoed input may hold what JSON cannot encode (NaN, lone surrogates): made safe,
        # and should encoding still fail, the answer keeps locations and messages only
        errors = exc.errors()
        try:
            return JSONResponse(status_code=422, content={"detail": json_safe(jsonable_encoder(errors)), "reason": json_safe(_reason(exc))})
        except (ValueError, TypeError):  # pragma: no cover - json_safe leaves nothing unencodable
            slim = [{"loc": json_safe([str(p) for p in e.get("loc", ())]), "msg": json_safe(str(e.get("msg", "")))} for e in errors]
            return JSONResponse(status_code=422, content={"detail": slim, "reason": json_safe(_reason(exc))})

    def truncate(q: str) -> tuple[str, bool]:
        q = q.strip()  # surrounding whitespace means nothing to the tokenizer; the cut keeps real text
        return (q[: s.max_query_chars], True) if len(q) > s.max_query_chars else (q, False)

    async def rerank_hits(query: str, hits: list[Hit], k: int) -> list[HitOut]:
        teacher = state.require_teacher()
        assert state.corpus is not None
        loop = asyncio.get_running_loop()
        ranked = await loop.run_in_executor(state.rerank_pool, _rerank, teacher, state.corpus, query, hits, k)
        return [state.hit_out(h, dense_score=ds) for h, ds in ranked]

    search_examples = {
        "symmetric": {"summary": "symmetric search", "value": {"query": "computer-based indexing of documents", "k": 5}},
        "asymmetric": {
            "summary": "asymmetric search (teacher-encoded documents)",
            "value": {"query": "citation indexing", "k": 5, "mode": "asymmetric"},
        },
        "rerank": {
            "summary": "rerank the top 20 with the teacher",
            "value": {"query": "automatic abstracting", "k": 5, "rerank": True, "rerank_depth": 20},
        },
    }

    @app.post("/search", response_model=SearchResponse, responses=_errors(400, 413, 422, 503), tags=["search"])
    async def search(request: Request, body: Annotated[SearchRequest, Body(openapi_examples=search_examples)]) -> SearchResponse:
        """Retrieve the top `k` documents for one query."""
        t0 = time.perf_counter()
        request.scope["rd_mode"] = body.mode
        st = state.require_mode(body.mode)
        if body.rerank:
            state.require_teacher()
        query, truncated = truncate(body.query)
        depth = max(body.k, body.rerank_depth or s.rerank_default_depth) if body.rerank else body.k
        assert st.batcher is not None
        try:
            version, hits = await st.batcher.submit((query, depth))
        except ModeNotReady as e:
            raise HTTPException(503, str(e)) from None
        finally:
            release_inflight(request.scope, state.inflight)
        out = await rerank_hits(query, hits, body.k) if body.rerank else [state.hit_out(h) for h in hits]
        return SearchResponse(
            hits=out, index_version=version, mode=body.mode, took_ms=(time.perf_counter() - t0) * 1000,
            truncated=truncated, reranked=body.rerank,
        )

    batch_examples = {
        "two queries": {"summary": "two queries", "value": {"queries": ["indexing of documents", "automatic abstracting"], "k": 3}},
    }

    @app.post("/search/batch", response_model=BatchResponse, responses=_errors(400, 413, 422, 503), tags=["search"])
    async def search_batch(request: Request, body: Annotated[BatchRequest, Body(openapi_examples=batch_examples)]) -> BatchResponse:
        """Retrieve the top `k` documents for each of many queries; one index version answers all of them."""
        t0 = time.perf_counter()
        request.scope["rd_mode"] = body.mode
        st = state.require_mode(body.mode)
        if body.rerank:
            state.require_teacher()
        cut = [truncate(q) for q in body.queries]
        depth = max(body.k, body.rerank_depth or s.rerank_default_depth) if body.rerank else body.k
        rt = st.runtime
        assert rt is not None
        loop = asyncio.get_running_loop()
        all_hits = await loop.run_in_executor(state.encode_pool, rt.search_texts, [q for q, _ in cut], depth)
        results = []
        for (q, tr), hits in zip(cut, all_hits):
            out = await rerank_hits(q, hits, body.k) if body.rerank else [state.hit_out(h) for h in hits]
            results.append(BatchItem(hits=out, truncated=tr))
        return BatchResponse(
            results=results, index_version=rt.version_id, mode=body.mode,
            took_ms=(time.perf_counter() - t0) * 1000, reranked=body.rerank,
        )

    def mode_status() -> dict[str, ModeStatus]:
        return {
            m: ModeStatus(
                configured=st.configured, loaded=st.runtime is not None,
                version=st.runtime.version_id if st.runtime else None, error=st.error,
                query_backend=redact(st.runtime.query_backend) or None if st.runtime else None,
            )
            for m, st in state.modes.items()
        }

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive (says nothing about the index)."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse, "description": "not ready"}}, tags=["ops"])
    async def readyz(response: Response) -> ReadyResponse:
        """200 when every configured mode has a loaded, warmed index (and the rerank teacher, if
        configured, is built); 503 otherwise, also when no mode is configured."""
        modes = mode_status()
        configured = [m for m in modes.values() if m.configured]
        teacher = ModeStatus(
            configured=s.rerank_teacher is not None, loaded=state.teacher is not None, error=state.teacher_error
        )
        ready = bool(configured) and all(m.loaded for m in configured) and (teacher.loaded or not teacher.configured)
        if not ready:
            response.status_code = 503
        return ReadyResponse(ready=ready, modes=modes, rerank_teacher=teacher)

    @app.get("/metrics", tags=["ops"], response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    admin_key = s.admin_api_key.get_secret_value().encode() if s.admin_api_key is not None else None

    @app.get("/index", response_model=IndexResponse, tags=["ops"])
    async def index_info(request: Request) -> IndexResponse:
        """The manifest of the index version each mode serves.

        Without the admin key (header `X-API-Key`) no server path is shown: `path` is relative
        to the index store (`versions/<id>`) and absolute paths in the manifest (local model
        folders, corpus files) are cut to their last component. With the key: full paths.
        """
        given = request.headers.get(API_KEY_HEADER)
        admin = admin_key is not None and given is not None and secrets.compare_digest(given.encode(), admin_key)
        out = {}
        for m, st in state.modes.items():
            if not st.configured:
                continue
            rt = st.runtime
            info = IndexInfo(
                version=rt.version_id if rt else None,
                path=(str(rt.path) if admin else f"versions/{rt.path.name}") if rt else None,
                loaded_at=rt.loaded_at if rt else None, error=st.error,
                manifest=(rt.manifest if admin else redact(rt.manifest)) if rt else None,
                query_backend=(rt.query_backend if admin else redact(rt.query_backend)) or None if rt else None,
            )
            out[m] = info
        return IndexResponse(modes=out)

    if s.admin_api_key is not None:
        key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the admin API key (RD_ADMIN_API_KEY)")
        expected = s.admin_api_key.get_secret_value().encode()

        async def require_admin(key: Annotated[str | None, Depends(key_header)]) -> None:
            if not key:
                raise HTTPException(401, f"missing {API_KEY_HEADER} header", headers={"WWW-Authenticate": "ApiKey"})
            if not secrets.compare_digest(key.encode(), expected):
                raise HTTPException(403, "wrong API key")

        @app.post(
            "/admin/reload", response_model=ReloadResponse, dependencies=[Depends(require_admin)],
            responses=_errors(400, 401, 403, 409, 422), tags=["admin"],
        )
        async def reload(
            mode: Annotated[Mode | None, Query(description="reload only this mode (default: every configured mode)")] = None,
            force: Annotated[bool, Query(description="reload even when CURRENT names the version already served")] = False,
        ) -> ReloadResponse:
            """Switch to each store's CURRENT version without dropping requests (parameters in the
            query string, so the key is checked before anything else is read).

            The new version is loaded and warmed while the old one keeps answering; then one
            reference is swapped. Requests already running finish on the version they started with.
            """
            t0 = time.perf_counter()
            modes = [mode] if mode else [m for m, st in state.modes.items() if st.configured]
            for m in modes:
                if not state.modes[m].configured:
                    raise HTTPException(400, f"mode {m!r} has no index configured on this server")
            loop = asyncio.get_running_loop()
            outcomes: dict[str, ReloadOutcome] = {}
            async with state.reload_lock:
                for m in modes:
                    st = state.modes[m]
                    prev = st.runtime.version_id if st.runtime else None
                    if not force and prev is not None:
                        from services.search_api.runtime import current_version_id

                        try:
                            cur = await loop.run_in_executor(state.load_pool, current_version_id, state.settings.index_root_for(m))
                        except Exception as e:  # noqa: BLE001
                            state.metrics.reloads.labels(m, "failed").inc()
                            st.error = redact_paths(f"reload failed: cannot read the index store: {type(e).__name__}: {e}")
                            raise HTTPException(409, f"mode {m!r}: cannot read the index store ({type(e).__name__}: {e}); still serving {prev}") from None
                        if cur == prev:
                            st.error = None  # the store is readable and serves what it names: an earlier failure is over
                            state.metrics.reloads.labels(m, "unchanged").inc()
                            outcomes[m] = ReloadOutcome(previous=prev, current=prev, changed=False)
                            continue
                    try:
                        rt = await loop.run_in_executor(state.load_pool, state.load_runtime, m)
                    except Exception as e:  # noqa: BLE001 - the old version keeps serving
                        state.metrics.reloads.labels(m, "failed").inc()
                        st.error = redact_paths(f"reload failed: {type(e).__name__}: {e}")
                        raise HTTPException(409, f"mode {m!r}: new version could not be loaded ({type(e).__name__}: {e}); still serving {prev}") from None
                    state.install(rt)
                    state.metrics.reloads.labels(m, "swapped").inc()
                    outcomes[m] = ReloadOutcome(previous=prev, current=rt.version_id, changed=rt.version_id != prev)
            return ReloadResponse(modes=outcomes, took_ms=(time.perf_counter() - t0) * 1000)

    app.add_middleware(
        ServiceMiddleware, metrics=state.metrics, inflight=state.inflight, max_body_bytes=s.max_body_bytes,
        body_timeout_s=s.body_timeout_s,
    )
    return app
