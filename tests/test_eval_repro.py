"""Reports (Markdown + JSON twin) and the reproducibility table (`rd repro check`)."""

import json
import sys

import pytest
import yaml
from typer.testing import CliRunner

from conftest import PROJECT, TREC_DL
from retrieval_distill.cli import app
from retrieval_distill.data.collections import load_qrels
from retrieval_distill.evaluation.metrics import evaluate
from retrieval_distill.evaluation.repro import DEFAULT_TABLE, Row, check_row, load_table, lookup, select_rows
from retrieval_distill.evaluation.report import HAND_WRITTEN, git_commit, write_report
from retrieval_distill.evaluation.runs import read_run

runner = CliRunner()


def test_write_report(tmp_path):
    r = evaluate(load_qrels(TREC_DL / "qrels" / "dl19.tsv"), read_run(TREC_DL / "runs" / "BM25.dl19.trec"),
                 ["ndcg@10", "recall@100"], rel_threshold=2)
    md, js = write_report(tmp_path / "rep.md", "DL19 check", sections={"Notes": "BM25 only."},
                          command=["rd", "eval", "score", "--run", "a b.trec"], data={"test": {"bm25": r.overall}},
                          rows={"bm25": r}, extra={"k": 100})
    text = md.read_text()
    assert text.startswith("# DL19 check\n")
    assert "rd eval score --run 'a b.trec'" in text  # exact, shell-quoted command
    head = git_commit()
    assert head != "unknown" and f"Commit `{head}`" in text
    assert "| bm25 | 0.5058 | 0.4910 | 43 | 0 | 0 |" in text and "## Notes\n\nBM25 only." in text
    d = json.loads(js.read_text())
    assert js == tmp_path / "rep.json"
    assert round(lookup(d, "test.bm25.ndcg@10"), 4) == 0.5058
    assert d["meta"]["commit"] == head and d["results"]["bm25"]["n_judged"] == 43 and d["extra"] == {"k": 100}
    with pytest.raises(ValueError, match="reserved"):
        write_report(tmp_path / "x.md", "x", data={"meta": 1})
    # notes below the hand-written marker survive a rewrite; the generated part is replaced
    md.write_text(text + "\n" + HAND_WRITTEN + "\n\n## Why these settings\n\nchosen on dev.\n")
    write_report(md, "DL19 again", sections={"Notes": "rewritten."})
    again = md.read_text()
    assert again.startswith("# DL19 again\n") and "rewritten." in again and "BM25 only." not in again
    assert again.endswith(HAND_WRITTEN + "\n\n## Why these settings\n\nchosen on dev.\n")
    assert again.count(HAND_WRITTEN) == 1
    with pytest.raises(ValueError, match="marker"):  # the marker in generated text would grow the file on every rewrite
        write_report(md, "x", sections={"Notes": HAND_WRITTEN})
    md.write_bytes(again.encode() + "caf\xe9\n".encode("latin-1"))  # notes in Latin-1: refused, nothing written
    with pytest.raises(ValueError, match="not UTF-8"):
        write_report(md, "DL19 third")
    assert md.read_bytes().endswith("caf\xe9\n".encode("latin-1"))


def test_lookup_with_dots_in_keys():
    d = {"test": {"student": {"ndcg@10": 0.5, "rbp.95": 0.3}}, "test.x": 1}
    assert lookup(d, "test.student.ndcg@10") == 0.5
    assert lookup(d, "test.student.rbp.95") == 0.3
    assert lookup(d, "test.x") == 1
    with pytest.raises(KeyError, match="no key for 'mrr@10'"):
        lookup(d, "test.student.mrr@10")


def test_project_table_is_valid_and_dl19_rows_pass(tmp_path):
    table = load_table(DEFAULT_TABLE)
    names = [r.name for r in table.rows]
    assert {"dl19-bm25", "scifact-bm25"} <= set(names)
    assert all(r.cheap for r in select_rows(table, None, cheap=True))
    for row in select_rows(table, [n for n in names if n.startswith("dl19-")], cheap=True):
        for res in check_row(row, tmp_path, echo=lambda s: None):
            assert res["ok"], res


def _row(tmp_path, value, **kw):
    script = tmp_path / "w.py"
    script.write_text("import json, sys; json.dump({'test': {'student': {'ndcg@10': 0.61234}}}, open(sys.argv[1], 'w'))")
    return Row(name="r", commands=[f"{{python}} {script} {{work}}/out.json"], output="{work}/out.json",
               expected={"test.student.ndcg@10": value}, **kw)


def test_check_row_reads_json_from_a_command(tmp_path):
    ok = check_row(_row(tmp_path, {"value": 0.61, "tol": 0.005}), tmp_path, echo=lambda s: None)
    assert ok[0]["ok"] and ok[0]["diff"] == pytest.approx(0.00234)
    bad = check_row(_row(tmp_path, 0.6), tmp_path, echo=lambda s: None)  # default tol 0.0005
    assert not bad[0]["ok"] and bad[0]["got"] == pytest.approx(0.61234)
    (tmp_path / "out.json").unlink()
    missing = check_row(_row(tmp_path, 0.6), tmp_path, run_commands=False, echo=lambda s: None)
    assert not missing[0]["ok"] and "output not found" in missing[0]["error"]
    failing = Row(name="f", commands=[f"{sys.executable} -c 'import sys; sys.exit(3)'"], output="x.json", expected={"a": 1})
    res = check_row(failing, tmp_path, echo=lambda s: None)
    assert not res[0]["ok"] and "exit 3" in res[0]["error"]


def test_row_validation(tmp_path):
    with pytest.raises(ValueError, match="exactly one of 'output'"):
        Row(name="x", expected={"a": 1})
    with pytest.raises(ValueError, match="'run' needs 'qrels'"):
        Row(name="x", run="r.trec", expected={"a": 1})
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({"rows": [{"name": "a", "output": "o.json", "expected": {"k": 1}}] * 2}))
    with pytest.raises(ValueError, match="duplicate row name 'a'"):
        load_table(p)


def test_repro_check_cli(tmp_path):
    table = tmp_path / "t.yaml"
    rows = [
        {"name": "pass", "cheap": True, "run": str(TREC_DL / "runs" / "BM25.dl19.trec"),
         "qrels": str(TREC_DL / "qrels" / "dl19.tsv"), "rel_threshold": 2, "expected": {"ndcg@10": 0.5058}},
        {"name": "fail", "run": str(TREC_DL / "runs" / "BM25.dl19.trec"),
         "qrels": str(TREC_DL / "qrels" / "dl19.tsv"), "expected": {"ndcg@10": {"value": 0.6, "tol": 0.01}}},
    ]
    table.write_text(yaml.safe_dump({"version": 1, "rows": rows}))
    r = runner.invoke(app, ["repro", "check", "--table", str(table), "--cheap", "--work", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "| pass | ndcg@10 | 0.5058 | 0.5058 | +0.0000 | ±0.0005 | PASS |" in r.output
    r = runner.invoke(app, ["repro", "check", "--table", str(table), "--work", str(tmp_path), "--out-json", str(tmp_path / "r.json")])
    assert r.exit_code == 1 and "| fail | ndcg@10 | 0.6000 | 0.5058 | -0.0942 | ±0.01 | FAIL |" in r.output
    assert "1/2 figures reproduced" in r.output
    assert [x["ok"] for x in json.loads((tmp_path / "r.json").read_text())["results"]] == [True, False]
    r = runner.invoke(app, ["repro", "check", "--table", str(table), "--rows", "nope"])
    assert r.exit_code == 2 and "unknown row(s) nope" in r.output


def test_repro_table_lives_in_the_project():
    assert DEFAULT_TABLE == PROJECT / "eval" / "repro.yaml"
