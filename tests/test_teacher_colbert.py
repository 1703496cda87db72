"""ColBERT-style MaxSim teacher (zero-shot from MiniLM token embeddings) against a by-hand
computation, markers/augmentation, skipping, and the cached document state."""

import numpy as np
import pytest
import torch

from retrieval_distill.teachers import build_teacher
from retrieval_distill.teachers.base import parse_spec


@pytest.fixture(scope="module")
def colbert():
    return build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"doc_maxlen": 128}})


def _by_hand(t, text, maxlen, skip):
    enc = t.tokenizer(text, truncation=True, max_length=maxlen, return_tensors="pt")
    with torch.no_grad():
        h = t.model(**enc).last_hidden_state[0]
    h = torch.nn.functional.normalize(h, dim=-1).numpy()
    toks = t.tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    keep = [i for i, tok in enumerate(toks) if tok not in skip]
    return h[keep]


def test_maxsim_by_hand(colbert, adi):
    q, d = adi.queries["3"], adi.doc_text("3")
    skip = {"[CLS]", "[SEP]", "?", ".", ",", "-", "(", ")", ":", ";", "'"}
    qe, de = _by_hand(colbert, q, 64, skip), _by_hand(colbert, d, 128, skip)
    assert colbert.encode_queries([q])[0].shape == qe.shape  # "what is information science give definitions where possible" minus punctuation
    expect = (qe @ de.astype(np.float16).astype(np.float32).T).max(1).sum()
    got = colbert.score([q], [d])[0]
    assert got == pytest.approx(expect, abs=2e-3)
    assert colbert.scale == "maxsim" and 0 < got <= qe.shape[0] + 1e-3


def test_score_ids_caches_documents_and_matches_score(colbert, adi):
    colbert.clear_cache()
    qids = ["1", "1", "2"]
    docs = ["17", "46", "17"]
    qs, ps = [adi.queries[q] for q in qids], [adi.doc_text(d) for d in docs]
    a = colbert.score_ids(qids, qs, docs, ps)
    assert set(colbert._doc_cache) == {"17", "46"} and colbert._doc_cache["17"].dtype == np.float16
    np.testing.assert_allclose(a, colbert.score(qs, ps), atol=1e-3)
    # preloaded state is what gets used
    state = colbert.encode_document_state([adi.doc_text("5")])
    colbert.set_document_embeddings(["17"], state)
    b = colbert.score_ids(["1"], [adi.queries["1"]], ["17"], ["ignored"])
    assert b[0] == pytest.approx(colbert.score([adi.queries["1"]], [adi.doc_text("5")])[0], abs=1e-3)
    with pytest.raises(ValueError, match="expected"):
        colbert.set_document_embeddings(["x"], [np.zeros((3, 7), np.float16)])
    colbert.clear_cache()


def test_markers_augmentation_and_projection(adi, tmp_path):
    w = np.random.default_rng(0).standard_normal((32, 384)).astype(np.float32)
    np.save(tmp_path / "proj.npy", w)
    t = build_teacher(
        {"kind": "colbert", "model": "all-MiniLM-L6-v2",
         "options": {"markers": ["[unused0]", "[unused1]"], "query_maxlen": 16, "augment": True, "skip_special": False,
                     "projection": str(tmp_path / "proj.npy")}}
    )  # fmt: skip
    assert t.dim == 32
    qe = t.encode_queries([adi.queries["3"]])[0]
    assert qe.shape == (16, 32)  # augmented to query_maxlen with [MASK], nothing skipped
    np.testing.assert_allclose(np.linalg.norm(qe, axis=1), 1, atol=1e-5)
    # the marker sits right after [CLS]: the same text without it embeds differently
    plain = build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2",
                           "options": {"query_maxlen": 16, "augment": True, "skip_special": False, "projection": str(tmp_path / "proj.npy")}})  # fmt: skip
    assert plain.encode_queries([adi.queries["3"]])[0].shape == (16, 32)
    assert not np.allclose(plain.encode_queries([adi.queries["3"]])[0][0], qe[0])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"markers": ["[Qx]", "[Dx]"]}})
    with pytest.raises(FileNotFoundError):
        build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"projection": str(tmp_path / "none.npy")}})


def test_fit_colbert_projection_learns_on_adi(adi, adi_bm25_run, tmp_path):
    """rd teacher fit-colbert: a 32-d projection trained on ADI's qrels (BM25 hard negatives)
    lowers its loss, is saved as a (32, 384) matrix named by teacher.json, and reranks the
    training queries' BM25 top-10 better than the untrained identity projection."""
    import json

    from typer.testing import CliRunner

    from retrieval_distill.cli import app
    from retrieval_distill.evaluation.metrics import evaluate
    from retrieval_distill.evaluation.runs import read_run

    _, run = adi_bm25_run
    out = tmp_path / "colbert-adi"
    r = CliRunner().invoke(app, ["teacher", "fit-colbert", "--model", "all-MiniLM-L6-v2", "--dataset", str(adi.root), "--split", "test",
                                 "--candidates", str(run), "-o", str(out), "--dim", "32", "--epochs", "20", "--lr", "5e-3",
                                 "--doc-maxlen", "128"])  # fmt: skip
    assert r.exit_code == 0, r.output
    fit = json.loads((out / "fit.json").read_text())
    assert fit["queries"] == len([q for q in adi.queries if any(g > 0 for g in adi.qrels.get(q, {}).values())])
    assert fit["loss_history"][-1]["loss"] < 0.8 * fit["loss_history"][0]["loss"]
    assert tuple(torch.load(out / "projection.pt").shape) == (32, 384)
    fitted = build_teacher(parse_spec(str(out / "teacher.json")))  # the projection is named relative to the spec file
    zero = build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"doc_maxlen": 128}})
    assert fitted.dim == 32 and fitted.fingerprint != zero.fingerprint
    cands = read_run(run)
    res = {}
    for name, t in (("fitted", fitted), ("zero", zero)):
        pairs = [(q, d) for q, ds in cands.items() for d in ds]
        s = t.score_ids([q for q, _ in pairs], [adi.queries[q] for q, _ in pairs], [d for _, d in pairs], [adi.doc_text(d) for _, d in pairs])
        rerank = {}
        for (q, d), v in zip(pairs, s):
            rerank.setdefault(q, {})[d] = float(v)
        res[name] = evaluate(adi.qrels, rerank, ["ndcg@10"]).overall["ndcg@10"]
    assert res["fitted"] > res["zero"], res


def test_bad_projection_file_is_a_clear_error(tmp_path):
    """A corrupt projection file, or a matrix of the wrong shape, fails at build time naming
    the file (not a pickle traceback, nor a matmul error in the middle of a scoring job)."""
    bad = tmp_path / "projection.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"projection.pt: not a readable projection matrix \(UnpicklingError"):
        build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"projection": str(bad)}})
    torch.save(torch.zeros(16, 100), bad)
    with pytest.raises(ValueError, match=r"projection.pt: projection must be a \(dim_out, 384\) matrix .* got \(16, 100\)"):
        build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"projection": str(bad)}})
    np.save(tmp_path / "p.npy", np.zeros(384, np.float32))
    with pytest.raises(ValueError, match=r"p.npy: projection must be .* got \(384,\)"):
        build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"projection": str(tmp_path / "p.npy")}})


def test_fit_colbert_output_and_settings_are_checked_first(adi, tmp_path, monkeypatch):
    """fit-colbert refuses a file or a foreign folder as its output and out-of-range settings
    before any work, leaving nothing behind; a relative output still gives a teacher.json
    whose projection path works from another folder."""
    import json

    from retrieval_distill.teachers.fit import fit_colbert_projection

    qs = {q: adi.queries[q] for q in list(adi.queries)[:3]}
    cands = {q: list(adi.corpus)[:4] for q in qs}
    args = ("all-MiniLM-L6-v2", qs, adi.qrels, cands, adi.doc_text)
    afile = tmp_path / "afile"
    afile.write_text("x")
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    for out in (afile, other):
        with pytest.raises(FileExistsError, match="is not a fit-colbert output folder"):
            fit_colbert_projection(*args, out, dim=8, epochs=1)
    assert afile.read_text() == "x" and (other / "keep.txt").read_text() == "keep"
    for kw, msg in (({"dim": -5}, "dim must be >= 1, got -5"), ({"batch_size": 0}, "batch_size must be >= 1")):
        with pytest.raises(ValueError, match=msg):
            fit_colbert_projection(*args, tmp_path / "x", **{"dim": 8, "epochs": 1, **kw})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "other"]
    monkeypatch.chdir(tmp_path)
    fit_colbert_projection(*args, "rel", dim=8, epochs=1, progress=False)
    spec = json.loads((tmp_path / "rel" / "teacher.json").read_text())
    assert spec["options"]["projection"] == "projection.pt"  # relative to teacher.json: the folder can move
    fit_colbert_projection(*args, "rel", dim=8, epochs=1, progress=False)  # a previous fit's folder is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "other", "rel"]
    monkeypatch.chdir(other)
    (tmp_path / "rel").rename(tmp_path / "moved")
    assert build_teacher(parse_spec(str(tmp_path / "moved" / "teacher.json"))).dim == 8


def test_fit_colbert_cli_reports_bad_input_in_one_line(adi, tmp_path):
    """`rd teacher fit-colbert` on bad input (missing model, malformed or unknown-docid
    candidates, no positive qrels): exit 2 and one `error:` line naming the culprit."""
    from typer.testing import CliRunner

    from retrieval_distill.cli import app

    cand = tmp_path / "c.trec"
    nopos = tmp_path / "nopos"
    (nopos / "qrels").mkdir(parents=True)
    for f in ("corpus.jsonl", "queries.jsonl"):
        (nopos / f).symlink_to(adi.root / f)
    (nopos / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t17\t0\n")

    def run(model="all-MiniLM-L6-v2", dataset=adi.root):
        return CliRunner().invoke(app, ["teacher", "fit-colbert", "--model", str(model), "--dataset", str(dataset), "--split", "test",
                                        "--candidates", str(cand), "-o", str(tmp_path / "out"), "--dim", "8", "--epochs", "1"])  # fmt: skip

    cand.write_text("1 Q0 17 1 1.0 x\n")
    r = run(model=tmp_path / "no-model")
    assert r.exit_code == 2 and "error: model" in r.output and "not found" in r.output, r.output
    cand.write_text("1 Q0 17 1 1.0 x\n1 Q0 nosuchdoc 2 0.5 x\n")
    r = run()
    assert r.exit_code == 2 and "c.trec:2: unknown docid 'nosuchdoc'" in r.output, r.output
    r = run(dataset=nopos)
    assert r.exit_code == 2 and "none of the 1 training queries has a positive qrels entry" in r.output, r.output
    cand.write_text("1 Q0 17 1\n")
    r = run()
    assert r.exit_code == 2 and "c.trec:1: expected 6 columns" in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_doc_states_of_an_earlier_job_are_reused_and_checked(adi, adi_bm25_run, tmp_path, monkeypatch):
    """Option ``doc_states``: a second scoring job of the same teacher over the same corpus
    preloads the first job's saved document token states, encodes only documents the first
    did not, and gives the scores a job without the option gives; a changed text is
    re-encoded; another teacher's folder is refused."""
    from retrieval_distill.teachers.colbert import ColBERTTeacher
    from retrieval_distill.teachers.scoring import read_scores, score_candidates

    _, run = adi_bm25_run
    lines = open(run).read().splitlines()
    first = [ln for ln in lines if int(ln.split()[0]) <= 17]
    second = [ln for ln in lines if int(ln.split()[0]) > 17]
    (tmp_path / "a.trec").write_text("\n".join(first) + "\n")
    (tmp_path / "b.trec").write_text("\n".join(second) + "\n")
    spec = {"kind": "colbert", "name": "maxsim", "model": "all-MiniLM-L6-v2", "options": {"doc_maxlen": 128}}
    text = adi.doc_text
    kw = dict(corpus_ids=adi.corpus.keys(), progress=False)
    score_candidates(spec, tmp_path / "a.trec", adi.queries, text, tmp_path / "A", **kw)
    docs_a = {ln.split()[2] for ln in first}
    docs_b = {ln.split()[2] for ln in second}
    assert docs_b - docs_a and docs_b & docs_a  # some reused, some new

    encoded: list[int] = []
    orig = ColBERTTeacher.encode_document_state
    monkeypatch.setattr(ColBERTTeacher, "encode_document_state", lambda self, p: encoded.append(len(p)) or orig(self, p))
    reuse = {**spec, "options": {**spec["options"], "doc_states": str(tmp_path / "A")}}
    score_candidates(reuse, tmp_path / "b.trec", adi.queries, text, tmp_path / "B", **kw)
    assert sum(encoded) == len(docs_b - docs_a)
    encoded.clear()
    score_candidates(spec, tmp_path / "b.trec", adi.queries, text, tmp_path / "C", **kw)
    assert sum(encoded) == len(docs_b)
    b, c = (read_scores(tmp_path / x).sort_values(["qid", "docid"]).reset_index(drop=True) for x in "BC")
    assert b[["qid", "docid", "teacher"]].equals(c[["qid", "docid", "teacher"]])
    # the documents were batched with other documents (other padding widths), so the fp32
    # matmuls differ in the last bits; the scores agree to float16 state precision
    np.testing.assert_allclose(b["score"].to_numpy(), c["score"].to_numpy(), rtol=1e-5, atol=1e-4)

    # a document whose text is not the one its state was computed from is encoded again
    changed = sorted(docs_b & docs_a)[0]
    encoded.clear()
    score_candidates(reuse, tmp_path / "b.trec", adi.queries, lambda d: text(d) + (" extra words" if d == changed else ""),
                     tmp_path / "D", **kw)  # fmt: skip
    assert sum(encoded) == len(docs_b - docs_a) + 1

    with pytest.raises(ValueError, match="not of this teacher"):
        build_teacher({**spec, "options": {"doc_maxlen": 64, "doc_states": str(tmp_path / "A")}})
    with pytest.raises(FileNotFoundError, match="not a score folder"):
        build_teacher({**spec, "options": {**spec["options"], "doc_states": str(tmp_path / "nowhere")}})


def test_ensemble_member_states_resume_and_are_reused_by_the_member_alone(adi, adi_bm25_run, tmp_path, monkeypatch):
    """An ensemble job saves each member's document state under docstate/member-NN: a job
    stopped after its document pass and one shard resumes without encoding any document
    again (a lost chunk is the only one recomputed), its scores equal an uninterrupted
    job's, and a later job of the ColBERT member alone reuses the states through
    ``doc_states``."""
    import json
    import shutil

    from retrieval_distill.teachers.bi_encoder import BiEncoderTeacher
    from retrieval_distill.teachers.colbert import ColBERTTeacher
    from retrieval_distill.teachers.scoring import read_scores, score_candidates

    _, run = adi_bm25_run
    colbert_spec = {"kind": "colbert", "name": "maxsim", "model": "all-MiniLM-L6-v2", "options": {"doc_maxlen": 128}}
    spec = {"kind": "ensemble", "members": [colbert_spec, {"kind": "bi_encoder", "name": "minilm", "model": "all-MiniLM-L6-v2"}]}
    kw = dict(corpus_ids=adi.corpus.keys(), progress=False, doc_chunk=16, queries_per_shard=8)
    encoded = {"colbert": 0, "bi": 0}
    for cls, key in ((ColBERTTeacher, "colbert"), (BiEncoderTeacher, "bi")):
        orig = cls.encode_document_state
        monkeypatch.setattr(cls, "encode_document_state",
                            lambda self, p, _o=orig, _k=key: encoded.__setitem__(_k, encoded[_k] + len(p)) or _o(self, p))
    n_docs = len({ln.split()[2] for ln in open(run)})

    man = score_candidates(spec, run, adi.queries, adi.doc_text, tmp_path / "A", max_shards=1, **kw)
    assert encoded == {"colbert": n_docs, "bi": n_docs} and len(man["completed_shards"]) == 1
    states = tmp_path / "A" / "docstate"
    assert json.loads((states / "member-00" / "member.json").read_text())["name"] == "maxsim"
    assert json.loads((states / "member-01" / "member.json").read_text())["kind"] == "bi_encoder"
    chunks = sorted((states / "member-00").glob("chunk-*.npz"))
    assert len(chunks) == -(-n_docs // 16)
    chunks[1].unlink()  # a chunk lost (killed while it was being written)

    encoded.update(colbert=0, bi=0)
    man = score_candidates(spec, run, adi.queries, adi.doc_text, tmp_path / "A", **kw)
    assert encoded == {"colbert": 16, "bi": 0}  # only the lost chunk, only for its member
    assert len(man["completed_shards"]) == man["n_shards"] > 1
    score_candidates(spec, run, adi.queries, adi.doc_text, tmp_path / "C", **kw)
    a, c = (read_scores(tmp_path / x).sort_values(["qid", "docid"]).reset_index(drop=True) for x in "AC")
    assert len(a) == 350 and a[["qid", "docid", "teacher"]].equals(c[["qid", "docid", "teacher"]])
    np.testing.assert_allclose(a["score"].to_numpy(), c["score"].to_numpy(), rtol=1e-5, atol=1e-5)

    # another member's chunk in the ColBERT member's folder (loads, but the teacher refuses its
    # shapes): recomputed, not a job stuck on it
    shutil.copy(states / "member-01" / "chunk-00002.npz", states / "member-00" / "chunk-00002.npz")
    for p in (tmp_path / "A").glob("part-*.parquet"):
        p.unlink()
    encoded.update(colbert=0, bi=0)
    score_candidates(spec, run, adi.queries, adi.doc_text, tmp_path / "A", **kw)
    assert encoded == {"colbert": 16, "bi": 0}

    encoded.update(colbert=0, bi=0)
    alone = {**colbert_spec, "options": {**colbert_spec["options"], "doc_states": str(tmp_path / "A")}}
    score_candidates(alone, run, adi.queries, adi.doc_text, tmp_path / "M", **kw)
    assert encoded["colbert"] == 0
    with pytest.raises(ValueError, match="nor of any ensemble member"):
        build_teacher({**colbert_spec, "options": {"doc_maxlen": 64, "doc_states": str(tmp_path / "A")}})
    raw = (states / "member-00" / "chunk-00000.npz").read_bytes()
    (states / "member-00" / "chunk-00000.npz").write_bytes(raw[:100])  # a truncated chunk in the source folder
    with pytest.raises(ValueError, match=r"chunk-00000.npz: unreadable document-state chunk \(BadZipFile"):
        build_teacher(alone)


def test_bf16_is_checked_against_fp32_before_the_document_pass(adi, adi_bm25_run, tmp_path, monkeypatch, native_bf16):
    """``dtype: bf16``: the scoring job checks bf16 against fp32 on real pairs before it
    encodes any document, records the check in the manifest, and ranks like fp32; a drift
    past the tolerance stops the job before the pass; the option enters the fingerprint."""
    from retrieval_distill.teachers.scoring import load_manifest, read_scores, score_candidates
    from retrieval_distill.teachers.speed import SpeedCheckError

    _, run = adi_bm25_run
    (tmp_path / "c.trec").write_text("".join(ln + "\n" for ln in open(run).read().splitlines() if int(ln.split()[0]) <= 6))
    spec = {"kind": "colbert", "name": "maxsim", "model": "all-MiniLM-L6-v2", "options": {"doc_maxlen": 128}}
    bf = {**spec, "options": {**spec["options"], "dtype": "bf16"}}
    kw = dict(corpus_ids=adi.corpus.keys(), progress=False)
    score_candidates(spec, tmp_path / "c.trec", adi.queries, adi.doc_text, tmp_path / "fp32", **kw)
    score_candidates(bf, tmp_path / "c.trec", adi.queries, adi.doc_text, tmp_path / "bf16", **kw)
    check = load_manifest(tmp_path / "bf16")["speed_check"]
    # the first shard: all 60 pairs of the 6 queries (fewer than check_sample, 64)
    assert check["option"] == "bf16" and check["n"] == 60 and check["spearman"] >= 0.98
    a, b = (read_scores(tmp_path / x).sort_values(["qid", "docid"]).reset_index(drop=True) for x in ("fp32", "bf16"))
    assert a[["qid", "docid"]].equals(b[["qid", "docid"]])
    assert not np.array_equal(a["score"], b["score"])  # bf16 really ran
    spread = a["score"].std()
    assert np.abs(a["score"] - b["score"]).max() < 0.1 * spread
    from scipy.stats import spearmanr

    assert spearmanr(a["score"], b["score"]).statistic > 0.98
    assert build_teacher(bf).fingerprint != build_teacher(spec).fingerprint
    # inside an ensemble (the pipeline's teacher stage) the member's check reaches the manifest too
    ens = {"kind": "ensemble", "name": "ens", "normalization": "none", "members": [bf]}
    score_candidates(ens, tmp_path / "c.trec", adi.queries, adi.doc_text, tmp_path / "ens", **kw)
    assert load_manifest(tmp_path / "ens")["speed_check"]["maxsim"]["option"] == "bf16"

    import retrieval_distill.teachers.scoring as scoring

    passes: list[int] = []
    monkeypatch.setattr(scoring, "prepare_document_state", lambda t, ids, *a, **k: passes.append(len(ids)) or [])
    strict = {**bf, "options": {**bf["options"], "rel_tol": 1e-9}}
    with pytest.raises(SpeedCheckError):
        score_candidates(strict, tmp_path / "c.trec", adi.queries, adi.doc_text, tmp_path / "strict", **kw)
    assert passes == []  # stopped before the document pass
    with pytest.raises(ValueError, match="dtype must be"):
        build_teacher({**spec, "options": {"dtype": "fp16"}})


def test_bf16_too_few_pairs_to_check_runs_fp32(colbert, adi, native_bf16):
    """Before any check, a call of fewer than 3 pairs cannot check bf16: it is scored in fp32
    (bit-equal to the fp32 teacher) and the check is left for a larger call."""
    bf = build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"doc_maxlen": 128, "dtype": "bf16"}})
    q, d = [adi.queries["3"]] * 2, [adi.doc_text("3"), adi.doc_text("7")]
    colbert.clear_cache()
    assert np.array_equal(bf.score(q, d), colbert.score(q, d))
    assert np.array_equal(bf.score_ids(["3", "3"], q, ["3", "7"], d), colbert.score_ids(["3", "3"], q, ["3", "7"], d))
    assert bf.speed_check is None
    qs = [adi.queries[k] for k in ("1", "2", "3", "4")]
    ds = [adi.doc_text(k) for k in ("1", "2", "3", "4")]
    bf.score(qs, ds)
    assert bf.speed_check is not None and bf.speed_check["n"] == 4


def test_bf16_falls_back_to_fp32_without_native_bf16(colbert, adi, monkeypatch, caplog):
    """On a CPU without native bf16 (an AVX2-only EPYC; ``cpu_bf16_flags`` empty) a ``dtype:
    bf16`` teacher runs fp32 (autocast would only emulate bf16, slower), says so in the log, and
    scores as, and fingerprints as, the fp32 teacher: its score file cannot pass for a bf16 one."""
    import logging

    import retrieval_distill.models.encoder as E

    monkeypatch.setattr(E, "cpu_bf16_flags", lambda: [])
    with caplog.at_level(logging.WARNING, logger="retrieval_distill.teachers.base"):
        bf = build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"doc_maxlen": 128, "dtype": "bf16"}})
    assert "no native bf16" in caplog.text
    assert bf.dtype == "fp32" and not bf.fast and bf.spec.options["dtype"] == "fp32"
    ref = build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"doc_maxlen": 128, "dtype": "fp32"}})
    assert bf.fingerprint == ref.fingerprint
    qs = [adi.queries[k] for k in ("1", "2", "3", "4")]
    ds = [adi.doc_text(k) for k in ("1", "2", "3", "4")]
    colbert.clear_cache()
    assert np.array_equal(bf.score(qs, ds), colbert.score(qs, ds))
    assert bf.speed_check is None  # nothing to check: no speed path ran
    monkeypatch.setattr(E, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    native = build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"doc_maxlen": 128, "dtype": "bf16"}})
    assert native.dtype == "bf16" and native.fast and native.fingerprint != ref.fingerprint
