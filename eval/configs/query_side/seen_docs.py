"""How much of a SciFact student's test score comes from documents it saw as train positives?

SciFact's train and test claims cite an overlapping set of abstracts: 181 of the 283 test-relevant
documents are also relevant to some train query, and 196 of the 300 test queries have at least
one such document. A student trained on the train qrels against a FIXED corpus can learn a prior
toward those documents (every two-tower SciFact student sees them too, but query-side training
over the whole corpus learns it fast). This splits each run's per-query nDCG@10 into the test
queries with a train-relevant document ("seen") and those without ("unseen"), with paired tests
against a baseline run on each part.

    python eval/configs/query_side/seen_docs.py --train beir/scifact/train --test beir/scifact/test \\
        --baseline init init=work/runs/init.test.trec qs=work/runs/qs-infonce.test.trec
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=RUN.trec")
    ap.add_argument("--train", required=True, help="the training qrels' dataset id, e.g. beir/scifact/train")
    ap.add_argument("--test", required=True, help="the evaluated dataset id, e.g. beir/scifact/test")
    ap.add_argument("--baseline", required=True, help="NAME of the run the paired tests compare with")
    ap.add_argument("--metric", default="ndcg@10")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    from scipy import stats

    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.evaluation.metrics import evaluate
    from retrieval_distill.evaluation.runs import read_run

    train, test = load_collection(args.train), load_collection(args.test)
    seen_docs = {d for rels in train.qrels.values() for d, g in rels.items() if g > 0}
    judged = [q for q, rels in test.qrels.items() if any(g > 0 for g in rels.values())]
    parts = {
        "all": judged,
        "seen": [q for q in judged if any(g > 0 and d in seen_docs for d, g in test.qrels[q].items())],
    }
    parts["unseen"] = [q for q in judged if q not in set(parts["seen"])]
    runs = dict(a.split("=", 1) for a in args.runs)
    per = {n: evaluate(test.qrels, read_run(p), [args.metric]).per_query[args.metric] for n, p in runs.items()}
    rows = []
    print(f"{args.metric}: {len(parts['seen'])} test queries with a train-relevant document (seen), "
          f"{len(parts['unseen'])} without (unseen); paired t-test vs {args.baseline}")
    print(f"{'run':<24}" + "".join(f"{p + f' ({len(q)})':>26}" for p, q in parts.items()))
    for n in runs:
        cells = []
        row = {"run": n}
        for p, qids in parts.items():
            a = np.array([per[n].get(q, 0.0) for q in qids])
            b = np.array([per[args.baseline].get(q, 0.0) for q in qids])
            pv = float(stats.ttest_rel(a, b).pvalue) if n != args.baseline else float("nan")
            row[p] = {"mean": round(float(a.mean()), 4), "delta": round(float((a - b).mean()), 4), "p": pv}
            cells.append(f"{a.mean():.4f} ({(a - b).mean():+.4f}, p {pv:.3f})" if n != args.baseline else f"{a.mean():.4f}")
        rows.append(row)
        print(f"{n:<24}" + "".join(f"{c:>26}" for c in cells))
    return rows


if __name__ == "__main__":
    main()
