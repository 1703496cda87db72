"""Synthetic queries on ADI: real outputs checked against the documents they came from."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import ADI
from retrieval_distill.data.collections import DataFormatError, load_collection
from retrieval_distill.distill.synth import _TOKEN, DEFAULT_KINDS, synth_corpus, synthesize_queries


@pytest.fixture(scope="module")
def adi_synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "adi"
    res = synth_corpus(ADI, out, seed=13)
    return out, res


def test_queries_come_from_their_documents(adi_synth, adi):
    out, res = adi_synth
    corpus = adi.corpus
    assert res.stats["documents"] == 82
    per = res.stats["per_kind"]
    # every ADI document has a title of 2+ words and a body sentence of 5+ words
    assert per == {"title": 82, "sentence": 82, "keywords": 82}
    for qid, text in res.queries.items():
        kind = res.kinds[qid]
        (docid,) = res.qrels[qid]  # ADI has no duplicate titles: one source each
        doc = corpus[docid]
        body = re.sub(r"\s+", " ", doc["text"]).lower()
        if kind == "title":
            assert doc["title"].lower().startswith(text.lower())
        elif kind == "sentence":
            assert text.lower() in body and len(text.split()) >= 5
            assert text.lower() != doc["title"].lower()
        else:
            terms = text.split()
            assert 2 <= len(terms) <= 4 and len(set(terms)) == len(terms)
            doc_terms = set(re.findall(_TOKEN, f"{doc['title']} {doc['text']}".lower()))
            assert set(terms) <= doc_terms, (qid, terms)
            # kept in the order they first occur in the document
            low = f"{doc['title']} {doc['text']}".lower()
            assert [low.find(t) for t in terms] == sorted(low.find(t) for t in terms)


def test_keywords_are_salient_not_stop_words(adi_synth):
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    _, res = adi_synth
    words = [w for q, t in res.queries.items() if res.kinds[q] == "keywords" for w in t.split()]
    assert not set(words) & ENGLISH_STOP_WORDS
    # doc 1 ("the ibm dsd technical information center ...", ibm 1401 processing) -> "ibm" is salient
    assert "ibm" in res.queries["synth-keywords-1"].split()


def test_written_folder_is_a_beir_collection(adi_synth):
    out, res = adi_synth
    assert (out / "corpus.jsonl").is_symlink() and (out / "corpus.jsonl").resolve() == (ADI / "corpus.jsonl").resolve()
    coll = load_collection(out, split="train")
    assert len(coll.corpus) == 82 and coll.queries == res.queries and coll.qrels == res.qrels
    info = json.loads((out / "synth.json").read_text())
    assert info["seed"] == 13 and info["kinds"] == list(DEFAULT_KINDS) and info["stats"]["queries"] == 246
    assert not list(out.glob(".*tmp")), "temporary files left behind"


def test_title_queries_find_their_document_with_bm25(adi_synth, tmp_path):
    from retrieval_distill.search.bm25 import BM25Searcher, build_bm25_index

    out, res = adi_synth
    coll = load_collection(out, split="train")
    idx = build_bm25_index(coll, tmp_path / "bm25")
    searcher = BM25Searcher(idx)
    titles = {q: t for q, t in coll.queries.items() if res.kinds[q] == "title"}
    hits = searcher.batch_search(titles, k=1)
    first = sum(1 for q, h in hits.items() if h and h[0].docid in coll.qrels[q])
    # measured 82/82 on ADI; require most
    assert first >= 0.9 * len(titles), f"{first}/{len(titles)}"


def test_seeded_and_deterministic(tmp_path, adi_synth):
    out, _ = adi_synth
    again = synth_corpus(ADI, tmp_path / "again", seed=13)
    for f in ("queries.jsonl", "qrels/train.tsv"):
        assert (tmp_path / "again" / f).read_bytes() == (out / f).read_bytes()
    other = synth_corpus(ADI, tmp_path / "other", seed=14, kinds=["sentence", "keywords"])
    assert set(other.kinds.values()) == {"sentence", "keywords"}
    changed = sum(1 for q, t in other.queries.items() if again.queries[q] != t)
    assert changed > 10  # another seed samples other sentences / keywords
    # a kind's picks do not depend on which other kinds are made
    kw_only = synthesize_queries(load_collection(ADI).corpus, kinds=["keywords"], seed=13)
    assert all(again.queries[q] == t for q, t in kw_only.queries.items())


def test_duplicate_texts_merge_into_one_query():
    corpus = {
        "a": {"title": "neural ranking models", "text": "Dense retrieval with transformers works well in practice today."},
        "b": {"title": "Neural ranking models.", "text": "Sparse retrieval with inverted indexes is fast and robust."},
        "c": {"title": "x", "text": "short."},
    }
    res = synthesize_queries(corpus, kinds=["title", "sentence"], seed=1)
    assert res.queries["synth-title-a"] == "neural ranking models"
    assert res.qrels["synth-title-a"] == {"a": 1, "b": 1} and "synth-title-b" not in res.queries
    assert res.stats["merged_duplicates"] == 1
    assert res.stats["skipped"] == {"title": 1, "sentence": 1}  # doc c: one-word title, no 5-word sentence


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown query kinds"):
        synthesize_queries({"a": {"title": "t t", "text": ""}}, kinds=["title", "llm"])
    with pytest.raises(ValueError, match="empty corpus"):
        synthesize_queries({})
    with pytest.raises(FileNotFoundError):
        synth_corpus(tmp_path / "nope", tmp_path / "out")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "1", "title": "a b", "text": "c"}\n{"_id": "2", "title": \n')
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2"):
        synth_corpus(bad, tmp_path / "out")
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text('{"_id": "1", "title": "one", "text": "two"}\n')
    with pytest.raises(DataFormatError, match="no document yielded a query"):
        synth_corpus(tiny, tmp_path / "out2", kinds=["title", "sentence"])
    assert not (tmp_path / "out2" / "queries.jsonl").exists()


def test_cli(tmp_path):
    from retrieval_distill.cli import app

    r = CliRunner().invoke(app, ["queries", "synth", str(ADI), str(tmp_path / "q"), "--kinds", "title", "--max-docs", "20"])
    assert r.exit_code == 0, r.output
    assert "20 queries" in r.output
    coll = load_collection(tmp_path / "q", split="train")
    assert len(coll.queries) == 20 and all(q.startswith("synth-title-") for q in coll.queries)
    r = CliRunner().invoke(app, ["queries", "synth", str(tmp_path / "missing"), str(tmp_path / "q2")])
    assert r.exit_code == 2 and "not a corpus.jsonl" in r.output


def test_ict_positive_is_the_document_without_the_query_sentence(tmp_path, adi):
    """Inverse Cloze Task: the query is a body sentence, the positive the document without it
    (kept for about ict_keep of the documents), written to positives.jsonl and named in synth.json."""
    out = tmp_path / "ict"
    res = synth_corpus(ADI, out, seed=13, kinds=["ict", "sentence"])
    assert res.stats["per_kind"] == {"sentence": 82, "ict": 82}
    kept = 0
    for qid, text in res.queries.items():
        if res.kinds[qid] != "ict":
            assert qid not in res.positive_texts
            continue
        ((docid, pos),) = res.positive_texts[qid].items()
        assert res.qrels[qid] == {docid: 1}
        doc = adi.corpus[docid]
        full = re.sub(r"\s+", " ", f"{doc['title']} {doc['text']}").strip().lower()
        norm = re.sub(r"\s+", " ", pos).strip().lower()
        assert text.lower() in full and norm.startswith(doc["title"].lower().strip())
        if text.lower() in norm:
            kept += 1
            assert norm == full
        else:  # exactly the query sentence is gone: fewer words, every other word still there
            assert len(norm.split()) < len(full.split()) and set(norm.split()) <= set(full.split())
    assert 1 <= kept <= 20  # ict_keep = 0.1 of 82 documents (seeded: the same count every run)
    # the masked texts are written to positives.jsonl, which synth.json names
    info = json.loads((out / "synth.json").read_text())
    assert info["positive_texts"] == "positives.jsonl"
    rows = [json.loads(ln) for ln in (out / "positives.jsonl").read_text().splitlines()]
    assert len(rows) == 82 and {r["qid"] for r in rows} == {q for q, k in res.kinds.items() if k == "ict"}
    again = synth_corpus(ADI, tmp_path / "again", seed=13, kinds=["ict", "sentence"])
    assert (tmp_path / "again" / "positives.jsonl").read_bytes() == (out / "positives.jsonl").read_bytes()
    assert again.queries == res.queries
    none_kept = synthesize_queries(adi.corpus, kinds=["ict"], seed=13, ict_keep=0.0)
    assert all(t.lower() not in re.sub(r"\s+", " ", next(iter(none_kept.positive_texts[q].values()))).lower()
               for q, t in none_kept.queries.items())
    with pytest.raises(ValueError, match="ict_keep"):
        synthesize_queries(adi.corpus, kinds=["ict"], ict_keep=1.5)
    # default kinds make no ict queries and no positives.jsonl (earlier outputs unchanged)
    plain = synth_corpus(ADI, tmp_path / "plain", seed=13, kinds=["title"])
    assert not plain.positive_texts and not (tmp_path / "plain" / "positives.jsonl").exists()


def test_teacher_positives_drop_the_source_and_take_the_teachers_top(adi_synth, adi_bm25_run, tmp_path):
    """rd queries teacher-positives: the source document leaves every list, the positive is
    the BM25 teacher's best remaining candidate, the folder trains as a collection, and
    scores of other candidates are refused."""
    from retrieval_distill.cli import app
    from retrieval_distill.evaluation.runs import read_run, write_run
    from retrieval_distill.search.bm25 import BM25Searcher
    from retrieval_distill.teachers.scoring import scores_dict, score_candidates

    out, _ = adi_synth
    coll = load_collection(out, split="train")
    index, _ = adi_bm25_run
    qs = dict(sorted(coll.queries.items())[:40])
    hits = BM25Searcher(index).batch_search(qs, k=8)
    run = {q: {h.docid: h.score for h in hs} for q, hs in hits.items()}
    for q in run:  # the source document is always a candidate (as classic-synth.sh adds it)
        for d in coll.qrels[q]:
            run[q].setdefault(d, 0.0)
    write_run(tmp_path / "cands.trec", run, tag="cands")
    score_candidates({"kind": "bm25", "name": "bm25", "options": {"index": str(index)}}, tmp_path / "cands.trec",
                     coll.queries, coll.doc_text, tmp_path / "scores", progress=False)  # fmt: skip
    r = CliRunner().invoke(app, ["queries", "teacher-positives", str(out), str(tmp_path / "tp"),
                                 "--candidates", str(tmp_path / "cands.trec"), "--scores", str(tmp_path / "scores")])  # fmt: skip
    assert r.exit_code == 0, r.output
    sc = scores_dict(tmp_path / "scores")
    new = load_collection(tmp_path / "tp", split="train")
    cands = read_run(tmp_path / "tp" / "candidates.trec")
    kept = {q for q in run if set(run[q]) - set(coll.qrels[q])}  # a query whose only candidate is its source is skipped
    assert set(new.judged_qids()) == set(cands) == kept and len(kept) < len(run)
    dropped = sum(len(set(coll.qrels[q]) & set(run[q])) for q in run)
    for q in kept:
        src = set(coll.qrels[q])
        assert not src & set(cands[q])  # the source is gone from the list ...
        (pos,) = new.qrels[q]  # ... and the positive is the teacher's best of the rest
        rest = [d for d in run[q] if d not in src]
        assert pos in rest and sc[q][pos] == max(sc[q][d] for d in rest)
        assert new.queries[q] == coll.queries[q]
    info = json.loads((tmp_path / "tp" / "teacher_positives.json").read_text())
    assert info["queries"] == len(kept) and info["dropped_pairs"] == dropped and info["no_candidates"] == len(run) - len(kept)
    # a rerun into the same folder (classic-synth.sh reruns the step every time) succeeds and
    # writes the same qrels and candidates
    before = {f: (tmp_path / "tp" / f).read_bytes() for f in ("qrels/train.tsv", "candidates.trec")}
    r = CliRunner().invoke(app, ["queries", "teacher-positives", str(out), str(tmp_path / "tp"),
                                 "--candidates", str(tmp_path / "cands.trec"), "--scores", str(tmp_path / "scores")])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert {f: (tmp_path / "tp" / f).read_bytes() for f in before} == before
    # a candidate the teacher never scored: refused, one line
    extra = tmp_path / "extra.trec"
    extra.write_text((tmp_path / "cands.trec").read_text() + f"{next(iter(run))} Q0 nosuchdoc 99 0 x\n")
    r = CliRunner().invoke(app, ["queries", "teacher-positives", str(out), str(tmp_path / "tp2"),
                                 "--candidates", str(extra), "--scores", str(tmp_path / "scores")])  # fmt: skip
    assert r.exit_code == 2 and "no teacher score for" in r.output and "nosuchdoc" in r.output, r.output
    r = CliRunner().invoke(app, ["queries", "teacher-positives", str(tmp_path / "none"), str(tmp_path / "tp3"),
                                 "--candidates", str(extra), "--scores", str(tmp_path / "scores")])  # fmt: skip
    assert r.exit_code == 2 and "no qrels in the synthetic folder" in r.output, r.output
    bad = tmp_path / "bad"
    (bad / "qrels").mkdir(parents=True)
    (bad / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\tone\n")
    r = CliRunner().invoke(app, ["queries", "teacher-positives", str(bad), str(tmp_path / "tp4"),
                                 "--candidates", str(extra), "--scores", str(tmp_path / "scores")])  # fmt: skip
    assert r.exit_code == 2 and "train.tsv:2: grade 'one' is not a number" in r.output, r.output
    # an output folder whose corpus.jsonl is a real file is never overwritten
    (tmp_path / "tp5").mkdir()
    (tmp_path / "tp5" / "corpus.jsonl").write_text("mine\n")
    r = CliRunner().invoke(app, ["queries", "teacher-positives", str(out), str(tmp_path / "tp5"),
                                 "--candidates", str(tmp_path / "cands.trec"), "--scores", str(tmp_path / "scores")])  # fmt: skip
    assert r.exit_code == 2 and "exists and is not a link" in r.output, r.output
    assert (tmp_path / "tp5" / "corpus.jsonl").read_text() == "mine\n"
    # a copy of an output folder (cp -r keeps its links to the original's files) is re-pointed
    import shutil

    shutil.copytree(out, tmp_path / "copy" / "synth", symlinks=True)
    shutil.copytree(tmp_path / "tp", tmp_path / "copy" / "tp", symlinks=True)
    linked = [p.name for p in (tmp_path / "copy" / "tp").iterdir() if p.is_symlink() and p.resolve().parent == Path(out).resolve()]
    assert linked  # the copy's links still point into the original synthetic folder
    r = CliRunner().invoke(app, ["queries", "teacher-positives", str(tmp_path / "copy" / "synth"), str(tmp_path / "copy" / "tp"),
                                 "--candidates", str(tmp_path / "cands.trec"), "--scores", str(tmp_path / "scores")])  # fmt: skip
    assert r.exit_code == 0, r.output
    for name in linked:
        assert (tmp_path / "copy" / "tp" / name).resolve() == (tmp_path / "copy" / "synth" / name).resolve()
