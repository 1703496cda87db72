"""Cross-encoder teacher throughput: plain ``CrossEncoder.predict`` fp32 vs our scoring path.

Both score the same sample of SciFact candidate pairs (the BM25 top-``depth`` of the first
``queries`` test queries, sorted qids) with the same cross-encoder:

* baseline: ``CrossEncoder(model, max_length=256).predict(pairs, batch_size=32)`` in fp32
  (sentence-transformers sorts each call by length itself);
* ours: :class:`retrieval_distill.teachers.cross_encoder.CrossEncoderTeacher` with
  ``backend=onnx, quantize=int8`` (ONNX Runtime, int8 weights, length-sorted batches of
  32, max_length 256), after its one-time export and fp32 check (reported separately);
* for attribution, ONNX Runtime fp32 (same runner, no quantisation).

When the int8 path's fp32 check refuses the model, the int8 graph is still timed (row
"refused; timing only") so the speed it would give is known; its nDCG@10 shows why it was refused.

The machine is shared, so the paths alternate for ``rounds`` rounds and the best time of
each is kept. It prints pairs/s, the ratio to the baseline, and nDCG@10 of each path's
reranking (ranx, SciFact test qrels), and writes the figures as JSON with ``--json``.

    python eval/bench/teacher_throughput.py --model work/teachers/ce-minilm-scifact \\
        --candidates work/scifact-quick/runs/bm25.test.trec --queries 20 --depth 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="cross-encoder folder (rd teacher fit) or hub name")
    ap.add_argument("--candidates", required=True, help="TREC run of SciFact test queries")
    ap.add_argument("--dataset", default="beir/scifact/test")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--depth", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import torch
    from ranx import Qrels, Run, evaluate
    from sentence_transformers import CrossEncoder

    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.evaluation.runs import read_run, trec_order
    from retrieval_distill.models import resolve_model
    from retrieval_distill.teachers import build_teacher

    coll = load_collection(a.dataset)
    run = read_run(a.candidates)
    qids = sorted(q for q in run if q in coll.qrels)[: a.queries]
    pairs_id = [(q, d) for q in qids for d, _ in trec_order(run[q])[: a.depth]]
    qs = [coll.queries[q] for q, _ in pairs_id]
    ps = [coll.doc_text(d) for _, d in pairs_id]
    n = len(pairs_id)
    print(f"sample: {len(qids)} queries x top-{a.depth} = {n} pairs; torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")

    base = CrossEncoder(resolve_model(a.model), max_length=a.max_length, activation_fn=torch.nn.Identity(), device="cpu")
    opts = {"max_length": a.max_length, "batch_size": a.batch_size, "backend": "onnx"}
    from retrieval_distill.teachers.speed import SpeedCheckError

    t0 = time.perf_counter()
    refused = None
    ours = build_teacher({"kind": "cross_encoder", "model": a.model, "options": {**opts, "quantize": "int8"}})
    int8_runner = ours.score_unchecked  # the int8 graph alone, without the check
    try:
        ours.score(qs[:64], ps[:64])  # one-time: export/quantise (cached) + the fp32 check
    except SpeedCheckError as e:  # the int8 path refuses to run silently wrong: say so, still time it
        refused, ours = str(e), None
        print(f"int8 path refused by its fp32 check: {e}")
    setup_s = time.perf_counter() - t0
    ort32 = build_teacher({"kind": "cross_encoder", "model": a.model, "options": {**opts, "quantize": "none"}})
    ort32.score(qs[:8], ps[:8])

    paths = {
        "baseline CrossEncoder.predict fp32": lambda: np.asarray(base.predict(list(zip(qs, ps)), batch_size=a.batch_size, show_progress_bar=False), dtype=np.float32).ravel(),
        **({"ours onnx int8": lambda: ours.score(qs, ps)} if ours is not None
           else {"onnx int8 (refused; timing only)": lambda: int8_runner(qs, ps)}),
        "onnx fp32 (length-sorted batches)": lambda: ort32.score(qs, ps),
    }
    best = {k: float("inf") for k in paths}
    scores = {}
    for r in range(a.rounds):
        for k, f in paths.items():
            t = time.perf_counter()
            scores[k] = f()
            best[k] = min(best[k], time.perf_counter() - t)
            print(f"round {r + 1}: {k}: {best[k]:.2f} s best so far", flush=True)

    qrels = Qrels({q: coll.qrels[q] for q in qids})

    def ndcg(s):
        rr: dict = {}
        for (q, d), x in zip(pairs_id, s):
            rr.setdefault(q, {})[d] = float(x)
        return float(evaluate(qrels, Run(rr), "ndcg@10"))

    bkey = "baseline CrossEncoder.predict fp32"
    out = {
        "sample_pairs": n, "queries": len(qids), "depth": a.depth, "model": a.model, "max_length": a.max_length, "batch_size": a.batch_size,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "one_time_setup_s": round(setup_s, 2), "speed_check": ours.speed_check if ours is not None else None,
        "int8_refused": refused, "rows": {},
    }  # fmt: skip
    print(f"\n{'path':40s} {'pairs/s':>9s} {'ratio':>7s} {'nDCG@10':>8s} {'dNDCG':>8s} {'max|d|':>8s}")
    for k in paths:
        pps = n / best[k]
        nd = ndcg(scores[k])
        row = {"pairs_per_s": round(pps, 2), "ratio": round(best[bkey] / best[k], 3), "ndcg@10": round(nd, 4),
               "delta_ndcg@10": round(nd - ndcg(scores[bkey]), 4), "max_abs_diff": float(np.max(np.abs(scores[k] - scores[bkey])))}  # fmt: skip
        out["rows"][k] = row
        print(f"{k:40s} {pps:9.1f} {row['ratio']:7.2f} {nd:8.4f} {row['delta_ndcg@10']:+8.4f} {row['max_abs_diff']:8.4f}")
    print(f"one-time export + quantise + fp32 check: {setup_s:.1f} s; speed check: {out['speed_check'] or refused}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
