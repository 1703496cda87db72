"""Query-side distillation: train only the query tower against a frozen document index.

The document vectors of an existing index (its encoding folder, written by ``rd index
build`` / :func:`retrieval_distill.index.build.encode_corpus`) are loaded once and never
re-encoded; a query encoder is trained so that its vectors rank that frozen corpus well.
This is query-side fine-tuning as in DensePhrases (Lee et al. 2021, "Learning Dense
Representations of Phrases at Scale", ACL, arXiv:2012.12624, section 4.3), with the
distillation terms of this package computed over the teacher's candidate lists. Because
every corpus vector is fixed, the softmax of InfoNCE can run over the *whole* corpus (one
``(batch, n_docs)`` matrix product per step) instead of in-batch negatives.

Two set-ups, one code path:

* **symmetric index, query-side student**: documents were encoded by the student init
  (e.g. all-MiniLM-L6-v2); only its query route is fine-tuned. The index is served
  unchanged beside the new query encoder.
* **asymmetric** (DESIGN.md): documents were encoded by an embedding teacher (e.g.
  all-mpnet-base-v2, 768-d); the query encoder is a small student (MiniLM, 384-d) plus a
  linear map into the teacher's space, initialised by ridge regression onto the teacher's
  own query vectors (:func:`~retrieval_distill.distill.losses.fit_projection`) and saved in
  the model folder as a sentence-transformers ``Dense`` module followed by ``Normalize``.

The model folder's ``training_card.json`` records ``mode: query_side`` and the
``document_encoder`` (name, weights fingerprint, corpus fingerprint) the query encoder
belongs to; :func:`check_query_encoder` (used by every searcher) refuses to pair it with an
index whose documents another encoder made.

Loss terms (``train.losses`` names ``corpus_infonce``, ``listwise_kl``, ``margin_mse``,
``pairwise``, ``leaf``, ``corpus_kl``; weights sum the terms) live in :mod:`retrieval_distill.distill.query_losses`,
one small ``nn.Module`` each with its citation.

The loop is sentence-transformers' (:func:`retrieval_distill.distill.train.train_student`):
each example is ``{"query": text, "label": row}``; the loss looks the row's positives and
teacher candidates up in tables it holds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from retrieval_distill.distill.data import TrainingDataError

log = logging.getLogger(__name__)

CARD = "training_card.json"
#: loss names that need teacher scores
TEACHER_TERMS = ("listwise_kl", "margin_mse", "pairwise")


class QuerySideSpec(BaseModel):
    """The ``query_side:`` section of a ``rd student train`` config (``mode: query_side``).

    Attributes:
        documents: the frozen document vectors: an index store root (``rd index build
            --out``), one of its version folders, or an encoding folder (``encoding.json`` +
            ``emb-NNNNN.npy``). Never re-encoded (see :func:`load_documents`).
        projection: ``auto`` adds a linear map when the query tower's dimension differs from
            the documents' (asymmetric); ``always`` adds one anyway; ``never`` refuses a
            dimension mismatch.
        projection_init: ``ridge``: start the map from a ridge least-squares fit of the
            student's query vectors onto the document encoder's query vectors of the training
            queries (the document encoder is loaded only for that); ``ridge_documents``: fit it
            on the corpus instead, the init's vectors of every document (``init_documents``)
            onto the frozen documents' vectors: thousands of pairs already encoded, nothing
            loaded, where a few hundred training queries under-determine a 384 x 768 map;
            ``random`` does not fit.
        init_documents: for ``ridge_documents``: an index or encoding folder of the same corpus
            encoded by ``train.init`` (its encoder fingerprint is checked).
        projection_lr: learning rate of the map (the tower keeps ``train.lr``).
        ridge: L2 penalty of the ridge fit.
        corpus_sample: ``None`` (default): InfoNCE over every document; an integer: over the
            batch's positives plus this many documents sampled uniformly per step (corpora
            too large for a ``(batch, n_docs)`` product).
        max_candidates: keep each query's top-``max_candidates`` candidates by teacher score
            (``None``: the whole list the score folder holds).
        teacher_queries: an ``.npz`` file caching the document encoder's vectors of the
            training queries, which ``leaf`` / ``corpus_kl`` terms and ``projection_init:
            ridge`` read (:func:`document_encoder_queries`): reused when its key (encoder
            fingerprint, normalisation, the query texts) matches, else encoded and written.
            ``None``: encoded each run, kept nowhere. A student and its same-budget baseline
            naming one file encode the queries once.
        unlabeled: keep judged training queries that have no positive (every judgement grade
            0, e.g. synthetic queries judged only on their source document): they train only
            the teacher terms, the teacher being their one label (Augmented SBERT, Thakur et
            al. 2021, arXiv:2010.08240; GPL, Wang et al. 2022, arXiv:2112.07577). A job without
            teacher terms (the same-budget baseline) keeps them too, with an empty loss, so both
            see the same batches and steps. ``False``: only queries with a positive train.
    """

    model_config = ConfigDict(extra="forbid")
    documents: str
    projection: str = Field("auto", pattern="^(auto|always|never)$")
    projection_init: str = Field("ridge", pattern="^(ridge|ridge_documents|random)$")
    init_documents: str | None = None
    projection_lr: float = Field(1e-3, gt=0)
    ridge: float = Field(1.0, ge=0)
    corpus_sample: int | None = Field(None, gt=0)
    max_candidates: int | None = Field(None, gt=1)
    teacher_queries: str | None = None
    unlabeled: bool = False

    @model_validator(mode="after")
    def _init_documents(self):
        if self.projection_init == "ridge_documents" and not self.init_documents:
            raise ValueError("projection_init: ridge_documents needs `init_documents:` (the init's index or encoding of the corpus)")
        if self.init_documents and self.projection_init != "ridge_documents":
            raise ValueError("`init_documents:` is only read by projection_init: ridge_documents")
        return self


# --------------------------------------------------------------------------- frozen documents
@dataclass
class FrozenDocuments:
    """Document vectors of an index, read once.

    Attributes:
        docids: row -> docid, corpus order.
        emb: float32 ``(n_docs, dim)``, as the index holds them (L2-normalised when the
            encoder normalises).
        key: the encoding folder's key (``encoder``, ``encoder_fingerprint``,
            ``corpus_fingerprint``, ``dim``, ``normalize``, ``max_seq_length``, ``n``).
        folder: the encoding folder read.
    """

    docids: list[str]
    emb: np.ndarray
    key: dict
    folder: Path
    row: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        self.row = {d: i for i, d in enumerate(self.docids)}

    def reference(self) -> dict:
        """What the card records: which encoder made these vectors, of which corpus."""
        k = self.key
        return {
            "name": k.get("encoder"),
            "fingerprint": k.get("encoder_fingerprint"),
            "corpus_fingerprint": k.get("corpus_fingerprint"),
            "dim": int(k.get("dim")),
            "normalize": bool(k.get("normalize", True)),
            "n_docs": int(k.get("n")),
            "encoding": str(self.folder),
        }


def load_documents(documents: str | os.PathLike) -> FrozenDocuments:
    """Read the frozen document vectors behind ``documents``.

    ``documents`` is an encoding folder (``encoding.json``), an index version folder or a
    store root (its current version). For an index, the vectors come from the encoding folder
    that built it (the manifest's ``encoding_cache``, else ``ROOT/encodings/<fp8>-<corpus
    fingerprint>[-bf16][-lenN][-shardN]``) when its encoder and corpus fingerprints, dtype and
    truncation (``max_length``) match the manifest; otherwise they
    are read back from the FAISS index itself when it stores them exactly (Flat, HNSW over flat
    storage), tombstoned rows dropped. Nothing is encoded.

    Raises:
        FileNotFoundError: nothing at ``documents``.
        IndexFormatError: the index does not load.
        ValueError: an incomplete or corrupt encoding folder, or a lossy index (PQ, SQ) whose
            encoding folder is gone (pass the encoding folder, or rebuild).
    """
    from retrieval_distill.index.build import load_encoding

    p = Path(documents)
    if (p / "encoding.json").is_file():
        docids, emb, key = load_encoding(p)
        return FrozenDocuments(docids=docids, emb=emb, key=key, folder=p)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such index or encoding folder")
    from retrieval_distill.index.store import open_version

    version = open_version(p).load()
    m = version.manifest
    root = version.path.parent.parent
    recorded = Path(m.extra["encoding_cache"]) if m.extra.get("encoding_cache") else None
    tried = [recorded] if recorded else []
    # a moved store: its caches are ROOT/encodings/<fp8>-<corpus fp><-bf16><-lenN><-shardN>
    # (rd index build); the key must also match the index's dtype and truncation, or the
    # vectors of another build of the same corpus would be taken for this index's
    base = f"{m.encoder.fingerprint[:8]}-{m.corpus_fingerprint}"
    tried += [root / "encodings" / base] + sorted((root / "encodings").glob(base + "-*"))
    want_dtype, want_len = m.extra.get("dtype") or "fp32", m.extra.get("max_length")
    live = [d for d in version.docids if d]
    for folder in dict.fromkeys(tried):
        if not (folder / "encoding.json").is_file():
            continue
        if folder != recorded and "-len" in folder.name[len(base):] and want_len is None:
            continue  # a truncated encoding for an index of the model's own length; the key check below
            # confirms the rest (an unsuffixed folder serves a max_length equal to the model's own)
        docids, emb, key = load_encoding(folder)
        if (key.get("encoder_fingerprint") == m.encoder.fingerprint and key.get("corpus_fingerprint") == m.corpus_fingerprint
                and docids == live and (key.get("dtype") or "fp32") == want_dtype
                and (want_len is None or key.get("max_seq_length") == want_len)):
            return FrozenDocuments(docids=docids, emb=emb, key=key, folder=folder)
    factory = m.factory.upper()
    if "PQ" in factory or "SQ" in factory or "LSH" in factory:
        raise ValueError(
            f"{version.path}: a {m.factory} index stores lossy vectors and its encoding folder ({tried[-1]}) is gone; "
            "pass `documents:` as the encoding folder, or rebuild the index to write it again"
        )
    import faiss

    index = faiss.downcast_index(version.index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
        raise ValueError(
            f"{version.path}: the index's encoding folder ({tried[-1]}) is gone and its vectors sit behind an id map "
            "or transform; pass `documents:` as the encoding folder, or rebuild the index"
        )
    emb = np.ascontiguousarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)
    rows = [i for i, d in enumerate(version.docids) if d]
    tomb = set(int(t) for t in version.tombstones)
    rows = [i for i in rows if i not in tomb]
    key = {"encoder": m.encoder.name, "encoder_fingerprint": m.encoder.fingerprint, "corpus_fingerprint": m.corpus_fingerprint,
           "dim": m.dim, "normalize": m.normalized, "n": len(rows), "max_seq_length": None}
    return FrozenDocuments(docids=[version.docids[i] for i in rows], emb=emb[rows], key=key, folder=version.path)


# --------------------------------------------------------------------------- card and checks
def read_card(model: str | os.PathLike | None) -> dict | None:
    """A model folder's ``training_card.json`` (``None`` for a hub name, alias or no card).

    Raises:
        ValueError: a card that exists but is not a JSON object (fail closed: which documents
            a query encoder belongs to must not be guessed).
    """
    if model is None:
        return None
    p = Path(str(model)).expanduser() / CARD  # the folder the model loads from (resolve_model expands ``~``)
    if not p.is_file():
        return None
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: unreadable training card ({e}); cannot tell which documents this model belongs to") from None
    if not isinstance(card, dict):
        raise ValueError(f"{p}: a training card must be a JSON object")
    return card


def document_encoder_of(model: str | os.PathLike | None) -> dict | None:
    """The document encoder a query-side student was trained against (its card's
    ``document_encoder``), or ``None`` for any other model."""
    card = read_card(model)
    if card and card.get("mode") == "query_side":
        doc = card.get("document_encoder")
        if not isinstance(doc, dict) or not doc.get("fingerprint"):
            raise ValueError(f"{Path(str(model)) / CARD}: a query-side card without `document_encoder.fingerprint`; "
                             "cannot tell which documents this model belongs to")
        return doc
    return None


def refuse_as_document_encoder(model: str | os.PathLike, hint: str) -> None:
    """Refuse a query-side student where a document encoder is wanted (it never encoded
    documents: its card names the encoder that did).

    Args:
        model: the model offered as document encoder.
        hint: what to do instead, appended to the message.

    Raises:
        EncoderMismatchError: ``model`` is a query-side student.
    """
    from retrieval_distill.index.manifest import EncoderMismatchError

    doc = document_encoder_of(model)
    if doc is not None:
        raise EncoderMismatchError(
            f"{str(model)!r} is a query-side student (it encodes queries only, against documents of {doc.get('name')!r}); {hint}"
        )


def check_query_encoder(query_model: str | os.PathLike, index_encoder_fingerprint: str, where: str = "the index") -> None:
    """Refuse a query-side student whose documents are not the index's.

    Args:
        query_model: the query encoder (model folder); models without a query-side card pass.
        index_encoder_fingerprint: the index manifest's ``encoder.fingerprint``.
        where: how the message names the index.

    Raises:
        EncoderMismatchError: the card names another document encoder.
    """
    from retrieval_distill.index.manifest import EncoderMismatchError

    doc = document_encoder_of(query_model)
    if doc is None:
        return
    if doc.get("fingerprint") != index_encoder_fingerprint:
        raise EncoderMismatchError(
            f"query encoder {str(query_model)!r} was trained against documents encoded by {doc.get('name')!r} "
            f"(weights {doc.get('fingerprint')}), but {where} holds documents encoded by weights "
            f"{index_encoder_fingerprint}; serve it with an index of {doc.get('name')!r}, or train a query encoder for this index"
        )


# --------------------------------------------------------------------------- data
def build_tables(collection, qids: Sequence[str], documents: FrozenDocuments,
                 teacher_scores: dict[str, dict[str, float]] | None, max_candidates: int | None = None,
                 unlabeled: bool = False) -> tuple[list[str], "QueryTables", dict]:
    """Rows of the training queries: positives (grade >= 1) and teacher candidates as
    document rows. ``unlabeled``: a query without a positive is kept (see
    :class:`QuerySideSpec`) instead of dropped.

    Returns:
        ``(qids kept, tables, counts)``; counts say how many queries were dropped and why.

    Raises:
        TrainingDataError: a positive or candidate docid is not among the frozen documents
            (the index was built from another corpus), a non-finite teacher score, or no
            query is left.
    """
    import torch

    from retrieval_distill.distill.query_losses import QueryTables
    rows_pos, rows_cand, rows_t, kept = [], [], [], []
    dropped = {"no_positive": 0, "no_teacher_scores": 0}
    n_unlabeled = 0
    for q in qids:
        rel = sorted(d for d, g in collection.qrels.get(q, {}).items() if g > 0)
        if not rel and not unlabeled:
            dropped["no_positive"] += 1
            continue
        missing = [d for d in rel if d not in documents.row]
        if missing:
            raise TrainingDataError(
                f"positive {missing[0]!r} of query {q!r} is not among the {len(documents.docids)} frozen documents of "
                f"{documents.folder}: the index was built from another corpus than {collection.name}"
            )
        if teacher_scores is not None:
            sc = teacher_scores.get(q)
            if not sc:
                dropped["no_teacher_scores"] += 1
                continue
            items = sorted(sc.items(), key=lambda kv: -kv[1])
            if max_candidates:
                top = items[:max_candidates]
                have = {d for d, _ in top}
                top += [(d, sc[d]) for d in rel if d in sc and d not in have]  # positives stay in the list
                items = top
            cand, ts = [], []
            for d, s in items:
                if not math.isfinite(s):
                    raise TrainingDataError(f"teacher score for ({q}, {d}) is {s}: not finite")
                if d not in documents.row:
                    raise TrainingDataError(
                        f"candidate {d!r} of query {q!r} is not among the {len(documents.docids)} frozen documents of "
                        f"{documents.folder}: the index was built from another corpus than {collection.name}"
                    )
                cand.append(documents.row[d])
                ts.append(float(s))
            rows_cand.append(cand)
            rows_t.append(ts)
        rows_pos.append([documents.row[d] for d in rel])
        kept.append(q)
        n_unlabeled += not rel
    if kept and n_unlabeled == len(kept):
        raise TrainingDataError(f"none of the {len(kept)} training queries has a positive (grade >= 1) in {collection.name}")
    if not kept:
        raise TrainingDataError(f"no training query left ({len(qids)} given; dropped: {dropped})")

    def pad(rows, fill, dtype):
        width = max((len(r) for r in rows), default=0)
        out = torch.full((len(rows), width), fill, dtype=dtype)
        for i, r in enumerate(rows):
            if r:
                out[i, : len(r)] = torch.tensor(r, dtype=dtype)
        return out

    pos = pad(rows_pos, -1, torch.int64)
    if teacher_scores is None:
        cand = torch.zeros((len(kept), 0), dtype=torch.int64)
        cand_t = torch.zeros((len(kept), 0), dtype=torch.float32)
    else:
        cand = pad(rows_cand, -1, torch.int64)
        cand_t = pad(rows_t, 0.0, torch.float32)
    counts = {"queries": len(kept), "unlabeled": n_unlabeled, "dropped": dropped, "positives": int((pos >= 0).sum()),
              "candidates_per_query": float((cand >= 0).sum(1).float().mean()) if cand.shape[1] else 0.0}
    return kept, QueryTables(pos, cand, cand_t), counts


def build_terms(specs) -> list[tuple[str, float, Any]]:
    """``(name, weight, module)`` for each ``LossSpec``.

    Raises:
        ValueError: an unknown name or bad option (the message lists the known names).
    """
    from retrieval_distill.distill.query_losses import QUERY_SIDE_LOSSES
    if not specs:
        raise ValueError(f"no loss given; name at least one of {sorted(QUERY_SIDE_LOSSES)}")
    out = []
    for s in specs:
        if s.name not in QUERY_SIDE_LOSSES:
            raise ValueError(f"unknown query-side loss {s.name!r}; known: {sorted(QUERY_SIDE_LOSSES)}")
        if s.options.get("teacher_scale") == "auto":
            raise ValueError(f"loss {s.name!r}: teacher_scale: auto is for two_tower students; give a number here")
        try:
            out.append((s.name, s.weight, QUERY_SIDE_LOSSES[s.name](**s.options)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"loss {s.name!r}: {e}") from None
    return out


def document_encoder_queries(docs: FrozenDocuments, texts: Sequence[str], cache: str | os.PathLike | None = None,
                             batch_size: int = 64, show_progress: bool = True) -> tuple[np.ndarray, dict]:
    """The document encoder's own vectors of ``texts`` (as it would encode them as queries):
    the targets of the ``leaf`` and ``corpus_kl`` terms and of ``projection_init: ridge``. In
    the asymmetric pair this encoder is the embedding teacher (e.g. all-mpnet-base-v2).

    The encoder is loaded by the name the encoding folder records and must have the weights
    fingerprint it records, so the targets live in the same space as the frozen documents.

    Args:
        docs: the frozen documents (their ``key`` names the encoder).
        texts: ``N`` query texts, in training-row order.
        cache: optional ``.npz``; reused when its key matches, else written (atomically).
        batch_size: texts per forward pass.

    Returns:
        ``(vectors, info)``: float32 ``(N, dim)`` (L2-normalised when the documents are) and
        ``{"encoder", "fingerprint", "cache", "encoded"}`` for the training card.

    Raises:
        ModelNotFoundError: the encoder cannot be resolved here.
        ValueError: the encoder resolves to other weights than those that made the documents,
            or it gives vectors of another dimension.
    """
    import hashlib

    from retrieval_distill.models.resolve import model_fingerprint
    from retrieval_distill.utils import atomic_path

    name, want_fp = docs.key.get("encoder"), docs.key.get("encoder_fingerprint")
    normalize = bool(docs.key.get("normalize", True))
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    key = {"encoder_fingerprint": want_fp, "normalize": normalize, "n": len(texts), "texts_sha256": h.hexdigest()}
    info = {"encoder": name, "fingerprint": want_fp, "cache": str(cache) if cache else None, "encoded": 0}
    if cache and Path(cache).is_file():
        with np.load(cache, allow_pickle=False) as z:
            have = json.loads(str(z["key"])) if "key" in z else None
            if have == key:
                log.info("document encoder's query vectors from %s", cache)
                return np.asarray(z["vectors"], dtype=np.float32), info
        log.warning("%s holds another set of query vectors (key %s != %s): encoding again", cache, have, key)
    got_fp = model_fingerprint(name)
    if want_fp and got_fp != want_fp:
        raise ValueError(
            f"the frozen documents were encoded by {name!r} with weights {want_fp}, but {name!r} resolves to weights "
            f"{got_fp} here: its query vectors would live in another space"
        )
    from retrieval_distill.models.encoder import Encoder

    enc = Encoder(name, batch_size=batch_size, normalize=normalize, show_progress=show_progress)
    vec = enc.encode_queries(list(texts))
    if vec.shape[1] != docs.emb.shape[1]:
        raise ValueError(f"{name!r} gives {vec.shape[1]}-d query vectors; the frozen documents are {docs.emb.shape[1]}-d")
    info["encoded"] = len(texts)
    if cache:
        with atomic_path(cache, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, vectors=vec, key=np.array(json.dumps(key, sort_keys=True)))
    return vec, info


def add_projection(model, out_dim: int, weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> int:
    """Append ``Dense(in -> out_dim, identity)`` and ``Normalize`` to a sentence-transformers
    model (in place); returns the Dense module's index (for the learning-rate mapping)."""
    import torch
    from torch import nn
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    in_dim = int(model.get_embedding_dimension())
    dense = Dense(in_dim, int(out_dim), bias=True, activation_function=nn.Identity())
    if weight is not None:
        with torch.no_grad():
            dense.linear.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)))
            dense.linear.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float32)))
    idx = len(model)
    model.append(dense)
    model.append(Normalize())
    return idx


def prepare_query_side(job) -> dict[str, Any]:
    """Check a ``mode: query_side`` config's inputs and build its training tables, training
    nothing (``rd student train --check`` prints the ``facts``).

    Returns:
        ``{"docs", "collection", "qids", "tables", "terms", "facts"}``.

    Raises:
        FileNotFoundError, TeacherMismatchError, IncompleteScores, TrainingDataError, ValueError.
    """
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.distill.job import _read_qids, check_score_folder

    spec: QuerySideSpec = job.query_side
    cfg = job.train
    terms = build_terms(cfg.losses)
    wants_teacher = any(n in TEACHER_TERMS for n, _, _ in terms)
    docs = load_documents(spec.documents)
    if spec.projection_init == "ridge_documents":
        _init_documents(spec, cfg.init)  # checked here so `--check` catches it
    coll = load_collection(job.collection, split=job.split)
    # unlabeled: every query with a qrels row (grade-0 only included); else those with a positive
    qids = [q for q in coll.queries if q in coll.qrels] if spec.unlabeled else coll.judged_qids()
    if job.qids_file:
        keep = _read_qids(job.qids_file)
        unknown = sorted(keep - set(coll.queries))
        if unknown:
            raise TrainingDataError(f"{job.qids_file}: {len(unknown)} qids not in {job.collection} {job.split} (e.g. {unknown[:3]})")
        qids = [q for q in qids if q in keep]
    if job.exclude_qids_file:
        drop = _read_qids(job.exclude_qids_file)
        qids = [q for q in qids if q not in drop]
    if job.max_queries is not None and job.max_queries < len(qids):
        qids = sorted(random.Random(cfg.seed).sample(qids, job.max_queries), key=qids.index)
    facts: dict[str, Any] = {"mode": "query_side", "document_encoder": docs.reference(), "documents_encoded": 0}
    teacher_scores = None
    if wants_teacher:
        if not job.scores or job.teacher is None:
            raise ValueError(f"losses {[n for n, _, _ in terms if n in TEACHER_TERMS]} need `scores:` and `teacher:`")
        from retrieval_distill.teachers.scoring import read_scores

        manifest = check_score_folder(job.scores, job.teacher, job.teacher_fingerprint)
        df = read_scores(job.scores)
        teacher_scores = {}
        for q, d, s in zip(df["qid"], df["docid"], df["score"]):
            teacher_scores.setdefault(q, {})[d] = float(s)
        facts["teacher"] = {"name": manifest.get("teacher_name"), "fingerprint": manifest.get("teacher_fingerprint"),
                            "scale": manifest.get("scale"), "spec": manifest.get("teacher")}
    kept, tables, counts = build_tables(coll, qids, docs, teacher_scores, spec.max_candidates, spec.unlabeled)
    facts["data"] = {"collection": job.collection, "split": job.split, "scores": job.scores, **counts}
    return {"docs": docs, "collection": coll, "qids": kept, "tables": tables, "terms": terms, "facts": facts}


def train_query_side(job, show_progress: bool = True) -> Path:
    """Run a ``mode: query_side`` student config (:class:`retrieval_distill.distill.job.StudentJob`).

    Steps: read the frozen documents; build the per-query tables (positives, and with a
    teacher term the teacher's scored candidates from ``job.scores``); load the query tower
    (``train.init``), add and fit the projection when the dimensions differ; train with the
    sentence-transformers trainer (resumable checkpoints); evaluate dev against the frozen
    documents (every epoch with ``dev.each_epoch``, ``dev.keep: best`` keeps the best).

    Returns:
        the query encoder's model folder; its card records ``mode: query_side``,
        ``document_encoder``, ``documents_encoded: 0`` and ``train_seconds``.

    Raises:
        FileNotFoundError, TeacherMismatchError, IncompleteScores, TrainingDataError, ValueError.
    """
    from retrieval_distill.distill.job import _judged_dev
    from retrieval_distill.distill.train import train_student, update_card
    import torch

    from retrieval_distill.distill.query_losses import QuerySideLoss
    from retrieval_distill.models import load_sentence_transformer

    spec: QuerySideSpec = job.query_side
    cfg = job.train
    prepared = prepare_query_side(job)
    docs, coll, kept, tables, terms, facts = (prepared[k] for k in ("docs", "collection", "qids", "tables", "terms", "facts"))
    dev_coll = evaluator = None
    if job.dev is not None:
        if job.dev.doc_model:
            raise ValueError("dev.doc_model does not apply to query-side training (dev runs against the frozen documents)")
        dev_coll, dev_qids = _judged_dev(job.dev)
        from retrieval_distill.distill.query_eval import FrozenCorpusEvaluator

        evaluator = FrozenCorpusEvaluator({q: dev_coll.queries[q] for q in dev_qids}, dev_coll.qrels, docs, job.dev.metrics)
        facts["dev_judged_queries"] = len(dev_qids)

    torch.manual_seed(cfg.seed)
    model = load_sentence_transformer(cfg.init)
    model.max_seq_length = cfg.max_seq_length
    in_dim, out_dim = int(model.get_embedding_dimension()), int(docs.emb.shape[1])
    proj_idx = None
    if spec.projection == "never" and in_dim != out_dim:
        raise ValueError(f"query tower dim {in_dim} != document dim {out_dim} and projection: never")
    if spec.projection_init == "ridge_documents" and spec.projection != "always" and in_dim == out_dim:
        raise ValueError(f"projection_init: ridge_documents has nothing to fit: the query tower ({in_dim}) and the documents "
                         f"({out_dim}) have the same dimension, so no projection is added (set projection: always)")
    from retrieval_distill.distill.query_losses import needs_teacher_queries

    texts = [coll.queries[q] for q in kept]
    adds_projection = spec.projection == "always" or in_dim != out_dim
    teacher_q = None
    if any(needs_teacher_queries(m) for _, _, m in terms) or (adds_projection and spec.projection_init == "ridge"):
        teacher_q, facts["teacher_queries"] = document_encoder_queries(docs, texts, spec.teacher_queries,
                                                                       show_progress=show_progress)
    if adds_projection:
        w = b = None
        if spec.projection_init == "ridge_documents":
            w, b = _fit_on_documents(spec, cfg.init, docs)
        elif spec.projection_init == "ridge":
            from retrieval_distill.distill.losses import fit_projection

            x = model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
            w, b = fit_projection(x, teacher_q, ridge=spec.ridge)
        proj_idx = add_projection(model, out_dim, w, b)
        facts["projection"] = {"in": in_dim, "out": out_dim, "init": spec.projection_init, "ridge": spec.ridge,
                               "lr": spec.projection_lr, "module": proj_idx}
    loss = QuerySideLoss(model, docs.emb, tables, terms, spec.corpus_sample, cfg.seed, teacher_queries=teacher_q)
    if proj_idx is not None:
        loss.learning_rate_mapping[rf"(^|\.){proj_idx}\.linear\.(weight|bias)$"] = spec.projection_lr
    examples = [{"query": t, "label": i} for i, t in enumerate(texts)]
    out = train_student(cfg, examples, job.output, card=facts, show_progress=show_progress, evaluator=evaluator,
                        keep_best=job.dev is not None and job.dev.keep == "best", model=model, loss=loss, trained_qids=kept)
    if evaluator is not None:
        from retrieval_distill.evaluation.metrics import evaluate

        final = load_sentence_transformer(out)
        res = evaluate(dev_coll.qrels, evaluator.run(final), job.dev.metrics).to_dict(per_query=False)
        res.update({"collection": job.dev.collection, "split": job.dev.split, "doc_model": docs.key.get("encoder")})
        update_card(out, dev_metrics=res)
    return out


def _fit_on_documents(spec: QuerySideSpec, init: str, docs: FrozenDocuments) -> tuple[np.ndarray, np.ndarray]:
    """Ridge map from the init's document vectors (``spec.init_documents``) onto the frozen
    documents' vectors, over the documents both hold (the LEAF-style start, fit on the corpus).

    Raises:
        ValueError: ``init_documents`` was encoded by another model than ``init``, or the two
            share fewer than 2 documents.
    """
    from retrieval_distill.distill.losses import fit_projection

    src = _init_documents(spec, init)
    common = [d for d in docs.docids if d in src.row]
    if len(common) < 2:  # fewer pairs than dimensions is fine: the ridge term makes the fit unique
        raise ValueError(
            f"init_documents {spec.init_documents} and the frozen documents share {len(common)} documents "
            "(are they the same corpus?)"
        )
    x = src.emb[[src.row[d] for d in common]]
    y = docs.emb[[docs.row[d] for d in common]]
    return fit_projection(x, y, ridge=spec.ridge)


def _init_documents(spec: QuerySideSpec, init: str) -> FrozenDocuments:
    """``spec.init_documents`` read, after checking it was encoded by ``init``.

    Raises:
        FileNotFoundError: nothing there. ValueError: encoded by another model.
    """
    from retrieval_distill.models.resolve import model_fingerprint

    src = load_documents(spec.init_documents)
    want = model_fingerprint(init)
    if src.key.get("encoder_fingerprint") != want:
        raise ValueError(
            f"init_documents {spec.init_documents}: encoded by {src.key.get('encoder')!r} (fingerprint "
            f"{src.key.get('encoder_fingerprint')}), not by the query tower's init {init!r} (fingerprint {want})"
        )
    return src
