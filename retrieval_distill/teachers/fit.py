"""Train a cross-encoder teacher from a bi-encoder backbone (``rd teacher fit``).

Two optional stages, both with the sentence-transformers ``CrossEncoderTrainer``:

1. **Teacher of the teacher** (optional, ``distill_scores``): regress the scores of an
   existing teacher (an ensemble's fused scores over many queries' candidate lists) with
   MSE (``sentence_transformers.cross_encoder.losses.MSELoss``), so the cross-encoder starts
   from the ensemble's judgement on far more pairs than the qrels cover.
2. **Qrels with mined hard negatives**: for each training query, every judged-relevant
   document is a positive (label 1) and the top-ranked non-relevant candidates (BM25 or
   dense top-k, the "hard negatives") are negatives (label 0); binary cross-entropy
   (``BinaryCrossEntropyLoss``), as in Nogueira & Cho 2019 and the sentence-transformers
   MS MARCO cross-encoder recipe.

The classifier head on top of the backbone is initialised from ``seed``; everything random
is seeded. The model is written to a temporary folder and renamed into place, with
``fit.json`` (backbone, data sizes, steps, seed, wall time).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

from retrieval_distill.utils import write_json_atomic

log = logging.getLogger(__name__)


def mine_examples(
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    candidates: dict[str, list[str]],
    doc_text: Callable[[str], str],
    negatives: int = 4,
    seed: int = 13,
) -> dict[str, list]:
    """(query, passage, label) rows: judged positives (grade > 0) and the top ``negatives``
    non-relevant candidates of each query (candidate lists in rank order).

    Returns:
        ``{"query": [...], "passage": [...], "label": [float, ...]}``, shuffled with ``seed``.
    """
    rows = []
    for q, text in queries.items():
        pos = [d for d, g in qrels.get(q, {}).items() if g > 0]
        if not pos:
            continue
        judged = set(qrels.get(q, {}))
        neg = [d for d in candidates.get(q, []) if d not in judged][:negatives]
        rows += [(text, doc_text(d), 1.0) for d in pos] + [(text, doc_text(d), 0.0) for d in neg]
    random.Random(seed).shuffle(rows)
    return {"query": [r[0] for r in rows], "passage": [r[1] for r in rows], "label": [r[2] for r in rows]}


def fit_cross_encoder(
    backbone: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    candidates: dict[str, list[str]],
    doc_text: Callable[[str], str],
    output: str | os.PathLike,
    *,
    negatives: int = 4,
    epochs: float = 1.0,
    batch_size: int = 16,
    lr: float = 2e-5,
    max_length: int = 256,
    max_steps: int = -1,
    seed: int = 13,
    distill_scores: dict[str, dict[str, float]] | None = None,
    distill_epochs: float = 1.0,
) -> Path:
    """Train a cross-encoder and save it to ``output``.

    Args:
        backbone: a bi-encoder or encoder model (path / alias / hub name), e.g. all-MiniLM-L6-v2.
        queries, qrels: training queries and their qrels (qid -> {docid: grade}).
        candidates: qid -> ranked candidate docids (hard negatives come from here).
        doc_text: docid -> passage text.
        output: model folder to write (replaced atomically).
        negatives: hard negatives per query.
        epochs, batch_size, lr, max_length, max_steps, seed: trainer settings
            (``max_steps > 0`` overrides epochs).
        distill_scores: optional qid -> {docid: teacher score} for stage 1 (MSE).
        distill_epochs: epochs of stage 1.

    Returns:
        the model folder.

    Raises:
        ModelNotFoundError: the backbone cannot be resolved.
        ValueError: no training rows (no query with positive qrels).
    """
    import torch
    from datasets import Dataset
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, MSELoss

    from retrieval_distill.models.resolve import model_fingerprint, resolve_model

    t0 = time.perf_counter()
    output = Path(output)
    torch.manual_seed(seed)
    random.seed(seed)
    model = CrossEncoder(resolve_model(backbone), num_labels=1, max_length=max_length, device="cpu")
    rows = mine_examples(queries, qrels, candidates, doc_text, negatives, seed)
    if not rows["query"]:
        raise ValueError("fit_cross_encoder: no training query has positive qrels")
    work = output.with_name(output.name + ".work")
    shutil.rmtree(work, ignore_errors=True)

    def args(name: str, ep: float) -> CrossEncoderTrainingArguments:
        return CrossEncoderTrainingArguments(
            output_dir=str(work / name),
            num_train_epochs=ep,
            max_steps=max_steps,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            warmup_ratio=0.1,
            seed=seed,
            data_seed=seed,
            save_strategy="no",
            logging_steps=10,
            report_to="none",
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=False,
        )

    card = {"backbone": backbone, "backbone_fingerprint": model_fingerprint(backbone), "seed": seed, "negatives": negatives,
            "max_length": max_length, "batch_size": batch_size, "lr": lr, "stages": []}  # fmt: skip
    if distill_scores:
        dq, dp, dl = [], [], []
        for q, scores in distill_scores.items():
            if q in queries:
                for d, s in scores.items():
                    dq.append(queries[q])
                    dp.append(doc_text(d))
                    dl.append(float(s))
        ds = Dataset.from_dict({"query": dq, "passage": dp, "label": dl}).shuffle(seed=seed)
        tr = CrossEncoderTrainer(model=model, args=args("distill", distill_epochs), train_dataset=ds, loss=MSELoss(model))
        out = tr.train()
        card["stages"].append({"stage": "distill", "loss": "MSELoss", "pairs": len(dq), "steps": out.global_step, "train_loss": out.training_loss})
    ds = Dataset.from_dict(rows)
    tr = CrossEncoderTrainer(model=model, args=args("qrels", epochs), train_dataset=ds, loss=BinaryCrossEntropyLoss(model))
    out = tr.train()
    card["stages"].append(
        {"stage": "qrels", "loss": "BinaryCrossEntropyLoss", "rows": len(rows["query"]), "positives": int(sum(rows["label"])),
         "steps": out.global_step, "train_loss": out.training_loss}  # fmt: skip
    )
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    card["seconds"] = round(time.perf_counter() - t0, 1)
    write_json_atomic(tmp / "fit.json", card)
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    shutil.rmtree(work, ignore_errors=True)
    log.info("cross-encoder written to %s (%s)", output, card)
    return output
