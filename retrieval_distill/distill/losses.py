"""Distillation losses: one small ``torch.nn.Module`` each, with its citation.

All losses follow the sentence-transformers loss interface, so the sentence-transformers
trainer runs the loop: ``forward(sentence_features, labels)`` where ``sentence_features``
is ``[query, passage_0, passage_1, ..., passage_n]`` (each a tokenised batch) and
``labels`` is a float tensor of shape ``(batch, 1 + n)``: the teacher's scores for the same
passages, column 0 being the positive (from qrels) and columns 1..n the negatives.

Each loss implements ``compute(q, p, teacher_scores)`` on embeddings, with
``q: (batch, dim)``, ``p: (batch, 1 + n, dim)``, ``teacher_scores: (batch, 1 + n)``, so it
can also be used without the trainer.

Packed labels (for combining score losses with :class:`LEAFAlignmentLoss`): a label row
may be wider than ``1 + n``; the score losses read its first ``1 + n`` columns and the
alignment loss reads the trailing ``k * teacher_dim`` columns as the teacher embeddings of
the first ``k`` text columns (see :func:`attach_teacher_embeddings`).

Losses registered in :data:`LOSSES` (the names used in configs):

==============  ===========================================================================
name            method
==============  ===========================================================================
margin_mse      :class:`MarginMSELoss`, Hofstätter et al. 2020
listwise_kl     :class:`ListwiseKLLoss`, RocketQAv2 (Ren et al. 2021); Tamber et al. 2025
pairwise        :class:`PairwiseDistillLoss`, PairDistill (Huang et al. 2024)
infonce         :class:`InfoNCELoss`, in-batch + hard negatives (sentence-transformers MNRL)
leaf            :class:`LEAFAlignmentLoss`, LEAF (MongoDB 2025) embedding alignment
adaptive_margin :class:`AdaptiveMarginLoss`, self-distillation, adaptive margins (Gienapp et al. 2024), no teacher
inbatch_kd      :class:`InBatchKDLoss`, TCT-ColBERT in-batch KD (Lin et al. 2021), embedding teacher
rkd             :class:`RKDLoss`, relational KD, distance + angle (Park et al. 2019)
contrastive_kd  :class:`ContrastiveKDLoss`, DistilCSE contrastive KD on teacher embeddings (Xu et al. 2023)
==============  ===========================================================================

``leaf``, ``inbatch_kd``, ``rkd`` and ``contrastive_kd`` read teacher embeddings from the
labels (``teacher_embeddings = True``): the job attaches them (the ``leaf:`` section of a
student config names the teacher model and the columns) and fills ``teacher_dim``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from retrieval_distill.distill.data import TrainingDataError


def listwise_kl(student: Tensor, teacher: Tensor, student_temperature: float, teacher_temperature: float) -> Tensor:
    """``mean_rows KL(softmax(teacher / tau_t) || softmax(student / tau_s))`` over the last
    dimension (scores of shape ``(batch, candidates)``)."""
    log_ps = F.log_softmax(student / student_temperature, dim=-1)
    log_pt = F.log_softmax(teacher / teacher_temperature, dim=-1)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")


class DistillLoss(nn.Module):
    """Base class: embeds the features with the student, then calls :meth:`compute`.

    Args:
        model: the student ``SentenceTransformer``.
        similarity: ``"dot"`` or ``"cosine"`` student score.
        scale: multiplies the student score (temperature inverse), default 1.
    """

    #: whether :meth:`forward` needs teacher labels (InfoNCE does not).
    needs_labels: bool = True

    def __init__(self, model, similarity: str = "dot", scale: float = 1.0):
        super().__init__()
        if similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
        self.model = model
        self.similarity = similarity
        self.scale = scale

    def student_scores(self, q: Tensor, p: Tensor) -> Tensor:
        """Student scores ``(batch, 1 + n)`` of each query against its own passages."""
        if self.similarity == "cosine":
            q = nn.functional.normalize(q, dim=-1)
            p = nn.functional.normalize(p, dim=-1)
        return torch.einsum("bd,bnd->bn", q, p) * self.scale

    def embed(self, sentence_features: Iterable[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Query embeddings ``(batch, dim)`` and passage embeddings ``(batch, 1 + n, dim)``.

        Uses sentence-transformers' ``embed_columns``, which runs columns that tokenise alike
        in one forward pass. With a single column, the passages tensor is ``(batch, 0, dim)``.
        """
        from sentence_transformers.base.losses.merged_forward import embed_columns

        embs = embed_columns(self.model, list(sentence_features))
        if len(embs) == 1:
            return embs[0], embs[0].new_zeros((embs[0].shape[0], 0, embs[0].shape[-1]))
        return embs[0], torch.stack(embs[1:], dim=1)

    def labels_for(self, labels: Tensor | None, n_candidates: int) -> Tensor | None:
        """The part of ``labels`` this loss reads: the first ``n_candidates`` columns
        (teacher scores of the passage columns).

        Raises:
            TrainingDataError: labels missing, of the wrong shape, or with fewer columns
                than there are passages.
        """
        if not self.needs_labels:
            return labels
        if labels is None:
            raise TrainingDataError(f"{type(self).__name__} needs teacher scores as labels, got none")
        if labels.ndim != 2 or labels.shape[1] < n_candidates:
            raise TrainingDataError(
                f"{type(self).__name__}: labels of shape {tuple(labels.shape)} do not hold one teacher score "
                f"per passage column ({n_candidates})"
            )
        return labels[:, :n_candidates]

    @staticmethod
    def check_finite(labels: Tensor | None) -> None:
        """Raise :class:`TrainingDataError` if a teacher label is NaN or infinite."""
        if labels is None or not labels.is_floating_point():
            return
        bad = ~torch.isfinite(labels)
        if bad.any():
            rows = sorted({int(r) for r in bad.nonzero()[:, 0].tolist()})
            raise TrainingDataError(
                f"non-finite teacher labels (NaN/inf) in batch rows {rows[:10]}: "
                "fix the score file (build_examples rejects such scores before training)"
            )

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        features = list(sentence_features)
        self.check_finite(labels)
        q, p = self.embed(features)
        labels = labels.to(q.dtype) if labels is not None else None
        return self.compute(q, p, self.labels_for(labels, p.shape[1]))

    def compute(self, q: Tensor, p: Tensor, teacher_scores: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    @property
    def citation(self) -> str:
        return ""


class MarginMSELoss(DistillLoss):
    """Margin-MSE (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with
    Cross-Architecture Knowledge Distillation", arXiv:2010.02666), n-tuple form.

    For each query with a positive p+ and negatives p-_1..p-_n:

        L = mean_i ( (s(q, p+) - s(q, p-_i)) - (t(q, p+) - t(q, p-_i)) )^2

    The loss is scale-sensitive: student margins must live on the teacher's scale. So the
    teacher scores are multiplied by ``teacher_scale`` first (``teacher_scale`` maps, say, a
    z-scored ensemble onto cosine-sized margins), and the student score may be scaled too.

    Args:
        model: the student.
        teacher_scale: factor applied to teacher scores (1.0 keeps raw logits).
        similarity: student score, ``"dot"`` (default; equals cosine for normalised models) or ``"cosine"``.
        scale: factor applied to the student score.
    """

    def __init__(self, model, teacher_scale: float = 1.0, similarity: str = "dot", scale: float = 1.0):
        super().__init__(model, similarity=similarity, scale=scale)
        self.teacher_scale = teacher_scale

    def compute(self, q: Tensor, p: Tensor, teacher_scores: Tensor) -> Tensor:
        s = self.student_scores(q, p)
        t = teacher_scores * self.teacher_scale
        student_margin = s[:, :1] - s[:, 1:]
        teacher_margin = t[:, :1] - t[:, 1:]
        return nn.functional.mse_loss(student_margin, teacher_margin)

    @property
    def citation(self) -> str:
        return "Hofstätter et al. 2020, arXiv:2010.02666"


class ListwiseKLLoss(DistillLoss):
    """Listwise KL distillation over the candidate list: RocketQAv2 (Ren et al. 2021,
    "RocketQAv2: A Joint Training Method for Dense Passage Retrieval and Passage
    Re-ranking", EMNLP, arXiv:2110.07367) and Tamber et al. 2025 ("Teaching Dense Retrieval
    Models to Specialize with Listwise Distillation and LLM Data Augmentation",
    arXiv:2502.19712).

    For each query with candidates c_0 (positive), c_1..c_n:

        L = mean_batch KL( softmax(t / tau_t) || softmax(s / tau_s) )
          = mean_batch sum_i P_t(i) (log P_t(i) - log P_s(i))

    Args:
        model: the student.
        teacher_temperature: tau_t, in teacher-score units (1.0 for cross-encoder logits;
            lower sharpens the teacher's distribution).
        student_temperature: tau_s, in student-score units. Cosine students (scores in
            [-1, 1]) need a small one to express a peaked distribution: 0.05 (= scale 20,
            the MultipleNegativesRankingLoss default) by default.
        similarity: student score, ``"dot"`` (cosine for normalised models) or ``"cosine"``.

    Raises:
        ValueError: a temperature is not positive.
    """

    def __init__(
        self, model, teacher_temperature: float = 1.0, student_temperature: float = 0.05, similarity: str = "dot"
    ):
        super().__init__(model, similarity=similarity)
        if teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        self.teacher_temperature = float(teacher_temperature)
        self.student_temperature = float(student_temperature)

    def compute(self, q: Tensor, p: Tensor, teacher_scores: Tensor) -> Tensor:
        return listwise_kl(self.student_scores(q, p), teacher_scores, self.student_temperature, self.teacher_temperature)

    @property
    def citation(self) -> str:
        return "Ren et al. 2021 (RocketQAv2), arXiv:2110.07367; Tamber et al. 2025, arXiv:2502.19712"


class PairwiseDistillLoss(DistillLoss):
    """Pairwise relevance distillation, PairDistill (Huang et al. 2024, "PairDistill:
    Pairwise Relevance Distillation for Dense Retrieval", EMNLP, arXiv:2410.01383).

    For pairs (i, j) of candidates of one query, the student's preference is
    ``P_s(i > j) = sigmoid((s_i - s_j) / tau_s)`` (the softmax over the pair) and the
    teacher's is ``P_t(i > j) = sigmoid((t_i - t_j) / tau_t)`` for a pointwise teacher, or
    a pairwise teacher's probability given directly. The loss is the binary KL divergence

        L = mean_pairs [ P_t log(P_t / P_s) + (1 - P_t) log((1 - P_t) / (1 - P_s)) ]

    (= BCE(P_s, P_t) minus the teacher's entropy, so it is 0 when the preferences match).

    Args:
        model: the student.
        teacher_temperature: tau_t (teacher-score units), pointwise teachers only.
        student_temperature: tau_s (student-score units), 0.05 by default for cosine students.
        pairs: ``"all"`` (every i < j of the list) or ``"positive"`` (only (0, j): the
            positive against each negative).
        teacher: ``"pointwise"`` (labels are scores ``(batch, 1 + n)``) or ``"pairwise"``
            (labels hold the matrix ``P[i, j] = P_t(i > j)``, shape ``(batch, 1 + n, 1 + n)``
            or flattened ``(batch, (1 + n)^2)``, values in [0, 1]).
        similarity: student score, ``"dot"`` or ``"cosine"``.

    Raises:
        ValueError: bad option; :class:`TrainingDataError` pairwise labels out of [0, 1].
    """

    def __init__(
        self,
        model,
        teacher_temperature: float = 1.0,
        student_temperature: float = 0.05,
        pairs: str = "all",
        teacher: str = "pointwise",
        similarity: str = "dot",
    ):
        super().__init__(model, similarity=similarity)
        if teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        if pairs not in ("all", "positive"):
            raise ValueError(f"pairs must be 'all' or 'positive', got {pairs!r}")
        if teacher not in ("pointwise", "pairwise"):
            raise ValueError(f"teacher must be 'pointwise' or 'pairwise', got {teacher!r}")
        self.teacher_temperature = float(teacher_temperature)
        self.student_temperature = float(student_temperature)
        self.pairs = pairs
        self.teacher = teacher

    def pair_index(self, c: int, device=None) -> tuple[Tensor, Tensor]:
        """Indices ``(i, j)`` of the pairs used for a list of ``c`` candidates."""
        if self.pairs == "positive":
            j = torch.arange(1, c, device=device)
            return torch.zeros_like(j), j
        ij = torch.triu_indices(c, c, offset=1, device=device)
        return ij[0], ij[1]

    def labels_for(self, labels, n_candidates):
        if self.teacher == "pointwise":
            return super().labels_for(labels, n_candidates)
        if labels is None:
            raise TrainingDataError("PairwiseDistillLoss(teacher='pairwise') needs pairwise probabilities as labels")
        c = n_candidates
        if labels.ndim == 2 and labels.shape[1] >= c * c:
            labels = labels[:, : c * c].reshape(-1, c, c)
        if labels.ndim != 3 or labels.shape[1:] != (c, c):
            raise TrainingDataError(f"pairwise labels of shape {tuple(labels.shape)}: expected (batch, {c}, {c})")
        return labels

    def compute(self, q: Tensor, p: Tensor, teacher_scores: Tensor) -> Tensor:
        s = self.student_scores(q, p)
        i, j = self.pair_index(s.shape[1], s.device)
        if i.numel() == 0:
            raise TrainingDataError("pairwise distillation needs at least 2 candidates per query")
        student_logit = (s[:, i] - s[:, j]) / self.student_temperature
        if self.teacher == "pointwise":
            pt = torch.sigmoid((teacher_scores[:, i] - teacher_scores[:, j]) / self.teacher_temperature)
        else:
            pt = teacher_scores[:, i, j]
            if ((pt < 0) | (pt > 1)).any():
                raise TrainingDataError("pairwise teacher probabilities must lie in [0, 1]")
        bce = F.binary_cross_entropy_with_logits(student_logit, pt, reduction="none")
        entropy = -(torch.xlogy(pt, pt) + torch.xlogy(1 - pt, 1 - pt))
        return (bce - entropy).mean()

    @property
    def citation(self) -> str:
        return "Huang et al. 2024 (PairDistill), arXiv:2410.01383"


class InfoNCELoss(DistillLoss):
    """In-batch negatives InfoNCE with the provided hard negatives (van den Oord et al. 2018,
    arXiv:1807.03748; as in DPR, Karpukhin et al. 2020), computed by sentence-transformers'
    ``MultipleNegativesRankingLoss`` (wrapped, not re-implemented).

    For query b, the candidates are every passage column of every row of the batch (the
    positives and hard negatives of all queries); the target is its own positive:

        L = mean_b -log( exp(scale * sim(q_b, p_b+)) / sum_{p in batch} exp(scale * sim(q_b, p)) )

    Teacher labels are ignored, so it works alone (a baseline without a teacher) or as an
    additive term in :class:`CombinedLoss`.

    Args:
        model: the student.
        scale: inverse temperature (20 = MNRL's default, temperature 0.05).
        similarity: ``"cosine"`` (MNRL's default) or ``"dot"``.
    """

    needs_labels = False

    def __init__(self, model, scale: float = 20.0, similarity: str = "cosine"):
        super().__init__(model, similarity=similarity, scale=scale)
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        from sentence_transformers.util import cos_sim, dot_score

        self.mnrl = MultipleNegativesRankingLoss(
            model, scale=scale, similarity_fct=cos_sim if similarity == "cosine" else dot_score
        )

    def compute(self, q: Tensor, p: Tensor, teacher_scores: Tensor | None = None) -> Tensor:
        if p.shape[1] < 1:
            raise TrainingDataError("InfoNCE needs at least a positive passage column")
        return self.mnrl.compute_loss_from_embeddings([q, *p.unbind(dim=1)], None)

    @property
    def citation(self) -> str:
        return "van den Oord et al. 2018, arXiv:1807.03748 (InfoNCE); sentence-transformers MultipleNegativesRankingLoss"


class LEAFAlignmentLoss(DistillLoss):
    """Embedding alignment to a teacher embedding model, LEAF ("LEAF: Knowledge
    Distillation of Text Embedding Models with Teacher-Aligned Representations", MongoDB
    2025, arXiv:2509.12539).

    The student's embedding ``x`` (dim D_s) is mapped through a learned linear projection
    ``W x + b`` onto the teacher's space (dim D_t) and pulled onto the teacher's vector
    ``y`` of the same text:

    * ``objective="cosine"``: ``L = mean_texts (1 - cos(W x + b, y))``
    * ``objective="mse"``:    ``L = mean_texts ||W x + b - y||^2`` (squared L2, summed over dims)

    The projection is a sentence-transformers ``Dense`` module (identity activation)
    appended to the student model when D_s != D_t (``projection="auto"``), followed by a
    ``Normalize`` module for the cosine objective; so it is trained with the student and
    saved inside the model folder, and ``SentenceTransformer(path)`` reproduces the aligned
    vectors (queries by the student, documents by the teacher: an asymmetric pair).

    Labels: the teacher's embeddings, either ``(batch, k, D_t)`` or ``(batch, D_t)``
    (``k = 1``: the query column only), or packed at the end of a wider label row
    ``[teacher scores (1 + n) | k * D_t embedding values]`` (see
    :func:`attach_teacher_embeddings`); they align with the first ``k`` text columns
    (query, positive, negatives...).

    Args:
        model: the student (modified in place when a projection is added).
        teacher_dim: D_t, the teacher embedding dimension (768 for all-mpnet-base-v2).
        objective: ``"cosine"`` or ``"mse"``.
        projection: ``"auto"`` (add one when dims differ), ``"always"`` or ``"never"``.
        projection_lr: learning rate for the new projection's parameters (a fresh projection
            needs more than the encoder's 2e-5); read by ``train_student`` through
            :attr:`learning_rate_mapping`. ``None`` keeps the trainer's rate.
        projection_init: optional ``.npz`` with ``weight`` (D_t, D_s) and ``bias`` (D_t,)
            to start the projection from (e.g. :func:`fit_projection`'s least-squares fit).

    Raises:
        ValueError: bad option, or ``projection="never"`` with mismatched dimensions.
    """

    def __init__(
        self,
        model,
        teacher_dim: int,
        objective: str = "cosine",
        projection: str = "auto",
        projection_lr: float | None = 1e-3,
        projection_init: str | None = None,
    ):
        super().__init__(model, similarity="dot")
        if objective not in ("cosine", "mse"):
            raise ValueError(f"objective must be 'cosine' or 'mse', got {objective!r}")
        if projection not in ("auto", "always", "never"):
            raise ValueError(f"projection must be 'auto', 'always' or 'never', got {projection!r}")
        self.teacher_dim = int(teacher_dim)
        self.objective = objective
        self.projection_index: int | None = None
        self.learning_rate_mapping: dict[str, float] = {}
        student_dim = model.get_embedding_dimension()
        if projection == "never" and student_dim != self.teacher_dim:
            raise ValueError(f"student dim {student_dim} != teacher dim {self.teacher_dim} and projection='never'")
        if projection == "always" or (projection == "auto" and student_dim != self.teacher_dim):
            from sentence_transformers.sentence_transformer.modules import Dense, Normalize

            dense = Dense(student_dim, self.teacher_dim, bias=True, activation_function=nn.Identity())
            if projection_init:
                with np.load(projection_init) as z:
                    w, b = torch.from_numpy(z["weight"]).float(), torch.from_numpy(z["bias"]).float()
                if tuple(w.shape) != (self.teacher_dim, student_dim) or tuple(b.shape) != (self.teacher_dim,):
                    raise ValueError(
                        f"{projection_init}: weight {tuple(w.shape)} / bias {tuple(b.shape)} do not map "
                        f"{student_dim} -> {self.teacher_dim}"
                    )
                with torch.no_grad():
                    dense.linear.weight.copy_(w)
                    dense.linear.bias.copy_(b)
            self.projection_index = len(model)
            model.append(dense)
            if objective == "cosine":
                model.append(Normalize())
            if projection_lr:
                self.learning_rate_mapping[rf"(^|\.){self.projection_index}\.linear\.(weight|bias)$"] = float(projection_lr)

    #: the loss reads the teacher's embeddings from the labels (the job attaches them)
    teacher_embeddings = True

    def labels_for(self, labels, n_candidates):
        return teacher_embeddings_from_labels(labels, self.teacher_dim, n_candidates, type(self).__name__)

    def compute(self, q: Tensor, p: Tensor, teacher_embeddings: Tensor) -> Tensor:
        if teacher_embeddings.ndim == 2:
            teacher_embeddings = teacher_embeddings[:, None, :]
        k = teacher_embeddings.shape[1]
        student = torch.cat([q[:, None, :], p], dim=1)[:, :k]
        if student.shape[-1] != teacher_embeddings.shape[-1]:
            raise TrainingDataError(
                f"student embeddings of dim {student.shape[-1]} vs teacher {teacher_embeddings.shape[-1]}: "
                "no projection between them"
            )
        if self.objective == "cosine":
            return (1 - F.cosine_similarity(student, teacher_embeddings, dim=-1)).mean()
        return ((student - teacher_embeddings) ** 2).sum(-1).mean()

    @property
    def citation(self) -> str:
        return "LEAF, MongoDB 2025, arXiv:2509.12539"


class ContrastiveKDLoss(LEAFAlignmentLoss):
    """Contrastive knowledge distillation onto the teacher's embeddings, DistilCSE (Xu et
    al. 2023, "DistilCSE: Effective Knowledge Distillation For Contrastive Sentence
    Embeddings", arXiv:2112.05638): each text's student vector (through LEAF's projection
    when the dimensions differ, see :class:`LEAFAlignmentLoss`) must pick out the teacher's
    vector of the SAME text among the teacher's vectors of every aligned text of the batch:

        L = mean_i -log( exp(cos(x_i, y_i) / tau) / sum_j exp(cos(x_i, y_j) / tau) )

    where the batch's aligned texts are the first ``k`` columns of every row (``leaf.columns``).
    Unlike LEAF's pointwise cosine it also pushes a text away from the teacher's vectors of
    the other texts (the contrastive part).

    Args:
        model, teacher_dim, projection, projection_lr, projection_init: as :class:`LEAFAlignmentLoss`.
        temperature: tau (0.05).

    Raises:
        ValueError: ``temperature <= 0``, or a bad projection option.
    """

    def __init__(self, model, teacher_dim: int, temperature: float = 0.05, projection: str = "auto",
                 projection_lr: float | None = 1e-3, projection_init: str | None = None):
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        super().__init__(model, teacher_dim, objective="cosine", projection=projection, projection_lr=projection_lr,
                         projection_init=projection_init)
        self.temperature = float(temperature)

    def compute(self, q: Tensor, p: Tensor, teacher_embeddings: Tensor) -> Tensor:
        if teacher_embeddings.ndim == 2:
            teacher_embeddings = teacher_embeddings[:, None, :]
        k = teacher_embeddings.shape[1]
        student = torch.cat([q[:, None, :], p], dim=1)[:, :k].reshape(-1, q.shape[-1])
        teacher = teacher_embeddings.reshape(-1, teacher_embeddings.shape[-1]).to(student.dtype)
        if student.shape[-1] != teacher.shape[-1]:
            raise TrainingDataError(f"student embeddings of dim {student.shape[-1]} vs teacher {teacher.shape[-1]}: no projection between them")
        logits = F.normalize(student, dim=-1) @ F.normalize(teacher, dim=-1).T / self.temperature
        return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))

    @property
    def citation(self) -> str:
        return "Xu et al. 2023 (DistilCSE), arXiv:2112.05638"


def teacher_embeddings_from_labels(labels: Tensor | None, teacher_dim: int, n_candidates: int, who: str) -> Tensor:
    """The teacher's embeddings ``(batch, k, teacher_dim)`` held by ``labels``: a
    ``(batch, k, D)`` tensor, a ``(batch, D)`` one (``k = 1``), or the trailing ``k * D``
    values of packed label rows (:func:`attach_teacher_embeddings`); they belong to the
    first ``k`` text columns (query, positive, negatives...).

    Raises:
        TrainingDataError: no labels, a wrong dimension, or more embeddings than text columns.
    """
    d = int(teacher_dim)
    if labels is None:
        raise TrainingDataError(f"{who} needs the teacher's embeddings as labels")
    if labels.ndim == 3:
        if labels.shape[2] != d:
            raise TrainingDataError(f"teacher embeddings of dim {labels.shape[2]}, expected {d}")
        emb = labels
    elif labels.ndim == 2:
        k = labels.shape[1] // d
        if k == 0:
            raise TrainingDataError(
                f"labels of width {labels.shape[1]} hold no teacher embedding of dim {d} "
                "(add them with attach_teacher_embeddings)"
            )
        emb = labels[:, labels.shape[1] - k * d :].reshape(labels.shape[0], k, d)
    else:
        raise TrainingDataError(f"labels of shape {tuple(labels.shape)}: expected (batch, [k,] {d})")
    if emb.shape[1] > 1 + n_candidates:
        raise TrainingDataError(f"{emb.shape[1]} teacher embeddings for {1 + n_candidates} text columns")
    return emb


class AdaptiveMarginLoss(DistillLoss):
    """Self-distillation with adaptive relevance margins (Gienapp et al. 2024, "Learning
    Effective Representations for Retrieval Using Self-Distillation with Adaptive Relevance
    Margins", ICTIR 2025, arXiv:2407.21515): no teacher; the student's own document-document
    similarity sets the margin each (query, positive, negative) triple should have:

        m_i = cos(q, p+) - cos(q, p-_i)          (the student's margin)
        t_i = cos(p+, p-_i) / 2 + 1/2            (the adaptive target, in [0, 1])
        L   = mean_{b, i} (m_i - t_i)^2          (``error="l2"``; ``"l1"``: |m_i - t_i|)

    as in the authors' reference implementation (webis-de/adaptive-relevance-margin-loss,
    ``MarginLoss(target="adaptive")``, the target not detached). Labels are ignored, so it
    trains from qrels + hard negatives alone: a teacher-free baseline of the same budget.

    Args:
        model: the student.
        error: ``"l2"`` (default, the paper's) or ``"l1"``.

    Raises:
        ValueError: an unknown ``error``.
    """

    needs_labels = False

    def __init__(self, model, error: str = "l2"):
        super().__init__(model, similarity="cosine")
        if error not in ("l1", "l2"):
            raise ValueError(f"error must be 'l1' or 'l2', got {error!r}")
        self.error = error

    def compute(self, q: Tensor, p: Tensor, teacher_scores: Tensor | None = None) -> Tensor:
        if p.shape[1] < 2:
            raise TrainingDataError("AdaptiveMarginLoss needs a positive and at least one negative column")
        s = self.student_scores(q, p)  # cosines (similarity="cosine", scale 1)
        pn = F.normalize(p, dim=-1)
        target = torch.einsum("bd,bnd->bn", pn[:, 0], pn[:, 1:]) / 2 + 0.5
        diff = (s[:, :1] - s[:, 1:]) - target
        return diff.square().mean() if self.error == "l2" else diff.abs().mean()

    @property
    def citation(self) -> str:
        return "Gienapp et al. 2024, arXiv:2407.21515"


class _EmbeddingTeacherLoss(DistillLoss):
    """Base of the losses that read the teacher's embeddings of every text column from the
    labels (``teacher_dim`` values each, packed after the scores; the job attaches them
    from ``leaf.teacher_model`` with ``leaf.columns`` covering the query and passages)."""

    teacher_embeddings = True

    def __init__(self, model, teacher_dim: int, **kw):
        super().__init__(model, **kw)
        self.teacher_dim = int(teacher_dim)

    def labels_for(self, labels, n_candidates):
        emb = teacher_embeddings_from_labels(labels, self.teacher_dim, n_candidates, type(self).__name__)
        if emb.shape[1] != 1 + n_candidates:
            raise TrainingDataError(
                f"{type(self).__name__} needs the teacher's embedding of every text column "
                f"({1 + n_candidates}: set leaf.columns to the query, positive and negatives), got {emb.shape[1]}"
            )
        return emb


class InBatchKDLoss(_EmbeddingTeacherLoss):
    """In-batch knowledge distillation, TCT-ColBERT style (Lin et al. 2021, "In-Batch
    Negatives for Knowledge Distillation with Tightly-Coupled Teachers for Dense Retrieval",
    RepL4NLP, arXiv:2010.11386): the teacher scores EVERY (query, passage) pair of the batch,
    not only a query's own candidates, and the student matches the teacher's distribution
    over all of them. TCT-ColBERT's teacher is ColBERT; here it is an embedding teacher
    whose vectors travel in the labels (all-mpnet-base-v2 in this project), so the B x B(1+n)
    teacher scores cost one matrix product. For query b over the batch's passages P:

        L = mean_b KL( softmax(T_b / tau_t) || softmax(S_b / tau_s) ),
        T = cos(q^t, P^t),  S = q P^T (student, dot = cosine for normalised models)

    Args:
        model: the student.
        teacher_dim: the teacher's embedding dimension (filled in by the job).
        teacher_temperature / student_temperature: tau_t, tau_s (0.05: cosine scores).

    Raises:
        ValueError: a temperature is not positive.
    """

    def __init__(self, model, teacher_dim: int, teacher_temperature: float = 0.05, student_temperature: float = 0.05):
        super().__init__(model, teacher_dim)
        if teacher_temperature <= 0 or student_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        self.teacher_temperature = float(teacher_temperature)
        self.student_temperature = float(student_temperature)

    def compute(self, q: Tensor, p: Tensor, teacher_embeddings: Tensor) -> Tensor:
        t = F.normalize(teacher_embeddings, dim=-1)
        t_q, t_p = t[:, 0], t[:, 1:].reshape(-1, t.shape[-1])
        s_all = q @ p.reshape(-1, p.shape[-1]).T  # (B, B(1+n))
        t_all = t_q @ t_p.T
        return listwise_kl(s_all, t_all, self.student_temperature, self.teacher_temperature)

    @property
    def citation(self) -> str:
        return "Lin et al. 2021 (TCT-ColBERT), arXiv:2010.11386"


class RKDLoss(_EmbeddingTeacherLoss):
    """Relational knowledge distillation (Park et al. 2019, "Relational Knowledge
    Distillation", CVPR, arXiv:1904.05068): the student keeps the teacher's distances and
    angles between the batch's texts (queries and passages together), not its coordinates,
    so the two spaces may have different dimensions (no projection). With x_i the student's
    and y_i the teacher's vectors of the N texts of the batch:

        distance: psi_D(i, j) = ||x_i - x_j|| / mu,  mu = mean over i != j of ||x_i - x_j||
        angle:    psi_A(i, j, k) = < (x_i - x_j) / ||x_i - x_j||, (x_k - x_j) / ||x_k - x_j|| >
        L = w_d * mean Huber(psi_D^s - psi_D^t) + w_a * mean Huber(psi_A^s - psi_A^t)

    (Huber = smooth L1 with beta 1, as in the paper; its weights 1 and 2.)

    Args:
        model: the student.
        teacher_dim: the teacher's embedding dimension (filled in by the job).
        distance_weight / angle_weight: w_d, w_a.

    Raises:
        ValueError: a negative weight, or both zero.
    """

    def __init__(self, model, teacher_dim: int, distance_weight: float = 1.0, angle_weight: float = 2.0):
        super().__init__(model, teacher_dim)
        if distance_weight < 0 or angle_weight < 0 or distance_weight + angle_weight == 0:
            raise ValueError("distance_weight and angle_weight must be >= 0, not both 0")
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    @staticmethod
    def distances(x: Tensor) -> Tensor:
        """psi_D: pairwise Euclidean distances ``(N, N)`` divided by their mean over i != j."""
        d = torch.cdist(x, x)
        n = x.shape[0]
        mu = d.sum() / max(n * (n - 1), 1)
        return d / mu.clamp_min(1e-12)

    @staticmethod
    def angles(x: Tensor) -> Tensor:
        """psi_A: ``(N, N, N)`` cosines of the angle at j between i and k."""
        e = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=-1)  # e[j, i] = unit(x_i - x_j)
        return torch.einsum("jid,jkd->jik", e, e)

    def compute(self, q: Tensor, p: Tensor, teacher_embeddings: Tensor) -> Tensor:
        x = torch.cat([q[:, None, :], p], dim=1).reshape(-1, q.shape[-1])
        y = teacher_embeddings.reshape(-1, teacher_embeddings.shape[-1]).to(x.dtype)
        loss = x.new_zeros(())
        if self.distance_weight:
            loss = loss + self.distance_weight * F.smooth_l1_loss(self.distances(x), self.distances(y).detach())
        if self.angle_weight:
            loss = loss + self.angle_weight * F.smooth_l1_loss(self.angles(x), self.angles(y).detach())
        return loss

    @property
    def citation(self) -> str:
        return "Park et al. 2019 (RKD), arXiv:1904.05068"


class CombinedLoss(DistillLoss):
    """A weighted sum of loss terms sharing one student forward pass.

    ``forward`` embeds the batch once, hands each term its part of the (packed) labels,
    and returns a dict ``{"<i>_<class>": weight * term}``: the sentence-transformers
    trainer sums the dict into the training loss and logs each component.
    :meth:`compute` returns the summed tensor.

    Args:
        model: the student (the same object every term holds).
        terms: ``[(loss, weight), ...]``.

    Raises:
        ValueError: no terms, or a term built for another model.
    """

    def __init__(self, model, terms: Sequence[tuple[DistillLoss, float]]):
        super().__init__(model)
        if not terms:
            raise ValueError("CombinedLoss needs at least one term")
        for t, _ in terms:
            if t.model is not model:
                raise ValueError(f"{type(t).__name__} was built for another model")
        self.term_modules = nn.ModuleList([t for t, _ in terms])
        self.weights = [float(w) for _, w in terms]
        self.learning_rate_mapping: dict[str, float] = {}
        for t in self.term_modules:
            self.learning_rate_mapping.update(getattr(t, "learning_rate_mapping", {}))

    @property
    def terms(self) -> list[tuple[DistillLoss, float]]:
        return list(zip(self.term_modules, self.weights))

    def _parts(self, q: Tensor, p: Tensor, labels: Tensor | None) -> dict[str, Tensor]:
        out = {}
        for i, (t, w) in enumerate(self.terms):
            out[f"{i}_{type(t).__name__}"] = w * t.compute(q, p, t.labels_for(labels, p.shape[1]))
        return out

    def forward(self, sentence_features, labels):
        features = list(sentence_features)
        self.check_finite(labels)
        q, p = self.embed(features)
        return self._parts(q, p, labels.to(q.dtype) if labels is not None else None)

    def compute(self, q: Tensor, p: Tensor, labels: Tensor | None) -> Tensor:
        return torch.stack(list(self._parts(q, p, labels).values())).sum()

    @property
    def citation(self) -> str:
        return "; ".join(t.citation for t in self.term_modules)


LOSSES: dict[str, type[DistillLoss]] = {
    "margin_mse": MarginMSELoss,
    "listwise_kl": ListwiseKLLoss,
    "pairwise": PairwiseDistillLoss,
    "infonce": InfoNCELoss,
    "leaf": LEAFAlignmentLoss,
    "adaptive_margin": AdaptiveMarginLoss,
    "inbatch_kd": InBatchKDLoss,
    "rkd": RKDLoss,
    "contrastive_kd": ContrastiveKDLoss,
}


def learning_rate_mapping(loss) -> dict[str, float]:
    """Per-parameter learning rates a loss asks for (regex -> lr), for the trainer's
    ``learning_rate_mapping`` argument (empty for most losses)."""
    return dict(getattr(loss, "learning_rate_mapping", {}) or {})


# ---------------------------------------------------------------------------------------
# LEAF helpers: teacher embeddings as labels, least-squares projection start
# ---------------------------------------------------------------------------------------
def attach_teacher_embeddings(
    examples: list[dict],
    teacher,
    columns: Sequence[str] = ("query",),
    batch_size: int = 32,
) -> int:
    """Append the teacher's embeddings of ``columns`` to each example's ``label`` (packed
    labels, see the module docstring), in place.

    Args:
        examples: from :func:`~retrieval_distill.distill.data.build_examples` (or any dicts
            with text columns; a missing ``label`` starts empty).
        teacher: an :class:`~retrieval_distill.models.Encoder`-like object
            (``encode_queries`` / ``encode_documents`` -> float32 ``(n, D_t)``) or a
            model name/path (loaded as an ``Encoder``).
        columns: text columns to embed, in the example's column order starting from
            ``query`` (the loss aligns them with the first ``k`` columns).
        batch_size: encoding batch size.

    Returns:
        D_t, the teacher dimension (pass it as the ``leaf`` loss's ``teacher_dim``).

    Raises:
        KeyError: a column is missing from an example.
    """
    if isinstance(teacher, str):
        from retrieval_distill.models.encoder import Encoder

        teacher = Encoder(teacher, batch_size=batch_size)
    blocks = []
    for col in columns:
        texts = [ex[col] for ex in examples]
        enc = teacher.encode_queries if col == "query" else teacher.encode_documents
        blocks.append(np.asarray(enc(texts), dtype=np.float32))
    dim = blocks[0].shape[1]
    for n, ex in enumerate(examples):
        label = list(ex.get("label", []))
        for b in blocks:
            label.extend(b[n].tolist())
        ex["label"] = label
    return dim


def fit_projection(student_embeddings: np.ndarray, teacher_embeddings: np.ndarray, ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Ridge least-squares linear map from student to teacher space (a start for LEAF's
    projection): minimises ``||X W^T + b - Y||^2 + ridge ||W||^2``.

    Args:
        student_embeddings: X, float32 ``(n, D_s)``.
        teacher_embeddings: Y, float32 ``(n, D_t)`` of the same texts.
        ridge: L2 penalty on W.

    Returns:
        ``weight`` float32 ``(D_t, D_s)`` and ``bias`` float32 ``(D_t,)``.
    """
    # torch.linalg, not numpy.linalg: numpy's OpenBLAS LAPACK solve of a few hundred dims
    # segfaults on the main thread once Pyserini has started the JVM in the process
    # (measured here: np.linalg.solve on 384x384 after BM25Searcher(...) -> SIGSEGV).
    x = torch.as_tensor(np.asarray(student_embeddings), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(teacher_embeddings), dtype=torch.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} student vs {y.shape[0]} teacher embeddings")
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    a = xc.T @ xc + ridge * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(a, xc.T @ yc).T  # (D_t, D_s)
    b = ym - w @ xm
    return w.numpy().astype(np.float32), b.numpy().astype(np.float32)


class _ProbeModel(nn.Module):
    """A stand-in student for :func:`check_loss_specs`: builds a loss without loading weights."""

    def get_embedding_dimension(self) -> int:
        return 2

    def append(self, module) -> None:  # LEAF's projection="always"
        pass

    def __len__(self) -> int:
        return 1


def check_loss_specs(specs) -> None:
    """Check two-tower loss specs (``LossSpec``: name, weight, options) before anything is
    loaded or trained: known names, option names the loss takes, ``teacher_scale`` a
    positive number or ``"auto"``, and the values the loss's constructor checks
    (temperatures, weights...), each error naming the loss.

    Raises:
        ValueError: ``train.losses[i] (name): ...``.
    """
    import inspect

    if not specs:
        raise ValueError(f"train.losses is empty: name at least one of {sorted(LOSSES)}")
    for i, spec in enumerate(specs):
        where = f"train.losses[{i}] ({spec.name})"
        if spec.name not in LOSSES:
            raise ValueError(f"train.losses[{i}]: unknown loss {spec.name!r}; known: {sorted(LOSSES)}")
        cls = LOSSES[spec.name]
        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "model")]
        unknown = sorted(set(spec.options) - set(params))
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {unknown}; options: {params}")
        opts = dict(spec.options)
        if "teacher_scale" in opts:
            ts = opts["teacher_scale"]
            if ts == "auto":
                opts["teacher_scale"] = 1.0
            elif isinstance(ts, bool) or not isinstance(ts, (int, float)) or not ts > 0 or ts != ts or ts == float("inf"):
                raise ValueError(f"{where}: teacher_scale must be a positive number or 'auto', got {ts!r}")
        if getattr(cls, "teacher_embeddings", False):
            opts.setdefault("teacher_dim", 2)
        try:
            cls(_ProbeModel(), **opts)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: {e}") from None
