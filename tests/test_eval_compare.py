"""Run comparison: significance tests, corrections, Markdown/JSON/PNG output."""

import json

import pytest

from conftest import TREC_DL
from retrieval_distill.data.collections import load_qrels
from retrieval_distill.evaluation.compare import adjust_pvalues, compare, load_runs, mean_ci, paired_tests


def test_adjust_pvalues_by_hand():
    p = [0.01, 0.04, 0.03]
    # Holm: sorted 0.01*3 = 0.03, 0.03*2 = 0.06, then 0.04*1 = 0.04 -> monotone max 0.06.
    assert adjust_pvalues(p, "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert adjust_pvalues(p, "bonferroni") == pytest.approx([0.03, 0.12, 0.09])
    assert adjust_pvalues([0.5, 0.9], "bonferroni") == [1.0, 1.0]
    assert adjust_pvalues(p, "none") == p
    with pytest.raises(ValueError, match="unknown correction"):
        adjust_pvalues(p, "sidak")


def test_paired_tests_by_hand():
    # Differences d = [1, 0, 1, 1]: mean 0.75, sd 0.5, t = 0.75 / (0.5 / 2) = 3 with 3 df:
    # two-sided p = 0.0577. Randomisation: 2^4 sign flips (exact); |mean| >= 0.75 only when
    # the three non-zero differences share a sign: 2 * 2 of 16 assignments -> p = 0.25.
    p = paired_tests([0, 0, 0, 0], [1, 0, 1, 1])
    assert p["t-test"] == pytest.approx(0.057669, abs=1e-6)
    assert p["fisher"] == pytest.approx(0.25)
    assert paired_tests([0.5, 0.2], [0.5, 0.2]) == {"t-test": 1.0, "fisher": 1.0}


def test_mean_ci():
    # mean 2, sd 1, n 3: t(0.975, 2) = 4.302653 -> half-width 4.302653 / sqrt(3) = 2.484138
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and lo == pytest.approx(2 - 2.484138, abs=1e-6) and hi == pytest.approx(2 + 2.484138, abs=1e-6)


def test_compare_dl19_runs(tmp_path):
    runs = load_runs([TREC_DL / "runs" / "BM25.dl19.trec", TREC_DL / "runs" / "BM25_RM3.dl19.trec",
                      f"tasb={TREC_DL / 'runs' / 'D_BERT_KD_TASB.dl19.trec'}"])
    assert list(runs) == ["BM25", "BM25_RM3", "tasb"]
    qrels = load_qrels(TREC_DL / "qrels" / "dl19.tsv")
    res = compare(qrels, runs, "BM25", ["ndcg@10", "recall@100"], rel_threshold=2,
                  out_md=tmp_path / "c.md", out_json=tmp_path / "c.json", out_png=tmp_path / "c.png")
    rows = {(r["run"], r["metric"]): r for r in res.rows}
    # TAS-B beats BM25 by 0.2152 nDCG@10 on 43 queries: significant under both tests after Holm.
    tasb = rows[("tasb", "ndcg@10")]
    assert tasb["delta"] == pytest.approx(0.7210 - 0.5058, abs=1e-4)
    assert tasb["significant"] == {"t-test": True, "fisher": True}
    assert tasb["delta_ci"][0] > 0
    # RM3's +0.016 nDCG@10 is not significant (p ~ 0.36).
    rm3 = rows[("BM25_RM3", "ndcg@10")]
    assert rm3["significant"] == {"t-test": False, "fisher": False} and 0.2 < rm3["p"]["t-test"] < 0.6
    # Holm over 2 comparisons: the smaller p is doubled, the larger kept (monotone).
    ps = sorted([rows[(n, "ndcg@10")]["p"]["t-test"] for n in ("BM25_RM3", "tasb")])
    adj = sorted([rows[(n, "ndcg@10")]["p_adj"]["t-test"] for n in ("BM25_RM3", "tasb")])
    assert adj == pytest.approx([2 * ps[0], max(2 * ps[0], ps[1])])
    md = (tmp_path / "c.md").read_text()
    assert "| tasb | 0.7210▲†‡ |" in md and "holm correction" in md
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["baseline"] == "BM25" and data["runs"]["tasb"]["n_judged"] == 43
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_errors():
    q = {"q": {"d": 1}}
    with pytest.raises(ValueError, match="baseline 'x' is not one of the runs"):
        compare(q, {"a": {"q": {"d": 1.0}}, "b": {"q": {"d": 1.0}}}, "x")
    with pytest.raises(ValueError, match="unknown test"):
        compare(q, {"a": {"q": {"d": 1.0}}, "b": {"q": {"d": 1.0}}}, "a", tests=["wilcoxon"])
