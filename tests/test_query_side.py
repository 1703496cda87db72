"""Query-side training against a frozen index (retrieval_distill.distill.query_side): each loss
term against a hand-worked case, then `rd student train` with `mode: query_side` on ADI
over a real Flat index of all-MiniLM-L6-v2 vectors (nothing re-encoded), served beside the
unchanged index, and the refusals (another document encoder, another corpus, bad config)."""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import index_support as S
from retrieval_distill.distill.query_losses import (
    CandidateListwiseKL,
    CandidateMarginMSE,
    CandidatePairwise,
    CorpusInfoNCE,
    CorpusKL,
    QueryAlignment,
    QueryBatch,
    QuerySideLoss,
    QueryTables,
    positives_first,
)


def _batch(**kw):
    base = dict(q=torch.zeros(1, 2), logits_docs=None, pos_cols=None, cand_s=None, cand_t=None, cand_mask=None, cand_pos=None)
    base.update(kw)
    return QueryBatch(**base)


# ----------------------------------------------------------------------------- hand-worked terms
def test_corpus_infonce_by_hand():
    # one query, scores 0.5, 0.2, -0.1 against three documents, positives {0, 2}, tau 0.1
    s = torch.tensor([[0.5, 0.2, -0.1]])
    pos = torch.tensor([[True, False, True]])
    lse = math.log(math.exp(5) + math.exp(2) + math.exp(-1))
    want = ((lse - 5) + (lse + 1)) / 2
    got = CorpusInfoNCE(temperature=0.1)(_batch(logits_docs=s, pos_cols=pos))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_corpus_infonce_skips_queries_without_a_positive():
    # a query kept without a positive (query_side.unlabeled) adds nothing: the batch's term is
    # the labelled query's alone, not halved; a batch of unlabelled queries gives 0
    s = torch.tensor([[0.5, 0.2, -0.1], [0.9, 0.0, 0.3]])
    pos = torch.tensor([[True, False, False], [False, False, False]])
    loss = CorpusInfoNCE(temperature=0.1)
    alone = loss(_batch(logits_docs=s[:1], pos_cols=pos[:1]))
    assert loss(_batch(logits_docs=s, pos_cols=pos)).item() == pytest.approx(alone.item(), rel=1e-6)
    assert alone.item() == pytest.approx(math.log(math.exp(5) + math.exp(2) + math.exp(-1)) - 5, rel=1e-6)
    assert loss(_batch(logits_docs=s[1:], pos_cols=pos[1:])).item() == 0.0


def test_listwise_kl_ignores_padding():
    # candidates a, b and one padded slot; teacher 2.0, 0.0 (tau_t 1); student 0.3, 0.1 (tau_s 0.1)
    cs, ct = torch.tensor([[0.3, 0.1, 0.0]]), torch.tensor([[2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    pt = [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]
    ps = [math.exp(3) / (math.exp(3) + math.exp(1)), math.exp(1) / (math.exp(3) + math.exp(1))]
    want = sum(t * (math.log(t) - math.log(p)) for t, p in zip(pt, ps))
    got = CandidateListwiseKL(teacher_temperature=1.0, student_temperature=0.1)(_batch(cand_s=cs, cand_t=ct, cand_mask=mask))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_positives_first_reassigns_the_teachers_scores():
    # Knowledge Adjustment: the positives take the top scores (in their own teacher order), the
    # rest keep the teacher's order; padding stays 0
    t = torch.tensor([[3.0, 2.0, 1.0, 0.0], [5.0, 4.0, 6.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    pos = torch.tensor([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    want = torch.tensor([[2.0, 1.0, 3.0, 0.0], [4.0, 6.0, 5.0, 0.0], [3.0, 1.0, 4.0, 2.0]])
    assert torch.equal(positives_first(t, pos, mask), want)
    # a teacher that already ranks the positive first is unchanged
    assert torch.equal(positives_first(want[:1], pos[:1], mask[:1]), want[:1])
    # the KL term with the option is the plain KL against the adjusted scores
    cs = torch.tensor([[0.3, 0.1, 0.2, 0.0]])
    kw = dict(cand_s=cs, cand_mask=mask[:1], cand_pos=pos[:1])
    adj = CandidateListwiseKL(positives_first=True)(_batch(cand_t=t[:1], **kw))
    assert adj.item() == pytest.approx(CandidateListwiseKL()(_batch(cand_t=want[:1], **kw)).item(), rel=1e-6)
    assert adj.item() != pytest.approx(CandidateListwiseKL()(_batch(cand_t=t[:1], **kw)).item(), rel=1e-3)


def test_margin_mse_over_positive_negative_pairs():
    # positive p (s 0.6, t 5), negatives n1 (s 0.4, t 3), n2 (s 0.1, t 4), one padded slot; scale 0.1
    cs, ct = torch.tensor([[0.6, 0.4, 0.1, 0.0]]), torch.tensor([[5.0, 3.0, 4.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    pos = torch.tensor([[True, False, False, False]])
    want = (((0.6 - 0.4) - 0.1 * 2) ** 2 + ((0.6 - 0.1) - 0.1 * 1) ** 2) / 2
    got = CandidateMarginMSE(teacher_scale=0.1)(_batch(cand_s=cs, cand_t=ct, cand_mask=mask, cand_pos=pos))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_pairwise_takes_the_teachers_top_pairs():
    # top 2 by teacher: c (t 3, s 0.2) and a (t 1, s 0.4); b (t 0) is left out
    cs, ct = torch.tensor([[0.4, 0.9, 0.2]]), torch.tensor([[1.0, 0.0, 3.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    pt = 1 / (1 + math.exp(-(3 - 1)))
    ps = 1 / (1 + math.exp(-(0.2 - 0.4) / 0.1))
    want = pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))
    got = CandidatePairwise(top=2, teacher_temperature=1.0, student_temperature=0.1)(_batch(cand_s=cs, cand_t=ct, cand_mask=mask))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_loss_scores_the_frozen_documents():
    class Tower(torch.nn.Module):
        def forward(self, features):
            return {"sentence_embedding": features["x"]}

    docs = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    tables = QueryTables(pos=torch.tensor([[2, -1], [0, 1]]), cand=torch.tensor([[1, 2], [0, -1]]),
                         cand_t=torch.tensor([[0.5, 2.0], [1.0, 0.0]]))
    loss = QuerySideLoss(Tower(), docs, tables, [("corpus_infonce", 1.0, CorpusInfoNCE(0.05))])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = loss.batch(q, torch.tensor([1, 0]))
    assert torch.allclose(b.logits_docs, q @ torch.from_numpy(docs).T)
    assert b.pos_cols.tolist() == [[True, True, False], [False, False, True]]
    assert b.cand_mask.tolist() == [[True, False], [True, True]]
    assert b.cand_pos.tolist() == [[True, False], [False, True]]
    assert torch.allclose(b.cand_s, torch.tensor([[1.0, 0.0], [1.0, 0.8]]))
    sampled = QuerySideLoss(Tower(), docs, tables, [("corpus_infonce", 1.0, CorpusInfoNCE(0.05))], corpus_sample=1)
    bs = sampled.batch(q, torch.tensor([0]))
    assert bs.pos_cols.sum() == 1 and bs.logits_docs.shape[1] <= 2  # the positive is always among the columns


def test_leaf_alignment_by_hand():
    # q1 = (1, 0) vs t1 = (0.6, 0.8): cos 0.6; q2 = (0, 2) vs t2 = (0, 1): cos 1
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    assert QueryAlignment()(_batch(q=q, t_q=t)).item() == pytest.approx((0.4 + 0.0) / 2, rel=1e-6)
    # mse: ||(0.4, -0.8)||^2 = 0.8, ||(0, 1)||^2 = 1
    assert QueryAlignment("mse")(_batch(q=q, t_q=t)).item() == pytest.approx((0.8 + 1.0) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="objective"):
        QueryAlignment("l1")


def test_corpus_kl_by_hand():
    # teacher cosines (0.2, 0.1, 0.0) at tau 0.1 -> softmax of (2, 1, 0); student (0.05, 0.05, 0.0) at tau 0.05 -> (1, 1, 0)
    t, s = torch.tensor([[0.2, 0.1, 0.0]]), torch.tensor([[0.05, 0.05, 0.0]])
    pt = np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum()
    ps = np.exp([1.0, 1.0, 0.0]) / np.exp([1.0, 1.0, 0.0]).sum()
    want = float((pt * np.log(pt / ps)).sum())
    got = CorpusKL(teacher_temperature=0.1, student_temperature=0.05)(_batch(logits_docs=s, t_logits_docs=t))
    assert got.item() == pytest.approx(want, rel=1e-6)
    # the same ranking at the same temperature costs nothing
    assert CorpusKL(0.05, 0.05)(_batch(logits_docs=t, t_logits_docs=t)).item() == pytest.approx(0.0, abs=1e-7)


def test_the_loss_scores_the_corpus_with_the_document_encoders_query_vectors():
    class Tower(torch.nn.Module):
        def forward(self, features):
            return {"sentence_embedding": features["x"]}

    docs = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    tables = QueryTables(pos=torch.tensor([[2], [0]]), cand=torch.zeros((2, 0), dtype=torch.int64), cand_t=torch.zeros((2, 0)))
    tq = np.array([[0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    terms = [("corpus_kl", 1.0, CorpusKL()), ("leaf", 1.0, QueryAlignment())]
    with pytest.raises(ValueError, match=r"\['corpus_kl', 'leaf'\] need the document encoder's vectors"):
        QuerySideLoss(Tower(), docs, tables, terms)
    with pytest.raises(ValueError, match=r"expected \(2, 2\)"):
        QuerySideLoss(Tower(), docs, tables, terms, teacher_queries=tq[:1])
    loss = QuerySideLoss(Tower(), docs, tables, terms, teacher_queries=tq)
    q = torch.tensor([[1.0, 0.0]])
    b = loss.batch(q, torch.tensor([1]))
    assert torch.equal(b.t_q, torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(b.t_logits_docs, torch.tensor([[0.6, 0.8, 1.0]]))
    assert torch.allclose(b.logits_docs, torch.tensor([[1.0, 0.0, 0.6]]))
    # the student already equal to the document encoder: both terms are zero
    same = loss([{"x": torch.tensor(tq[:1])}], torch.tensor([0]))
    assert same.item() == pytest.approx(0.0, abs=1e-6) and set(loss.last_parts) == {"corpus_kl", "leaf"}


# ----------------------------------------------------------------------------- ADI end to end
@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    """A Flat ADI index of all-MiniLM-L6-v2 vectors (shared encoding cache), BM25 teacher scores
    over each query's BM25 top 15, and a query-side student trained with dev selection."""
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.index.rebuild import rebuild
    from retrieval_distill.search.bm25 import BM25Searcher, build_bm25_index
    from retrieval_distill.teachers.scoring import score_candidates

    root = tmp_path_factory.mktemp("qs")
    S.adi_encoded()
    res = rebuild(S.spec(root), force_full=True, log=lambda *a: None)
    coll = load_collection(S.ADI, split="test")
    bm25 = build_bm25_index(coll, root / "bm25")
    hits = BM25Searcher(bm25).batch_search(coll.queries, k=15)
    (root / "cands.txt").write_text("".join(f"{q} {h.docid}\n" for q, hs in hits.items() for h in hs))
    teacher = {"kind": "bm25", "name": "bm25", "options": {"index": str(bm25)}}
    score_candidates(teacher, root / "cands.txt", coll.queries, coll.doc_text, root / "scores", progress=False)
    before = {str(p): p.stat().st_mtime_ns for p in S.encodings_root().rglob("emb-*.npy")}
    cfg = _config(root, teacher)
    (root / "qs.yaml").write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(_app(), ["student", "train", str(root / "qs.yaml")])
    assert out.exit_code == 0, out.output
    after = {str(p): p.stat().st_mtime_ns for p in S.encodings_root().rglob("emb-*.npy")}
    return {"root": root, "store": root / "store", "version": res.version, "teacher": teacher, "cfg": cfg,
            "student": root / "student", "shards_untouched": before == after}


def _app():
    from retrieval_distill.cli import app

    return app


def _config(root, teacher, **over):
    cfg = {
        "mode": "query_side",
        "collection": str(S.ADI),
        "split": "test",
        "scores": str(root / "scores"),
        "teacher": teacher,
        "output": str(root / "student"),
        "query_side": {"documents": str(root / "store")},
        "train": {
            "losses": [{"name": "corpus_infonce", "options": {"temperature": 0.05}},
                       {"name": "listwise_kl", "weight": 0.5, "options": {"teacher_temperature": 2.0}}],
            "epochs": 2, "batch_size": 8, "lr": 5e-5, "max_seq_length": 64, "save_steps": 1000,
        },
        "dev": {"collection": str(S.ADI), "split": "test", "each_epoch": True, "keep": "best"},
    }
    cfg.update(over)
    return cfg


def test_query_side_student_trains_against_the_frozen_index(frozen):
    card = json.loads((frozen["student"] / "training_card.json").read_text())
    m = frozen["version"].manifest
    assert card["mode"] == "query_side" and card["documents_encoded"] == 0 and frozen["shards_untouched"]
    assert card["document_encoder"]["fingerprint"] == m.encoder.fingerprint
    assert card["document_encoder"]["corpus_fingerprint"] == m.corpus_fingerprint and card["document_encoder"]["n_docs"] == 82
    assert card["data"]["queries"] == 35 and card["data"]["candidates_per_query"] == pytest.approx(15.0)
    # the queries it trained on, in the folder (a cross_fit teacher reads them)
    trained = (frozen["student"] / "trained.qids").read_text().split("\n")[:-1]
    assert card["trained_qids"] == {"file": "trained.qids", "count": 35} and len(trained) == 35
    from retrieval_distill.data.collections import load_collection
    assert sorted(trained) == sorted(load_collection(S.ADI, split="test").judged_qids())
    assert [e["epoch"] for e in card["dev_per_epoch"]] == [0.0, 1.0, 2.0]
    init, best = card["dev_per_epoch"][0]["dev_ndcg@10"], card["dev_selected"]["dev_ndcg@10"]
    assert best > init  # trained on these very queries: it must fit them better than the init
    assert card["dev_metrics"]["overall"]["ndcg@10"] == pytest.approx(best, abs=1e-6)
    assert set(card["loss_citations"]) == {"corpus_infonce", "listwise_kl"} and "2012.12624" in card["loss_citations"]["corpus_infonce"]


def test_eval_run_and_service_use_it_beside_the_unchanged_index(frozen, tmp_path):
    from retrieval_distill.evaluation.metrics import evaluate
    from retrieval_distill.evaluation.runs import read_run
    from retrieval_distill.data.collections import load_collection
    from services.search_api.runtime import EncoderCache, load_runtime
    from services.search_api.settings import ServiceSettings

    run = tmp_path / "qs.trec"
    out = CliRunner().invoke(_app(), ["eval", "run", str(S.ADI), str(run), "--split", "test", "--searcher", "dense",
                                      "--index", str(frozen["store"]), "--query-encoder", str(frozen["student"]), "--k", "100"])
    assert out.exit_code == 0, out.output
    coll = load_collection(S.ADI, split="test")
    got = evaluate(coll.qrels, read_run(run), ["ndcg@10"]).to_dict(per_query=False)["overall"]["ndcg@10"]
    card = json.loads((frozen["student"] / "training_card.json").read_text())
    assert got == pytest.approx(card["dev_metrics"]["overall"]["ndcg@10"], abs=1e-4)
    rt = load_runtime("symmetric", ServiceSettings(index_root=str(frozen["store"]), model=str(frozen["student"])), EncoderCache())
    assert rt.encoder_key[:2] == (frozen["version"].manifest.encoder.name, str(frozen["student"]))
    q = next(iter(coll.queries))
    hits = rt.search_texts([coll.queries[q]], 5)[0]
    assert [h.docid for h in hits] == list(read_run(run)[q])[:5]


def test_another_document_encoder_is_refused(frozen, tmp_path):
    """An index whose documents the student's weights encoded (other weights than all-MiniLM-L6-v2;
    a copy without the card, since the student itself is refused as a document encoder)."""
    import shutil

    from retrieval_distill.index.rebuild import rebuild
    from retrieval_distill.serve_cli import app as serve_app

    plain = tmp_path / "plain"
    shutil.copytree(frozen["student"], plain)
    (plain / "training_card.json").unlink()
    rebuild(S.spec(tmp_path, model=str(plain), encodings=str(tmp_path / "enc")), force_full=True, log=lambda *a: None)
    other = tmp_path / "store"
    out = CliRunner().invoke(_app(), ["eval", "run", str(S.ADI), str(tmp_path / "x.trec"), "--split", "test", "--searcher",
                                      "dense", "--index", str(other), "--query-encoder", str(frozen["student"])])
    assert out.exit_code != 0 and "was trained against documents encoded by 'all-MiniLM-L6-v2'" in out.output
    assert not (tmp_path / "x.trec").exists()
    out = CliRunner().invoke(serve_app, ["--index-root", str(other), "--model", str(frozen["student"]), "--port", "0"])
    assert out.exit_code == 2 and "was trained against documents encoded by" in out.output
    # as a document encoder over the right index it is also refused, with a hint
    out = CliRunner().invoke(_app(), ["eval", "run", str(S.ADI), str(tmp_path / "y.trec"), "--split", "test", "--searcher",
                                      "dense", "--index", str(frozen["store"]), "--encoder", str(frozen["student"])])
    assert out.exit_code != 0 and "is a query-side student" in out.output


def test_index_build_refuses_a_query_side_student_as_document_encoder(frozen, tmp_path):
    out = CliRunner().invoke(_app(), ["index", "build", "--model", str(frozen["student"]), "--dataset", str(S.ADI),
                                      "--split", "test", "--out", str(tmp_path / "idx")])
    assert out.exit_code == 2 and "is a query-side student" in out.output and "--query-model STUDENT" in out.output, out.output
    assert not list((tmp_path / "idx").rglob("*.faiss"))


def test_a_corrupt_or_incomplete_card_fails_closed(frozen, tmp_path):
    """Which documents a query encoder belongs to is never guessed: an unreadable card, or a
    query-side card without its document encoder, is refused (not waved through)."""
    import shutil

    from retrieval_distill.serve_cli import app as serve_app

    for name, card in (("corrupt", "{bad"), ("stripped", json.dumps({"mode": "query_side"}))):
        student = tmp_path / name
        shutil.copytree(frozen["student"], student)
        (student / "training_card.json").write_text(card)
        out = CliRunner().invoke(_app(), ["eval", "run", str(S.ADI), str(tmp_path / f"{name}.trec"), "--split", "test",
                                          "--searcher", "dense", "--index", str(frozen["store"]), "--query-encoder", str(student)])
        assert out.exit_code == 2 and "cannot tell which documents this model belongs to" in out.output, out.output
        assert not (tmp_path / f"{name}.trec").exists()
        out = CliRunner().invoke(serve_app, ["--index-root", str(frozen["store"]), "--model", str(student), "--port", "0"])
        assert out.exit_code == 2 and "cannot tell which documents" in out.output


def test_projection_is_saved_in_the_model_folder(frozen, tmp_path):
    from retrieval_distill.models import load_sentence_transformer

    cfg = _config(frozen["root"], frozen["teacher"], output=str(tmp_path / "proj"), dev=None)
    cfg["query_side"]["projection"] = "always"
    cfg["train"].update({"epochs": 1, "losses": [{"name": "corpus_infonce"}]})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(_app(), ["student", "train", str(tmp_path / "c.yaml")])
    assert out.exit_code == 0, out.output
    card = json.loads((tmp_path / "proj" / "training_card.json").read_text())
    assert card["projection"]["in"] == 384 and card["projection"]["out"] == 384 and card["projection"]["init"] == "ridge"
    assert "teacher" not in card  # no teacher term: the score folder is not read
    modules = [m["type"] for m in json.loads((tmp_path / "proj" / "modules.json").read_text())]
    assert modules[-2:] == ["sentence_transformers.base.modules.dense.Dense", "sentence_transformers.base.modules.normalize.Normalize"] \
        or (modules[-2].endswith("Dense") and modules[-1].endswith("Normalize"))
    v = load_sentence_transformer(tmp_path / "proj").encode(["information retrieval"], normalize_embeddings=False)
    assert v.shape == (1, 384) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-4)


def test_projection_fit_on_the_corpus(frozen):
    """``projection_init: ridge_documents`` fits the map on the init's document vectors onto the
    frozen ones; with the same vectors on both sides the fit reproduces them."""
    from pydantic import ValidationError

    from retrieval_distill.distill.query_side import QuerySideSpec, _fit_on_documents, load_documents

    docs = load_documents(frozen["store"])
    spec = QuerySideSpec(documents=str(frozen["store"]), projection="always", projection_init="ridge_documents",
                         init_documents=str(frozen["store"]), ridge=1e-4)
    w, b = _fit_on_documents(spec, "all-MiniLM-L6-v2", docs)
    assert w.shape == (384, 384) and b.shape == (384,)
    assert np.abs(docs.emb @ w.T + b - docs.emb).max() < 0.05
    with pytest.raises(ValueError, match="not by the query tower's init 'all-mpnet-base-v2'"):
        _fit_on_documents(spec, "all-mpnet-base-v2", docs)
    with pytest.raises(ValidationError, match="needs `init_documents:`"):
        QuerySideSpec(documents="x", projection_init="ridge_documents")
    with pytest.raises(ValidationError, match="only read by projection_init: ridge_documents"):
        QuerySideSpec(documents="x", init_documents="y")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c, r: c.pop("query_side"), "mode query_side needs a `query_side:` section"),
        (lambda c, r: c["train"]["losses"].append({"name": "margin_mse_typo"}), "unknown query-side loss 'margin_mse_typo'"),
        (lambda c, r: c["query_side"].update(documents=str(r / "nowhere")), "no such index or encoding folder"),
        (lambda c, r: c.pop("scores"), "need `scores:` and `teacher:`"),
        (lambda c, r: c["query_side"].update(projection="never", documents=str(r / "store")) or c["train"].update(init="all-mpnet-base-v2"),
         "dim 768 != document dim 384"),
    ],
)
def test_bad_configs_fail_before_training(frozen, tmp_path, edit, message):
    cfg = _config(frozen["root"], frozen["teacher"], output=str(tmp_path / "s"))
    edit(cfg, frozen["root"])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(_app(), ["student", "train", str(tmp_path / "c.yaml")])
    assert out.exit_code == 2 and message in out.output, out.output
    assert not (tmp_path / "s").exists()


def test_an_index_of_another_corpus_is_refused(frozen, tmp_path):
    from retrieval_distill.index.rebuild import rebuild

    smaller = S.copy_beir(tmp_path / "adi-minus", drop=["1"])
    rebuild(S.spec(tmp_path, dataset=smaller), force_full=True, log=lambda *a: None)
    cfg = _config(frozen["root"], frozen["teacher"], output=str(tmp_path / "s"), dev=None)
    cfg["query_side"]["documents"] = str(tmp_path / "store")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(_app(), ["student", "train", str(tmp_path / "c.yaml")])
    assert out.exit_code == 2 and "is not among the 81 frozen documents" in out.output, out.output


def test_check_counts_the_tables_and_trains_nothing(frozen, tmp_path):
    cfg = _config(frozen["root"], frozen["teacher"], output=str(tmp_path / "s"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(_app(), ["student", "train", str(tmp_path / "c.yaml"), "--check"])
    assert out.exit_code == 0, out.output
    facts = json.loads(out.output)
    assert facts["mode"] == "query_side" and facts["documents_encoded"] == 0 and facts["teacher"]["name"] == "bm25"
    assert facts["data"]["queries"] == 35 and facts["data"]["candidates_per_query"] == pytest.approx(15.0)
    assert facts["dev_judged_queries"] == 35 and not (tmp_path / "s").exists()


def test_unlabeled_queries_are_kept_for_the_teacher_terms(frozen, tmp_path):
    """``query_side.unlabeled``: a judged query whose judgements are all grade 0 (a synthetic
    query judged on its source only) is kept with its teacher candidates and no positive;
    without the option it is dropped; a job without teacher terms keeps it too (same batches)."""
    import os

    folder = tmp_path / "adi"
    (folder / "qrels").mkdir(parents=True)
    os.symlink(S.ADI / "corpus.jsonl", folder / "corpus.jsonl")
    (folder / "queries.jsonl").write_text((S.ADI / "queries.jsonl").read_text())
    rows = (S.ADI / "qrels" / "test.tsv").read_text().splitlines()
    head, body = (rows[0] + "\n", rows[1:]) if not rows[0].split("\t")[-1].strip().isdigit() else ("", rows)
    qids = list(dict.fromkeys(r.split("\t")[0] for r in body))
    zero = set(qids[:5])
    (folder / "qrels" / "test.tsv").write_text(head + "".join(
        ("\t".join(r.split("\t")[:2] + ["0"]) if r.split("\t")[0] in zero else r) + "\n" for r in body))

    def check(**qs):
        cfg = _config(frozen["root"], frozen["teacher"], output=str(tmp_path / "s"), collection=str(folder),
                      query_side={"documents": str(frozen["store"]), **qs})
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        out = CliRunner().invoke(_app(), ["student", "train", str(tmp_path / "c.yaml"), "--check"])
        assert out.exit_code == 0, out.output
        return json.loads(out.output)["data"]

    d = check()
    assert d["queries"] == 30 and d["unlabeled"] == 0  # only queries with a positive are training queries
    d = check(unlabeled=True)
    assert d["queries"] == 35 and d["unlabeled"] == 5 and d["dropped"]["no_positive"] == 0
    assert d["candidates_per_query"] == pytest.approx(15.0)  # the unlabeled ones keep their teacher lists


def test_a_query_side_student_as_a_bi_encoder_teachers_query_model(frozen, tmp_path, caplog):
    """A born-again teacher: the student's queries over the init's document vectors, the pair the
    student was trained as; the student as `model` (documents), or with another document
    model, is refused."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.index.manifest import EncoderMismatchError
    from retrieval_distill.teachers.base import build_teacher

    coll = load_collection(S.ADI, split="test")
    qid = next(iter(coll.queries))
    docids = list(coll.corpus)[:4]
    t = build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"query_model": str(frozen["student"])}})
    got = t.score_ids([qid] * 4, [coll.queries[qid]] * 4, docids, [coll.doc_text(d) for d in docids])
    q = SentenceTransformer(str(frozen["student"])).encode([coll.queries[qid]], normalize_embeddings=True)
    d = S.encoder().doc_model.encode([coll.doc_text(x) for x in docids], normalize_embeddings=True)
    np.testing.assert_allclose(got, (d @ q[0]).astype(np.float32), atol=1e-5)
    plain = build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"})
    assert t.fingerprint != plain.fingerprint  # the score file tells the two teachers apart
    # scoring the student's own training queries (its trained.qids: all 35) works, with a warning
    import logging

    from retrieval_distill.teachers.scoring import score_candidates

    (tmp_path / "cands.txt").write_text(f"{qid} {docids[0]}\n")
    with caplog.at_level(logging.WARNING, logger="retrieval_distill.teachers.bi_encoder"):
        m = score_candidates(t, tmp_path / "cands.txt", coll.queries, coll.doc_text, tmp_path / "s", progress=False)
    assert m["complete"] and f"1 of the 1 queries to score are in the trained.qids of its model or query_model (e.g. '{qid}')" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="retrieval_distill.teachers.bi_encoder"):
        score_candidates(plain, tmp_path / "cands.txt", coll.queries, coll.doc_text, tmp_path / "s-plain", progress=False)
    assert "trained.qids" not in caplog.text  # the init lists no training queries
    with pytest.raises(EncoderMismatchError, match="is a query-side student"):
        build_teacher({"kind": "bi_encoder", "model": str(frozen["student"])})
    other = tmp_path / "other"
    shutil.copytree(frozen["student"], other)
    (other / "training_card.json").unlink()
    with pytest.raises(EncoderMismatchError, match="was trained against documents encoded by 'all-MiniLM-L6-v2'"):
        build_teacher({"kind": "bi_encoder", "model": str(other), "options": {"query_model": str(frozen["student"])}})


def _fold_student(frozen, folder, qids):
    """The fixture's student (trained on all 35 ADI queries) as a fold student that says it
    trained on ``qids`` only: its files linked, its own ``trained.qids`` rewritten."""
    folder.mkdir()
    for f in frozen["student"].iterdir():
        if f.name != "trained.qids":
            (folder / f.name).symlink_to(f)
    (folder / "trained.qids").write_text("".join(q + "\n" for q in qids))
    return folder


def test_a_cross_fit_teacher_scores_each_query_with_the_students_that_did_not_train_on_it(frozen, tmp_path):
    """`cross_fit`: query q gets the mean cosine of the students whose trained_qids lack q. Two
    query encoders here, the student (said to have trained on qids A) and the init (on B):
    A's queries are scored by the init alone, B's by the student alone, the rest by both."""
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.teachers.base import build_teacher

    coll = load_collection(S.ADI, split="test")
    qids = list(coll.queries)
    a, b, rest = qids[:2], qids[2:4], qids[4:6]
    (tmp_path / "a.qids").write_text("".join(q + "\n" for q in a))
    (tmp_path / "b.qids").write_text("".join(f"{q} extra-column\n" for q in b))
    student_a = _fold_student(frozen, tmp_path / "student-a", a)
    folds = [{"query_model": str(student_a), "trained_qids": str(tmp_path / "a.qids")},
             {"query_model": "all-MiniLM-L6-v2", "trained_qids": str(tmp_path / "b.qids")}]
    t = build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"cross_fit": folds}})
    docids = list(coll.corpus)[:3]
    pairs = [(q, d) for q in a + b + rest for d in docids]
    got = t.score_ids([q for q, _ in pairs], [coll.queries[q] for q, _ in pairs], [d for _, d in pairs],
                      [coll.doc_text(d) for _, d in pairs]).reshape(6, 3)
    texts = [coll.queries[q] for q in a + b + rest]
    student = S.encoder().doc_model.__class__(str(frozen["student"])).encode(texts, normalize_embeddings=True)
    init = S.encoder().doc_model.encode(texts, normalize_embeddings=True)
    docs = S.encoder().doc_model.encode([coll.doc_text(d) for d in docids], normalize_embeddings=True)
    np.testing.assert_allclose(got[:2], init[:2] @ docs.T, atol=1e-5)  # A: the student trained on them
    np.testing.assert_allclose(got[2:4], student[2:4] @ docs.T, atol=1e-5)  # B: the init "trained" on them
    np.testing.assert_allclose(got[4:], (student[4:] @ docs.T + init[4:] @ docs.T) / 2, atol=1e-5)
    # another fold file is another teacher
    (tmp_path / "b2.qids").write_text("".join(q + "\n" for q in b + rest[:1]))
    other = build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"cross_fit": [
        folds[0], {**folds[1], "trained_qids": str(tmp_path / "b2.qids")}]}})
    assert other.fingerprint != t.fingerprint
    with pytest.raises(ValueError, match="scores by qid"):
        t.score([coll.queries[a[0]]], [coll.doc_text(docids[0])])
    (tmp_path / "ab.qids").write_text("".join(q + "\n" for q in a + b))
    both = build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"cross_fit": [
        folds[0], {**folds[1], "trained_qids": str(tmp_path / "ab.qids")}]}})
    with pytest.raises(ValueError, match=f"query '{a[0]}' is in every cross_fit student's trained_qids"):
        both.score_ids([a[0]], [coll.queries[a[0]]], docids[:1], [coll.doc_text(docids[0])])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"cross_fit": [
            folds[0], {**folds[1], "trained_qids": str(tmp_path / "nope.qids")}]}})
    with pytest.raises(ValueError, match="at least 2"):
        build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"cross_fit": folds[:1]}})


def test_a_cross_fit_student_names_its_own_training_queries_and_a_wrong_fold_file_is_refused(frozen, tmp_path):
    """A student's ``trained.qids`` (written by ``rd student train``) stands in for a left-out
    ``trained_qids``, and is checked against a given one: a fold file that misses a query the
    student trained on would let the teacher score that query with a student fit to its qrels.
    A query every student trained on is refused by the scoring job before it writes anything."""
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.teachers.base import build_teacher
    from retrieval_distill.teachers.scoring import score_candidates

    coll = load_collection(S.ADI, split="test")
    qids = list(coll.queries)
    a, b = qids[:2], qids[2:4]
    student_a = str(_fold_student(frozen, tmp_path / "student-a", a))
    (tmp_path / "b.qids").write_text("".join(q + "\n" for q in b))
    (tmp_path / "a.qids").write_text("".join(q + "\n" for q in a))
    (tmp_path / "a+.qids").write_text("".join(q + "\n" for q in a + qids[4:6]))
    fold_b = {"query_model": "all-MiniLM-L6-v2", "trained_qids": str(tmp_path / "b.qids")}

    def build(*folds):
        return build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"cross_fit": list(folds)}})

    own = build({"query_model": student_a}, fold_b)
    given = build({"query_model": student_a, "trained_qids": str(tmp_path / "a.qids")}, fold_b)
    assert own.folds[0]["trained"] == set(a) and own.folds[0]["fingerprint"] == given.folds[0]["fingerprint"]
    # a superset is safe (the student just scores fewer queries): accepted
    assert build({"query_model": student_a, "trained_qids": str(tmp_path / "a+.qids")}, fold_b).folds[0]["trained"] == set(a + qids[4:6])
    with pytest.raises(ValueError, match=rf"trained on 2 queries that its trained_qids .*b.qids' does not list \(e.g. \['{a[0]}'"):
        build({"query_model": student_a, "trained_qids": str(tmp_path / "b.qids")}, fold_b)
    with pytest.raises(ValueError, match=r"cross_fit\[1\] has no trained_qids, and 'all-MiniLM-L6-v2' has no trained.qids"):
        build({"query_model": student_a}, {"query_model": "all-MiniLM-L6-v2"})
    with pytest.raises(ValueError, match="must have the key query_model"):
        build({"query_model": student_a}, {"trained_qids": str(tmp_path / "b.qids")})
    # a query both students trained on: refused before the score folder exists
    both = build({"query_model": student_a}, {"query_model": "all-MiniLM-L6-v2", "trained_qids": str(tmp_path / "a+.qids")})
    (tmp_path / "cands.txt").write_text(f"{qids[5]} {next(iter(coll.corpus))}\n{a[1]} {next(iter(coll.corpus))}\n")
    with pytest.raises(ValueError, match=f"query '{a[1]}' is in every cross_fit student's trained_qids \\(1 such"):
        score_candidates(both, tmp_path / "cands.txt", coll.queries, coll.doc_text, tmp_path / "scores", progress=False)
    assert not (tmp_path / "scores").exists()


def test_a_malformed_cross_fit_or_a_query_encoder_of_another_dimension_is_refused_when_built(frozen, tmp_path):
    """Refused at construction, not silently accepted or left to fail mid-scoring: an empty
    ``cross_fit`` (which read as "no cross-fitting" and gave a plain teacher), a qids file that
    is empty or a folder, and a query encoder (query_model or fold student) without a card
    whose dimension is not the documents'; a BOM in a qids file is not part of the first qid
    (read as part of it, the student that trained on that query would score it)."""
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.index.manifest import EncoderMismatchError
    from retrieval_distill.teachers.base import build_teacher

    coll = load_collection(S.ADI, split="test")
    qids = list(coll.queries)
    (tmp_path / "a.qids").write_text("".join(q + "\n" for q in qids[:2]))
    (tmp_path / "b.qids").write_text("".join(q + "\n" for q in qids[2:4]))
    folds = [{"query_model": str(_fold_student(frozen, tmp_path / "student-a", qids[:2])), "trained_qids": str(tmp_path / "a.qids")},
             {"query_model": "all-MiniLM-L6-v2", "trained_qids": str(tmp_path / "b.qids")}]

    def build(**opts):
        return build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": opts})

    for empty in ([], {}, False, ""):
        with pytest.raises(ValueError, match="at least 2"):
            build(cross_fit=empty)
    (tmp_path / "none.qids").write_text("\n  \n")
    with pytest.raises(ValueError, match="lists no qids"):
        build(cross_fit=[folds[0], {**folds[1], "trained_qids": str(tmp_path / "none.qids")}])
    (tmp_path / "dir.qids").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        build(cross_fit=[folds[0], {**folds[1], "trained_qids": str(tmp_path / "dir.qids")}])
    with pytest.raises(EncoderMismatchError, match=r"cross_fit\[1\].query_model 'all-mpnet-base-v2' gives 768-dim"):
        build(cross_fit=[folds[0], {**folds[1], "query_model": "all-mpnet-base-v2"}])
    with pytest.raises(EncoderMismatchError, match="query_model 'all-mpnet-base-v2' gives 768-dim"):
        build(query_model="all-mpnet-base-v2")
    # a BOM: the first qid is still the student's, so the init alone scores it
    (tmp_path / "a-bom.qids").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "a.qids").read_bytes())
    docids = list(coll.corpus)[:3]
    args = ([qids[0]] * 3, [coll.queries[qids[0]]] * 3, docids, [coll.doc_text(d) for d in docids])
    bom = build(cross_fit=[{**folds[0], "trained_qids": str(tmp_path / "a-bom.qids")}, folds[1]])
    np.testing.assert_allclose(bom.score_ids(*args), build().score_ids(*args), atol=1e-6)


def test_a_cross_fit_student_named_with_a_home_path_still_uses_its_own_trained_qids(frozen, tmp_path, monkeypatch):
    """``~/student`` loads the student (the model resolver expands ``~``), so its own
    ``trained.qids`` (and card) must be read from that same folder: read from the literal path
    ``~/student`` it was missed, a left-out trained_qids was refused as "has no trained.qids"
    and a given fold file of another student was silently accepted."""
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.teachers.base import build_teacher

    monkeypatch.setenv("HOME", str(tmp_path))
    qids = list(load_collection(S.ADI, split="test").queries)
    a, b = qids[:2], qids[2:4]
    _fold_student(frozen, tmp_path / "student-a", a)
    (tmp_path / "b.qids").write_text("".join(q + "\n" for q in b))
    fold_b = {"query_model": "all-MiniLM-L6-v2", "trained_qids": str(tmp_path / "b.qids")}

    def build(*folds):
        return build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"cross_fit": list(folds)}})

    assert build({"query_model": "~/student-a"}, fold_b).folds[0]["trained"] == set(a)
    with pytest.raises(ValueError, match=r"trained on 2 queries that its trained_qids .*b.qids' does not list"):
        build({"query_model": "~/student-a", "trained_qids": str(tmp_path / "b.qids")}, fold_b)


def test_a_student_initialised_from_a_student_lists_the_inits_training_queries_too(frozen, tmp_path):
    """A student trained from another student's weights (``train.init``) is also fit to the
    queries that student trained on: its ``trained.qids`` must list them, or a ``cross_fit``
    teacher would score them with it."""
    cfg = _config(frozen["root"], frozen["teacher"], output=str(tmp_path / "student2"), dev=None,
                  qids_file=str(tmp_path / "few.qids"))
    from retrieval_distill.data.collections import load_collection

    judged = load_collection(S.ADI, split="test").judged_qids()
    (tmp_path / "few.qids").write_text("".join(q + "\n" for q in judged[:4]))
    cfg["train"] = {**cfg["train"], "init": str(frozen["student"]), "epochs": 1}
    (tmp_path / "qs.yaml").write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(_app(), ["student", "train", str(tmp_path / "qs.yaml")])
    assert out.exit_code == 0, out.output
    trained = (tmp_path / "student2" / "trained.qids").read_text().split()
    assert set(trained) == set(judged)  # the init (the fixture's student) trained on all 35
    card = json.loads((tmp_path / "student2" / "training_card.json").read_text())
    assert card["trained_qids"]["count"] == len(judged)
    # an init student that does not list its queries: unknown, so no list rather than a short one
    old = tmp_path / "old-student"
    old.mkdir()
    for f in frozen["student"].iterdir():
        if f.name != "trained.qids":
            (old / f.name).symlink_to(f)
    cfg["train"]["init"], cfg["output"] = str(old), str(tmp_path / "student3")
    (tmp_path / "qs.yaml").write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(_app(), ["student", "train", str(tmp_path / "qs.yaml")])
    assert out.exit_code == 0, out.output
    assert not (tmp_path / "student3" / "trained.qids").exists()
    assert json.loads((tmp_path / "student3" / "training_card.json").read_text())["trained_qids"] is None
    # a training checkpoint (<output>.ckpt/checkpoint-N: trainer_state.json, no card) is no less trained
    ckpt = tmp_path / "student.ckpt" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    for f in frozen["student"].iterdir():
        if f.name not in ("trained.qids", "training_card.json"):
            (ckpt / f.name).symlink_to(f)
    (ckpt / "trainer_state.json").write_text("{}")
    cfg["train"]["init"], cfg["output"] = str(ckpt), str(tmp_path / "student4")
    (tmp_path / "qs.yaml").write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(_app(), ["student", "train", str(tmp_path / "qs.yaml")])
    assert out.exit_code == 0, out.output
    assert not (tmp_path / "student4" / "trained.qids").exists()
    from retrieval_distill.teachers.base import build_teacher

    (tmp_path / "b.qids").write_text(judged[5] + "\n")
    with pytest.raises(ValueError, match=r"has no trained.qids \(init .*old-student' is a trained student without trained.qids"):
        build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"cross_fit": [
            {"query_model": str(tmp_path / "student3")}, {"query_model": "all-MiniLM-L6-v2", "trained_qids": str(tmp_path / "b.qids")}]}})


def test_a_cross_fit_teacher_refuses_the_queries_its_document_model_trained_on(frozen, tmp_path):
    """A document ``model`` that is itself a student (its ``trained.qids``) was fit to those
    queries' qrels: scoring them against its documents is not out of fold, whichever query
    student scores them. Refused, by the scoring job before it writes anything."""
    import os
    import shutil

    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.models.resolve import resolve_model
    from retrieval_distill.teachers.base import build_teacher
    from retrieval_distill.teachers.scoring import score_candidates

    coll = load_collection(S.ADI, split="test")
    qids = list(coll.queries)
    a, b, rest = qids[:2], qids[2:4], qids[4:6]
    # the document model: all-MiniLM-L6-v2's weights (same fingerprint) in a folder that says it trained on `rest`
    docs = tmp_path / "doc-student"
    shutil.copytree(resolve_model("all-MiniLM-L6-v2"), docs, copy_function=os.symlink)
    (docs / "trained.qids").write_text("".join(q + "\n" for q in rest))
    (tmp_path / "b.qids").write_text("".join(q + "\n" for q in b))
    t = build_teacher({"kind": "bi_encoder", "model": str(docs), "options": {"cross_fit": [
        {"query_model": str(_fold_student(frozen, tmp_path / "student-a", a))},
        {"query_model": "all-MiniLM-L6-v2", "trained_qids": str(tmp_path / "b.qids")}]}})
    d = next(iter(coll.corpus))
    assert t.score_ids([a[0]], [coll.queries[a[0]]], [d], [coll.doc_text(d)]).shape == (1,)
    with pytest.raises(ValueError, match=f"query '{rest[0]}' is in the trained.qids of the document `model`"):
        t.score_ids([rest[0]], [coll.queries[rest[0]]], [d], [coll.doc_text(d)])
    (tmp_path / "cands.txt").write_text(f"{a[0]} {d}\n{rest[1]} {d}\n")
    with pytest.raises(ValueError, match=f"query '{rest[1]}' is in the trained.qids of the document `model`"):
        score_candidates(t, tmp_path / "cands.txt", coll.queries, coll.doc_text, tmp_path / "scores", progress=False)
    assert not (tmp_path / "scores").exists()


def test_a_two_tower_student_is_refused_as_a_cross_fit_student(frozen, tmp_path):
    """``rd student train`` writes trained.qids for two-tower students too, so such a folder fits
    a ``cross_fit`` entry without trained_qids; but its query vectors belong with its own
    document tower, and scored against ``model``'s documents the teacher's scores were silently
    neither the student's nor the model's. Refused when built."""
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.index.manifest import EncoderMismatchError
    from retrieval_distill.teachers.base import build_teacher

    qids = list(load_collection(S.ADI, split="test").queries)
    # the fixture's weights with a two-tower card (no `mode: query_side`)
    tt = tmp_path / "two-tower"
    tt.mkdir()
    for f in frozen["student"].iterdir():
        if f.name not in ("trained.qids", "training_card.json"):
            (tt / f.name).symlink_to(f)
    card = json.loads((frozen["student"] / "training_card.json").read_text())
    card.pop("mode"), card.pop("document_encoder")
    (tt / "training_card.json").write_text(json.dumps(card))
    (tt / "trained.qids").write_text("".join(q + "\n" for q in qids[:2]))
    (tmp_path / "b.qids").write_text("".join(q + "\n" for q in qids[2:4]))
    fold_b = {"query_model": "all-MiniLM-L6-v2", "trained_qids": str(tmp_path / "b.qids")}
    with pytest.raises(EncoderMismatchError, match=r"cross_fit\[0\].query_model .*two-tower' is a two-tower student"):
        build_teacher({"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"cross_fit": [{"query_model": str(tt)}, fold_b]}})
    # with its own document tower as `model` (the same weights), it is accepted
    (tmp_path / "ab.qids").write_text("".join(q + "\n" for q in qids[:4]))
    t = build_teacher({"kind": "bi_encoder", "model": str(tt), "options": {"cross_fit": [
        {"query_model": str(tt)}, {"query_model": str(tt), "trained_qids": str(tmp_path / "ab.qids")}]}})
    assert [f["trained"] for f in t.folds] == [set(qids[:2]), set(qids[:4])]


def test_leaf_and_corpus_kl_read_the_document_encoders_query_vectors_once(frozen, tmp_path, caplog):
    """The ``leaf`` / ``corpus_kl`` targets are the document encoder's own query vectors
    (all-MiniLM-L6-v2 here), cached in
    ``query_side.teacher_queries`` and reused by a second job (its baseline) without encoding;
    a cache of other texts is encoded again, and documents of other weights are refused."""
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.distill.query_side import document_encoder_queries, load_documents
    from retrieval_distill.models.encoder import Encoder

    cache = tmp_path / "tq.npz"
    cfg = _config(frozen["root"], frozen["teacher"], output=str(tmp_path / "leaf"), dev=None)
    cfg["query_side"]["teacher_queries"] = str(cache)
    cfg["train"].update({"epochs": 1, "losses": [{"name": "leaf"}, {"name": "corpus_kl", "weight": 0.5}]})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(_app(), ["student", "train", str(tmp_path / "c.yaml")])
    assert out.exit_code == 0, out.output
    card = json.loads((tmp_path / "leaf" / "training_card.json").read_text())
    assert card["teacher_queries"]["encoded"] == 35 and card["teacher_queries"]["encoder"] == "all-MiniLM-L6-v2"
    assert "teacher" not in card and "2509.12539" in card["loss_citations"]["leaf"]
    coll = load_collection(S.ADI, split="test")
    texts = [coll.queries[q] for q in coll.judged_qids()]
    docs = load_documents(frozen["store"])
    vec, info = document_encoder_queries(docs, texts, cache)
    assert info["encoded"] == 0  # from the cache
    want = Encoder("all-MiniLM-L6-v2", show_progress=False).encode_queries(texts)
    assert vec.shape == (35, 384) and np.abs(vec - want).max() < 1e-5
    # the baseline names the same cache: nothing encoded again
    cfg.update(output=str(tmp_path / "base"))
    cfg["train"]["losses"] = [{"name": "corpus_infonce"}]
    cfg["query_side"].update(projection="always")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(_app(), ["student", "train", str(tmp_path / "b.yaml")])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "base" / "training_card.json").read_text())["teacher_queries"]["encoded"] == 0
    # other texts: encoded again, with a warning, and the cache rewritten
    with caplog.at_level("WARNING"):
        _, info = document_encoder_queries(docs, texts[:3], cache, show_progress=False)
    assert info["encoded"] == 3 and "another set of query vectors" in caplog.text
    # documents whose recorded weights are not what the name resolves to here
    docs.key = {**docs.key, "encoder_fingerprint": "0" * 16}
    with pytest.raises(ValueError, match="resolves to weights"):
        document_encoder_queries(docs, texts, None)


def test_a_cross_fit_student_does_not_score_the_twin_of_a_query_it_trained_on(frozen, tmp_path):
    """A query whose text is that of a query a fold student trained on (a twin under another
    qid, as SciFact's train claims 85 and 86) is scored out of that fold, through the scoring
    job (which gives the teacher every query's text) and through score_ids alone; twins in
    every fold are refused before anything is written."""
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.teachers.base import build_teacher
    from retrieval_distill.teachers.scoring import read_scores, score_candidates

    coll = load_collection(S.ADI, split="test")
    qids = list(coll.queries)
    a, b = qids[:2], qids[2:4]
    (tmp_path / "a.qids").write_text("".join(q + "\n" for q in a))
    (tmp_path / "b.qids").write_text("".join(q + "\n" for q in b))
    student_a = _fold_student(frozen, tmp_path / "student-a", a)
    folds = [{"query_model": str(student_a), "trained_qids": str(tmp_path / "a.qids")},
             {"query_model": "all-MiniLM-L6-v2", "trained_qids": str(tmp_path / "b.qids")}]
    spec = {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"cross_fit": folds}}
    # "twin" has a[0]'s text (other case and spacing); "free" is a new text nobody trained on
    queries = {**coll.queries, "twin": "  " + coll.queries[a[0]].upper(), "free": "automatic indexing of documents"}
    docids = list(coll.corpus)[:3]
    (tmp_path / "c.txt").write_text("".join(f"{q} {d}\n" for q in ("twin", "free") for d in docids))
    score_candidates(spec, tmp_path / "c.txt", queries, coll.doc_text, tmp_path / "scores", progress=False)
    df = read_scores(tmp_path / "scores")
    got = {(q, d): s for q, d, s in zip(df["qid"], df["docid"], df["score"])}
    init, student = S.encoder().doc_model, S.encoder().doc_model.__class__(str(frozen["student"]))
    docs = init.encode([coll.doc_text(d) for d in docids], normalize_embeddings=True)
    twin_init = init.encode([queries["twin"]], normalize_embeddings=True) @ docs.T
    free = (init.encode([queries["free"]], normalize_embeddings=True) @ docs.T
            + student.encode([queries["free"]], normalize_embeddings=True) @ docs.T) / 2
    np.testing.assert_allclose([got[("twin", d)] for d in docids], twin_init[0], atol=1e-5)  # fold B alone
    np.testing.assert_allclose([got[("free", d)] for d in docids], free[0], atol=1e-5)  # both folds
    # score_ids without the scoring job: the twin is found among the texts scored in the call
    t = build_teacher(spec)
    direct = t.score_ids([a[0], "twin"], [coll.queries[a[0]], queries["twin"]], docids[:2], [coll.doc_text(d) for d in docids[:2]])
    np.testing.assert_allclose(direct[1], twin_init[0][1], atol=1e-5)
    # a twin in every fold: refused before the score folder exists
    (tmp_path / "b2.qids").write_text("".join(q + "\n" for q in b + ["twin"]))
    every = {**spec, "options": {"cross_fit": [folds[0], {**folds[1], "trained_qids": str(tmp_path / "b2.qids")}]}}
    (tmp_path / "c2.txt").write_text(f"{a[0]} {docids[0]}\n")
    with pytest.raises(ValueError, match=r"in every cross_fit student's trained_qids \(or a query of the same text\)"):
        score_candidates(every, tmp_path / "c2.txt", queries, coll.doc_text, tmp_path / "scores2", progress=False)
    assert not (tmp_path / "scores2").exists()
