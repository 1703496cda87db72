"""Bi-encoder, BM25 and ensemble teachers on ADI with the real MiniLM model and Lucene."""

import numpy as np
import pytest

from retrieval_distill.evaluation.runs import read_run
from retrieval_distill.teachers import TeacherSpec, build_teacher
from retrieval_distill.teachers.base import parse_spec, score_pairs
from retrieval_distill.teachers.ensemble import normalize_per_query


@pytest.fixture(scope="module")
def bi(adi):
    return build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"batch_size": 16}})


@pytest.fixture(scope="module")
def pairs(adi, adi_bm25_run):
    """The BM25 top-10 of the first 4 ADI queries as flat lists."""
    run = read_run(adi_bm25_run[1])
    qids, qs, ds, ps = [], [], [], []
    for q in list(run)[:4]:
        for d in run[q]:
            qids.append(q)
            qs.append(adi.queries[q])
            ds.append(d)
            ps.append(adi.doc_text(d))
    return qids, qs, ds, ps


def test_bi_encoder_scores_are_cosines_of_the_model(adi, bi, minilm, pairs):
    qids, qs, ds, ps = pairs
    s = bi.score(qs, ps)
    assert s.dtype == np.float32 and s.shape == (len(qs),)
    q = minilm.encode(qs[:3], normalize_embeddings=True)
    p = minilm.encode(ps[:3], normalize_embeddings=True)
    np.testing.assert_allclose(s[:3], (q * p).sum(1), atol=1e-5)
    assert bi.scale == "cosine" and len(bi.fingerprint) == 16


def test_bi_encoder_score_ids_caches_queries_and_documents(adi, bi, pairs):
    qids, qs, ds, ps = pairs
    bi.clear_cache()
    calls = {"q": 0, "d": 0}
    enc_q, enc_d = bi.encode_queries, bi.encode_documents

    def count_q(texts):
        calls["q"] += len(texts)
        return enc_q(texts)

    def count_d(texts):
        calls["d"] += len(texts)
        return enc_d(texts)

    bi.encode_queries, bi.encode_documents = count_q, count_d
    try:
        a = bi.score_ids(qids, qs, ds, ps)
        assert calls == {"q": 4, "d": len(set(ds))}  # one encoding per query and per document
        b = bi.score_ids(qids, qs, ds, ps)
        assert calls == {"q": 4, "d": len(set(ds))}  # second call: all cached
    finally:
        del bi.encode_queries, bi.encode_documents
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, bi.score(qs, ps), atol=1e-5)


def test_bi_encoder_preloaded_document_embeddings(adi, bi, pairs):
    qids, qs, ds, ps = pairs
    bi.clear_cache()
    uniq = sorted(set(ds))
    emb = bi.encode_documents([adi.doc_text(d) for d in uniq])
    # preload *different* unit vectors to prove the preloaded ones are used
    rolled = np.roll(emb, 1, axis=0)
    bi.set_document_embeddings(uniq, rolled)
    s = bi.score_ids(qids, qs, ds, ps)
    qe = bi.encode_queries(qs)
    expect = np.array([qe[i] @ rolled[uniq.index(d)] for i, d in enumerate(ds)], dtype=np.float32)
    np.testing.assert_allclose(s, expect, atol=1e-6)
    with pytest.raises(ValueError, match="dim"):
        bi.set_document_embeddings(uniq[:2], np.ones((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="normalised"):
        bi.set_document_embeddings(uniq[:2], 3 * emb[:2])
    bi.clear_cache()


def test_bi_encoder_reads_an_encoding_folder(adi, bi, pairs, tmp_path):
    """options.embeddings: the index build's encoding folder is the document pass; the scoring
    job then encodes no document, scores and fingerprint are those of the plain teacher."""
    from retrieval_distill.index.build import encode_corpus
    from retrieval_distill.models.encoder import Encoder
    from retrieval_distill.teachers.scoring import prepare_document_state

    qids, qs, ds, ps = pairs
    bi.clear_cache()
    encode_corpus(Encoder("all-MiniLM-L6-v2", show_progress=False), adi, tmp_path / "enc", shard_size=32, show_progress=False)
    pre = build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2",
                         "options": {"batch_size": 16, "embeddings": str(tmp_path / "enc")}})
    assert pre.preloaded_docids() == set(adi.docids) and pre.fingerprint == bi.fingerprint
    calls = []
    pre.encode_document_state = lambda texts: calls.append(len(texts)) or bi.encode_document_state(texts)
    prepare_document_state(pre, ds, adi.doc_text, tmp_path / "docstate", progress=False)
    assert calls == []  # nothing left to encode
    np.testing.assert_allclose(pre.score_ids(qids, qs, ds, ps), bi.score(qs, ps), atol=1e-5)
    # another model's folder, another token limit, an unfinished folder: refused, naming the folder
    with pytest.raises(ValueError, match="not by this teacher"):
        build_teacher({"kind": "bi_encoder", "model": "all-mpnet-base-v2", "options": {"embeddings": str(tmp_path / "enc")}})
    with pytest.raises(ValueError, match="max_seq_length 256"):
        build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2",
                       "options": {"max_length": 128, "embeddings": str(tmp_path / "enc")}})
    with pytest.raises(FileNotFoundError, match="encoding.json"):
        build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"embeddings": str(tmp_path)}})


def test_bi_encoder_encoding_folder_of_another_dtype_is_refused(adi, tmp_path, native_bf16):
    """A bf16 encoding (``rd index build --dtype bf16``) preloads only into a ``dtype: bf16``
    teacher, whose spec and fingerprint then say bf16; an fp32 teacher refuses it, naming both,
    since its score file would claim fp32 documents."""
    from retrieval_distill.index.build import encode_corpus
    from retrieval_distill.models.encoder import Encoder

    encode_corpus(Encoder("all-MiniLM-L6-v2", show_progress=False, dtype="bf16"), adi, tmp_path / "enc", shard_size=64,
                  show_progress=False)
    with pytest.raises(ValueError, match="documents encoded in bf16, this teacher runs fp32"):
        build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"embeddings": str(tmp_path / "enc")}})
    bf = build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2",
                        "options": {"dtype": "bf16", "embeddings": str(tmp_path / "enc")}})
    assert bf.preloaded_docids() == set(adi.docids)
    assert bf.fingerprint != build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"}).fingerprint


def test_bm25_teacher_matches_lucene_search(adi, adi_bm25_run):
    index, run_path = adi_bm25_run
    run = read_run(run_path)
    t = build_teacher({"kind": "bm25", "options": {"index": str(index)}})
    assert t.scale == "bm25"
    q = next(iter(run))
    docs = list(run[q])
    s = score_pairs(t, [q] * len(docs), [adi.queries[q]] * len(docs), docs, [""] * len(docs))
    np.testing.assert_allclose(s, [run[q][d] for d in docs], rtol=1e-4)
    with pytest.raises(TypeError, match="score_ids"):
        t.score(["a"], ["b"])
    with pytest.raises(KeyError, match="not in the BM25 index"):
        t.score_ids([q], [adi.queries[q]], ["no-such-doc"], ["some text Lucene would have indexed"])
    # an empty passage is not indexed by Lucene (Cranfield 471, 995): BM25 0.0, counted, not an error
    s = t.score_ids([q, q], [adi.queries[q]] * 2, ["empty-doc", docs[0]], ["  ", adi.doc_text(docs[0])])
    assert s[0] == 0.0 and s[1] == pytest.approx(run[q][docs[0]], rel=1e-4) and t.empty_unindexed == 1


def test_bm25_teacher_bad_spec(tmp_path):
    with pytest.raises(ValueError, match="index"):
        build_teacher({"kind": "bm25"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_teacher({"kind": "bm25", "options": {"index": str(tmp_path / "missing")}})


def test_normalisation_hand_computed():
    s = np.array([1.0, 2.0, 3.0, 10.0, 10.0, 40.0])
    groups = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    z = normalize_per_query(s, groups, "zscore")
    sd = np.sqrt(2 / 3)
    np.testing.assert_allclose(z[:3], [-1 / sd, 0, 1 / sd])
    # second query: mean 20, population std sqrt(200)
    np.testing.assert_allclose(z[3:], [-10 / np.sqrt(200), -10 / np.sqrt(200), 20 / np.sqrt(200)])
    m = normalize_per_query(s, groups, "minmax")
    np.testing.assert_allclose(m, [0, 0.5, 1, 0, 0, 1])
    # constant list -> zeros, not NaN
    assert normalize_per_query(np.array([5.0, 5.0]), [np.array([0, 1])], "zscore").tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        normalize_per_query(s, groups, "rank")


def test_ensemble_fuses_per_query(adi, adi_bm25_run, pairs):
    index, _ = adi_bm25_run
    qids, qs, ds, ps = pairs
    members = [{"kind": "bm25", "options": {"index": str(index)}}, {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"}]
    ens = build_teacher({"kind": "ensemble", "members": members, "weights": [0.3, 0.7], "normalization": "minmax"})
    assert ens.scale == "fused"
    raw = ens.member_scores(qids, qs, ds, ps)
    fused = ens.score_ids(qids, qs, ds, ps)
    # by hand for the first query
    n0 = qids.count(qids[0])
    b, c = raw[0][:n0].astype(float), raw[1][:n0].astype(float)
    hand = 0.3 * (b - b.min()) / (b.max() - b.min()) + 0.7 * (c - c.min()) / (c.max() - c.min())
    np.testing.assert_allclose(fused[:n0], hand, atol=1e-5)
    # a query's fused scores do not depend on other queries' candidates
    alone = ens.score_ids(qids[:n0], qs[:n0], ds[:n0], ps[:n0])
    np.testing.assert_allclose(alone, fused[:n0], atol=1e-6)
    # weights and normalisation are part of the fingerprint
    other = TeacherSpec.model_validate({"kind": "ensemble", "members": members, "weights": [0.5, 0.5], "normalization": "minmax"})
    assert build_teacher(other).fingerprint != ens.fingerprint


def test_ensemble_fit_weights_on_dev(adi, adi_bm25_run):
    from ranx import Qrels, Run, evaluate

    index, run_path = adi_bm25_run
    run = read_run(run_path)
    dev = sorted(run)[:12]
    cands = {q: list(run[q]) for q in dev}
    ens = build_teacher(
        {"kind": "ensemble", "members": [{"kind": "bm25", "options": {"index": str(index)}}, {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"}]}
    )
    res = ens.fit_weights(adi.qrels, cands, adi.queries, adi.doc_text, grid=[0.0, 0.5, 1.0])
    assert ens.weights == res["weights"] and abs(sum(res["weights"]) - 1) < 1e-6
    assert res["best"] >= res["equal"]
    # [0,1] and [1,0] (each member alone) are among the combinations tried
    tried = {tuple(w): v for w, v in res["tried"]}
    assert (1.0, 0.0) in tried and (0.0, 1.0) in tried and len(tried) == 5  # equal, (0,1), (1/3,2/3), (2/3,1/3), (1,0)
    # the reported value is the real nDCG@10 of the fused ranking with the chosen weights
    judged = [q for q in dev if q in adi.qrels]
    qid_l = [q for q in judged for _ in cands[q]]
    d_l = [d for q in judged for d in cands[q]]
    s = ens.score_ids(qid_l, [adi.queries[q] for q in qid_l], d_l, [adi.doc_text(d) for d in d_l])
    r: dict = {}
    for q, d, x in zip(qid_l, d_l, s):
        r.setdefault(q, {})[d] = float(x)
    assert evaluate(Qrels({q: adi.qrels[q] for q in judged}), Run(r), "ndcg@10") == pytest.approx(res["best"], abs=1e-9)
    # member_cache: a member shared by two candidate teachers is scored on dev once; the second
    # ensemble (BM25 alone) reads its scores and finds the same figure as BM25's row above
    cache: dict = {}
    ens.fit_weights(adi.qrels, cands, adi.queries, adi.doc_text, grid=[0.0, 0.5, 1.0], member_cache=cache)
    assert len(cache) == 2
    bm25_only = build_teacher({"kind": "ensemble", "members": [{"kind": "bm25", "options": {"index": str(index)}}]})
    calls = []
    orig = bm25_only.members[0].score_ids
    bm25_only.members[0].score_ids = lambda *a, **k: calls.append(1) or orig(*a, **k)
    res1 = bm25_only.fit_weights(adi.qrels, cands, adi.queries, adi.doc_text, grid=[1.0], member_cache=cache)
    assert calls == [] and len(cache) == 2 and res1["best"] == pytest.approx(tried[(1.0, 0.0)], abs=1e-9)


def test_parse_spec(tmp_path):
    s = parse_spec("bi_encoder:all-MiniLM-L6-v2", {"batch_size": 8})
    assert (s.kind, s.model, s.options) == ("bi_encoder", "all-MiniLM-L6-v2", {"batch_size": 8})
    f = tmp_path / "t.json"
    f.write_text('{"kind": "ensemble", "members": [{"kind": "bm25", "options": {"index": "x"}}], "weights": [1.0]}')
    assert parse_spec(str(f)).members[0].kind == "bm25"
    with pytest.raises(ValueError, match="invalid teacher spec"):
        parse_spec('{"kind": "bm25", "bogus": 1}')
    with pytest.raises(ValueError, match="unknown teacher kind"):
        build_teacher({"kind": "nope"})


def test_fit_weights_cli_output_is_a_spec_score_accepts(adi, adi_bm25_run, tmp_path):
    """`rd teacher fit-weights` writes the spec plus a `fit` record; `rd teacher score -t FILE`
    (parse_spec) reads it back with the chosen weights (it used to refuse the `fit` key)."""
    import json

    from typer.testing import CliRunner

    from conftest import ADI
    from retrieval_distill.cli import app

    index, run_path = adi_bm25_run
    run = read_run(run_path)
    cands = tmp_path / "dev.trec"
    cands.write_text("".join(f"{q} Q0 {d} {i + 1} {s} bm25\n" for q in sorted(run)[:8] for i, (d, s) in enumerate(run[q].items())))
    spec = {"kind": "ensemble", "name": "ens", "members": [{"kind": "bm25", "name": "bm25", "options": {"index": str(index)}},
                                                        {"kind": "bi_encoder", "name": "minilm", "model": "all-MiniLM-L6-v2"}]}
    out = tmp_path / "ens.json"
    r = CliRunner().invoke(app, ["teacher", "fit-weights", "-t", json.dumps(spec), "--dataset", str(ADI), "--split", "test",
                                 "--candidates", str(cands), "-o", str(out), "--grid", "0,0.5,1"])
    assert r.exit_code == 0, r.output
    saved = json.loads(out.read_text())
    assert saved["fit"]["metric"] == "ndcg@10" and saved["fit"]["queries"] > 0
    loaded = parse_spec(str(out))
    assert loaded.kind == "ensemble" and loaded.weights == saved["weights"] and abs(sum(loaded.weights) - 1) < 1e-6


def test_parse_spec_bad_file_is_named(tmp_path):
    """A spec file that is not valid JSON/YAML names the file; a missing .json path is a
    missing file (it used to be read as the shorthand kind 'nosuch.json')."""
    f = tmp_path / "t.json"
    f.write_text('{"kind": "bi_encoder", "model": \n')
    with pytest.raises(ValueError, match=r"t.json: teacher spec is not valid JSON"):
        parse_spec(str(f))
    y = tmp_path / "t.yaml"
    y.write_text("kind: [bm25\n")
    with pytest.raises(ValueError, match=r"t.yaml: teacher spec is not valid YAML"):
        parse_spec(str(y))
    with pytest.raises(FileNotFoundError, match=r"nosuch.json: teacher spec file does not exist"):
        parse_spec(str(tmp_path / "nosuch.json"))
    assert parse_spec("bm25").kind == "bm25"


def test_other_teacher_commands_report_bad_input_in_one_line(adi, adi_bm25_run, tmp_path):
    """fit-weights, evaluate, import-hofstatter and export-hofstatter: exit 2 with one
    `error: ...` line naming the problem, never a traceback, nothing written."""
    import json

    from typer.testing import CliRunner

    from conftest import ADI
    from retrieval_distill.cli import app
    from retrieval_distill.teachers.scoring import score_candidates

    index, run_path = adi_bm25_run
    run = read_run(run_path)
    cands = tmp_path / "c.trec"
    cands.write_text("".join(f"{q} Q0 {d} {i + 1} {s} bm25\n" for q in sorted(run)[:3] for i, (d, s) in enumerate(run[q].items())))
    bm25 = {"kind": "bm25", "name": "bm25", "options": {"index": str(index)}}
    ens = json.dumps({"kind": "ensemble", "name": "e", "members": [bm25, dict(bm25, name="bm25b")]})
    scores = tmp_path / "scores"
    score_candidates(bm25, cands, adi.queries, adi.doc_text, scores, progress=False)
    other = tmp_path / "other.qids"
    other.write_text("nosuchqid\n")
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("1.0\t2.0\tq1\tp1\tn1\n1.0\tx\tq1\tp1\n")
    fw = ["teacher", "fit-weights", "--dataset", str(ADI), "--split", "test", "--candidates", str(cands), "-o", str(tmp_path / "w.json")]
    cases = [
        (fw + ["-t", json.dumps(bm25)], "needs an ensemble spec, got kind 'bm25'"),
        (fw + ["-t", ens, "--grid", "0,half"], "--grid '0,half': expected comma-separated numbers"),
        (fw + ["-t", ens, "--qids", str(tmp_path / "none.qids")], "none.qids: qids file does not exist"),
        (["teacher", "evaluate", str(tmp_path / "nofolder"), "--dataset", str(ADI)], "nofolder: no manifest.json"),
        (["teacher", "evaluate", str(scores), "--dataset", str(ADI), "--split", "test", "--qids", str(other)],
         "none of its 3 queries is judged in"),
        (["teacher", "import-hofstatter", str(bad_tsv), str(tmp_path / "imp")], "bad.tsv:2: expected 5 columns"),
        (["teacher", "export-hofstatter", str(scores), str(tmp_path / "x.tsv")], "give --dataset"),
    ]
    for args, msg in cases:
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "error: " in r.output and msg in r.output and "Traceback" not in r.output, (args, r.output)
    assert not (tmp_path / "w.json").exists() and not (tmp_path / "x.tsv").exists() and not (tmp_path / "imp").exists()
    r = CliRunner().invoke(app, ["teacher", "evaluate", str(scores), "--dataset", str(ADI), "--split", "test",
                                 "--run", str(tmp_path / "teacher.trec")])  # fmt: skip
    assert r.exit_code == 0 and json.loads(r.output)["queries"] == 3, r.output
    # --run: the teacher's reranking as a TREC run: BM25 over its own top 10 gives back that run
    back = read_run(tmp_path / "teacher.trec")
    assert list(back) == sorted(run)[:3]
    for q in back:
        assert list(back[q]) == list(run[q]) and np.allclose(list(back[q].values()), list(run[q].values()), atol=1e-4)
    assert all(ln.split()[5] == "bm25" for ln in (tmp_path / "teacher.trec").read_text().splitlines())


def test_ensemble_normalization_none_keeps_raw_scores_and_the_members_scale():
    """``normalization: none``: the fused score is the weighted sum of the raw member scores,
    and a one-member ensemble declares its member's scale (margin-MSE's teacher scale sees it)."""
    raw = np.array([3.0, 1.0, 2.0, 10.0, 12.0])
    groups = [np.array([0, 1, 2]), np.array([3, 4])]
    assert normalize_per_query(raw, groups, "none").tolist() == [3.0, 1.0, 2.0, 10.0, 12.0]
    z = normalize_per_query(raw, groups, "zscore")
    assert np.allclose(z, [1.224745, -1.224745, 0.0, -1.0, 1.0], atol=1e-6)
    one = build_teacher({"kind": "ensemble", "normalization": "none",
                         "members": [{"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"}]})
    assert one.scale == "cosine"
    two = build_teacher({"kind": "ensemble", "normalization": "none", "members": [
        {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"}, {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"}]})
    assert two.scale == "fused"
    pairs = (["q1", "q1"], ["vector space model", "vector space model"], ["d1", "d2"],
             ["the vector space model of retrieval", "cooking recipes"])
    assert np.allclose(one.score_ids(*pairs), score_pairs(one.members[0], *pairs), atol=1e-6)


@pytest.mark.parametrize(
    "spec, bad",
    [
        ({"kind": "bm25", "options": {"index": "x", "k_1": 1.2}}, "'k_1'"),
        ({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"max_len": 64}}, "'max_len'"),
        ({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"doc_max_len": 128, "dtype": "bf16"}}, "'doc_max_len'"),
        # `fit` only means something to the pipeline (with projection: fit), which strips it
        ({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"fit": {"dim": 16}}}, "'fit'"),
        ({"kind": "cross_encoder", "model": "x", "options": {"quantise": "int8"}}, "'quantise'"),
        ({"kind": "ensemble", "members": [{"kind": "bm25", "options": {"index": "x"}}], "options": {"weights": [1]}}, "'weights'"),
    ],
)
def test_unknown_teacher_option_is_refused_before_any_work(spec, bad):
    """A misspelt option used to be ignored while entering the fingerprint; now it is an error
    naming it and the known options (raised before a model or index is opened)."""
    with pytest.raises(ValueError, match=r"unknown option\(s\) " + bad + r"; known: ") as e:
        build_teacher(spec)
    assert spec["kind"] in str(e.value)
