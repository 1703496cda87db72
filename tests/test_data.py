"""Collections: BEIR loading, ids resolved offline, malformed input named by file and line."""

import json
import re

import pytest

from retrieval_distill.data.collections import DataFormatError, load_collection, load_qrels, register_ir_datasets

from conftest import ADI, SCIFACT, TREC_DL


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


def test_ir_datasets_download_failure_is_a_clear_error():
    """Was: an ir_datasets id that must be downloaded, on a machine without internet, ended
    in requests' traceback. Now: FileNotFoundError naming the id, the reason and the offline
    way (a local BEIR folder). The download is ir_datasets' own: a registered dataset whose
    documents cannot be fetched stands in for it (no network in tests)."""
    import ir_datasets
    import requests
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import BaseDocs

    class _Unreachable(BaseDocs):
        def docs_iter(self):
            raise requests.exceptions.ConnectionError("Failed to resolve 'example.invalid'")

    if "rd-test/unreachable" not in ir_datasets.registry:
        ir_datasets.registry.register("rd-test/unreachable", Dataset(_Unreachable()))
    with pytest.raises(FileNotFoundError, match=r"'rd-test/unreachable': ir_datasets could not download or read it "
                                                r"\(ConnectionError: Failed to resolve 'example.invalid'\)\. Offline, give a local BEIR folder"):
        load_collection("rd-test/unreachable")


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


# ------------------------------------------------------------------ ids, grades and JSON checks
def _adi_with_qrels(tmp_path, extra_rows: str):
    """ADI's corpus and queries (links to the shared files) with its qrels plus ``extra_rows``."""
    d = tmp_path / "adi"
    (d / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (d / name).symlink_to(ADI / name)
    (d / "qrels" / "test.tsv").write_text((ADI / "qrels" / "test.tsv").read_text() + extra_rows)
    return d


def test_qrels_qid_not_in_the_queries_is_an_error_naming_file_and_line(tmp_path, caplog):
    """The issue's case: a qrels row for a query that does not exist was accepted and
    averaged in as 0 (36 judged queries on ADI instead of 35)."""
    d = _adi_with_qrels(tmp_path, "999\t1\t1\n")
    with pytest.raises(DataFormatError, match=r"test.tsv:172: unknown qid '999' \(not in the queries; 1 row\(s\) name 1 such qid"):
        load_collection(d, split="test")
    # the explicit opt-out drops the row and says so
    with caplog.at_level("WARNING", logger="retrieval_distill.data.collections"):
        c = load_collection(d, split="test", on_unknown="warn")
    assert len(c.qrels) == len(c.queries) == 35 and "999" not in c.qrels
    assert "1 row(s) name 1 qid(s) not in the queries (first on line 172): dropped" in caplog.text


def test_unknown_docid_counts_and_opt_out(tmp_path, caplog):
    d = _adi_with_qrels(tmp_path, "1\tnope\t1\n2\tnope2\t0\n")
    with pytest.raises(DataFormatError, match=r"test.tsv:172: unknown docid 'nope' \(not in the corpus; 2 row\(s\) name 2 such"):
        load_collection(d, split="test")
    with caplog.at_level("WARNING", logger="retrieval_distill.data.collections"):
        c = load_collection(d, split="test", on_unknown="warn")
    assert c.qrels["1"]["nope"] == 1 and c.qrels["2"]["nope2"] == 0  # kept: judged documents count
    assert "2 row(s) name 2 docid(s) not in the corpus (first on line 172): kept" in caplog.text
    with pytest.raises(ValueError, match="on_unknown"):
        load_qrels(d / "qrels" / "test.tsv", on_unknown="ignore")


def test_every_shared_collection_loads_with_the_checks(caplog):
    """Real data passes the checks: every qrels qid is a query, every docid is in the corpus,
    except the full DL19 qrels, which name passages outside the 30k pool (refused by default,
    loadable with the opt-out, and readable as a file for scoring runs)."""
    from conftest import SHARED_DATA, TREC_DL
    from retrieval_distill.data.collections import load_beir_folder
    from retrieval_distill.evaluation.cli import resolve_qrels

    expect = {("beir/scifact", "test"): (300, 339), ("beir/scifact", "train"): (809, 919),
              ("classic/adi", "test"): (35, 170), ("classic/cranfield", "test"): (225, 1837),
              ("classic/cranfield", "test.raw-cleverdon-codes"): (225, 1837), ("classic/vaswani", "test"): (93, 2083),
              ("msmarco/trec-dl-subset", "dl19.only-passages-in-corpus"): (43, 4342)}
    for (folder, split), (n_q, n_rows) in expect.items():
        c = load_beir_folder(SHARED_DATA / folder, split)
        assert (len(c.queries), sum(len(r) for r in c.qrels.values())) == (n_q, n_rows), (folder, split)
    with pytest.raises(DataFormatError, match=r"dl19.tsv:\d+: unknown docid .* 4918 row\(s\)"):
        load_beir_folder(TREC_DL, "dl19")
    with caplog.at_level("WARNING", logger="retrieval_distill.data.collections"):
        full = load_beir_folder(TREC_DL, "dl19", on_unknown="warn")
    assert sum(len(r) for r in full.qrels.values()) == 9260 and "4918 row(s)" in caplog.text
    # as a file: qids checked against queries.dl19.jsonl beside it, docids not (no corpus loaded)
    assert sum(len(r) for r in resolve_qrels(str(TREC_DL / "qrels" / "dl19.tsv")).values()) == 9260


@pytest.mark.parametrize(
    "row, reason",
    [
        ("1\t1\t1.5", "grade '1.5' is not an integer"),
        ("1\t1\tinf", "grade 'inf' is not an integer"),
        ("1\t1\tnan", "grade 'nan' is not an integer"),
        ("1\t1\thigh", "grade 'high' is not a number"),
        ("1 0 1 1", "4 columns, but earlier lines have 3"),
        ("1\t1", "expected 3 or 4 columns"),
    ],
)
def test_bad_qrels_rows_name_file_and_line(tmp_path, row, reason):
    p = tmp_path / "q.tsv"
    p.write_text("query-id\tcorpus-id\tscore\n2\t2\t1\n" + row + "\n")
    with pytest.raises(DataFormatError, match=r"q.tsv:3: " + reason.replace("(", r"\(").replace(")", r"\)")):
        load_qrels(p)


def test_integral_float_grades_are_read_as_integers(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("1\td1\t2.0\n1\td2\t-1\n")
    assert load_qrels(p) == {"1": {"d1": 2, "d2": -1}}


@pytest.mark.parametrize(
    "file, line, reason",
    [
        ("corpus.jsonl", b'{"_id": "a", "text": NaN}', "NaN is not a JSON number"),
        ("corpus.jsonl", b'{"_id": "a", "text": "x", "score": 1e999}', "out of the double range"),
        ("corpus.jsonl", b'{"_id": "a", "text": "x \\ud800"}', r"lone surrogate \(\\ud800\)"),
        ("corpus.jsonl", b'{"_id": "a b", "text": "x"}', "'_id' 'a b' is empty or contains whitespace"),
        ("corpus.jsonl", b'{"_id": null, "text": "x"}', "'_id' must be a string"),
        ("corpus.jsonl", b'{"_id": "a", "text": ["x"]}', "'text' must be a string"),
        ("corpus.jsonl", b'{"_id": "a", "text": "caf\xe9"}', r"not valid UTF-8 \(an undecodable byte at column 26\)"),
        ("queries.jsonl", b'{"_id": "1", "text": null}', "'text' must be a string|missing 'text'"),
        ("queries.jsonl", b'{"_id": "1", "text": 42}', "'text' must be a string"),
    ],
)
def test_bad_jsonl_records_name_file_and_line(tmp_path, file, line, reason):
    good = {"corpus.jsonl": b'{"_id": "z", "text": "fine"}', "queries.jsonl": b'{"_id": "0", "text": "fine"}'}
    d = _beir(tmp_path, ['{"_id": "z", "text": "fine"}'], ['{"_id": "0", "text": "fine"}'], "0\tz\t1\n")
    (d / file).write_bytes(good[file] + b"\r\n" + line + b"\r\n")
    with pytest.raises(DataFormatError, match=rf"{file}:2: .*({reason})"):
        load_collection(d, split="test")


@pytest.mark.parametrize("file", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_a_folder_where_a_data_file_belongs_is_named(tmp_path, file):
    """Was: IsADirectoryError traceback (a corpus.jsonl that is a folder). Now one DataFormatError."""
    d = _beir(tmp_path, ['{"_id": "z", "text": "fine"}'], ['{"_id": "0", "text": "fine"}'], "0\tz\t1\n")
    (d / file).unlink()
    (d / file).mkdir()
    with pytest.raises(DataFormatError, match=re.escape(f"{d / file}: a folder, not a text file")):
        load_collection(d, split="test")


def test_corpus_of_a_folder_without_a_test_split(tmp_path):
    """An index needs only the corpus: a folder whose qrels are ``dl19*.tsv`` only (the
    TREC-DL pool) or that has no qrels at all loads for indexing without ``--split``, while
    loading it for evaluation still asks for a split that exists."""
    from retrieval_distill.data.collections import load_collection, load_corpus_collection

    pool = TREC_DL
    c = load_corpus_collection(pool)
    assert len(c.corpus) == 30005 and c.qrels == {}
    with pytest.raises(FileNotFoundError, match=r"splits here: dl19, dl19.only-passages-in-corpus"):
        load_collection(pool)
    assert len(load_corpus_collection(pool, split="dl19.only-passages-in-corpus").qrels) == 43
    folder = tmp_path / "own"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text('{"_id": "a", "title": "", "text": "first passage"}\n'
                                         '{"_id": "b", "title": "T", "text": "second passage"}\n')
    (folder / "queries.jsonl").write_text("")
    own = load_corpus_collection(folder)
    assert sorted(own.corpus) == ["a", "b"] and own.queries == {}
    assert load_corpus_collection("classic/adi").name == "classic/adi" and len(load_corpus_collection("classic/adi").corpus) == 82
