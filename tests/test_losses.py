"""Distillation losses on hand-worked cases (2-d embeddings), gradient directions, bad
input, and one tiny real training run of all-MiniLM-L6-v2 on ADI."""

import json
import math
import re

import numpy as np
import pytest
import torch

from retrieval_distill.distill.data import TrainingDataError, build_examples
from retrieval_distill.distill.losses import (
    LOSSES,
    AdaptiveMarginLoss,
    CombinedLoss,
    ContrastiveKDLoss,
    InBatchKDLoss,
    RKDLoss,
    DistillLoss,
    InfoNCELoss,
    LEAFAlignmentLoss,
    ListwiseKLLoss,
    MarginMSELoss,
    PairwiseDistillLoss,
    attach_teacher_embeddings,
    fit_projection,
)


class _NoModel(torch.nn.Module):
    """Stands in for the student where only ``compute`` (embeddings given) is exercised."""

    def get_embedding_dimension(self):
        return 2


def _qp(q, p):
    """Leaf tensors q (1, 2) and p (1, C, 2) that collect gradients."""
    return (
        torch.tensor([q], dtype=torch.float64, requires_grad=True),
        torch.tensor([p], dtype=torch.float64, requires_grad=True),
    )


# q = (1, 0); positive (1, 0) scores 1, negative (0, 1) scores 0 (dot).
Q, P2 = [1.0, 0.0], [[1.0, 0.0], [0.0, 1.0]]


def test_registry_names():
    assert set(LOSSES) == {"margin_mse", "listwise_kl", "pairwise", "infonce", "leaf", "adaptive_margin", "inbatch_kd",
                           "rkd", "contrastive_kd"}
    for cls in LOSSES.values():
        assert issubclass(cls, DistillLoss)
        cite = cls(_NoModel(), **({"teacher_dim": 2} if getattr(cls, "teacher_embeddings", False) else {})).citation
        assert re.search(r"(19|20)\d\d", cite), cite


def test_margin_mse_hand_case():
    # s = (1, 0, 0.6); t = (3, 1, 2) * 0.5 = (1.5, 0.5, 1.0)
    # student margins (1, 0.4), teacher margins (1.0, 0.5): errors (0, -0.1) -> MSE 0.01 / 2 = 0.005
    q, p = _qp(Q, P2 + [[0.6, 0.8]])
    loss = MarginMSELoss(_NoModel(), teacher_scale=0.5).compute(q, p, torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64))
    assert loss.item() == pytest.approx(0.005, abs=1e-12)
    loss.backward()
    # dL/ds_2 = 2 * (0.4 - 0.5) * (-1) / 2 = +0.1: descent lowers the too-high negative's score.
    # ds_2/dp_2 = q = (1, 0), so dL/dp_2 = (0.1, 0)
    assert p.grad[0, 2].tolist() == pytest.approx([0.1, 0.0])
    assert p.grad[0, 1].tolist() == pytest.approx([0.0, 0.0])  # that margin is exact


def test_listwise_kl_hand_case_and_gradient():
    # tau_s = tau_t = 1; s = (1, 0), t = (2, 0)
    # P_t = (e^2, 1) / (e^2 + 1) = (0.880797, 0.119203); P_s = (e, 1) / (e + 1) = (0.731059, 0.268941)
    # KL = sum_i P_t(i) (log P_t(i) - log P_s(i)) = sum_i P_t(i) (t_i - s_i) - ln(e^2 + 1) + ln(e + 1)
    #    = 0.880797 * (2 - 1) + 0.119203 * 0 - 2.126928 + 1.313262 = 0.067131
    q, p = _qp(Q, P2)
    loss_fn = ListwiseKLLoss(_NoModel(), teacher_temperature=1.0, student_temperature=1.0)
    loss = loss_fn.compute(q, p, torch.tensor([[2.0, 0.0]], dtype=torch.float64))
    assert loss.item() == pytest.approx(0.067131, abs=1e-6)
    loss.backward()
    # dKL/ds = P_s - P_t = (-0.149738, +0.149738); dL/dq = sum_i (P_s - P_t)_i p_i
    assert q.grad[0].tolist() == pytest.approx([-0.149738, 0.149738], abs=1e-6)
    # one descent step raises the score of the teacher-preferred passage relative to the other
    with torch.no_grad():
        q2 = q - 0.5 * q.grad
        s_before = (q @ p[0].T)[0]
        s_after = (q2 @ p[0].T)[0]
    assert (s_after[0] - s_after[1]) > (s_before[0] - s_before[1])
    # temperatures: tau_t -> sharper teacher; equal distributions give 0
    same = loss_fn.compute(q.detach(), p.detach(), torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert same.item() == pytest.approx(0.0, abs=1e-12)
    assert ListwiseKLLoss(_NoModel(), teacher_temperature=2.0, student_temperature=1.0).compute(
        q.detach(), p.detach(), torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    ).item() == pytest.approx(0.0, abs=1e-12)  # t / 2 = (1, 0) = s
    with pytest.raises(ValueError):
        ListwiseKLLoss(_NoModel(), student_temperature=0)


def test_pairwise_hand_case():
    # One pair (0, 1): P_s = sigmoid(1 - 0) = 0.731059, P_t = sigmoid(2 - 0) = 0.880797:
    # binary KL = the 2-way softmax KL above = 0.067131
    q, p = _qp(Q, P2)
    loss_fn = PairwiseDistillLoss(_NoModel(), teacher_temperature=1.0, student_temperature=1.0)
    loss = loss_fn.compute(q, p, torch.tensor([[2.0, 0.0]], dtype=torch.float64))
    assert loss.item() == pytest.approx(0.067131, abs=1e-6)
    loss.backward()
    # dL/d(s0 - s1) = P_s - P_t = -0.149738 -> dL/dq = -0.149738 * (p0 - p1)
    assert q.grad[0].tolist() == pytest.approx([-0.149738, 0.149738], abs=1e-6)

    # Three candidates, p2 = p1 = (0, 1), t = (2, 0, 0):
    # pairs (0,1), (0,2): 0.067131 each; pair (1,2): s diff 0, t diff 0 -> P = 0.5 both -> 0
    q3, p3 = _qp(Q, P2 + [[0.0, 1.0]])
    t3 = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
    all_pairs = loss_fn.compute(q3, p3, t3).item()
    pos_pairs = PairwiseDistillLoss(_NoModel(), 1.0, 1.0, pairs="positive").compute(q3, p3, t3).item()
    assert all_pairs == pytest.approx(2 * 0.067131 / 3, abs=1e-6)
    assert pos_pairs == pytest.approx(0.067131, abs=1e-6)
    # a pairwise teacher giving the same probabilities gives the same loss
    pm = torch.full((1, 3, 3), 0.5, dtype=torch.float64)
    pm[0, 0, 1] = pm[0, 0, 2] = 1 / (1 + math.exp(-2))
    pw = PairwiseDistillLoss(_NoModel(), student_temperature=1.0, teacher="pairwise")
    assert pw.compute(q3, p3, pw.labels_for(pm.reshape(1, 9), 3)).item() == pytest.approx(all_pairs, abs=1e-9)
    with pytest.raises(TrainingDataError, match=r"\[0, 1\]"):
        pw.compute(q3, p3, pm * 3)


def test_infonce_hand_case():
    # Batch of 2, cosine, scale 1. Columns: positives [(1,0), (0,1)], hard negatives [(0,1), (-1,0)].
    # All candidates in batch order: pos1 (1,0), pos2 (0,1), neg1 (0,1), neg2 (-1,0)
    # q1 = (1,0): sims (1, 0, 0, -1): -1 + ln(e + 1 + 1 + e^-1) = -1 + ln 5.086161 = 0.626523
    # q2 = (0,1): sims (0, 1, 1, 0):  -1 + ln(1 + e + e + 1)    = -1 + ln 7.436564 = 1.006410
    # mean 0.816466
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    p = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [-1.0, 0.0]]], requires_grad=True)
    loss = InfoNCELoss(_NoModel(), scale=1.0).compute(q, p, None)
    assert loss.item() == pytest.approx(0.816466, abs=1e-5)
    loss.backward()
    # cosine gradient at a unit q: d cos(q, x)/dq = x - (q.x) q, which is 0 for x = (1,0) and
    # (-1,0) and (0,1) for pos2 and neg1. Softmax weights of q1: (e, 1, 1, e^-1) / 5.086161, so
    # dL/dq1 = (1/2) * (1 + 1) / 5.086161 * (0, 1) = (0, 0.196612): descent turns q1 away from
    # the wrong candidates (0,1), toward its positive.
    assert q.grad[0].tolist() == pytest.approx([0.0, 0.196612], abs=1e-5)
    # scale 20 (the default): q1 is almost perfectly separated (~0); q2 ties its positive with
    # neg1 (same vector), so its loss is ln 2: mean = ln(2) / 2 = 0.346574
    default = InfoNCELoss(_NoModel()).compute(q.detach(), p.detach(), None)
    assert default.item() == pytest.approx(math.log(2) / 2, abs=1e-5)


class _Dim3Leaf:
    teacher_dim = 3


def test_leaf_compute_hand_case():
    # cosine: student (3,4) vs teacher (0.6,0.8) -> 1 - 1 = 0; student (1,0) vs (0,1) -> 1 - 0 = 1; mean 0.5
    # mse:    (3,4)-(0.6,0.8) = (2.4,3.2) -> 5.76 + 10.24 = 16; (1,0)-(0,1) -> 2; mean 9
    loss_fn = LEAFAlignmentLoss(_NoModel(), teacher_dim=2, projection="never")
    q = torch.tensor([[3.0, 4.0], [1.0, 0.0]], requires_grad=True)
    p = torch.zeros((2, 0, 2))
    y = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    loss = loss_fn.compute(q, p, y)
    assert loss.item() == pytest.approx(0.5)
    mse = LEAFAlignmentLoss(_NoModel(), teacher_dim=2, objective="mse", projection="never")
    assert mse.compute(q, p, y).item() == pytest.approx(9.0)
    loss.backward()
    # the gradient step turns q2 = (1,0) toward (0,1): d(1 - cos)/dq2 = -(y - cos * x/|x|)/|x| = (0, -1),
    # halved by the mean over the 2 texts
    assert q.grad[1].tolist() == pytest.approx([0.0, -0.5])
    assert q.grad[0].tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
    # packed labels (teacher dim 3): [scores (2) | embedding of the query (3)] -> trailing 3 columns
    packed = torch.tensor([[5.0, 1.0, 0.6, 0.8, 0.0]])
    emb = LEAFAlignmentLoss.labels_for(_Dim3Leaf(), packed, 1)
    assert emb.shape == (1, 1, 3) and emb.flatten().tolist() == pytest.approx([0.6, 0.8, 0.0])
    with pytest.raises(TrainingDataError, match="no teacher embedding"):
        LEAFAlignmentLoss.labels_for(_Dim3Leaf(), torch.tensor([[5.0, 1.0]]), 1)


def test_combined_loss_sums_weighted_terms():
    q, p = _qp(Q, P2)
    t = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    m = _NoModel()
    kl = ListwiseKLLoss(m, 1.0, 1.0)
    mm = MarginMSELoss(m)  # margins: student 1, teacher 2 -> (1 - 2)^2 = 1
    comb = CombinedLoss(m, [(kl, 2.0), (mm, 0.5)])
    assert comb.compute(q, p, t).item() == pytest.approx(2 * 0.067131 + 0.5 * 1.0, abs=1e-5)
    assert [w for _, w in comb.terms] == [2.0, 0.5]
    with pytest.raises(ValueError):
        CombinedLoss(m, [(MarginMSELoss(_NoModel()), 1.0)])


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------
def test_nonfinite_labels_raise_in_forward(minilm):
    loss = MarginMSELoss(minilm)
    feats = [minilm.preprocess(["a query"]), minilm.preprocess(["a passage"]), minilm.preprocess(["another"])]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(TrainingDataError, match="non-finite"):
            loss(feats, torch.tensor([[1.0, bad]]))
    with pytest.raises(TrainingDataError, match="one teacher score per passage"):
        loss(feats, torch.tensor([[1.0]]))


def _adi_scores(adi, qids, depth=12):
    """A real (lexical) teacher: TF-IDF cosine of each query against ADI docs (scikit-learn),
    candidates = its top ``depth`` plus the positives."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    docids = adi.docids
    vec = TfidfVectorizer(sublinear_tf=True).fit(adi.doc_texts())
    d = vec.transform(adi.doc_texts())
    cands, scores = {}, {}
    for qid in qids:
        s = (vec.transform([adi.queries[qid]]) @ d.T).toarray()[0] * 10
        order = np.argsort(-s)[:depth]
        cands[qid] = [docids[i] for i in order]
        keep = set(cands[qid]) | set(adi.qrels.get(qid, {}))
        scores[qid] = {docids[i]: float(s[i]) for i in range(len(docids)) if docids[i] in keep}
    return cands, scores


def test_build_examples_bad_input(adi):
    qids = adi.judged_qids()[:4]
    cands, scores = _adi_scores(adi, qids)
    ok = build_examples(adi, qids, cands, scores, n_negatives=3)
    assert ok and all(len(e["label"]) == 4 for e in ok)
    for bad in (float("nan"), float("inf"), float("-inf")):
        s2 = {q: dict(v) for q, v in scores.items()}
        d = next(iter(s2[qids[1]]))
        s2[qids[1]][d] = bad
        with pytest.raises(TrainingDataError, match="not finite"):
            build_examples(adi, qids, cands, s2)
    # candidates whose queries have no positive -> nothing to train on: a clear error
    no_pos = adi.subset(qids)
    no_pos.qrels = {q: {d: 0 for d in r} for q, r in no_pos.qrels.items()}
    with pytest.raises(TrainingDataError, match="4 without a positive"):
        build_examples(no_pos, qids, cands, scores)
    with pytest.raises(TrainingDataError, match="empty training set"):
        build_examples(adi, [], cands, scores)


# ---------------------------------------------------------------------------------------
# LEAF on the real student: projection inside the model folder, least-squares start
# ---------------------------------------------------------------------------------------
def test_fit_projection_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    w = rng.normal(size=(6, 4)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    w2, b2 = fit_projection(x, x @ w.T + b, ridge=1e-8)
    assert np.allclose(w2, w, atol=1e-4) and np.allclose(b2, b, atol=1e-4)


def test_leaf_projection_saved_in_model_folder(tmp_path, adi):
    from sentence_transformers import SentenceTransformer

    from retrieval_distill.models import load_sentence_transformer

    student = load_sentence_transformer("all-MiniLM-L6-v2")
    texts = list(adi.queries.values())[:12]
    x = student.encode(texts, convert_to_numpy=True)
    # a known target map 384 -> 8 (so the check is exact): teacher vectors y = normalise(x W^T + b)
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(8, 384)).astype(np.float32), rng.normal(size=8).astype(np.float32) * 0.1
    np.savez(tmp_path / "proj.npz", weight=w, bias=b)
    loss = LEAFAlignmentLoss(student, teacher_dim=8, objective="cosine", projection_init=str(tmp_path / "proj.npz"))
    assert student.get_embedding_dimension() == 8
    assert type(student[3]).__name__ == "Dense" and type(student[4]).__name__ == "Normalize"
    assert loss.learning_rate_mapping == {r"(^|\.)3\.linear\.(weight|bias)$": 1e-3}
    y = x @ w.T + b
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    got = student.encode(texts, convert_to_numpy=True)
    assert np.allclose(got, y, atol=1e-4)
    # the loss against those teacher vectors is ~0
    feats = [student.preprocess(texts[:4])]
    assert loss(feats, torch.from_numpy(y[:4])).item() == pytest.approx(0.0, abs=1e-5)
    student.save(str(tmp_path / "aligned"))
    again = SentenceTransformer(str(tmp_path / "aligned"), device="cpu")
    assert np.allclose(again.encode(texts, convert_to_numpy=True), got, atol=1e-5)


# ---------------------------------------------------------------------------------------
# a tiny real training run: every distillation term through the sentence-transformers trainer
# ---------------------------------------------------------------------------------------
def test_train_student_smoke(tmp_path, adi):
    from sentence_transformers import SentenceTransformer

    from retrieval_distill.distill.train import LossSpec, TrainConfig, build_loss, train_student
    from retrieval_distill.models import load_sentence_transformer

    qids = adi.judged_qids()[:6]
    cands, scores = _adi_scores(adi, qids)
    examples = build_examples(adi, qids, cands, scores, n_negatives=3, seed=13)[:12]
    cfg = TrainConfig(
        losses=[
            LossSpec(name="margin_mse", weight=1.0, options={"teacher_scale": 0.1}),
            LossSpec(name="listwise_kl", weight=0.5),
            LossSpec(name="pairwise", weight=0.5),
            LossSpec(name="infonce", weight=0.1),
        ],
        epochs=2,
        batch_size=4,
        lr=1e-4,
        warmup_ratio=0.0,
        max_seq_length=64,
        save_steps=1000,
    )

    def total_loss(model) -> float:
        loss = build_loss(model, cfg.losses)
        model.eval()
        cols = ["query", "positive", "negative_1", "negative_2", "negative_3"]
        with torch.no_grad():
            feats = [model.preprocess([e[c] for e in examples]) for c in cols]
            parts = loss(feats, torch.tensor([e["label"] for e in examples]))
        return float(sum(v.item() for v in parts.values()))

    init = load_sentence_transformer("all-MiniLM-L6-v2")
    init.max_seq_length = 64
    before = total_loss(init)
    out = train_student(cfg, examples, tmp_path / "student", card={"teacher": "tfidf"}, show_progress=False)
    assert (out / "loss_curve.png").stat().st_size > 1000
    card = json.loads((out / "training_card.json").read_text())
    assert card["steps"] == 6 and card["teacher"] == "tfidf"
    assert set(card["loss_citations"]) == {"margin_mse", "listwise_kl", "pairwise", "infonce"}
    assert card["loss_history"], "no loss logged"
    trained = SentenceTransformer(str(out), device="cpu")
    trained.max_seq_length = 64
    after = total_loss(trained)
    assert after < before, (before, after)


def test_adaptive_margin_hand_case():
    # q = (1, 0); p+ = (1, 0); negatives (0, 1) and (0.6, 0.8).
    # margins: cos(q,p+) - cos(q,p-) = 1 - 0 = 1 and 1 - 0.6 = 0.4
    # targets: cos(p+,p-)/2 + 1/2 = 0.5 and 0.6/2 + 0.5 = 0.8
    # l2: mean((1 - 0.5)^2, (0.4 - 0.8)^2) = mean(0.25, 0.16) = 0.205; l1: mean(0.5, 0.4) = 0.45
    q, p = _qp(Q, P2 + [[0.6, 0.8]])
    assert AdaptiveMarginLoss(_NoModel()).compute(q, p).item() == pytest.approx(0.205, abs=1e-12)
    assert AdaptiveMarginLoss(_NoModel(), error="l1").compute(q, p).item() == pytest.approx(0.45, abs=1e-12)
    # cosine, not dot: scaling every vector leaves the loss unchanged
    q2, p2 = _qp([3.0, 0.0], [[2.0, 0.0], [0.0, 5.0], [1.2, 1.6]])
    assert AdaptiveMarginLoss(_NoModel()).compute(q2, p2).item() == pytest.approx(0.205, abs=1e-12)
    with pytest.raises(TrainingDataError, match="at least one negative"):
        AdaptiveMarginLoss(_NoModel()).compute(*_qp(Q, [[1.0, 0.0]]))
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        AdaptiveMarginLoss(_NoModel(), error="huber")
    assert AdaptiveMarginLoss.needs_labels is False


def test_inbatch_kd_hand_case_and_cross_pairs():
    # one query, passages (1,0), (0,1): student scores (1, 0); the teacher's vectors of the
    # query and both passages are (1,0): teacher scores (1, 1) -> uniform target.
    # tau 1: p_s = (e, 1) / (e + 1); KL = 0.5 ln(0.5 / p_s0) + 0.5 ln(0.5 / p_s1)
    q, p = _qp(Q, P2)
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]], dtype=torch.float64)
    loss = InBatchKDLoss(_NoModel(), teacher_dim=2, teacher_temperature=1, student_temperature=1).compute(q, p, t)
    e = math.e
    ps = (e / (e + 1), 1 / (e + 1))
    assert loss.item() == pytest.approx(0.5 * math.log(0.5 / ps[0]) + 0.5 * math.log(0.5 / ps[1]), abs=1e-12)
    # two queries: each is scored against all 4 passages of the batch (TCT-ColBERT's in-batch
    # pairs); numpy softmax over the flattened passages gives the same value
    rng = np.random.default_rng(0)
    qs, ps_, ts = rng.normal(size=(2, 3)), rng.normal(size=(2, 2, 3)), rng.normal(size=(2, 3, 3))
    got = InBatchKDLoss(_NoModel(), teacher_dim=3, teacher_temperature=0.5, student_temperature=0.2).compute(
        torch.tensor(qs), torch.tensor(ps_), torch.tensor(ts)).item()
    tn = ts / np.linalg.norm(ts, axis=-1, keepdims=True)
    S = qs @ ps_.reshape(4, 3).T / 0.2
    T = tn[:, 0] @ tn[:, 1:].reshape(4, 3).T / 0.5
    logsm = lambda x: x - np.log(np.exp(x).sum(1, keepdims=True))  # noqa: E731
    want = (np.exp(logsm(T)) * (logsm(T) - logsm(S))).sum(1).mean()
    assert got == pytest.approx(want, abs=1e-10)
    with pytest.raises(TrainingDataError, match="every text column"):
        InBatchKDLoss(_NoModel(), teacher_dim=2).labels_for(torch.zeros(1, 3 + 2), 2)  # scores + the query's only


def test_rkd_hand_case_and_invariance():
    # student texts on a line (0,0), (1,0), (2,0); teacher (0,0), (1,0), (0,1).
    # student distances 1, 2, 1 (pairs 01, 02, 12), mean over i != j = 4/3 -> 0.75, 1.5, 0.75
    # teacher distances 1, 1, sqrt 2, mean (2 + sqrt 2)/3 -> each / mean
    # Huber (beta 1) of the differences, mean over the 9 entries of the (3, 3) matrices
    q, p = _qp([0.0, 0.0], [[1.0, 0.0], [2.0, 0.0]])
    t = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    mu_t = (2 + math.sqrt(2)) / 3
    diffs = (0.75 - 1 / mu_t, 1.5 - 1 / mu_t, 0.75 - math.sqrt(2) / mu_t)
    want = 2 * sum(0.5 * d * d for d in diffs) / 9
    got = RKDLoss(_NoModel(), teacher_dim=2, angle_weight=0).compute(q, p, t)
    assert got.item() == pytest.approx(want, abs=1e-12)
    # the angle at (1,0) between (0,0) and (2,0) is 180 degrees (cos -1); the teacher's is 45 (cos 1/sqrt 2)
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    assert RKDLoss.angles(x)[1, 0, 2].item() == pytest.approx(-1.0)
    assert RKDLoss.angles(t[0])[1, 0, 2].item() == pytest.approx(1 / math.sqrt(2))
    # relational: a teacher that is the student rotated, scaled and moved gives loss 0 (dims may differ)
    rng = np.random.default_rng(1)
    qs, ps_ = rng.normal(size=(2, 3)), rng.normal(size=(2, 2, 3))
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    texts = np.concatenate([qs[:, None], ps_], axis=1)
    teacher = np.concatenate([3.0 * texts @ rot.T + 0.5, np.zeros((2, 3, 1))], axis=-1)  # 4-d teacher
    zero = RKDLoss(_NoModel(), teacher_dim=4).compute(torch.tensor(qs), torch.tensor(ps_), torch.tensor(teacher))
    assert zero.item() == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="not both 0"):
        RKDLoss(_NoModel(), teacher_dim=2, distance_weight=0, angle_weight=0)


def test_contrastive_kd_hand_case():
    # texts: the query (1,0) and its positive (0,1); teacher vectors the same. tau 1:
    # logits [[1, 0], [0, 1]] -> each -log(e / (e + 1)) = ln(1 + 1/e)
    q, p = _qp(Q, [[0.0, 1.0]])
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    loss = ContrastiveKDLoss(_NoModel(), teacher_dim=2, temperature=1.0).compute(q, p, t)
    assert loss.item() == pytest.approx(math.log(1 + 1 / math.e), abs=1e-12)
    # a teacher that swaps the two texts' vectors: the student now points at the wrong ones
    swapped = ContrastiveKDLoss(_NoModel(), teacher_dim=2, temperature=1.0).compute(q, p, t.flip(1))
    assert swapped.item() == pytest.approx(math.log(1 + math.e), abs=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveKDLoss(_NoModel(), teacher_dim=2, temperature=0)
