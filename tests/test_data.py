"""Collections: BEIR loading, ids resolved offline, malformed input named by file and line."""

import json

import pytest

from retrieval_distill.data.collections import DataFormatError, load_collection, load_qrels, register_ir_datasets

from conftest import ADI, SCIFACT


def test_adi_counts(adi):
    assert len(adi.corpus) == 82
    assert len(adi.queries) == 35
    assert sum(len(r) for r in adi.qrels.values()) == 170
    # ADI titles can be empty: doc_text still joins title and text
    assert all(adi.doc_text(d) for d in adi.corpus)


def test_scifact_by_id_matches_folder():
    by_id = load_collection("beir/scifact/test")
    by_folder = load_collection(SCIFACT, split="test")
    assert by_id.queries == by_folder.queries and by_id.qrels == by_folder.qrels
    assert len(by_id.corpus) == 5183 and len(by_id.queries) == 300
    assert sum(len(r) for r in by_id.qrels.values()) == 339


def test_ir_datasets_registration(tmp_path):
    import ir_datasets

    ids = register_ir_datasets(ADI, "rd-test/adi")
    assert ids == ["rd-test/adi", "rd-test/adi/test"]
    ds = ir_datasets.load("rd-test/adi/test")
    assert ds.docs_count() == 82
    assert sum(1 for _ in ds.qrels_iter()) == 170
    assert sum(1 for _ in ds.queries_iter()) == 35


def _beir(tmp_path, corpus_lines, query_lines, qrels_text):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
    (tmp_path / "queries.jsonl").write_text("\n".join(query_lines) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text(qrels_text)
    return tmp_path


def test_malformed_jsonl_names_file_and_line(tmp_path):
    d = _beir(tmp_path, ['{"_id": "a", "title": "", "text": "x"}', '{"_id": "b", "text": oops}'], ['{"_id": "1", "text": "q"}'], "1\ta\t1\n")
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: not valid JSON"):
        load_collection(d, split="test")


def test_unknown_docid_in_qrels(tmp_path):
    d = _beir(tmp_path, ['{"_id": "a", "text": "x"}'], ['{"_id": "1", "text": "q"}'], "query-id\tcorpus-id\tscore\n1\tzzz\t1\n")
    with pytest.raises(DataFormatError, match=r"test.tsv:2: unknown docid 'zzz'"):
        load_collection(d, split="test")


def test_duplicate_docid_and_empty_query(tmp_path):
    d = _beir(tmp_path, ['{"_id": "a", "text": "x"}', '{"_id": "a", "text": "y"}'], ['{"_id": "1", "text": "q"}'], "1\ta\t1\n")
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: duplicate docid 'a'"):
        load_collection(d, split="test")
    (d / "corpus.jsonl").write_text(json.dumps({"_id": "a", "text": "x"}) + "\n")
    (d / "queries.jsonl").write_text(json.dumps({"_id": "1", "text": "   "}) + "\n")
    with pytest.raises(DataFormatError, match=r"queries.jsonl:1: query '1' is empty"):
        load_collection(d, split="test")


def test_qrels_trec_format_crlf_and_header(tmp_path):
    p = tmp_path / "q.txt"
    p.write_bytes(b"qid 0 docid rel\r\n")
    p.write_bytes(b"7 0 d1 2\r\n7 0 d2 0\r\n8 Q0 d1 1\r\n")
    assert load_qrels(p) == {"7": {"d1": 2, "d2": 0}, "8": {"d1": 1}}
    p.write_bytes(b"query-id\tcorpus-id\tscore\r\n7\td1\tx\r\n")
    with pytest.raises(DataFormatError, match=r"q.txt:2: grade 'x' is not a number"):
        load_qrels(p)


def test_missing_split_lists_available():
    with pytest.raises(FileNotFoundError, match="splits here: test"):
        load_collection(ADI, split="train")


def test_cranfield_empty_documents_are_kept_and_reported(caplog):
    """Cranfield's documents 471 and 995 have neither title nor text (as in the original
    collection): they stay in the corpus (qrels may name them) and one warning names them."""
    from conftest import ADI

    cran = ADI.parent / "cranfield"
    with caplog.at_level("WARNING", logger="retrieval_distill.data.collections"):
        coll = load_collection(cran, split="test")
    assert len(coll.corpus) == 1400 and coll.doc_text("471") == "" and coll.doc_text("995") == ""
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "2 document(s) with empty title and text" in msg and "corpus.jsonl:471 ('471')" in msg
