"""TREC run files: write/read round trip, trec_eval tie order, and bad input."""

import pytest

from conftest import TREC_DL
from retrieval_distill.evaluation.runs import RunFormatError, read_run, trec_order, write_run


def test_write_ranks_by_score_ties_by_docid_descending(tmp_path):
    run = {"q1": {"d1": 1.0, "d3": 2.0, "d2": 2.0, "d10": 0.5}, "q2": {"a": 0.1}}
    p = write_run(tmp_path / "r.trec", run, tag="t")
    lines = p.read_text().splitlines()
    # d3 and d2 tie on 2.0: trec_eval puts the larger docid string first ("d3" > "d2").
    assert lines == [
        "q1 Q0 d3 1 2.0 t",
        "q1 Q0 d2 2 2.0 t",
        "q1 Q0 d1 3 1.0 t",
        "q1 Q0 d10 4 0.5 t",
        "q2 Q0 a 1 0.1 t",
    ]
    assert read_run(p) == run
    assert not list(tmp_path.glob("*.tmp"))  # atomic: no temporary left behind


def test_write_top_k_and_roundtrip_precision(tmp_path):
    run = {"q": {f"d{i}": 1 / (i + 3) for i in range(10)}}
    p = write_run(tmp_path / "r.trec", run, tag="x", k=3)
    back = read_run(p)
    assert list(back["q"]) == ["d0", "d1", "d2"]
    assert back["q"]["d0"] == 1 / 3  # repr precision: exact round trip


def test_trec_order():
    assert trec_order({"b": 1.0, "a": 1.0, "c": 3.0}) == [("c", 3.0), ("b", 1.0), ("a", 1.0)]


def test_write_refuses_bad_tag_and_nan(tmp_path):
    with pytest.raises(RunFormatError, match="tag"):
        write_run(tmp_path / "r", {"q": {"d": 1.0}}, tag="two words")
    with pytest.raises(RunFormatError, match="NaN"):
        write_run(tmp_path / "r", {"q": {"d": float("nan")}}, tag="t")
    with pytest.raises(RunFormatError, match="whitespace"):
        write_run(tmp_path / "r", {"q": {"d x": 1.0}}, tag="t")
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_read_published_run():
    run = read_run(TREC_DL / "runs" / "BM25.dl19.trec")
    assert len(run) == 43 and all(len(v) == 100 for v in run.values())
    assert run["264014"]["5611210"] == pytest.approx(15.780599594116211)


def test_read_crlf(tmp_path):
    p = tmp_path / "r.trec"
    p.write_bytes(b"q1 Q0 d1 1 2.5 t\r\nq1 Q0 d2 2 1.5 t\r\n\r\nq2 Q0 d1 1 0.5 t\r\n")
    assert read_run(p) == {"q1": {"d1": 2.5, "d2": 1.5}, "q2": {"d1": 0.5}}


def test_read_duplicate_refused_with_both_lines(tmp_path):
    p = tmp_path / "dup.trec"
    p.write_text("q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 1.5 t\nq1 Q0 d1 3 1.0 t\n")
    with pytest.raises(RunFormatError, match=r"dup.trec:3: duplicate \(qid, docid\) \(q1, d1\); first seen on line 1"):
        read_run(p)


def test_read_non_numeric_score(tmp_path):
    p = tmp_path / "bad.trec"
    p.write_text("q1 Q0 d1 1 2.5 t\nq1 Q0 d2 2 high t\n")
    with pytest.raises(RunFormatError, match=r"bad.trec:2: score 'high' is not a number"):
        read_run(p)


def test_read_wrong_columns_and_rank(tmp_path):
    p = tmp_path / "bad.trec"
    p.write_text("q1 Q0 d1 1 2.5 t\nq1 d2 2 1.5 t\n")
    with pytest.raises(RunFormatError, match=r"bad.trec:2: expected 6 columns"):
        read_run(p)
    p.write_text("q1 Q0 d1 first 2.5 t\n")
    with pytest.raises(RunFormatError, match=r"bad.trec:1: rank 'first' is not an integer"):
        read_run(p)
    with pytest.raises(FileNotFoundError, match="no such run file"):
        read_run(tmp_path / "missing.trec")
