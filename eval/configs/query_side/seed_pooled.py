"""Seed-pooled paired comparison of recipes: each arm is several runs of one recipe (seeds);
its per-query metric is the mean over those runs, and every other arm is compared with the
first by a paired t-test over the queries (scipy). What it tests is the recipe, averaged over
training noise, not any single model: `rd eval compare` is the test for one run against one.

    python eval/configs/query_side/seed_pooled.py --qrels beir/scifact/test \\
        base=work/scifact-quick/runs/baseline.test.trec,work/scifact-quick-s14/runs/baseline.test.trec,work/scifact-quick-s15/runs/baseline.test.trec \\
        demo=work/scifact-quick/runs/student.test.trec,work/scifact-quick-s14/runs/student.test.trec,work/scifact-quick-s15/runs/student.test.trec

Prints, per arm, the metric of each run, their mean, and (other arms) the pooled difference
and its p-value. A missing run file or an arm without ``=`` exits with a one-line message.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qrels", required=True, help="dataset id with split or BEIR folder (its qrels)")
    ap.add_argument("--split", default=None, help="qrels split when --qrels is a folder")
    ap.add_argument("--metric", default="ndcg@10")
    ap.add_argument("arms", nargs="+", help="NAME=RUN[,RUN...]; the first arm is the baseline")
    a = ap.parse_args(argv)
    import numpy as np
    from scipy.stats import ttest_rel

    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.evaluation.compare import load_runs
    from retrieval_distill.evaluation.metrics import evaluate

    arms: dict[str, list[str]] = {}
    for arg in a.arms:
        name, sep, paths = arg.partition("=")
        if not sep or not paths:
            sys.exit(f"seed_pooled: {arg!r}: expected NAME=RUN[,RUN...]")
        arms[name] = paths.split(",")
    qrels = load_collection(a.qrels, split=a.split).qrels
    try:
        per_run = {n: [evaluate(qrels, next(iter(load_runs([p]).values())), [a.metric]).per_query[a.metric] for p in ps]
                   for n, ps in arms.items()}
    except FileNotFoundError as e:
        sys.exit(f"seed_pooled: {e}")
    qids = sorted(next(iter(per_run.values()))[0])
    pooled = {n: np.mean([[r[q] for q in qids] for r in runs], axis=0) for n, runs in per_run.items()}
    base = next(iter(arms))
    out = {}
    for n, runs in per_run.items():
        means = [float(np.mean([r[q] for q in qids])) for r in runs]
        row = {"runs": means, "mean": float(np.mean(means))}
        line = f"{n:>12}: {a.metric} " + ", ".join(f"{x:.4f}" for x in means) + f"  mean {row['mean']:.4f}"
        if n != base:
            row["delta"] = float(pooled[n].mean() - pooled[base].mean())
            row["p"] = float(ttest_rel(pooled[n], pooled[base]).pvalue)
            line += f"  pooled Δ {row['delta']:+.4f}, paired t-test p {row['p']:.4f} ({len(qids)} queries)"
        print(line)
        out[n] = row
    return out


if __name__ == "__main__":
    main()
