"""Compare teachers on *identical* candidate lists: each score folder is cut to the pairs of a
TREC run's top-``depth`` and evaluated (ranx, nDCG@10 / MRR@10). Used for the cross-encoder
rows of eval/reports/teachers.md, where the cross-encoder scored only the BM25 top-30 and the
other teachers scored more.

    python eval/configs/teachers/same_candidates.py --run work/scifact-quick/runs/bm25.test.trec --depth 30 \\
        --dataset beir/scifact/test NAME=SCORE_FOLDER ...
"""

from __future__ import annotations

import argparse
import json

from retrieval_distill.data.collections import load_collection
from retrieval_distill.evaluation.metrics import evaluate
from retrieval_distill.evaluation.runs import read_run, trec_order
from retrieval_distill.teachers.scoring import read_scores


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="TREC run whose top-depth defines the candidates")
    ap.add_argument("--depth", type=int, default=30)
    ap.add_argument("--dataset", required=True, help="dataset id with split (qrels)")
    ap.add_argument("--qids", help="only these qids (first column)")
    ap.add_argument("folders", nargs="+", help="NAME=SCORE_FOLDER")
    a = ap.parse_args(argv)
    coll = load_collection(a.dataset)
    run = read_run(a.run)
    keep = {line.split()[0] for line in open(a.qids)} if a.qids else None
    pairs = {
        (q, d)
        for q, docs in run.items()
        if q in coll.qrels and (keep is None or q in keep)
        for d, _ in trec_order(docs)[: a.depth]
    }
    out = {}
    for spec in a.folders:
        name, folder = spec.split("=", 1)
        df = read_scores(folder)
        rr: dict[str, dict[str, float]] = {}
        for q, d, s in zip(df["qid"], df["docid"], df["score"]):
            if (q, d) in pairs:
                rr.setdefault(q, {})[d] = float(s)
        missing = len(pairs) - sum(len(v) for v in rr.values())
        if missing:
            raise SystemExit(f"{folder}: {missing} of the {len(pairs)} candidate pairs have no score")
        res = evaluate({q: coll.qrels[q] for q in rr}, rr, ["ndcg@10", "mrr@10"]).to_dict(per_query=False)
        out[name] = {"pairs": len(pairs), "queries": len(rr), **res["overall"]}
        print(f"{name:24s} queries {len(rr):4d} pairs {len(pairs):6d}  nDCG@10 {res['overall']['ndcg@10']:.4f}  MRR@10 {res['overall']['mrr@10']:.4f}")
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
