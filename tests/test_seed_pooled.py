"""eval/configs/query_side/seed_pooled.py on the published TREC-DL 2019 runs: an arm of
(TAS-B, BM25) against an arm of (BM25, BM25) differs per query by half the TAS-B - BM25
difference, so its pooled Δ is half of that and its paired t-test p-value is the one of
TAS-B against BM25 (a t statistic does not change when the differences are scaled)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ttest_rel

from conftest import TREC_DL
from script_support import load_script

SPLIT = "dl19.only-passages-in-corpus"


def test_pooled_delta_and_p_against_a_hand_computation():
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.evaluation.compare import load_runs
    from retrieval_distill.evaluation.metrics import evaluate

    mod = load_script("eval/configs/query_side/seed_pooled.py")
    bm25, tasb = TREC_DL / "runs" / "BM25.dl19.trec", TREC_DL / "runs" / "D_BERT_KD_TASB.dl19.trec"
    out = mod.main(["--qrels", str(TREC_DL), "--split", SPLIT, f"base={bm25},{bm25}", f"mixed={tasb},{bm25}"])

    qrels = load_collection(str(TREC_DL), split=SPLIT).qrels
    pq = {p: evaluate(qrels, next(iter(load_runs([p]).values())), ["ndcg@10"]).per_query["ndcg@10"] for p in (bm25, tasb)}
    qids = sorted(pq[bm25])
    a, b = np.array([pq[tasb][q] for q in qids]), np.array([pq[bm25][q] for q in qids])
    assert out["base"]["runs"] == pytest.approx([b.mean(), b.mean()])
    assert out["mixed"]["runs"] == pytest.approx([a.mean(), b.mean()])
    assert out["mixed"]["delta"] == pytest.approx((a.mean() - b.mean()) / 2)
    assert out["mixed"]["p"] == pytest.approx(ttest_rel(a, b).pvalue)
    with pytest.raises(SystemExit, match="expected NAME=RUN"):
        mod.main(["--qrels", str(TREC_DL), "--split", SPLIT, "base"])
