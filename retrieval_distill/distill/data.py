"""Training examples for distillation: (query, positive, negative_1..n) with teacher scores.

Positives come from qrels (grade > 0); negatives from the candidates (BM25 and dense top-k,
hard negatives), never a judged-relevant document. Each example carries the teacher's
score for every passage, in the same order, as the ``label`` column that the
sentence-transformers data collator hands to the loss.
"""

from __future__ import annotations

import math
import random

from retrieval_distill.data.collections import Collection


class TrainingDataError(ValueError):
    """The training set cannot be built (no examples, missing or non-finite teacher scores)."""


def build_examples(
    collection: Collection,
    qids: list[str],
    candidates: dict[str, list[str]],
    teacher_scores: dict[str, dict[str, float]],
    n_negatives: int = 3,
    negative_depth: int = 30,
    seed: int = 13,
    positive_texts: dict[str, dict[str, str]] | None = None,
) -> list[dict]:
    """Build n-tuple examples for margin-MSE / listwise losses.

    Args:
        collection: corpus, queries and qrels (qrels of the training split).
        qids: training queries.
        candidates: qid -> candidate docids (any order; ranked by teacher score here).
        teacher_scores: qid -> {docid: teacher score} covering positives and candidates.
        n_negatives: negatives per example.
        negative_depth: negatives are sampled from the teacher's top ``negative_depth``
            non-relevant candidates (hard negatives scored by the teacher).
        seed: sampling seed.
        positive_texts: qid -> {docid: text} replacing a positive's corpus text for that
            query (the Inverse Cloze Task's masked documents, ``rd queries synth --kinds
            ict``); the teacher's score stays the one it gave the corpus document.

    Returns:
        dicts with keys ``query``, ``positive``, ``negative_1``..``negative_n`` (texts) and
        ``label`` (list of 1 + n floats: teacher scores, positive first).

    Raises:
        TrainingDataError: a score is NaN/inf, a positive has no teacher score, or no example
            could be built.
    """
    rng = random.Random(seed)
    examples: list[dict] = []
    skipped_no_pos = 0
    for qid in qids:
        rel = {d for d, g in collection.qrels.get(qid, {}).items() if g > 0}
        scores = teacher_scores.get(qid, {})
        for d, s in scores.items():
            if not math.isfinite(s):
                raise TrainingDataError(f"teacher score for ({qid}, {d}) is {s}: not finite")
        if not rel:
            skipped_no_pos += 1
            continue
        pool = [d for d in candidates.get(qid, []) if d not in rel and d in scores]
        pool.sort(key=lambda d: -scores[d])
        pool = pool[:negative_depth]
        if len(pool) < n_negatives:
            continue
        for pos in sorted(rel):
            if pos not in scores:
                raise TrainingDataError(f"positive ({qid}, {pos}) has no teacher score")
            negs = rng.sample(pool, n_negatives)
            text = (positive_texts or {}).get(qid, {}).get(pos)
            ex = {"query": collection.queries[qid], "positive": text if text is not None else collection.doc_text(pos)}
            for i, n in enumerate(negs, 1):
                ex[f"negative_{i}"] = collection.doc_text(n)
            ex["label"] = [float(scores[pos])] + [float(scores[n]) for n in negs]
            examples.append(ex)
    if not examples:
        raise TrainingDataError(
            f"empty training set: {len(qids)} queries, {skipped_no_pos} without a positive, "
            f"none with {n_negatives} scored candidates"
        )
    rng.shuffle(examples)
    return examples


def read_positive_texts(path, collection: Collection) -> dict[str, dict[str, str]]:
    """Read a ``positives.jsonl`` (``qid``, ``docid``, ``text`` per line; written by
    ``rd queries synth --kinds ict``).

    Returns:
        qid -> {docid: text}.

    Raises:
        FileNotFoundError: no such file. DataFormatError: a malformed line, or a (qid, docid)
            that is not a positive in ``collection``'s qrels (``file:line``).
    """
    from retrieval_distill.data.collections import DataFormatError, read_jsonl

    out: dict[str, dict[str, str]] = {}
    for lineno, obj in read_jsonl(path):
        q, d, t = obj.get("qid"), obj.get("docid"), obj.get("text")
        if not isinstance(q, str) or not isinstance(d, str) or not isinstance(t, str) or not t.strip():
            raise DataFormatError(f"{path}:{lineno}: a positive text needs string 'qid', 'docid' and a non-empty 'text'")
        if collection.qrels.get(q, {}).get(d, 0) <= 0:
            raise DataFormatError(f"{path}:{lineno}: ({q}, {d}) is not a positive in the qrels of {collection.name}")
        out.setdefault(q, {})[d] = t
    return out
