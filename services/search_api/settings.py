"""Settings of the search service (pydantic-settings: environment variables prefixed ``RD_``).

Every field can be set from the environment, e.g. ``RD_INDEX_ROOT=work/indexes/scifact``,
``RD_ADMIN_API_KEY=...``, ``RD_QUERY_QUANTIZE=int8``, ``RD_RERANK_TEACHER='{"kind": "cross_encoder", "model": "..."}'``,
or passed as keyword arguments (``rd serve`` does that from its options).

Modes:

* ``symmetric``: ``index_root`` is an :class:`~retrieval_distill.index.store.IndexStore`
  whose documents were encoded by the same model that encodes queries (``model``, by
  default the encoder recorded in the index manifest).
* ``asymmetric``: ``asym_index_root`` holds an index whose documents the *teacher* encoded;
  queries are encoded by ``asym_query_model``, a student aligned to that teacher's space.

A mode whose root is unset is refused with a clear 4xx; a configured mode whose store has
no current version yet answers 503 until one is published and ``/admin/reload`` is called
(or the service restarts).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrieval_distill.teachers.base import TeacherSpec

Mode = Literal["symmetric", "asymmetric"]
MODES: tuple[str, ...] = ("symmetric", "asymmetric")


def parse_teacher_spec(text: str) -> TeacherSpec:
    """A :class:`TeacherSpec` from inline JSON, ``kind:model`` or a JSON/YAML spec file.

    Raises:
        ValueError: text that is none of these, or a spec that does not validate.
    """
    try:  # the teachers package's own parser, when present
        from retrieval_distill.teachers.base import parse_spec
    except ImportError:  # pragma: no cover - older teachers package
        parse_spec = None
    if parse_spec is not None:
        return parse_spec(text)
    text = text.strip()
    if text.startswith("{"):
        return TeacherSpec.model_validate_json(text)
    kind, _, model = text.partition(":")
    return TeacherSpec(kind=kind, model=model or None)


def _default_threads() -> int:
    """Half the cores, at least 1: leaves a core for the event loop and HTTP parsing."""
    return max(1, (os.cpu_count() or 2) // 2)


class ServiceSettings(BaseSettings):
    """Configuration of the FastAPI search service.

    Attributes:
        index_root: index store (folder with ``CURRENT`` and version folders) for ``symmetric`` mode.
        model: query encoder of ``symmetric`` mode; ``None`` uses the encoder named in the manifest.
        asym_index_root: index store of ``asymmetric`` mode (documents encoded by the teacher).
        asym_query_model: the student that encodes queries in ``asymmetric`` mode; ``None`` uses
            the query model recorded in the manifest, if any.
        corpus: BEIR folder or dataset id (``beir/scifact``) giving hits' title and text;
            ``None`` answers hits without title/text (``null``).
        max_k: largest ``k`` a request may ask for (larger answers 422).
        max_query_chars: queries are cut to this many characters (the response says ``truncated``);
            the encoder truncates at its token limit anyway (256 word pieces for MiniLM).
        max_body_bytes: request bodies above this size answer 413.
        body_timeout_s: a request's whole body must arrive within this many seconds of the
            request reaching the app, else 408 and the connection is closed (uvicorn has no
            body-read timeout: a client sending headers and part of a body held a connection,
            and a seat in the micro-batcher's in-flight count, forever).
        header_timeout_s: a connection must send a request's complete header block within this
            many seconds of connecting (or of the first byte of its next keep-alive request),
            else 408 if it sent anything, and it is closed (``rd serve`` only:
            :mod:`services.search_api.protocol`; uvicorn times out only idle connections).
        max_batch_queries: most queries in one ``POST /search/batch``.
        batch_max_size: micro-batching: most queries encoded in one forward pass.
        batch_max_wait_ms: micro-batching: longest a query waits for companions (milliseconds);
            the batcher only waits while more are expected (requests in flight, or the recent
            peak concurrency), so a lone client never waits.
        torch_threads / faiss_threads: intra-op threads of the encoder and of FAISS.
        query_backend: what encodes queries: ``onnx`` (ONNX Runtime export of the query model's
            whole forward, checked against torch at load; falls back to torch, and says so in
            ``/readyz`` and ``/index``, when the check fails) or ``torch``
            (``SentenceTransformer.encode``).
        query_quantize: ``none`` (fp32, same vectors as torch within 1e-4) or ``int8`` (dynamic
            int8 MatMul weights: about twice as fast, cosine to torch >= 0.98); ``onnx`` only.
        query_min_cosine: fidelity floor of the ONNX query encoder (cosine to torch on a fixed
            sample; ``None``: 0.9999 for fp32, 0.98 for int8).
        onnx_threads: ONNX Runtime intra-op threads per encode call.
        encode_workers: threads that encode + search micro-batches in parallel (each runs one
            batch at a time; default: the cores, at most 4).
        admin_api_key: key for ``/admin/*`` (header ``X-API-Key``); admin routes are off when unset.
        rerank_teacher: teacher used by ``rerank=true``: inline JSON of a
            :class:`~retrieval_distill.teachers.base.TeacherSpec`, ``kind:model`` shorthand
            (``cross_encoder:PATH``, ``bi_encoder:all-mpnet-base-v2``) or a spec file; needs
            ``corpus``. ``None`` answers 400 for rerank requests.
        rerank_default_depth / rerank_max_depth: candidates reranked by default / at most.
        warmup: run one query per mode after loading before reporting ready.
        host / port: where ``rd serve`` binds (default loopback only).
    """

    model_config = SettingsConfigDict(env_prefix="RD_", extra="ignore", validate_default=True)

    index_root: Path | None = None
    model: str | None = None
    asym_index_root: Path | None = None
    asym_query_model: str | None = None
    corpus: str | None = None

    max_k: int = Field(100, ge=1, le=10_000)
    max_query_chars: int = Field(2_000, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    body_timeout_s: float = Field(5.0, gt=0.0, le=600.0)
    header_timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    max_batch_queries: int = Field(256, ge=1)

    batch_max_size: int = Field(32, ge=1)
    batch_max_wait_ms: float = Field(5.0, ge=0.0, le=1_000.0)
    torch_threads: int = Field(default_factory=_default_threads, ge=1)
    faiss_threads: int = Field(1, ge=1)
    query_backend: Literal["onnx", "torch"] = "onnx"
    query_quantize: Literal["none", "int8"] = "none"
    query_min_cosine: float | None = Field(None, gt=0.0)
    onnx_threads: int = Field(1, ge=1, le=64)
    encode_workers: int = Field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)), ge=1, le=16)

    admin_api_key: SecretStr | None = None

    rerank_teacher: str | None = None
    rerank_default_depth: int = Field(20, ge=1)
    rerank_max_depth: int = Field(100, ge=1)

    warmup: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    @field_validator("admin_api_key")
    @classmethod
    def _empty_key_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            return None
        return v

    @field_validator("rerank_teacher")
    @classmethod
    def _parse_teacher(cls, v: str | None) -> str | None:
        if v is not None and v.strip():
            parse_teacher_spec(v)  # fail at start-up, not at the first rerank request
            return v
        return None

    @model_validator(mode="after")
    def _check_depths(self) -> "ServiceSettings":
        if self.rerank_default_depth > self.rerank_max_depth:
            raise ValueError(
                f"rerank_default_depth ({self.rerank_default_depth}) > rerank_max_depth ({self.rerank_max_depth})"
            )
        if self.rerank_teacher is not None and not self.corpus:
            raise ValueError("rerank_teacher needs corpus (RD_CORPUS): the teacher scores document texts")
        return self

    def teacher_spec(self) -> TeacherSpec | None:
        """The rerank teacher's spec (``None`` when reranking is off)."""
        return parse_teacher_spec(self.rerank_teacher) if self.rerank_teacher else None

    def index_root_for(self, mode: str) -> Path | None:
        """The index store root of ``mode`` (``None`` when the mode is not configured)."""
        return self.index_root if mode == "symmetric" else self.asym_index_root

    def configured_modes(self) -> list[str]:
        return [m for m in MODES if self.index_root_for(m) is not None]
