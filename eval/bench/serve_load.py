"""Load benchmark of the search service against a naive FastAPI baseline, in one run.

Both servers run on 127.0.0.1 (loopback only), one after the other, over the same index
and the same queries:

* ``ours``: ``rd serve`` (micro-batched ONNX Runtime query encoder on ``encode_workers``
  threads, torch/FAISS threads set, pure-ASGI middleware; ``--ours-args`` passes options such
  as ``--query-quantize int8``). It has no result cache, so cycling the queries measures real work;
* ``naive``: a plain FastAPI ``def`` handler calling ``SentenceTransformer.encode([query])``
  and a flat FAISS inner-product search per request (FastAPI's thread pool runs requests
  concurrently; torch gets ``--naive-threads`` threads per call, 1 by default like ours,
  because torch's default of one thread per core collapses when the cores are shared).

Measured (closed loop, aiohttp client): latency p50/p99 at concurrency 1, and QPS at
concurrency 16, plus server and client CPU per request. Every phase is bounded by a request count and a time limit. The result is
printed as a Markdown table and written as JSON (``--out``).

Usage::

    python eval/bench/serve_load.py                      # ADI, index built on the fly (MiniLM)
    python eval/bench/serve_load.py --index-root work/scifact-quick/index/flat --dataset beir/scifact/test \
        --ours-args '--query-quantize int8' --out eval/reports/bench/serve_scifact.json

Goals (issue 6): ours p50 <= 10 ms and p99 <= 25 ms at c=1; ours >= 3x the naive QPS at c=16.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

PROJECT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- naive baseline
class Req(BaseModel):
    """The naive server's request body (module level: FastAPI must resolve the annotation)."""

    query: str
    k: int = 10


def naive_app(version_dir: str, model: str):
    """The baseline: encode one query with SentenceTransformer and search a flat FAISS index."""
    import faiss
    import numpy as np
    from fastapi import FastAPI

    from retrieval_distill.models import load_sentence_transformer

    st = load_sentence_transformer(model)
    index = faiss.read_index(str(Path(version_dir) / "index.faiss"))
    vecs = index.reconstruct_n(0, index.ntotal) if hasattr(index, "reconstruct_n") else None
    flat = faiss.IndexFlatIP(index.d)
    flat.add(np.ascontiguousarray(vecs, dtype=np.float32))
    docids = (Path(version_dir) / "docids").read_text(encoding="utf-8").split("\n")[: index.ntotal]

    app = FastAPI()

    @app.post("/search")
    def search(req: Req) -> dict:
        q = st.encode([req.query], normalize_embeddings=True, convert_to_numpy=True)
        scores, labels = flat.search(q.astype(np.float32), req.k)
        return {"hits": [{"docid": docids[i], "score": float(s), "rank": r} for r, (s, i) in enumerate(zip(scores[0], labels[0]), 1)]}

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True}

    return app


def _serve_naive(version_dir: str, model: str, port: int, threads: int) -> None:
    import uvicorn

    if threads > 0:
        import torch

        torch.set_num_threads(threads)

    uvicorn.run(naive_app(version_dir, model), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ----------------------------------------------------------------------------- helpers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base} not ready after {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux ``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], p: float) -> float:
    xs = sorted(values)
    if not xs:
        return float("nan")
    i = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[i]


async def _load(base: str, queries: list[str], concurrency: int, max_requests: int, max_seconds: float, k: int) -> dict:
    """Closed loop: ``concurrency`` clients, each sends its next query when the last returns.

    The client is aiohttp over keep-alive connections with pre-encoded bodies: it runs on the
    same 2 cores as the servers, so it is kept light (about a third of httpx's CPU per request).
    """
    import aiohttp

    bodies = [json.dumps({"query": q, "k": k}).encode() for q in queries]
    headers = {"content-type": "application/json"}
    lat: list[float] = []
    errors = 0
    sent = 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base, connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as client:

        async def post(i: int) -> bool:
            try:
                async with client.post("/search", data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    return r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):  # e.g. a keep-alive connection closed under our feet
                return False

        # warm-up: every connection once, plus a few sequential queries
        for i in range(5):
            await post(i)
        await asyncio.gather(*(post(i) for i in range(concurrency)))
        deadline = time.perf_counter() + max_seconds

        async def worker(w: int) -> None:
            nonlocal errors, sent
            i = w
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                t = time.perf_counter()
                ok = await post(i)
                lat.append(time.perf_counter() - t)
                if not ok:
                    errors += 1
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "requests": len(lat),
        "errors": errors,
        "seconds": round(wall, 3),
        "qps": round(len(lat) / wall, 2),
        "p50_ms": round(1000 * _pct(lat, 50), 2),
        "p90_ms": round(1000 * _pct(lat, 90), 2),
        "p99_ms": round(1000 * _pct(lat, 99), 2),
        "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else None,
    }


def _build_adi_index(root: Path, model: str) -> Path:
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.index.build import build_index
    from retrieval_distill.index.store import IndexStore
    from retrieval_distill.models.encoder import Encoder

    c = load_collection("classic/adi/test")
    enc = Encoder(model, show_progress=False)
    store = IndexStore(root)
    texts = c.doc_texts()
    store.publish(build_index(enc.encode_documents(texts), c.docids, store.new_version_dir("flat"), encoder=enc, texts=texts))
    return root


def _phase(name: str, cmd: list[str], env: dict, queries: list[str], args) -> dict:
    port = _free_port()
    cmd = cmd + ["--port", str(port)]
    log = open(Path(args.workdir) / f"{name}.log", "w")
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        import httpx

        top = httpx.post(f"{base}/search", json={"query": queries[0], "k": args.k}, timeout=300)
        top.raise_for_status()
        out = {"top_docids_q0": [h["docid"] for h in top.json()["hits"]]}
        modes = httpx.get(f"{base}/readyz", timeout=30).json().get("modes", {})
        if "symmetric" in modes:  # ours: what encodes the queries (onnx / onnx-int8 / torch, fallback reason)
            out["query_backend"] = modes["symmetric"].get("query_backend")
        for c, n, secs in ((1, args.requests_c1, args.seconds), (args.concurrency, args.requests_c16, args.seconds)):
            cpu0 = _cpu_seconds(proc.pid)
            me0 = time.process_time()
            out[f"c{c}"] = asyncio.run(_load(base, queries, c, n, secs, args.k))
            # the load generator shares the cores: its CPU per request says how much it takes
            out[f"c{c}"]["client_cpu_ms_per_request"] = round(
                1000 * (time.process_time() - me0) / (out[f"c{c}"]["requests"] + 5 + c), 2
            )
            # CPU time the server spent per answered request (warm-up requests included in the
            # count): robust to how much of the shared cores the scheduler gave the server
            warm = 5 + c
            out[f"c{c}"]["server_cpu_ms_per_request"] = round(
                1000 * (_cpu_seconds(proc.pid) - cpu0) / (out[f"c{c}"]["requests"] + warm), 2
            )
            print(f"  {name} c={c}: {out[f'c{c}']}", flush=True)
        return out
    finally:
        _stop(proc)
        log.close()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index-root", type=Path, help="index store (default: build ADI with --model in a temp dir)")
    ap.add_argument("--dataset", default="classic/adi/test", help="queries (and corpus for titles)")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests-c1", type=int, default=300)
    ap.add_argument("--requests-c16", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=30.0, help="time limit per phase")
    ap.add_argument("--torch-threads", type=int, default=None, help="ours: torch threads (default: service default)")
    ap.add_argument("--naive-threads", type=int, default=1,
                    help="naive: torch threads per encode call (default 1, like ours, so that neither server "
                         "oversubscribes the cores; 0 keeps torch's default, one per core)")
    ap.add_argument("--ours-args", default="", help="extra `rd serve` options for ours, e.g. '--query-quantize int8'")
    ap.add_argument("--only", choices=("both", "ours", "naive"), default="both",
                    help="run one server only (tuning; the ratio needs both)")
    ap.add_argument("--out", type=Path, default=PROJECT / "work" / "bench" / "serve_load.json")
    ap.add_argument("--serve-naive", nargs=2, metavar=("VERSION_DIR", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.serve_naive:
        vdir, model = args.serve_naive
        _serve_naive(vdir, model, args.port, args.naive_threads)
        return {}

    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.index.store import IndexStore

    args.workdir = tempfile.mkdtemp(prefix="rd-serve-load-")
    root = args.index_root or _build_adi_index(Path(args.workdir) / "index", args.model)
    version = IndexStore(root).current()
    coll = load_collection(args.dataset)
    queries = list(coll.queries.values())
    env = dict(os.environ)
    print(f"index {version.path} ({version.manifest.doc_count} docs, {version.manifest.factory}); {len(queries)} queries", flush=True)

    naive_cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-naive", str(version.path),
                 version.manifest.encoder.name, "--naive-threads", str(args.naive_threads)]
    naive = _phase("naive", naive_cmd, env, queries, args) if args.only != "ours" else None
    ours_cmd = [sys.executable, "-m", "retrieval_distill", "serve", "--index-root", str(root), "--corpus", args.dataset,
                "--log-level", "warning"]
    if args.torch_threads:
        ours_cmd += ["--torch-threads", str(args.torch_threads)]
    ours_cmd += shlex.split(args.ours_args)
    ours = _phase("ours", ours_cmd, env, queries, args) if args.only != "naive" else None
    if ours is None or naive is None:
        return {"ours": ours, "naive": naive, "ours_cmd": ours_cmd}

    c = f"c{args.concurrency}"
    if ours["top_docids_q0"] != naive["top_docids_q0"]:
        print(f"warning: the servers disagree on query 0: {ours['top_docids_q0']} vs {naive['top_docids_q0']}")
    result = {
        "index": str(version.path), "docs": version.manifest.doc_count, "factory": version.manifest.factory,
        "queries": len(queries), "model": version.manifest.encoder.name, "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "ours": ours, "naive": naive,
        "qps_ratio_c16": round(ours[c]["qps"] / naive[c]["qps"], 2),
        "cpu_per_request_ratio_c16": round(naive[c]["server_cpu_ms_per_request"] / ours[c]["server_cpu_ms_per_request"], 2),
        "p50_ratio_c1": round(naive["c1"]["p50_ms"] / ours["c1"]["p50_ms"], 2),
        "goals": {
            "p50_c1_le_10ms": ours["c1"]["p50_ms"] <= 10, "p99_c1_le_25ms": ours["c1"]["p99_ms"] <= 25,
            "qps_c16_ge_3x": ours[c]["qps"] >= 3 * naive[c]["qps"],
        },
        "settings": {
            "naive_threads": args.naive_threads, "torch_threads": args.torch_threads, "seconds": args.seconds,
            "ours_args": args.ours_args, "requests_c1": args.requests_c1, "requests_c16": args.requests_c16,
        },
        "command": "python eval/bench/serve_load.py " + shlex.join(sys.argv[1:] if argv is None else argv),
    }
    print()
    print("| server | c=1 p50 ms | c=1 p99 ms | c=1 QPS | c=16 QPS | c=16 p50 ms | c=16 p99 ms | CPU ms/req c=1 | CPU ms/req c=16 | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in (("naive (ST.encode + flat FAISS per request)", naive), ("ours (rd serve)", ours)):
        print(f"| {name} | {r['c1']['p50_ms']} | {r['c1']['p99_ms']} | {r['c1']['qps']} | {r[c]['qps']} | "
              f"{r[c]['p50_ms']} | {r[c]['p99_ms']} | {r['c1']['server_cpu_ms_per_request']} | "
              f"{r[c]['server_cpu_ms_per_request']} | {r['c1']['errors'] + r[c]['errors']} |")
    print(f"\nQPS ratio at c={args.concurrency}: {result['qps_ratio_c16']}x; server CPU per request, naive/ours at "
          f"c={args.concurrency}: {result['cpu_per_request_ratio_c16']}x; p50 speed-up at c=1: {result['p50_ratio_c1']}x")
    print(f"goals: {result['goals']}; load average at end {tuple(round(x, 2) for x in result['load_avg_at_end'])}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
