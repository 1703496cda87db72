"""Does the service's fast query encoder change retrieval quality? torch vs ONNX fp32 vs ONNX int8.

Encodes the test queries of a dataset with the index's query model three ways
(``SentenceTransformer.encode``; :class:`~retrieval_distill.models.onnx_encoder.OnnxQueryEncoder`
fp32 and int8), searches the same index version with each, and reports nDCG@10 / MRR@10 /
Recall@100 (ranx, trec_eval semantics) and the cosine of each query vector to torch's.
Also times the encoders on the same queries, one query per call (1 thread each, same process).

Usage::

    python eval/bench/query_quant_quality.py --index-root work/scifact-quick/index/flat \\
        --dataset beir/scifact/test --out eval/reports/bench/serve_quant_scifact.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

METRICS = ("ndcg@10", "mrr@10", "recall@100")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index-root", type=Path, required=True, help="index store (folder with CURRENT)")
    ap.add_argument("--dataset", required=True, help="queries and qrels, e.g. beir/scifact/test")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--out", type=Path, help="JSON output")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.evaluation.metrics import evaluate
    from retrieval_distill.index.store import IndexStore
    from retrieval_distill.models.encoder import Encoder
    from retrieval_distill.search.dense import DenseSearcher
    from retrieval_distill.utils import write_json_atomic

    torch.set_num_threads(1)
    version = IndexStore(args.index_root).current()
    m = version.manifest
    coll = load_collection(args.dataset)
    qids = [q for q in coll.queries if q in coll.qrels]
    texts = [coll.queries[q] for q in qids]
    q = m.query_encoder.name if m.query_encoder and m.query_encoder.name != m.encoder.name else None
    enc = Encoder(m.encoder.name, query_model=q, normalize=m.normalized, show_progress=False)
    searcher = DenseSearcher(version, enc, threads=1)

    def run_of(vecs: np.ndarray) -> dict:
        scores, docids = searcher.search_vectors(vecs, args.k)
        return {qid: {str(d): float(s) for s, d in zip(sr, dr) if d} for qid, sr, dr in zip(qids, scores, docids)}

    def per_query_ms(fn) -> float:
        for t in texts[:5]:
            fn([t])
        t0 = time.perf_counter()
        for t in texts:
            fn([t])
        return round(1000 * (time.perf_counter() - t0) / len(texts), 3)

    ref = enc.encode_queries(texts)
    rows: dict[str, dict] = {"torch": {"vectors": ref, "ms_per_query": per_query_ms(enc.encode_queries)}}
    for quant in ("none", "int8"):
        onnx = enc.use_onnx_queries(quantize=quant)
        rows[enc.query_backend] = {
            "vectors": enc.encode_queries(texts), "ms_per_query": per_query_ms(enc.encode_queries),
            "check_min_cosine": round(float(onnx.min_cosine_seen), 5),
        }
    out = {
        "index": str(version.path), "model": q or m.encoder.name, "dataset": args.dataset, "queries": len(qids),
        "load_avg": os.getloadavg(), "backends": {},
    }
    for name, row in rows.items():
        res = evaluate(coll.qrels, run_of(row.pop("vectors")), metrics=METRICS)
        row.update({k: round(float(v), 4) for k, v in res.overall.items()})
        out["backends"][name] = row
    # cosines to torch (vectors are L2-normalised)
    enc.query_onnx = None
    for quant, name in (("none", "onnx"), ("int8", "onnx-int8")):
        vecs = enc.use_onnx_queries(quantize=quant).encode(texts)
        cos = (vecs.astype(np.float64) * ref.astype(np.float64)).sum(axis=1)
        out["backends"][name].update(
            {"cosine_to_torch_min": round(float(cos.min()), 5), "cosine_to_torch_mean": round(float(cos.mean()), 5)}
        )
    base = out["backends"]["torch"]
    for name, row in out["backends"].items():
        row["ndcg@10_minus_torch"] = round(row["ndcg@10"] - base["ndcg@10"], 4)
        row["speedup_vs_torch"] = round(base["ms_per_query"] / row["ms_per_query"], 2)
    out["int8_minus_fp32_ndcg@10"] = round(out["backends"]["onnx-int8"]["ndcg@10"] - out["backends"]["onnx"]["ndcg@10"], 4)
    print(f"index {version.path} ({m.doc_count} docs), {len(qids)} queries of {args.dataset}; load avg {out['load_avg']}")
    print("| query encoder | nDCG@10 | MRR@10 | Recall@100 | cosine to torch (min / mean) | ms per query (1 thread) |")
    print("|---|---|---|---|---|---|")
    for name, row in out["backends"].items():
        cos = f"{row['cosine_to_torch_min']} / {row['cosine_to_torch_mean']}" if "cosine_to_torch_min" in row else "1 / 1"
        print(f"| {name} | {row['ndcg@10']} | {row['mrr@10']} | {row['recall@100']} | {cos} | {row['ms_per_query']} |")
    print(f"nDCG@10 int8 - fp32: {out['int8_minus_fp32_ndcg@10']:+.4f}")
    if args.out:
        write_json_atomic(args.out, out)
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
