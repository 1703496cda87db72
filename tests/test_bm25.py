"""BM25 through Pyserini on ADI: index, search, pairwise scores consistent with search."""

import pytest

from retrieval_distill.search.bm25 import BM25Searcher, build_bm25_index


@pytest.fixture(scope="module")
def adi_bm25(adi, tmp_path_factory):
    idx = build_bm25_index(adi, tmp_path_factory.mktemp("bm25") / "adi")
    return BM25Searcher(idx)


def test_search_and_score_pairs_agree(adi, adi_bm25):
    qid = next(iter(adi.queries))
    hits = adi_bm25.search(adi.queries[qid], k=10)
    assert [h.rank for h in hits] == list(range(1, 11))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    again = adi_bm25.score_pairs(adi.queries[qid], [h.docid for h in hits] + ["no-such-doc"])
    assert again == pytest.approx([h.score for h in hits] + [0.0], rel=1e-4)


def test_batch_search_quality_on_adi(adi, adi_bm25):
    from ranx import Qrels, Run, evaluate

    res = adi_bm25.batch_search(adi.queries, k=100)
    assert set(res) == set(adi.queries)
    run = Run({q: {h.docid: h.score for h in hs} for q, hs in res.items()})
    ndcg = evaluate(Qrels(adi.qrels), run, "ndcg@10")
    # BM25 on ADI is known to land around 0.4-0.5 nDCG@10; far below means a broken analyzer
    assert 0.3 < ndcg < 0.7


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no BM25 index"):
        BM25Searcher(tmp_path / "nope")


def test_not_an_index_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Lucene cannot open it"):
        BM25Searcher(tmp_path)


def _rd(*args):
    from typer.testing import CliRunner

    from retrieval_distill.cli import app

    # catch_exceptions=False: a traceback would fail the test instead of being hidden in the result
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_bm25_cli_search_and_bad_input_are_one_line_errors(adi_bm25, tmp_path):
    """Was: tracebacks for a missing dataset or index, an unwritable output, bad options."""
    from conftest import ADI
    from retrieval_distill.evaluation.runs import read_run

    index = adi_bm25.index_dir
    r = _rd("bm25", "search", index, ADI, tmp_path / "out" / "run.trec", "--k", 5)
    assert r.exit_code == 0, r.output
    run = read_run(tmp_path / "out" / "run.trec")
    assert len(run) == 35 and all(len(v) == 5 for v in run.values())
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = [
        (("search", tmp_path / "nope", ADI, tmp_path / "r.trec"), "nope: no BM25 index here"),
        (("search", tmp_path / "empty", ADI, tmp_path / "r.trec"), "Lucene cannot open it"),
        (("search", index, "nope/nothing/test", tmp_path / "r.trec"), "dataset 'nope/nothing/test': not a folder"),
        (("search", index, ADI, tmp_path / "r.trec", "--split", "train"), "no such qrels file (splits here: test)"),
        (("search", index, ADI, tmp_path / "a-file" / "r.trec"), "cannot create its folder"),
        (("search", index, ADI, tmp_path), "is a folder; the run file must be a file path"),
        (("search", index, ADI, tmp_path / "r.trec", "--k", 0), "Invalid value for '--k'"),
        (("search", index, ADI, tmp_path / "r.trec", "--k", "ten"), "Invalid value for '--k'"),
        (("search", index, ADI, tmp_path / "r.trec", "--b", 2), "Invalid value for '--b'"),
        (("index", "nope/nothing", tmp_path / "idx"), "dataset 'nope/nothing': not a folder"),
        (("index", ADI, tmp_path / "a-file" / "idx"), "cannot create its folder"),
        (("index", ADI, tmp_path / "a-file"), "exists and is not a folder"),
        (("index", ADI, tmp_path / "idx", "--threads", 0), "Invalid value for '--threads'"),
    ]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corpus.jsonl").write_text('{"_id": "1", "text": "fine"}\n{"_id": "2", "text": NaN}\n')
    cases.append((("index", bad, tmp_path / "idx"), "corpus.jsonl:2: not valid JSON"))
    for args, reason in cases:
        r = _rd("bm25", *args)
        assert r.exit_code == 2, (args, r.output)
        assert reason in r.output and "Traceback" not in r.output, (args, r.output)
    assert not (tmp_path / "idx").exists() and not (tmp_path / "r.trec").exists()
