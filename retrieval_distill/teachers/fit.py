"""Fit teachers here: a cross-encoder from a bi-encoder backbone (``rd teacher fit``), and a
ColBERT projection on a frozen encoder (``rd teacher fit-colbert``, :func:`fit_colbert_projection`).

The cross-encoder fit has two stages, both with the sentence-transformers ``CrossEncoderTrainer``:

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

import numpy as np

from retrieval_distill.utils import write_json_atomic

log = logging.getLogger(__name__)


def _refuse_foreign_output(output: Path, command: str) -> None:
    """Raise FileExistsError when ``output`` is a file or a non-empty folder that an earlier fit
    did not write (no ``fit.json``): a fit replaces its output folder, never anything else."""
    if output.is_file() or (output.is_dir() and any(output.iterdir()) and not (output / "fit.json").is_file()):
        raise FileExistsError(f"{output}: exists and is not a {command} output folder (no fit.json); not replacing it")


def query_tuples(
    queries: dict[str, str], qrels: dict[str, dict[str, int]], candidates: dict[str, list[str]], negatives: int
) -> list[tuple[str, list[str], list[str]]]:
    """``(qid, positives, hard negatives)`` for every query with a judged positive (grade > 0):
    the negatives are the top ``negatives`` candidates (rank order) that are not judged at all."""
    out = []
    for q in queries:
        pos = [d for d, g in qrels.get(q, {}).items() if g > 0]
        if pos:
            judged = set(qrels.get(q, {}))
            out.append((q, pos, [d for d in candidates.get(q, []) if d not in judged][:negatives]))
    return out


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
    for q, pos, neg in query_tuples(queries, qrels, candidates, negatives):
        text = queries[q]
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
        FileExistsError: ``output`` is a file, or a non-empty folder without ``fit.json``
            (checked before any work; nothing is written).
    """
    import torch
    from datasets import Dataset
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, MSELoss

    from retrieval_distill.models.resolve import model_fingerprint, resolve_model

    t0 = time.perf_counter()
    output = Path(output)
    _refuse_foreign_output(output, "rd teacher fit")
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


def _pad(mats: list):
    """Stack variable-length token matrices (torch's ``pad_sequence``, zero padding):
    (len, max_n, dim) float32 and a bool mask of the real rows."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    x = pad_sequence([torch.from_numpy(m.astype(np.float32)) for m in mats], batch_first=True)
    lengths = torch.tensor([m.shape[0] for m in mats])
    return x, torch.arange(x.shape[1])[None, :] < lengths[:, None]


def fit_colbert_projection(
    model: str,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    candidates: dict[str, list[str]],
    doc_text: Callable[[str], str],
    output: str | os.PathLike,
    *,
    dim: int = 128,
    negatives: int = 4,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 13,
    options: dict | None = None,
    progress: bool = True,
) -> Path:
    """Fit the linear projection of a ColBERT (MaxSim) teacher on a frozen encoder.

    The encoder's token hidden states (dim ``hidden``) of every training query and document are
    computed once (float16, length-sorted batches); a projection ``W`` (``dim`` x ``hidden``,
    initialised with the top ``dim`` right singular vectors of a sample of document tokens, so
    training starts from the best rank-``dim`` approximation of the zero-shot geometry) is then
    trained with Adam: each query's MaxSim scores against its positive, its ``negatives``
    mined hard negatives and every other document of the batch (in-batch negatives) go through
    softmax cross-entropy with the positive as target (ColBERT's training objective, Khattab &
    Zaharia 2020, with in-batch negatives as in ColBERTv2, Santhanam et al. 2022). Only ``W``
    learns: fitting the whole encoder is what the cross-encoder fit does, at far higher cost.

    One training tuple per query and epoch (a positive drawn at random when a query has several,
    so a query never meets its own other positive as an in-batch negative).

    Args:
        model: encoder (path / alias / hub name), e.g. all-mpnet-base-v2.
        queries, qrels: training queries and their qrels (qid -> {docid: grade}).
        candidates: qid -> ranked candidate docids (hard negatives: top non-judged ones).
        doc_text: docid -> passage text.
        output: folder to write: ``projection.pt`` (float32 (dim, hidden) tensor),
            ``teacher.json`` (the colbert spec naming it; pass it to ``rd teacher score -t``),
            ``fit.json`` (data sizes, loss per epoch, seconds). Replaced atomically.
        dim: projected token dimension (128 in ColBERT).
        negatives, epochs, batch_size, lr, seed: training settings.
        options: other colbert options (``doc_maxlen``, ``markers``...); ``projection`` is set here.

    Returns:
        the output folder.

    Raises:
        ModelNotFoundError: the encoder cannot be resolved.
        ValueError: no training query has a positive, ``dim`` exceeds the hidden size, or a
            setting is out of range (``dim``/``batch_size`` < 1, ``epochs``/``negatives`` < 0).
        FileExistsError: ``output`` is a file, or a non-empty folder without ``fit.json``
            (checked before any work; nothing is written).
    """
    import torch

    from retrieval_distill.teachers.base import TeacherSpec
    from retrieval_distill.teachers.colbert import ColBERTTeacher

    t0 = time.perf_counter()
    output = Path(output).absolute()
    for name, v, least in (("dim", dim, 1), ("epochs", epochs, 0), ("batch_size", batch_size, 1), ("negatives", negatives, 0)):
        if v < least:
            raise ValueError(f"{name} must be >= {least}, got {v}")
    _refuse_foreign_output(output, "fit-colbert")
    opts = {k: v for k, v in (options or {}).items() if k != "projection"}
    teacher = ColBERTTeacher(TeacherSpec(kind="colbert", model=model, options=opts))
    hidden = int(teacher.model.config.hidden_size)
    if dim > hidden:
        raise ValueError(f"dim {dim} exceeds the encoder's hidden size {hidden}")
    tuples = query_tuples(queries, qrels, candidates, negatives)
    if not tuples:
        raise ValueError("fit_colbert_projection: no training query has positive qrels")
    qids = [t[0] for t in tuples]
    docids = list(dict.fromkeys(d for _, pos, neg in tuples for d in pos + neg))
    log.info("colbert fit: %d queries, %d documents: encoding token states", len(qids), len(docids))
    qe = dict(zip(qids, (e.astype(np.float16) for e in teacher._embed([queries[q] for q in qids], True, raw=True))))
    de: dict[str, np.ndarray] = {}
    chunk = 256
    from tqdm.auto import tqdm

    for i in tqdm(range(0, len(docids), chunk), desc="document token states", unit="chunk", disable=not progress):
        part = docids[i : i + chunk]
        de.update(zip(part, (e.astype(np.float16) for e in teacher._embed([doc_text(d) for d in part], False, raw=True))))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    sample = np.concatenate([de[d] for d in rng.choice(docids, min(len(docids), 2000), replace=False)]).astype(np.float32)
    _, _, vt = np.linalg.svd(sample[rng.choice(len(sample), min(len(sample), 50_000), replace=False)], full_matrices=False)
    w = torch.nn.Parameter(torch.from_numpy(vt[:dim].copy()))  # (dim, hidden)
    opt = torch.optim.Adam([w], lr=lr)

    def maxsim(qx, qm, dx, dm):  # (B, m, h), (B, m), (N, n, h), (N, n) -> (B, N)
        qp = torch.nn.functional.normalize(qx @ w.T, dim=-1)
        dp = torch.nn.functional.normalize(dx @ w.T, dim=-1)
        s = torch.einsum("bid,jtd->bjit", qp, dp).masked_fill(~dm[None, :, None, :], -1e4).amax(-1)
        return (s * qm[:, None, :]).sum(-1)

    history = []
    for ep in range(epochs):
        order = rng.permutation(len(tuples))
        total, n = 0.0, 0
        for a in range(0, len(order), batch_size):
            batch = [tuples[i] for i in order[a : a + batch_size]]
            qx, qm = _pad([qe[q] for q, _, _ in batch])
            docs, target = [], []
            for _, pos, neg in batch:
                target.append(len(docs))
                docs += [pos[int(rng.integers(len(pos)))]] + neg
            dx, dm = _pad([de[d] for d in docs])
            scores = maxsim(qx, qm.float(), dx, dm)
            loss = torch.nn.functional.cross_entropy(scores, torch.tensor(target))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
            n += len(batch)
        history.append({"epoch": ep + 1, "loss": round(total / n, 5)})
        log.info("colbert fit epoch %d: loss %.4f", ep + 1, total / n)
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        torch.save(w.detach().clone(), tmp / "projection.pt")
        # the projection is named relative to teacher.json (parse_spec resolves it against the
        # spec file's folder), so the output folder can be moved or copied to another machine
        name = output.name if output.name.startswith("colbert") else f"colbert-{output.name}"
        spec = {"kind": "colbert", "name": name, "model": model, "options": {**opts, "projection": "projection.pt"}}
        write_json_atomic(tmp / "teacher.json", spec)
        card = {"model": model, "dim": dim, "hidden": hidden, "queries": len(tuples), "documents": len(docids), "negatives": negatives,
                "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "init": "top singular vectors of document tokens",
                "loss_history": history, "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        write_json_atomic(tmp / "fit.json", card)
        if output.exists():
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("colbert projection written to %s (%s)", output, card)
    return output
