"""`rd student train CONFIG` on ADI: synthetic queries only -> BM25 candidates -> BM25 teacher
scores (the real scoring job) -> a LEAF-aligned + margin-MSE student evaluated on ADI's real
queries with documents by the embedding teacher (the asymmetric pair); plus the refusals."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import ADI
from retrieval_distill.data.collections import load_collection


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Synthetic ADI queries, their BM25 top-15 + positives as candidates, scored by BM25."""
    from retrieval_distill.distill.synth import synth_corpus
    from retrieval_distill.search.bm25 import BM25Searcher, build_bm25_index
    from retrieval_distill.teachers.scoring import score_candidates

    root = tmp_path_factory.mktemp("student")
    synth = root / "synth"
    synth_corpus(ADI, synth, seed=13, kinds=["title", "keywords"], max_docs=40)
    coll = load_collection(synth, split="train")
    index = build_bm25_index(coll, root / "bm25")
    hits = BM25Searcher(index).batch_search(coll.queries, k=15)
    lines = []
    for q, hs in hits.items():
        docs = [h.docid for h in hs] + [d for d in coll.qrels[q] if d not in {h.docid for h in hs}]
        lines += [f"{q} {d}" for d in docs]
    (root / "cands.txt").write_text("\n".join(lines) + "\n")
    # a second candidates file without the positives: those queries cannot be trained on
    pos = {(q, d) for q, r in coll.qrels.items() for d in r}
    (root / "cands-nopos.txt").write_text("\n".join(ln for ln in lines if tuple(ln.split()) not in pos) + "\n")
    teacher = {"kind": "bm25", "name": "bm25", "options": {"index": str(index)}}
    texts = {d: coll.doc_text(d) for d in coll.corpus}
    score_candidates(teacher, root / "cands.txt", coll.queries, texts, root / "scores", progress=False)
    score_candidates(teacher, root / "cands-nopos.txt", coll.queries, texts, root / "scores-nopos", progress=False)
    return {"root": root, "synth": synth, "teacher": teacher}


def _config(scored, tmp_path, **over):
    cfg = {
        "collection": str(scored["synth"]),
        "split": "train",
        "candidates": str(scored["root"] / "cands.txt"),
        "scores": str(scored["root"] / "scores"),
        "teacher": scored["teacher"],
        "output": str(tmp_path / "student"),
        "max_examples": 20,
        "train": {
            "losses": [{"name": "margin_mse", "options": {"teacher_scale": 0.05}}],
            "epochs": 1,
            "batch_size": 4,
            "max_seq_length": 64,
            "save_steps": 1000,
        },
    }
    cfg.update(over)
    p = tmp_path / "student.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _rd(*args):
    from retrieval_distill.cli import app

    return CliRunner().invoke(app, list(map(str, args)))


def test_train_leaf_aligned_student_on_synthetic_queries(scored, tmp_path):
    from sentence_transformers import SentenceTransformer

    from retrieval_distill.models.encoder import Encoder

    cfg = _config(
        scored,
        tmp_path,
        train={
            "losses": [
                {"name": "margin_mse", "weight": 1.0, "options": {"teacher_scale": 0.05}},
                {"name": "leaf", "weight": 1.0, "options": {"objective": "cosine"}},
            ],
            "epochs": 1,
            "batch_size": 4,
            "max_seq_length": 64,
            "save_steps": 1000,
        },
        leaf={"teacher_model": "all-mpnet-base-v2", "columns": ["query"]},
        dev={"collection": str(ADI), "split": "test", "doc_model": "all-mpnet-base-v2", "metrics": ["ndcg@10", "recall@100"]},
    )
    r = _rd("student", "train", cfg)
    assert r.exit_code == 0, r.output
    out = tmp_path / "student"
    card = json.loads((out / "training_card.json").read_text())
    assert card["teacher"]["name"] == "bm25" and card["teacher"]["fingerprint"]
    assert card["data"]["examples"] == 20 and card["steps"] == 5
    trained = (out / "trained.qids").read_text().split()  # the queries with an example, for a cross_fit teacher
    # max_examples: 20 keeps 20 of the examples of 80 queries, so at most 20 queries were trained on
    assert 0 < card["trained_qids"]["count"] == len(trained) == len(set(trained)) <= 20 < card["data"]["queries"]
    assert card["leaf"]["teacher_dim"] == 768 and card["leaf"]["projection_init"]["texts"] == 20
    assert [s["name"] for s in card["losses"]] == ["margin_mse", "leaf"]
    # the projection lives in the model folder: SentenceTransformer(path) gives 768-d vectors
    # in mpnet's space
    student = SentenceTransformer(str(out), device="cpu")
    assert student.get_embedding_dimension() == 768
    assert (out / "3_Dense").is_dir() and (out / "4_Normalize").is_dir()
    adi = load_collection(ADI, split="test")
    real = list(adi.queries.values())  # held out: training saw only synthetic queries
    mpnet = Encoder("all-mpnet-base-v2", show_progress=False).encode_queries(real)
    mine = student.encode(real, convert_to_numpy=True, normalize_embeddings=True)
    cos = (mine * mpnet).sum(1)
    # aligned on 20 synthetic queries only, yet it points into mpnet's space on real queries
    assert cos.mean() > 0.3, cos.mean()
    # dev metrics of the asymmetric pair (student queries, mpnet documents) on ADI's real queries
    dev = card["dev_metrics"]
    assert dev["doc_model"] == "all-mpnet-base-v2" and dev["n_judged"] == 35
    assert 0.0 < dev["overall"]["ndcg@10"] <= 1.0
    print("LEAF student (asymmetric, ADI test):", dev["overall"], "mean cos to mpnet:", float(cos.mean()))


def test_refuses_scores_of_another_teacher(scored, tmp_path):
    other = {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "name": "minilm"}
    r = _rd("student", "train", _config(scored, tmp_path, teacher=other))
    assert r.exit_code == 2
    assert "another teacher" in r.output and "'bm25' != 'minilm'" in r.output
    assert not (tmp_path / "student").exists()
    # same name but other options (another index) is another teacher too
    spec = dict(scored["teacher"], options={"index": "/elsewhere"})
    r = _rd("student", "train", _config(scored, tmp_path, teacher=spec))
    assert r.exit_code == 2 and "spec differs in ['options']" in r.output
    # the name alone is accepted; a wrong fingerprint is not
    r = _rd("student", "train", _config(scored, tmp_path, teacher="bm25", teacher_fingerprint="0123456789abcdef"))
    assert r.exit_code == 2 and "fingerprint" in r.output


def test_check_mode_and_bad_training_sets(scored, tmp_path):
    r = _rd("student", "train", _config(scored, tmp_path, teacher="bm25"), "--check")
    assert r.exit_code == 0, r.output
    facts = json.loads(r.output)
    assert facts["teacher"]["name"] == "bm25" and facts["data"]["examples"] == 20
    # candidates scored without their positives: a clear error, nothing trained
    nopos = _config(scored, tmp_path, candidates=str(scored["root"] / "cands-nopos.txt"), scores=str(scored["root"] / "scores-nopos"))
    r = _rd("student", "train", nopos)
    assert r.exit_code == 2 and "has no teacher score" in r.output, r.output
    # an empty training set
    qf = tmp_path / "qids.txt"
    qf.write_text("")
    r = _rd("student", "train", _config(scored, tmp_path, qids_file=str(qf)))
    assert r.exit_code == 2 and "no candidates for any of the 0 training queries" in r.output
    # unknown qids in the qids file
    qf.write_text("no-such-qid\n")
    r = _rd("student", "train", _config(scored, tmp_path, qids_file=str(qf)))
    assert r.exit_code == 2 and "not in" in r.output
    # a leaf section without a leaf loss, and an invalid config
    r = _rd("student", "train", _config(scored, tmp_path, leaf={"teacher_model": "all-mpnet-base-v2"}), "--check")
    assert r.exit_code == 0  # --check validates the data only
    bad = tmp_path / "bad.yaml"
    bad.write_text("collection: x\n")
    r = _rd("student", "train", bad)
    assert r.exit_code == 2 and "output" in r.output and "Field required" in r.output
    bad.write_text(f"collection: x\noutput: {tmp_path / 'student'}\n")
    r = _rd("student", "train", bad)
    assert r.exit_code == 2 and "mode two_tower needs candidates, scores, teacher" in r.output, r.output
    assert not (tmp_path / "student").exists()


def test_dev_ndcg_evaluated_each_epoch(scored, tmp_path):
    """dev.each_epoch: sentence-transformers' IR evaluator runs on the init and after each of 2
    epochs; the card's figures equal a fresh evaluation of the saved model on the same dev set."""
    from sentence_transformers import SentenceTransformer

    from retrieval_distill.distill.job import DevSpec, dev_evaluator

    dev = {"collection": str(ADI), "split": "test", "each_epoch": True, "metrics": ["ndcg@10"]}
    cfg = _config(
        scored,
        tmp_path,
        max_examples=8,
        dev=dev,
        train={"losses": [{"name": "margin_mse", "options": {"teacher_scale": 0.05}}], "epochs": 2, "batch_size": 4,
               "max_seq_length": 64, "save_steps": 1000},
    )
    r = _rd("student", "train", cfg)
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "student" / "training_card.json").read_text())
    per = card["dev_per_epoch"]
    key = card["dev_primary_metric"]
    assert key == "dev_cosine_ndcg@10"
    assert [e["epoch"] for e in per] == [0.0, 1.0, 2.0] and [e["step"] for e in per] == [0, 2, 4]
    assert all(0.0 < e[key] <= 1.0 for e in per)
    # the init figure is all-MiniLM-L6-v2's own on ADI, the last one the saved student's
    ev = dev_evaluator(DevSpec(**dev))
    from retrieval_distill.models import load_sentence_transformer

    init_model = load_sentence_transformer("all-MiniLM-L6-v2")
    init_model.max_seq_length = 64  # the training config's
    init = ev(init_model)
    assert init[key] == pytest.approx(per[0][key], abs=1e-6)
    final = ev(SentenceTransformer(str(tmp_path / "student"), device="cpu"))
    assert final[key] == pytest.approx(per[-1][key], abs=1e-4)
    # final dev metrics (ranx, exhaustive FAISS search) agree with the evaluator's last epoch
    assert card["dev_metrics"]["overall"]["ndcg@10"] == pytest.approx(per[-1][key], abs=2e-3)


def test_dev_keep_best_saves_the_best_epoch(scored, tmp_path):
    """dev.keep: best: the saved student is the epoch with the highest dev nDCG@10 (not the
    init), the card names it, and a fresh evaluation of the folder reproduces its figure."""
    from sentence_transformers import SentenceTransformer

    from retrieval_distill.distill.job import DevSpec, dev_evaluator

    dev = {"collection": str(ADI), "split": "test", "each_epoch": True, "keep": "best", "metrics": ["ndcg@10"]}
    cfg = _config(
        scored,
        tmp_path,
        max_examples=8,
        dev=dev,
        train={"losses": [{"name": "margin_mse", "options": {"teacher_scale": 0.05}}], "epochs": 3, "batch_size": 4,
               "max_seq_length": 64, "lr": 1e-4},
    )
    r = _rd("student", "train", cfg)
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "student" / "training_card.json").read_text())
    key = card["dev_primary_metric"]
    epochs = [e for e in card["dev_per_epoch"] if e["epoch"] > 0]
    assert [e["step"] for e in epochs] == [2, 4, 6]
    best = max(epochs, key=lambda e: e[key])
    assert card["dev_selected"] == best
    fresh = dev_evaluator(DevSpec(**dev))(SentenceTransformer(str(tmp_path / "student"), device="cpu"))
    assert fresh[key] == pytest.approx(best[key], abs=1e-4)
    assert not (tmp_path / "student.ckpt").exists()
    assert card["dev_per_epoch"][0]["epoch"] == 0.0  # the init figure is recorded, never selected
    # keep: best without per-epoch evaluation is refused before any training
    with pytest.raises(ValueError, match="each_epoch"):
        DevSpec(collection=str(ADI), keep="best")


def test_bad_dev_input_and_stale_checkpoints_refused_before_training(scored, tmp_path):
    """A missing or wrong dev qids file and a zero-epoch schedule fail before training (exit 2,
    no model folder); checkpoints left by a run with other settings are not resumed."""
    qids = tmp_path / "dev.qids"
    qids.write_text("1\nno-such-qid\n")
    for dev, err in [({"qids_file": str(tmp_path / "missing.qids")}, "qids file not found"),
                     ({"qids_file": str(qids)}, "not in")]:
        cfg = _config(scored, tmp_path, dev={"collection": str(ADI), "split": "test", **dev})
        for extra in ([], ["--check"]):
            r = _rd("student", "train", str(cfg), *extra)
            assert r.exit_code == 2 and err in r.output, r.output
        assert not (tmp_path / "student").exists()
    r = _rd("student", "train", str(_config(scored, tmp_path, train={"epochs": 0})))
    assert r.exit_code == 2 and "epochs" in r.output
    # a kill left checkpoints of a run with another learning rate: refused, named, kept
    ckpt = tmp_path / "student.ckpt"
    (ckpt / "checkpoint-2").mkdir(parents=True)
    cfg = _config(scored, tmp_path)
    from retrieval_distill.distill.job import load_job

    other = load_job(cfg).train.model_copy(update={"lr": 1e-3}).model_dump()
    (ckpt / "run.json").write_text(json.dumps({"config": other, "keep_best": False, "evaluator": None, "examples": "x"}))
    r = _rd("student", "train", str(cfg))
    assert r.exit_code == 2 and "config" in r.output and "examples" in r.output and str(ckpt) in r.output, r.output
    assert (ckpt / "checkpoint-2").is_dir() and not (tmp_path / "student").exists()


def test_leaf_targets_read_from_an_encoding_folder(adi, tmp_path):
    """leaf.embeddings: document texts take the folder's vectors (no encoding), texts it does
    not hold are encoded and counted, and a folder of other weights is refused."""
    from retrieval_distill.distill.job import _PreencodedDocuments
    from retrieval_distill.index.build import encode_corpus
    from retrieval_distill.models.encoder import Encoder

    enc = Encoder("all-MiniLM-L6-v2", show_progress=False)
    docids, emb = encode_corpus(enc, adi, tmp_path / "enc", shard_size=32, show_progress=False)
    pre = _PreencodedDocuments(enc, str(tmp_path / "enc"), adi)
    texts = [adi.doc_text(d) for d in docids[:5]]
    np.testing.assert_array_equal(pre.encode_documents(texts), emb[:5])
    assert pre.misses == 0
    new = "a passage that is not in the ADI corpus"
    out = pre.encode_documents([texts[0], new])
    np.testing.assert_array_equal(out[0], emb[0])
    np.testing.assert_allclose(out[1], enc.encode_documents([new])[0], atol=1e-6)
    assert pre.misses == 1
    with pytest.raises(ValueError, match="not by the LEAF teacher 'all-mpnet-base-v2'"):
        _PreencodedDocuments(Encoder("all-mpnet-base-v2", show_progress=False), str(tmp_path / "enc"), adi)


def test_ict_positives_replace_the_source_document(tmp_path):
    """An ICT synth folder: the training example's positive is the masked document from
    positives.jsonl (found through synth.json), the label keeps the teacher's score; a
    positives file naming a non-positive is refused with file:line."""
    from retrieval_distill.data.collections import DataFormatError
    from retrieval_distill.distill.job import StudentJob, prepare_examples
    from retrieval_distill.distill.synth import synth_corpus
    from retrieval_distill.search.bm25 import BM25Searcher, build_bm25_index
    from retrieval_distill.teachers.scoring import score_candidates

    synth = tmp_path / "ict"
    res = synth_corpus(ADI, synth, seed=13, kinds=["ict"], max_docs=20)
    coll = load_collection(synth, split="train")
    index = build_bm25_index(coll, tmp_path / "bm25")
    hits = BM25Searcher(index).batch_search(coll.queries, k=10)
    lines = [f"{q} {d}" for q, hs in hits.items() for d in dict.fromkeys([h.docid for h in hs] + list(coll.qrels[q]))]
    (tmp_path / "cands.txt").write_text("\n".join(lines) + "\n")
    teacher = {"kind": "bm25", "name": "bm25", "options": {"index": str(index)}}
    texts = {d: coll.doc_text(d) for d in coll.corpus}
    score_candidates(teacher, tmp_path / "cands.txt", coll.queries, texts, tmp_path / "scores", progress=False)
    job = StudentJob(collection=str(synth), candidates=str(tmp_path / "cands.txt"), scores=str(tmp_path / "scores"),
                     teacher=teacher, output=str(tmp_path / "out"), train={"n_negatives": 3, "negative_depth": 9})
    examples, facts = prepare_examples(job)
    assert facts["data"]["positive_texts"] == str(synth / "positives.jsonl")
    masked = {t for r in res.positive_texts.values() for t in r.values()}
    assert len(examples) == 20 and all(ex["positive"] in masked for ex in examples)
    sources = {coll.doc_text(d) for r in coll.qrels.values() for d in r}
    assert sum(ex["positive"] in sources for ex in examples) <= 4  # only the ~10% kept whole
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"qid": "synth-ict-1", "docid": "2", "text": "x"}) + "\n")
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1: \(synth-ict-1, 2\) is not a positive"):
        prepare_examples(job.model_copy(update={"positive_texts": str(bad)}))


def test_teacher_scale_auto(scored, tmp_path):
    """``teacher_scale: auto``: a teacher whose scores are 10 x the init's cosine + 3 gets
    scale 0.1 exactly (ratio of the median per-example spreads); the value is used for
    training and recorded in the card."""
    from retrieval_distill.distill.job import auto_teacher_scale, load_job, prepare_examples
    from retrieval_distill.models.encoder import Encoder

    examples, _ = prepare_examples(load_job(_config(scored, tmp_path, max_examples=12)))
    enc = Encoder("all-MiniLM-L6-v2", show_progress=False)
    cols = ["positive"] + sorted((k for k in examples[0] if k.startswith("negative_")), key=lambda k: int(k.split("_")[1]))
    for ex in examples:
        q = enc.encode_queries([ex["query"]])[0]
        ex["label"] = [float(10 * (q @ d) + 3) for d in enc.encode_documents([ex[c] for c in cols])]
    found = auto_teacher_scale(examples, "all-MiniLM-L6-v2")
    assert found["teacher_scale"] == pytest.approx(0.1, rel=1e-3) and found["examples"] == len(examples)
    assert found["teacher_spread"] == pytest.approx(10 * found["student_spread"], rel=1e-3)
    with pytest.raises(ValueError, match="spread is 0"):
        auto_teacher_scale([{**ex, "label": [1.0] * len(ex["label"])} for ex in examples], "all-MiniLM-L6-v2")

    cfg = _config(scored, tmp_path, max_examples=8)
    raw = yaml.safe_load(cfg.read_text())
    raw["train"]["losses"] = [{"name": "margin_mse", "options": {"teacher_scale": "auto"}}]
    cfg.write_text(yaml.safe_dump(raw))
    r = _rd("student", "train", cfg)
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "student" / "training_card.json").read_text())
    scale = card["teacher_scale_auto"]["teacher_scale"]
    assert 0 < scale < 1  # BM25 scores spread over units, cosines over hundredths
    assert card["config"]["losses"][0]["options"]["teacher_scale"] == scale


def test_embedding_teacher_losses_train_through_the_job(scored, tmp_path):
    """The literature losses that read teacher embeddings (TCT-ColBERT in-batch KD, RKD,
    DistilCSE contrastive KD) and the teacher-free adaptive-margin loss train a real student
    through `rd student train`: the job attaches the `leaf:` teacher's vectors of every text
    column and fills teacher_dim."""
    cols = ["query", "positive", "negative_1", "negative_2"]
    cfg = _config(scored, tmp_path, max_examples=8, leaf={"teacher_model": "all-MiniLM-L6-v2", "columns": cols},
                  train={"losses": [{"name": "inbatch_kd"}, {"name": "rkd", "weight": 0.5}, {"name": "contrastive_kd", "weight": 0.1},
                                    {"name": "adaptive_margin", "weight": 0.5}],
                         "n_negatives": 2, "epochs": 1, "batch_size": 4, "max_seq_length": 64, "save_steps": 1000})
    r = _rd("student", "train", cfg)
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "student" / "training_card.json").read_text())
    assert card["steps"] == 2 and card["leaf"]["teacher_dim"] == 384 and card["leaf"]["columns"] == cols
    assert [s["name"] for s in card["losses"]] == ["inbatch_kd", "rkd", "contrastive_kd", "adaptive_margin"]
    # a teacher-embedding loss without the passages' vectors: a clear error before training
    (tmp_path / "bad").mkdir()
    bad = _config(scored, tmp_path / "bad", max_examples=8, leaf={"teacher_model": "all-MiniLM-L6-v2", "columns": ["query"]},
                  train={"losses": [{"name": "rkd"}], "n_negatives": 2, "epochs": 1, "batch_size": 4, "max_seq_length": 64})
    r = _rd("student", "train", bad)
    assert r.exit_code == 2 and "every text column" in r.output and not (tmp_path / "bad" / "student").exists()


def test_bad_loss_options_refused_when_the_config_loads(scored, tmp_path):
    """Unknown loss options, a misspelt ``teacher_scale: auto`` and out-of-range values are
    refused by `rd student train` (and `--check`) with one line naming the loss, exit 2,
    before any model loads or checkpoint is written."""
    for losses, message in (
        ([{"name": "margin_mse", "options": {"bogus": 1}}], "train.losses[0] (margin_mse): unknown option(s) ['bogus']"),
        ([{"name": "margin_mse", "options": {"teacher_scale": "AUTO"}}], "teacher_scale must be a positive number or 'auto'"),
        ([{"name": "margin_mse", "options": {"teacher_scale": -3}}], "teacher_scale must be a positive number"),
        ([{"name": "infonce"}, {"name": "listwise_kl", "options": {"teacher_scale": "auto"}}], "train.losses[1] (listwise_kl): unknown option(s) ['teacher_scale']"),
        ([{"name": "adaptive_margin", "options": {"error": "l3"}}], "train.losses[0] (adaptive_margin): error must be 'l1' or 'l2'"),
        ([{"name": "margin_mze"}], "unknown loss 'margin_mze'"),
    ):
        cfg = _config(scored, tmp_path, train={"losses": losses, "epochs": 1, "batch_size": 4})
        for args in (("student", "train", cfg, "--check"), ("student", "train", cfg)):
            r = _rd(*args)
            assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (args, r.output)
        assert not (tmp_path / "student").exists() and not list(tmp_path.glob("*.ckpt"))
