"""Query encoding latency of query encoders, one query per call, against a baseline encoder.

The asymmetric mode of issue 19 promises "query latency of MiniLM": documents are encoded once
by all-mpnet-base-v2, queries by all-MiniLM-L6-v2 plus a 384 -> 768 linear map. This bench
encodes the same real queries one per call (the service's situation) with each encoder in the
same process and thread count, and prints median / p95 latency in milliseconds and each
encoder's ratio to the first (the baseline). Warm-up calls are not timed; encoders alternate
per query so machine load hits them alike.

Usage::

    python eval/bench/query_latency.py --dataset beir/scifact/test \\
        all-mpnet-base-v2 all-MiniLM-L6-v2 work/students/qs-asym-mpnet \\
        --out eval/reports/bench/query_latency_scifact.json
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="query encoders (hub name or folder); the first is the baseline")
    ap.add_argument("--dataset", required=True, help="queries, e.g. beir/scifact/test")
    ap.add_argument("--queries", type=int, default=200, help="how many queries to time (default 200)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as one service worker)")
    ap.add_argument("--out", help="JSON output")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.models.encoder import Encoder
    from retrieval_distill.utils import write_json_atomic

    torch.set_num_threads(args.threads)
    coll = load_collection(args.dataset)
    texts = [coll.queries[q] for q in sorted(coll.queries)][: args.queries]
    encoders = [Encoder(m, batch_size=1) for m in args.models]
    for enc in encoders:  # warm-up: first calls allocate and tune kernels
        for t in texts[:5]:
            enc.encode_queries([t])
    times = [[] for _ in encoders]
    dims = [None] * len(encoders)
    for t in texts:
        for i, enc in enumerate(encoders):
            t0 = time.perf_counter()
            v = enc.encode_queries([t])
            times[i].append(time.perf_counter() - t0)
            dims[i] = int(v.shape[1])
    base = float(np.median(times[0]))
    rows = []
    for m, ts, d in zip(args.models, times, dims):
        ms = np.asarray(ts) * 1000
        rows.append({"model": m, "dim": d, "median_ms": round(float(np.median(ms)), 2),
                     "p95_ms": round(float(np.percentile(ms, 95)), 2),
                     "ratio_to_baseline": round(float(np.median(ts)) / base, 3)})
    print(f"{len(texts)} queries of {args.dataset}, one per call, {args.threads} thread(s); baseline {args.models[0]}")
    print(f"{'model':<45} {'dim':>4} {'median ms':>10} {'p95 ms':>8} {'x baseline':>10}")
    for r in rows:
        print(f"{r['model']:<45} {r['dim']:>4} {r['median_ms']:>10.2f} {r['p95_ms']:>8.2f} {r['ratio_to_baseline']:>10.3f}")
    result = {"dataset": args.dataset, "queries": len(texts), "threads": args.threads, "rows": rows}
    if args.out:
        write_json_atomic(args.out, result)
    return result


if __name__ == "__main__":
    main()
