"""Loss terms of query-side training (:mod:`retrieval_distill.distill.query_side`): one small
``nn.Module`` each, with its citation, computed from a :class:`QueryBatch` (the student's
query vectors scored against frozen document vectors), and :class:`QuerySideLoss`, the
sentence-transformers loss that builds the batch and sums the weighted terms.

=================  ======================================================================
name               method
=================  ======================================================================
corpus_infonce     :class:`CorpusInfoNCE`: qrels positives vs every other corpus document
listwise_kl        :class:`CandidateListwiseKL`: KL to the teacher over its whole candidate list
margin_mse         :class:`CandidateMarginMSE`: Hofstätter et al. 2020 over (positive, candidate) pairs
pairwise           :class:`CandidatePairwise`: PairDistill over pairs of the teacher's top candidates
leaf               :class:`QueryAlignment`: LEAF, the query vector pulled onto the document
                   encoder's own vector of the same query (no labels, no candidates)
corpus_kl          :class:`CorpusKL`: KL to the document encoder's own ranking of the whole corpus
=================  ======================================================================

``leaf`` and ``corpus_kl`` read the *document encoder's* vectors of the training queries
(``QueryBatch.t_q``): in the asymmetric pair the documents were encoded by the embedding
teacher (all-mpnet-base-v2), so that encoder is the teacher, and its query vectors are
computed once before training (:func:`retrieval_distill.distill.query_side.document_encoder_queries`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class QueryBatch:
    """What every term sees for one batch of ``B`` queries.

    Attributes:
        q: student query vectors, float32 ``(B, dim)``.
        logits_docs: student scores against the scored documents, ``(B, M)`` (all ``n_docs``,
            or positives + a sample), cosine/dot in student units.
        pos_cols: ``(B, M)`` bool, True where the column is one of the query's positives.
        cand_s: student scores of the teacher's candidates ``(B, C)`` (0 where padded).
        cand_t: teacher scores ``(B, C)`` (0 where padded).
        cand_mask: ``(B, C)`` bool, True for real candidates.
        cand_pos: ``(B, C)`` bool, True for candidates that are qrels positives.
        t_q: the document encoder's vectors of the same queries, float32 ``(B, dim)``
            (``None`` unless a term reads them).
        t_logits_docs: the document encoder's scores of the same columns as
            ``logits_docs``, ``t_q @ docs.T`` (``None`` unless a term reads them).
    """

    q: Tensor
    logits_docs: Tensor | None
    pos_cols: Tensor | None
    cand_s: Tensor | None
    cand_t: Tensor | None
    cand_mask: Tensor | None
    cand_pos: Tensor | None
    t_q: Tensor | None = None
    t_logits_docs: Tensor | None = None


def _masked_log_softmax(x: Tensor, mask: Tensor) -> Tensor:
    return F.log_softmax(x.masked_fill(~mask, float("-inf")), dim=-1)


class CorpusInfoNCE(nn.Module):
    """InfoNCE with the whole frozen corpus as negatives (van den Oord et al. 2018,
    arXiv:1807.03748; the full-corpus softmax of query-side fine-tuning, DensePhrases, Lee et
    al. 2021, arXiv:2012.12624). For query ``b`` with positives ``P_b``:

        L_b = mean_{p in P_b} [ logsumexp_d(s_bd / tau) - s_bp / tau ]

    averaged over the batch's queries that have a positive (a query kept without one, see
    ``QuerySideSpec.unlabeled``, adds nothing; a batch with none gives 0).

    Args:
        temperature: tau in student-score units (0.05 for cosine scores).
    """

    needs_teacher = False

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature = float(temperature)

    def forward(self, b: QueryBatch) -> Tensor:
        logits = b.logits_docs / self.temperature
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        per = (lse - logits) * b.pos_cols
        n_pos = b.pos_cols.sum(-1)
        labelled = n_pos > 0
        if not labelled.any():
            return logits.sum() * 0.0
        return (per.sum(-1)[labelled] / n_pos[labelled]).mean()

    citation = "van den Oord et al. 2018, arXiv:1807.03748; DensePhrases query-side fine-tuning, Lee et al. 2021, arXiv:2012.12624"


def positives_first(t: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
    """Knowledge Adjustment for ranked lists: the teacher's scores of each row, reassigned so
    the qrels positives take its top scores and every other candidate keeps the teacher's
    order (the multiset of scores, hence the distribution's shape, is unchanged). Wen et al.
    2021, "Preparing Lessons: Improve Knowledge Distillation with Better Supervision",
    Neurocomputing 454, arXiv:1911.07471 (KA swaps the teacher's top class with the true
    one; with one positive per list this is that swap).

    Args:
        t: float ``(B, C)`` teacher scores; pos, mask: bool ``(B, C)`` positives, real candidates.

    Returns:
        float ``(B, C)``: adjusted scores (0 where padded). Example: scores (3, 2, 1) with the
        positive last become (2, 1, 3).
    """
    real = mask & torch.isfinite(t)
    span = (t.masked_fill(~real, 0).amax(-1, keepdim=True) - t.masked_fill(~real, 0).amin(-1, keepdim=True)) + 1.0
    key = torch.where(pos & real, t + span, t).masked_fill(~real, float("-inf"))
    rank = key.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)
    ordered = t.masked_fill(~real, float("-inf")).sort(dim=-1, descending=True).values
    return ordered.gather(1, rank).masked_fill(~real, 0.0)


class CandidateListwiseKL(nn.Module):
    """KL from the teacher's distribution over a query's whole candidate list to the
    student's (RocketQAv2, Ren et al. 2021, arXiv:2110.07367; Tamber et al. 2025,
    arXiv:2502.19712), padding masked out:

        L_b = sum_i P_t(i) (log P_t(i) - log P_s(i)),  P = softmax over the real candidates

    Args:
        teacher_temperature: tau_t in teacher-score units.
        student_temperature: tau_s in student-score units (0.05 for cosine).
        positives_first: reassign the teacher's scores so each query's qrels positives get
            its top scores before the softmax (:func:`positives_first`, Knowledge Adjustment):
            the teacher's order of the other candidates is kept, and where it ranks a
            non-relevant document above the judged one the KL no longer pulls against the
            InfoNCE term.
    """

    needs_teacher = True

    def __init__(self, teacher_temperature: float = 1.0, student_temperature: float = 0.05, positives_first: bool = False):
        super().__init__()
        if teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        self.teacher_temperature = float(teacher_temperature)
        self.student_temperature = float(student_temperature)
        self.positives_first = bool(positives_first)

    def forward(self, b: QueryBatch) -> Tensor:
        log_ps = _masked_log_softmax(b.cand_s / self.student_temperature, b.cand_mask)
        t = positives_first(b.cand_t, b.cand_pos, b.cand_mask) if self.positives_first else b.cand_t
        log_pt = _masked_log_softmax(t / self.teacher_temperature, b.cand_mask)
        kl = torch.where(b.cand_mask, log_pt.exp() * (log_pt - log_ps), torch.zeros_like(log_ps))
        return kl.sum(-1).mean()

    citation = "Ren et al. 2021 (RocketQAv2), arXiv:2110.07367; Tamber et al. 2025, arXiv:2502.19712"


class CandidateMarginMSE(nn.Module):
    """Margin-MSE (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with
    Cross-Architecture Knowledge Distillation", arXiv:2010.02666) over every (positive,
    other candidate) pair of a query's list:

        L = mean_{(p, n)} ( (s_p - s_n) - teacher_scale * (t_p - t_n) )^2

    Args:
        teacher_scale: maps teacher margins into student units (cosine margins are small).
    """

    needs_teacher = True

    def __init__(self, teacher_scale: float = 1.0):
        super().__init__()
        self.teacher_scale = float(teacher_scale)

    def forward(self, b: QueryBatch) -> Tensor:
        pos = b.cand_pos & b.cand_mask
        neg = (~b.cand_pos) & b.cand_mask
        ds = b.cand_s[:, :, None] - b.cand_s[:, None, :]
        dt = (b.cand_t[:, :, None] - b.cand_t[:, None, :]) * self.teacher_scale
        pairs = pos[:, :, None] & neg[:, None, :]
        n = pairs.sum()
        if n == 0:
            return b.q.sum() * 0.0
        return (((ds - dt) ** 2) * pairs).sum() / n

    citation = "Hofstätter et al. 2020, arXiv:2010.02666"


class CandidatePairwise(nn.Module):
    """Pairwise distillation (PairDistill, Huang et al. 2024, arXiv:2410.01383) over every
    pair among a query's ``top`` candidates by teacher score: binary KL between
    ``sigmoid((t_i - t_j) / tau_t)`` and ``sigmoid((s_i - s_j) / tau_s)``.

    Args:
        top: candidates per query entering pairs (by teacher score).
        teacher_temperature, student_temperature: as in :class:`CandidateListwiseKL`.
    """

    needs_teacher = True

    def __init__(self, top: int = 16, teacher_temperature: float = 1.0, student_temperature: float = 0.05):
        super().__init__()
        if teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        if top < 2:
            raise ValueError("top must be >= 2")
        self.top = int(top)
        self.teacher_temperature = float(teacher_temperature)
        self.student_temperature = float(student_temperature)

    def forward(self, b: QueryBatch) -> Tensor:
        k = min(self.top, b.cand_t.shape[1])
        order = b.cand_t.masked_fill(~b.cand_mask, float("-inf")).topk(k, dim=-1).indices
        t = b.cand_t.gather(1, order)
        s = b.cand_s.gather(1, order)
        m = b.cand_mask.gather(1, order)
        i, j = torch.triu_indices(k, k, offset=1, device=t.device)
        valid = m[:, i] & m[:, j]
        pt = torch.sigmoid((t[:, i] - t[:, j]) / self.teacher_temperature)
        logit = (s[:, i] - s[:, j]) / self.student_temperature
        bce = F.binary_cross_entropy_with_logits(logit, pt, reduction="none")
        ent = -(torch.xlogy(pt, pt) + torch.xlogy(1 - pt, 1 - pt))
        n = valid.sum()
        if n == 0:
            return b.q.sum() * 0.0
        return ((bce - ent) * valid).sum() / n

    citation = "Huang et al. 2024 (PairDistill), arXiv:2410.01383"


class QueryAlignment(nn.Module):
    """LEAF embedding alignment of the query tower (Vujanic and Rueckstiess 2025, "LEAF:
    Knowledge Distillation of Text Embedding Models with Teacher-Aligned Representations",
    arXiv:2509.12539), query side only: the student's query vector ``q`` (after the
    projection, when there is one) is pulled onto the document encoder's vector ``t`` of the
    same query text,

        cosine: L = mean_b (1 - cos(q_b, t_b))        mse: L = mean_b ||q_b - t_b||^2

    When ``q = t`` for every query, the student ranks the frozen corpus exactly as the
    document encoder does on its own (the asymmetric pair's ceiling). It needs no qrels and
    no teacher scores: any query text is a training example.

    Args:
        objective: ``"cosine"`` or ``"mse"``.
    """

    needs_teacher = False
    needs_teacher_queries = True

    def __init__(self, objective: str = "cosine"):
        super().__init__()
        if objective not in ("cosine", "mse"):
            raise ValueError(f"objective must be 'cosine' or 'mse', got {objective!r}")
        self.objective = objective

    def forward(self, b: QueryBatch) -> Tensor:
        if self.objective == "cosine":
            return (1 - F.cosine_similarity(b.q, b.t_q, dim=-1)).mean()
        return ((b.q - b.t_q) ** 2).sum(-1).mean()

    citation = "LEAF, Vujanic and Rueckstiess 2025, arXiv:2509.12539"


class CorpusKL(nn.Module):
    """KL from the document encoder's softmax over the whole frozen corpus to the
    student's: the listwise distillation of RocketQAv2 (Ren et al. 2021, arXiv:2110.07367)
    with the teacher's list being every document (or the batch's corpus sample) instead of a
    scored candidate list. The teacher's score of document ``d`` is ``t_b . d``, the document
    encoder's own cosine, so nothing is scored beforehand:

        L_b = sum_d P_t(d) (log P_t(d) - log P_s(d)),  P_t = softmax_d(t_b . d / tau_t),
                                                       P_s = softmax_d(q_b . d / tau_s)

    Args:
        teacher_temperature: tau_t in cosine units.
        student_temperature: tau_s in cosine units.
    """

    needs_teacher = False
    needs_teacher_queries = True

    def __init__(self, teacher_temperature: float = 0.05, student_temperature: float = 0.05):
        super().__init__()
        if teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        self.teacher_temperature = float(teacher_temperature)
        self.student_temperature = float(student_temperature)

    def forward(self, b: QueryBatch) -> Tensor:
        log_ps = F.log_softmax(b.logits_docs / self.student_temperature, dim=-1)
        log_pt = F.log_softmax(b.t_logits_docs / self.teacher_temperature, dim=-1)
        return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()

    citation = "listwise KL over the whole corpus: Ren et al. 2021 (RocketQAv2), arXiv:2110.07367"


#: ``train.losses`` names of query-side training
QUERY_SIDE_LOSSES: dict[str, type[nn.Module]] = {
    "corpus_infonce": CorpusInfoNCE,
    "listwise_kl": CandidateListwiseKL,
    "margin_mse": CandidateMarginMSE,
    "pairwise": CandidatePairwise,
    "leaf": QueryAlignment,
    "corpus_kl": CorpusKL,
}


def needs_teacher_queries(module: nn.Module) -> bool:
    """Whether a term reads the document encoder's query vectors (``QueryBatch.t_q``)."""
    return bool(getattr(module, "needs_teacher_queries", False))


@dataclass
class QueryTables:
    """Per-training-query lookups, row ``r`` = example ``r``'s label.

    Attributes:
        pos: int64 ``(R, P)`` document rows of the positives, ``-1`` padded.
        cand: int64 ``(R, C)`` document rows of the teacher's candidates, ``-1`` padded
            (``(R, 0)`` without a teacher).
        cand_t: float32 ``(R, C)`` teacher scores (0 where padded).
    """

    pos: Tensor
    cand: Tensor
    cand_t: Tensor


class QuerySideLoss(nn.Module):
    """The sentence-transformers loss of query-side training: encodes the batch's queries
    with the student, scores them against the frozen documents and sums the weighted terms.

    Args:
        model: the student ``SentenceTransformer`` (query tower, with the projection if any).
        documents: float32 ``(n_docs, dim)`` frozen document vectors.
        tables: :class:`QueryTables`.
        terms: ``(name, weight, module)`` per loss term.
        corpus_sample: see :class:`QuerySideSpec`.
        seed: seed of the corpus sample.
        teacher_queries: float32 ``(R, dim)``: the document encoder's vectors of the training
            queries, row ``r`` = example ``r`` (needed by ``leaf`` and ``corpus_kl``).

    Raises:
        ValueError: a term reads the document encoder's query vectors and none are given, or
            their shape does not match the tables and the documents.

    ``forward(sentence_features, labels)``: ``labels`` int64 ``(B,)`` rows into ``tables``.
    """

    def __init__(self, model, documents: np.ndarray, tables: QueryTables, terms: Sequence[tuple[str, float, nn.Module]],
                 corpus_sample: int | None = None, seed: int = 13, teacher_queries: np.ndarray | None = None):
        super().__init__()
        self.model = model
        self.register_buffer("docs", torch.from_numpy(np.ascontiguousarray(documents, dtype=np.float32)), persistent=False)
        wanting = [n for n, _, m in terms if needs_teacher_queries(m)]
        if wanting and teacher_queries is None:
            raise ValueError(f"terms {wanting} need the document encoder's vectors of the training queries")
        if teacher_queries is not None:
            tq = np.ascontiguousarray(teacher_queries, dtype=np.float32)
            if tq.shape != (tables.pos.shape[0], self.docs.shape[1]):
                raise ValueError(f"teacher query vectors of shape {tq.shape}; expected "
                                 f"({tables.pos.shape[0]}, {self.docs.shape[1]}) (training queries, document dim)")
            self.register_buffer("teacher_q", torch.from_numpy(tq), persistent=False)
        else:
            self.teacher_q = None
        self.register_buffer("pos", tables.pos, persistent=False)
        self.register_buffer("cand", tables.cand, persistent=False)
        self.register_buffer("cand_t", tables.cand_t, persistent=False)
        self.names = [n for n, _, _ in terms]
        self.weights = [float(w) for _, w, _ in terms]
        self.modules_ = nn.ModuleList([m for _, _, m in terms])
        self.corpus_sample = corpus_sample
        self.gen = torch.Generator().manual_seed(seed)
        self.learning_rate_mapping: dict[str, float] = {}
        self.last_parts: dict[str, float] = {}

    @property
    def terms(self) -> list[tuple[nn.Module, float]]:
        return list(zip(self.modules_, self.weights))

    def batch(self, q: Tensor, rows: Tensor) -> QueryBatch:
        """Student scores for ``rows`` (see :class:`QueryBatch`)."""
        pos = self.pos[rows]
        need_docs = any(isinstance(m, (CorpusInfoNCE, CorpusKL)) for m in self.modules_)
        t_q = self.teacher_q[rows] if self.teacher_q is not None else None
        logits = pos_cols = t_logits = None
        if need_docs:
            n = self.docs.shape[0]
            if self.corpus_sample is None or self.corpus_sample >= n:
                cols = None
                logits = q @ self.docs.T
                if t_q is not None:
                    t_logits = t_q @ self.docs.T
                pos_cols = torch.zeros_like(logits, dtype=torch.bool)
                r, c = (pos >= 0).nonzero(as_tuple=True)
                pos_cols[r, pos[r, c]] = True
            else:
                sample = torch.randint(0, n, (self.corpus_sample,), generator=self.gen)
                cols = torch.unique(torch.cat([pos[pos >= 0], sample]))
                logits = q @ self.docs[cols].T
                if t_q is not None:
                    t_logits = t_q @ self.docs[cols].T
                pos_cols = (pos[:, :, None] == cols[None, None, :]).any(1)
        cand_s = cand_t = cand_mask = cand_pos = None
        if self.cand.shape[1]:
            cand = self.cand[rows]
            cand_mask = cand >= 0
            vec = self.docs[cand.clamp(min=0)]  # (B, C, dim)
            cand_s = torch.einsum("bd,bcd->bc", q, vec) * cand_mask
            cand_t = self.cand_t[rows]
            cand_pos = (cand[:, :, None] == pos[:, None, :]).any(-1) & cand_mask
        return QueryBatch(q, logits, pos_cols, cand_s, cand_t, cand_mask, cand_pos, t_q, t_logits)

    def forward(self, sentence_features, labels: Tensor) -> Tensor:
        features = list(sentence_features)
        q = self.model(features[0])["sentence_embedding"]
        b = self.batch(q, labels.long().view(-1))
        total = q.new_zeros(())
        parts = {}
        for name, w, m in zip(self.names, self.weights, self.modules_):
            v = m(b)
            parts[name] = float(v.detach())
            total = total + w * v
        self.last_parts = parts
        return total

    @property
    def citation(self) -> str:
        return "; ".join(f"{n}: {m.citation}" for n, m in zip(self.names, self.modules_))
