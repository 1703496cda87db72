"""`rd serve`: run the FastAPI search service (services/search_api) under uvicorn.

Options left unset fall back to ``RD_*`` environment variables (see
:class:`services.search_api.settings.ServiceSettings`); the admin API key is read only from
``RD_ADMIN_API_KEY`` so that it never shows in a process list.

Example::

    rd serve --index-root work/indexes/scifact --corpus beir/scifact/test --port 8000
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="serve indexes over HTTP", no_args_is_help=True)


@app.command("serve")
def serve(
    index_root: Optional[Path] = typer.Option(None, help="index store for symmetric mode (folder with CURRENT)"),
    model: Optional[str] = typer.Option(None, help="query encoder of symmetric mode (default: the manifest's encoder)"),
    asym_index_root: Optional[Path] = typer.Option(None, help="index store for asymmetric mode (teacher-encoded documents)"),
    query_model: Optional[str] = typer.Option(None, help="student query encoder of asymmetric mode"),
    corpus: Optional[str] = typer.Option(None, help="BEIR folder or dataset id giving hits' title and text"),
    rerank_teacher: Optional[str] = typer.Option(None, help="teacher for rerank=true: kind:model, inline JSON or spec file"),
    host: Optional[str] = typer.Option(None, help="bind address (default 127.0.0.1: loopback only)"),
    port: Optional[int] = typer.Option(None, help="port (default 8000; 0 picks a free one)"),
    max_k: Optional[int] = typer.Option(None, help="largest k a request may ask for (default 100)"),
    batch_max_size: Optional[int] = typer.Option(None, help="micro-batch: most queries per encoder pass (default 32)"),
    batch_max_wait_ms: Optional[float] = typer.Option(None, help="micro-batch: longest wait for companions, ms (default 5)"),
    torch_threads: Optional[int] = typer.Option(None, help="torch intra-op threads (default: half the cores)"),
    faiss_threads: Optional[int] = typer.Option(None, help="FAISS OpenMP threads (default 1)"),
    query_backend: Optional[str] = typer.Option(None, help="query encoder: onnx (default; falls back to torch if its check fails) or torch"),
    query_quantize: Optional[str] = typer.Option(None, help="onnx query encoder weights: none (fp32, default) or int8"),
    onnx_threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads per encode call (default 1)"),
    encode_workers: Optional[int] = typer.Option(None, help="threads encoding + searching micro-batches in parallel (default 1)"),
    body_timeout_s: Optional[float] = typer.Option(None, help="seconds a request body may take to arrive before 408 (default 5)"),
    header_timeout_s: Optional[float] = typer.Option(None, help="seconds a connection may take to send its request headers before 408 + close (default 10)"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
) -> None:
    """Serve the search API (POST /search, /search/batch; GET /healthz, /readyz, /metrics, /index)."""
    import uvicorn
    from pydantic import ValidationError

    from services.search_api.app import create_app
    from services.search_api.settings import ServiceSettings

    given = {
        "index_root": index_root, "model": model, "asym_index_root": asym_index_root,
        "asym_query_model": query_model, "corpus": corpus, "rerank_teacher": rerank_teacher,
        "host": host, "port": port, "max_k": max_k, "batch_max_size": batch_max_size,
        "batch_max_wait_ms": batch_max_wait_ms, "torch_threads": torch_threads, "faiss_threads": faiss_threads,
        "query_backend": query_backend, "query_quantize": query_quantize, "onnx_threads": onnx_threads,
        "encode_workers": encode_workers, "body_timeout_s": body_timeout_s,
        "header_timeout_s": header_timeout_s,
    }
    try:
        settings = ServiceSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        raise typer.BadParameter(str(e)) from None
    if not settings.configured_modes():
        raise typer.BadParameter("no index configured: pass --index-root and/or --asym-index-root (or RD_INDEX_ROOT)")
    for m in settings.configured_modes():
        root = settings.index_root_for(m)
        if not Path(root).exists():
            typer.echo(f"warning: {m} index root {root} does not exist yet; /readyz answers 503 until it is built", err=True)
            continue
        _refuse_foreign_query_encoder(m, root, settings.model if m == "symmetric" else settings.asym_query_model)
    from services.search_api.protocol import protocol_class

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level, access_log=False,
                http=protocol_class(settings.header_timeout_s))


def _refuse_foreign_query_encoder(mode: str, root, query_model: str | None) -> None:
    """Before uvicorn starts: a query-side student (its card names the document encoder it was
    trained against) given for an index whose documents another encoder made is refused with
    exit code 2, rather than answering 503 from /readyz later."""
    if not query_model:
        return
    from retrieval_distill.distill.query_side import check_query_encoder
    from retrieval_distill.index.manifest import EncoderMismatchError, IndexFormatError
    from retrieval_distill.index.store import open_version

    try:
        manifest = open_version(root).manifest
    except (IndexFormatError, FileNotFoundError, ValueError):
        return  # no version yet, or a broken one: the service reports it on /readyz
    try:
        check_query_encoder(query_model, manifest.encoder.fingerprint, where=f"the {mode} index {root}")
    except (EncoderMismatchError, ValueError) as e:  # ValueError: an unreadable training card
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

