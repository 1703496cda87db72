"""Dev evaluation of a query encoder against frozen document vectors (query-side training).

Kept apart from :mod:`retrieval_distill.distill.query_side` because it subclasses the
sentence-transformers ``BaseEvaluator`` (importing sentence-transformers costs seconds; the
config and CLI modules import nothing heavy). It must be a ``BaseEvaluator``: the
sentence-transformers 6 trainer wraps any other evaluator in a ``SequentialEvaluator``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from retrieval_distill.distill.query_side import FrozenDocuments


class FrozenCorpusEvaluator(BaseEvaluator):
    """Dev evaluation against the frozen documents: encode the dev queries with the model
    being trained, exhaustive inner product over the corpus vectors, ranx metrics. Costs one
    query encoding and one matrix product (no document is encoded), so it can run every
    epoch. Primary metric ``{name}_ndcg@10``; a sentence-transformers evaluator
    (``__call__(model, output_path, epoch, steps) -> dict``).

    Args:
        queries: qid -> text (judged dev queries).
        qrels: qid -> {docid: grade}.
        documents: :class:`FrozenDocuments`.
        metrics: ranx metric names; the first is primary.
        name: metric prefix.
        batch_size: query encoding batch size.
    """

    def __init__(self, queries: dict[str, str], qrels: dict, documents: FrozenDocuments,
                 metrics: Sequence[str] = ("ndcg@10", "mrr@10", "recall@100"), name: str = "dev", batch_size: int = 64):
        super().__init__()
        self.queries = dict(queries)
        self.qrels = qrels
        self.documents = documents
        self.metrics = list(metrics)
        self.name = name
        self.batch_size = batch_size
        self.primary_metric = f"{name}_{self.metrics[0]}"

    def run(self, model, k: int = 100) -> dict[str, dict[str, float]]:
        """The dev run: qid -> {docid: score}, top ``k``."""
        qids = list(self.queries)
        import torch

        with torch.no_grad():
            qv = model.encode([self.queries[x] for x in qids], batch_size=self.batch_size, convert_to_numpy=True,
                              show_progress_bar=False)
        scores = np.asarray(qv, dtype=np.float32) @ self.documents.emb.T
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        docids = self.documents.docids
        return {q: {docids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(qids)}

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        from retrieval_distill.evaluation.metrics import evaluate

        res = evaluate(self.qrels, self.run(model), self.metrics)
        overall = res.to_dict(per_query=False)["overall"]
        metrics = {f"{self.name}_{m}": float(overall[m]) for m in self.metrics}
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics
