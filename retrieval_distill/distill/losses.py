"""Distillation losses: one small ``torch.nn.Module`` each, with its citation.

All losses follow the sentence-transformers loss interface, so the sentence-transformers
trainer runs the loop: ``forward(sentence_features, labels)`` where ``sentence_features``
is ``[query, passage_0, passage_1, ..., passage_n]`` (each a tokenised batch) and
``labels`` is a float tensor of shape ``(batch, 1 + n)``: the teacher's scores for the same
passages, column 0 being the positive (from qrels) and columns 1..n the negatives.

Each loss implements ``compute(q, p, teacher_scores)`` on embeddings, with
``q: (batch, dim)``, ``p: (batch, 1 + n, dim)``, ``teacher_scores: (batch, 1 + n)``, so it
can also be used without the trainer.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn


class DistillLoss(nn.Module):
    """Base class: embeds the features with the student, then calls :meth:`compute`.

    Args:
        model: the student ``SentenceTransformer``.
        similarity: ``"dot"`` or ``"cosine"`` student score.
        scale: multiplies the student score (temperature inverse), default 1.
    """

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
        in one forward pass.
        """
        from sentence_transformers.base.losses.merged_forward import embed_columns

        embs = embed_columns(self.model, list(sentence_features))
        return embs[0], torch.stack(embs[1:], dim=1)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        q, p = self.embed(sentence_features)
        return self.compute(q, p, labels.to(q.dtype))

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
