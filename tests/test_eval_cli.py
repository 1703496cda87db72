"""`rd eval score/compare/run` and bad input: duplicates, unknown qids, bad scores, qrels
with and without header, Windows line endings."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ADI, TREC_DL
from retrieval_distill.cli import app
from retrieval_distill.data.collections import DataFormatError, load_qrels
from retrieval_distill.evaluation.cli import resolve_qrels
from retrieval_distill.evaluation.metrics import evaluate
from retrieval_distill.evaluation.runs import read_run, write_run

runner = CliRunner()
DL19_QRELS = TREC_DL / "qrels" / "dl19.tsv"
BM25_RUN = TREC_DL / "runs" / "BM25.dl19.trec"


def rd(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_score_dl19(tmp_path):
    out = tmp_path / "bm25.json"
    r = rd("eval", "score", "--qrels", DL19_QRELS, "--run", BM25_RUN, "--rel-threshold", 2,
           "--metrics", "ndcg@10,mrr@10,recall@100", "--per-query", "--out-json", out)
    assert r.exit_code == 0, r.output
    assert "| BM25 | 0.5058 | 0.7024 | 0.4910 | 43 | 0 | 0 |" in r.output
    assert "43 judged queries (0 missing from the run, scored 0)" in r.output
    per_query = [ln for ln in r.output.splitlines() if ln.startswith("ndcg@10\t")]
    assert len(per_query) == 43
    d = json.loads(out.read_text())
    assert round(d["overall"]["ndcg@10"], 4) == 0.5058 and len(d["per_query"]["mrr@10"]) == 43
    assert d["rel_threshold"] == 2


def test_score_run_with_qids_not_in_qrels(tmp_path):
    # ADI qrels against the DL19 run: every run query is unknown to the qrels, every judged
    # ADI query is missing from the run: reported, never silently averaged.
    r = runner.invoke(app, ["eval", "score", "--qrels", str(ADI), "--split", "test", "--run", str(BM25_RUN)])
    assert r.exit_code == 0
    adi_judged = len(load_qrels(ADI / "qrels" / "test.tsv"))
    assert f"{adi_judged} judged queries ({adi_judged} missing from the run, scored 0); 43 run queries not in the qrels excluded" in r.output
    assert "shares no query with the qrels" in r.output


def test_score_bad_runs_name_file_and_line(tmp_path):
    dup = tmp_path / "dup.trec"
    dup.write_text("1 Q0 d1 1 2.0 t\n1 Q0 d2 2 1.0 t\n1 Q0 d1 3 0.5 t\n")
    r = runner.invoke(app, ["eval", "score", "--qrels", str(DL19_QRELS), "--run", str(dup)])
    assert r.exit_code == 2 and "dup.trec:3: duplicate (qid, docid) (1, d1); first seen on line 1" in r.output
    bad = tmp_path / "bad.trec"
    bad.write_text("1 Q0 d1 1 2.0 t\r\n1 Q0 d2 2 NaNa t\r\n")
    r = runner.invoke(app, ["eval", "score", "--qrels", str(DL19_QRELS), "--run", str(bad)])
    assert r.exit_code == 2 and "bad.trec:2: score 'NaNa' is not a number" in r.output
    r = runner.invoke(app, ["eval", "score", "--qrels", str(tmp_path / "nope.tsv"), "--run", str(BM25_RUN)])
    assert r.exit_code == 2 and "nope.tsv" in r.output
    r = runner.invoke(app, ["eval", "score", "--qrels", str(DL19_QRELS), "--run", str(BM25_RUN), "--metrics", "ndgc@10"])
    assert r.exit_code == 2 and "unknown metric 'ndgc@10'" in r.output


def test_qrels_formats_header_no_header_trec_crlf(tmp_path):
    rows = ["q1\td1\t2", "q1\td2\t0", "q2\td3\t1"]
    variants = {
        "header.tsv": "query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n",
        "noheader.tsv": "\n".join(rows) + "\n",
        "trec.txt": "q1 0 d1 2\nq1 0 d2 0\nq2 0 d3 1\n",
        "crlf.tsv": "query-id\tcorpus-id\tscore\r\n" + "\r\n".join(rows) + "\r\n",
    }
    run = {"q1": {"d2": 2.0, "d1": 1.0}, "q2": {"d3": 1.0}}
    results = []
    for name, text in variants.items():
        p = tmp_path / name
        p.write_bytes(text.encode())
        q = resolve_qrels(str(p))
        assert q == {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}, name
        results.append(evaluate(q, run, ["mrr@10"]).overall["mrr@10"])
    assert results == [0.75] * 4  # q1: relevant d1 at rank 2 -> 0.5; q2: 1.0
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv:2: grade 'high' is not a number"):
        resolve_qrels(str(bad))
    r = runner.invoke(app, ["eval", "score", "--qrels", str(bad), "--run", str(BM25_RUN)])
    assert r.exit_code == 2 and "bad.tsv:2" in r.output


def test_compare_cli(tmp_path):
    r = rd("eval", "compare", BM25_RUN, f"tasb={TREC_DL / 'runs' / 'D_BERT_KD_TASB.dl19.trec'}",
           "--qrels", DL19_QRELS, "--baseline", "BM25", "--metrics", "ndcg@10", "--rel-threshold", 2,
           "--correction", "bonferroni", "--out-json", tmp_path / "c.json", "--out-png", tmp_path / "c.png")
    assert r.exit_code == 0, r.output
    assert "| tasb | 0.7210▲†‡ |" in r.output and "bonferroni" in r.output
    assert json.loads((tmp_path / "c.json").read_text())["correction"] == "bonferroni"
    assert (tmp_path / "c.png").stat().st_size > 1000
    r = runner.invoke(app, ["eval", "compare", str(BM25_RUN), "--qrels", str(DL19_QRELS), "--baseline", "nope"])
    assert r.exit_code == 2 and "baseline 'nope'" in r.output
    # --tests: an empty list, an empty item, an unknown name or a repeat is refused, not ignored
    for tests, says in (("", "no empty item"), ("t-test,", "no empty item"), ("wilcoxon", "unknown test(s) wilcoxon"),
                        ("fisher,Fisher", "names a test twice")):
        r = runner.invoke(app, ["eval", "compare", str(BM25_RUN), f"tasb={TREC_DL / 'runs' / 'D_BERT_KD_TASB.dl19.trec'}",
                                "--qrels", str(DL19_QRELS), "--baseline", "BM25", "--tests", tests])
        assert r.exit_code == 2 and says in r.output, (tests, r.output)


def test_run_bm25_matches_searcher(adi_bm25_run, tmp_path):
    index, fixture_run = adi_bm25_run
    out = tmp_path / "bm25.trec"
    r = rd("eval", "run", "classic/adi/test", out, "--searcher", "bm25", "--index", index, "--k", 10)
    assert r.exit_code == 0, r.output
    assert read_run(out) == read_run(fixture_run)
    assert out.read_text().split("\n", 1)[0].endswith(" bm25")
    r = runner.invoke(app, ["eval", "run", "classic/adi/test", str(out), "--searcher", "bm25"])
    assert r.exit_code == 2 and "needs --index" in r.output


def test_run_dense_matches_exact_cosine(tmp_path):
    import index_support as S
    from retrieval_distill.index.build import build_index

    docids, emb, _ = S.adi_encoded()
    version = build_index(emb, docids, tmp_path / "v", encoder=S.encoder(), texts=S.adi().doc_texts())
    out = tmp_path / "dense.trec"
    r = rd("eval", "run", ADI, out, "--searcher", "dense", "--index", version.path, "--k", 5)
    assert r.exit_code == 0, r.output
    run = read_run(out)
    qids, qv = S.adi_query_vectors()
    assert set(run) == set(S.adi().qrels) and all(len(v) == 5 for v in run.values())
    for i, q in enumerate(qids[:5]):
        if q not in run:
            continue
        sims = emb @ qv[i]
        top = [docids[j] for j in np.argsort(-sims)[:5]]
        assert list(run[q]) == top
        assert run[q][top[0]] == pytest.approx(float(sims.max()), abs=1e-4)


def test_run_dense_query_encoder_alone_is_used(tmp_path):
    """--query-encoder without --encoder: documents stay the index's encoder, queries go
    through the given model (here mpnet, 768-d, refused against a 384-d MiniLM index: proof
    that it is really used, where it used to be ignored silently)."""
    import index_support as S
    from retrieval_distill.index.build import build_index

    docids, emb, _ = S.adi_encoded()
    version = build_index(emb, docids, tmp_path / "v", encoder=S.encoder(), texts=S.adi().doc_texts())
    r = rd("eval", "run", ADI, tmp_path / "a.trec", "--searcher", "dense", "--index", version.path,
           "--query-encoder", "all-mpnet-base-v2", "--k", 5)
    assert r.exit_code != 0 and "768" in (r.output + repr(r.exception))
    assert not (tmp_path / "a.trec").exists()


def test_run_rerank_with_a_teacher(adi, adi_bm25_run, tmp_path):
    # Rerank BM25 (k1=0.9, b=0.4) candidates with a BM25 teacher of other parameters
    # (k1=1.2, b=0.75): the run must hold exactly the teacher's scores of the top 5.
    from retrieval_distill.search.bm25 import BM25Searcher

    index, fixture_run = adi_bm25_run
    cands = read_run(fixture_run)
    few = {q: cands[q] for q in list(cands)[:4]}
    write_run(tmp_path / "cands.trec", few, tag="bm25")
    out = tmp_path / "rr.trec"
    spec = json.dumps({"kind": "bm25", "options": {"index": str(index), "k1": 1.2, "b": 0.75}})
    r = rd("eval", "run", ADI, out, "--searcher", "rerank", "--teacher", spec,
           "--candidates", tmp_path / "cands.trec", "--depth", 5, "--k", 5, "--tag", "rr")
    assert r.exit_code == 0, r.output
    rr = read_run(out)
    assert set(rr) == set(few) and out.read_text().split("\n", 1)[0].endswith(" rr")
    other = BM25Searcher(index, k1=1.2, b=0.75)
    for q in few:
        top5 = sorted(few[q], key=lambda d: (few[q][d], d), reverse=True)[:5]
        assert set(rr[q]) == set(top5)
        want = other.score_pairs(adi.queries[q], top5)
        assert [rr[q][d] for d in top5] == pytest.approx(want, rel=1e-5)
    bad = tmp_path / "bad.trec"
    bad.write_text(f"{next(iter(few))} Q0 no-such-doc 1 1.0 x\n")
    r = runner.invoke(app, ["eval", "run", str(ADI), str(out), "--searcher", "rerank", "--teacher", spec, "--candidates", str(bad)])
    assert r.exit_code == 2 and "docid 'no-such-doc' is not in the corpus" in r.output


def test_rerank_resumes_from_checkpoint(adi, adi_bm25_run, tmp_path):
    from retrieval_distill.evaluation.cli import rerank_run

    index, fixture_run = adi_bm25_run
    few = {q: v for q, v in list(read_run(fixture_run).items())[:4]}
    write_run(tmp_path / "cands.trec", few, tag="bm25")
    spec = json.dumps({"kind": "bm25", "options": {"index": str(index), "k1": 1.2, "b": 0.75}})
    ck = tmp_path / "rr.trec.partial"
    full = rerank_run(adi, adi.queries, spec, tmp_path / "cands.trec", 5, checkpoint=ck)
    lines = ck.read_text().splitlines()
    assert len(lines) == 5  # fingerprint + one line per query
    # Simulate a kill: 2 finished queries (the first one marked), then a torn line.
    q0 = json.loads(lines[1])
    marked = {"qid": q0["qid"], "scores": {d: 999.0 for d in q0["scores"]}}
    ck.write_text("\n".join([lines[0], json.dumps(marked), lines[2], lines[3][: len(lines[3]) // 2]]))
    resumed = rerank_run(adi, adi.queries, spec, tmp_path / "cands.trec", 5, checkpoint=ck)
    assert resumed[q0["qid"]] == marked["scores"]  # taken from the checkpoint, not recomputed
    assert {q: v for q, v in resumed.items() if q != q0["qid"]} == {q: v for q, v in full.items() if q != q0["qid"]}
    assert len(ck.read_text().splitlines()) == 5 and list(resumed) == list(full)
    # Other settings (depth 3): the checkpoint is discarded, nothing stale is reused.
    other = rerank_run(adi, adi.queries, spec, tmp_path / "cands.trec", 3, checkpoint=ck)
    assert other[q0["qid"]] != marked["scores"] and all(len(v) == 3 for v in other.values())


def _adi_plus_unknown_qid(tmp_path):
    """ADI (links to the shared corpus and queries) whose qrels gain a row for query 999,
    which queries.jsonl does not have."""
    d = tmp_path / "adi"
    (d / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (d / name).symlink_to(ADI / name)
    (d / "qrels" / "test.tsv").write_text((ADI / "qrels" / "test.tsv").read_text() + "999\t1\t1\n")
    run = tmp_path / "adi.trec"
    write_run(run, {q: {"1": 1.0, "2": 0.5} for q in load_qrels(ADI / "qrels" / "test.tsv")}, tag="t")
    return d, run


def test_score_refuses_qrels_qids_that_are_not_queries(tmp_path):
    """Was: the row was accepted and scored 0, 36 judged queries instead of 35, exit 0."""
    d, run = _adi_plus_unknown_qid(tmp_path)
    for qrels in ([str(d), "--split", "test"], [str(d / "qrels" / "test.tsv")]):
        r = runner.invoke(app, ["eval", "score", "--qrels", *qrels, "--run", str(run)])
        assert r.exit_code == 2, r.output
        assert "test.tsv:172: unknown qid '999' (not in the queries" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["eval", "compare", str(run), "--qrels", str(d), "--split", "test", "--baseline", "adi"])
    assert r.exit_code == 2 and "unknown qid '999'" in r.output
    # the explicit opt-out: the row is dropped, the count is stated, the judged count stays 35
    r = runner.invoke(app, ["eval", "score", "--qrels", str(d / "qrels" / "test.tsv"), "--run", str(run), "--allow-unknown"])
    assert r.exit_code == 0, r.output
    assert "35 judged queries (0 missing from the run, scored 0)" in r.output
    assert "1 row(s) name 1 qid(s) not in the queries (first on line 172): dropped" in r.output


@pytest.mark.parametrize(
    "metric, reason",
    [
        ("ndcg@-5", "metric 'ndcg@-5': cut-off '-5' must be an integer >= 1"),
        ("ndcg@0", "metric 'ndcg@0': cut-off '0' must be an integer >= 1"),
        ("ndcg@abc", "metric 'ndcg@abc': cut-off 'abc' must be an integer >= 1"),
        ("ndcg@10,nope", "unknown metric 'nope'"),
        ("map-l0", "metric 'map-l0': relevance level '0' after '-l' must be an integer >= 1"),
        (",", "no metric given"),
    ],
)
def test_bad_metric_names_are_clear_errors(metric, reason):
    """Was: ndcg@-5 raised ranx's bare AssertionError (a traceback); ndcg@0 was printed as a metric."""
    for cmd in (["eval", "score", "--qrels", str(DL19_QRELS), "--run", str(BM25_RUN)],
                ["eval", "compare", str(BM25_RUN), "--qrels", str(DL19_QRELS), "--baseline", "BM25"]):
        r = runner.invoke(app, [*cmd, "--metrics", metric])
        assert r.exit_code == 2, r.output
        assert f"error: {reason}" in r.output and "Traceback" not in r.output
