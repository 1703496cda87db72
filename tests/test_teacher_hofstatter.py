"""Hofstätter TSV import/export round trip and bad lines."""

import numpy as np
import pytest

from retrieval_distill.data.collections import DataFormatError
from retrieval_distill.teachers.hofstatter import export_hofstatter, import_hofstatter
from retrieval_distill.teachers.scoring import read_scores

TSV = """12.5\t-3.25\tq1\tp1\tn1
12.5\t1.0\tq1\tp1\tn2
7.75\t0.5\tq2\tp9\tn1
12.5\t-3.0\tq1\tp1\tn1
"""


def test_import_then_export_round_trip(tmp_path):
    src = tmp_path / "teacher.tsv"
    src.write_text(TSV)
    m = import_hofstatter(src, tmp_path / "scores")
    # 5 distinct (qid, pid) pairs; line 4 repeats (q1, n1) with another score: counted, first kept
    assert m["counts"] == {"pairs": 5, "queries": 2, "lines": 4, "conflicting_scores": 1}
    df = read_scores(tmp_path / "scores")
    got = {(q, d): s for q, d, s in zip(df.qid, df.docid, df.score)}
    assert got == {("q1", "p1"): 12.5, ("q1", "n1"): -3.25, ("q1", "n2"): 1.0, ("q2", "p9"): 7.75, ("q2", "n1"): 0.5}
    assert set(df.teacher) == {"hofstatter:teacher"}
    # export with triples in the original order gives the same lines (first 3)
    trip = tmp_path / "triples.tsv"
    trip.write_text("q1\tp1\tn1\nq1\tp1\tn2\nq2\tp9\tn1\n")
    n = export_hofstatter(tmp_path / "scores", tmp_path / "out.tsv", triples=trip)
    assert n == 3
    rows = [line.split("\t") for line in (tmp_path / "out.tsv").read_text().splitlines()]
    assert [(float(a), float(b), q, p, ng) for a, b, q, p, ng in rows] == [
        (12.5, -3.25, "q1", "p1", "n1"), (12.5, 1.0, "q1", "p1", "n2"), (7.75, 0.5, "q2", "p9", "n1")]  # fmt: skip
    # qrels mode: positives x scored non-relevant, highest-scored negative only
    n = export_hofstatter(tmp_path / "scores", tmp_path / "out2.tsv", qrels={"q1": {"p1": 1}, "q2": {"p9": 2}}, max_negatives=1)
    lines = (tmp_path / "out2.tsv").read_text().splitlines()
    assert n == 2 and lines == ["12.5\t1.0\tq1\tp1\tn2", "7.75\t0.5\tq2\tp9\tn1"]
    bad = tmp_path / "trip_bad.tsv"
    bad.write_text("q1\tp1\tn1\nq1\tp1\tzz\n")
    with pytest.raises(DataFormatError, match=r"trip_bad.tsv:2: no teacher score for \(q1, zz\)"):
        export_hofstatter(tmp_path / "scores", tmp_path / "o3.tsv", triples=bad)


def test_float32_precision_survives(tmp_path):
    x = np.float32(0.1234567)
    src = tmp_path / "t.tsv"
    src.write_text(f"{float(x)!r}\t1.0\tq\tp\tn\n")
    import_hofstatter(src, tmp_path / "s")
    export_hofstatter(tmp_path / "s", tmp_path / "o.tsv", triples=_write(tmp_path / "tr", "q p n\n"))
    assert np.float32(float((tmp_path / "o.tsv").read_text().split("\t")[0])) == x


def _write(p, text):
    p.write_text(text)
    return p


def test_bad_lines(tmp_path):
    src = tmp_path / "t.tsv"
    src.write_text("1.0\t2.0\tq\tp\tn\n1.0\tq\tp\tn\n")
    with pytest.raises(DataFormatError, match=r"t.tsv:2: expected 5 columns"):
        import_hofstatter(src, tmp_path / "s")
    src.write_text("1.0\tabc\tq\tp\tn\n")
    with pytest.raises(DataFormatError, match=r"t.tsv:1: score 'abc' is not a number"):
        import_hofstatter(src, tmp_path / "s")
    src.write_text("1.0\t2.0\tq\tp\tn\nnan\t2.0\tq\tp\tn2\n")
    with pytest.raises(DataFormatError, match=r"t.tsv:2: score 'nan' is not finite"):
        import_hofstatter(src, tmp_path / "s")
