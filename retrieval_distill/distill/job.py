"""The one training path: a student job (:class:`StudentJob`) checked, turned into examples
and trained. ``rd student train CONFIG.yaml`` (:mod:`retrieval_distill.distill.cli`) and the
pipeline's ``train`` stage (:mod:`retrieval_distill.pipeline`) both build a
:class:`StudentJob` and call :func:`train_from_config`; the trainer itself is
:func:`retrieval_distill.distill.train.train_student` (two towers) or
:func:`retrieval_distill.distill.query_side.train_query_side` (the query tower only).

A student config (YAML, validated by :class:`StudentJob`)::

    collection: ../shared/data/beir/scifact   # BEIR folder / id; a `rd queries synth` folder works too
    split: train
    candidates: work/scifact/candidates/train.trec   # TREC run (or any rd teacher score input)
    scores: work/scifact/teacher/scores/train        # score folder: part-*.parquet + manifest.json
    positive_texts: null                             # optional positives.jsonl (ICT masked documents);
                                                     # a synth folder's own is used when this is unset
    teacher: {kind: ensemble, name: ens, ...}        # or just the teacher's name; must match the scores
    teacher_fingerprint: null                        # optional: must equal the manifest's
    output: work/scifact/models/student-listwise
    train:                                           # retrieval_distill.distill.train.TrainConfig
      losses: [{name: listwise_kl, options: {student_temperature: 0.05}}]
      epochs: 1
    leaf: {teacher_model: all-mpnet-base-v2, columns: [query]}   # only for a `leaf` loss
    dev: {collection: ../shared/data/beir/scifact, split: dev}   # optional, evaluated after training

Everything that can be wrong with the inputs (a score folder from another teacher, an
incomplete score folder, non-finite scores, candidates without a positive, an empty
training set) raises before the student is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from retrieval_distill.distill.query_side import QuerySideSpec
from retrieval_distill.distill.train import TrainConfig
from retrieval_distill.teachers.base import TeacherSpec

log = logging.getLogger(__name__)



class TeacherMismatchError(ValueError):
    """The score folder was made by another teacher than the config names."""


class LeafSpec(BaseModel):
    """Targets of a ``leaf`` (embedding alignment) loss.

    Attributes:
        teacher_model: the embedding teacher (path / alias / hub name), e.g. all-mpnet-base-v2.
        columns: text columns whose teacher embeddings are targets (``query`` first).
        init: ``lstsq`` starts the projection from a ridge least-squares fit on the training
            texts (:func:`~retrieval_distill.distill.losses.fit_projection`); ``random`` does not.
        embeddings: optional encoding folder of ``teacher_model`` over the collection's corpus
            (``rd index build --side teacher`` writes one under ``OUT/encodings/``): document
            columns take their teacher vectors from it instead of encoding them again.
    """

    model_config = ConfigDict(extra="forbid")
    teacher_model: str = "all-mpnet-base-v2"
    columns: list[str] = Field(default_factory=lambda: ["query"])
    init: str = "lstsq"
    batch_size: int = 32
    embeddings: str | None = None


class _PreencodedDocuments:
    """An Encoder whose ``encode_documents`` looks texts up in a precomputed encoding
    folder (by the corpus's ``doc_text``) and encodes only the texts it does not hold."""

    def __init__(self, encoder, folder: str, collection):
        from retrieval_distill.index.build import load_encoding

        docids, emb, _ = load_encoding(folder, encoder.model_name, role="the LEAF teacher")
        self.encoder = encoder
        self.table = {collection.doc_text(d): emb[i] for i, d in enumerate(docids) if d in collection.corpus}
        self.encode_queries = encoder.encode_queries
        self.misses = 0

    def encode_documents(self, texts: list[str]):
        import numpy as np

        missing = sorted({t for t in texts if t not in self.table})
        self.misses += len(missing)
        if missing:
            self.table.update(zip(missing, self.encoder.encode_documents(missing)))
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


class DevSpec(BaseModel):
    """Evaluation after training: exhaustive dense search over the dev collection's corpus.

    Attributes:
        doc_model: encode documents with this model instead of the student (the asymmetric
            pair of a LEAF-aligned student: queries by the student, documents by the teacher).
        qids_file: keep only these qids (first column), e.g. a dev split carved from train.
        each_epoch: also evaluate the initial model and every epoch during training with
            sentence-transformers' ``InformationRetrievalEvaluator`` (primary metric
            cosine nDCG@10, binary relevance = grade >= 1); figures go to the training card.
            Each evaluation encodes the dev corpus once, so keep the corpus small or accept
            the cost (SciFact: 5,183 documents, about 5 min with MiniLM on 2 cores).
        keep: ``"last"`` saves the model of the last step; ``"best"`` (needs ``each_epoch``)
            saves the epoch with the highest dev primary metric (Hugging Face's
            ``load_best_model_at_end``; checkpoints are then written once per epoch, so a killed
            run resumes from the last finished epoch, not every ``save_steps``). The untrained
            init (epoch 0) is evaluated and recorded but never selected.
    """

    model_config = ConfigDict(extra="forbid")
    collection: str
    split: str = "dev"
    metrics: list[str] = Field(default_factory=lambda: ["ndcg@10", "mrr@10", "recall@100"])
    doc_model: str | None = None
    batch_size: int = 64
    qids_file: str | None = None
    each_epoch: bool = False
    keep: Literal["last", "best"] = "last"

    @model_validator(mode="after")
    def _best_needs_epochs(self):
        if self.keep == "best" and not self.each_epoch:
            raise ValueError("dev.keep: best selects an epoch by its dev figure; set dev.each_epoch: true")
        return self


def _dev_collection(dev: DevSpec):
    from retrieval_distill.data.collections import load_collection

    coll = load_collection(dev.collection, split=dev.split)
    if dev.qids_file:
        keep = _read_qids(dev.qids_file)
        unknown = sorted(keep - set(coll.queries))
        if unknown:
            raise ValueError(f"{dev.qids_file}: {len(unknown)} dev qid(s) not in {dev.collection} ({dev.split}), "
                             f"e.g. {unknown[:3]}")
        coll = coll.subset([q for q in coll.queries if q in keep])
    return coll


def check_dev(dev: DevSpec) -> int:
    """Validate a dev section before any training: the collection and split load, the qids
    file exists and names only known queries, and at least one dev query is judged.

    Returns:
        the number of judged dev queries.

    Raises:
        FileNotFoundError: the collection or qids file is missing.
        ValueError: unknown qids, or no judged dev query.
    """
    return len(_judged_dev(dev)[1])


def _judged_dev(dev: DevSpec, collection=None):
    """The dev collection (``collection`` if given, else loaded) and its judged qids.
    Raises ValueError: none is judged."""
    coll = _dev_collection(dev) if collection is None else collection
    qids = coll.judged_qids()
    if not qids:
        raise ValueError(f"{dev.collection} ({dev.split}): no judged dev query")
    return coll, qids


def _read_qids(path: str | os.PathLike) -> set[str]:
    from retrieval_distill.data.formats import read_qids

    return set(read_qids(path))


def dev_evaluator(dev: DevSpec, name: str = "dev", collection=None):
    """A sentence-transformers ``InformationRetrievalEvaluator`` over the dev collection
    (judged queries only; relevant = grade >= 1), primary metric ``{name}_cosine_ndcg@10``.

    Args:
        dev: the config's dev section.
        name: metric prefix.
        collection: the dev collection already loaded (and cut to ``qids_file``) by the
            caller; ``None`` loads it from ``dev``.

    Raises:
        ValueError: ``doc_model`` is set (per-epoch evaluation is symmetric: the student
            encodes both sides) or the dev split has no judged query.
    """
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    if dev.doc_model:
        raise ValueError("dev.each_epoch evaluates the student on both sides; unset dev.doc_model or each_epoch")
    coll, qids = _judged_dev(dev, collection)
    relevant = {q: {d for d, g in coll.qrels[q].items() if g >= 1} for q in qids}
    return InformationRetrievalEvaluator(
        queries={q: coll.queries[q] for q in qids},
        corpus={d: coll.doc_text(d) for d in coll.docids},
        relevant_docs=relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[10],
        precision_recall_at_k=[100],
        map_at_k=[100],
        batch_size=dev.batch_size,
        name=name,
        write_csv=False,
        main_score_function="cosine",  # fixes the primary metric before the first call (dev.keep: best needs it)
    )


class StudentJob(BaseModel):
    """A ``rd student train`` config (see the module docstring).

    ``mode: two_tower`` (default) trains query and document towers from (query, positive,
    negatives) examples and needs ``candidates``, ``scores`` and ``teacher``.
    ``mode: query_side`` trains only a query encoder against the frozen documents of an
    existing index (``query_side.documents``; :mod:`retrieval_distill.distill.query_side`);
    ``scores`` and ``teacher`` are needed only by its teacher terms.
    """

    model_config = ConfigDict(extra="forbid")
    mode: Literal["two_tower", "query_side"] = "two_tower"
    collection: str
    split: str = "train"
    qids_file: str | None = None
    exclude_qids_file: str | None = None
    max_queries: int | None = None
    max_examples: int | None = None
    candidates: str | None = None
    scores: str | None = None
    positive_texts: str | None = None
    teacher: TeacherSpec | str | None = None
    teacher_fingerprint: str | None = None
    output: str
    train: TrainConfig = Field(default_factory=TrainConfig)
    leaf: LeafSpec | None = None
    query_side: QuerySideSpec | None = None
    dev: DevSpec | None = None

    @model_validator(mode="after")
    def _mode_needs(self):
        if self.mode == "two_tower":
            missing = [k for k in ("candidates", "scores", "teacher") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"mode two_tower needs {', '.join(missing)}")
            if self.query_side is not None:
                raise ValueError("`query_side:` is set but mode is two_tower; set mode: query_side")
            from retrieval_distill.distill.losses import check_loss_specs

            check_loss_specs(self.train.losses)
        else:
            if self.query_side is None:
                raise ValueError("mode query_side needs a `query_side:` section with `documents:` (an index or encoding folder)")
            if self.leaf is not None or self.positive_texts is not None:
                raise ValueError("`leaf:` and `positive_texts:` apply to two_tower training only")
        return self


def load_job(path: str | os.PathLike) -> StudentJob:
    """Read and validate a student config YAML.

    Raises:
        FileNotFoundError: no such file. ValueError: invalid YAML or fields (pydantic's message).
    """
    from retrieval_distill.utils import read_yaml_mapping

    data = read_yaml_mapping(path, "config file")
    return StudentJob.model_validate(data)


def check_score_folder(scores_dir: str | os.PathLike, teacher: TeacherSpec | str, fingerprint: str | None = None) -> dict:
    """Refuse a score folder made by another teacher than ``teacher``.

    Compares the configured teacher with the folder's ``manifest.json``: the name (a
    string ``teacher``), or the name and the whole spec (a :class:`TeacherSpec`), and the
    weights+spec fingerprint when ``fingerprint`` is given.

    Returns:
        the manifest.

    Raises:
        FileNotFoundError: no manifest. TeacherMismatchError: another teacher.
    """
    from retrieval_distill.teachers.scoring import load_manifest

    m = load_manifest(scores_dir)
    if m is None:
        raise FileNotFoundError(f"{scores_dir}: no manifest.json (not a teacher score folder; make one with `rd teacher score`)")
    have_name = m.get("teacher_name")
    have_spec = m.get("teacher")
    problems = []
    if isinstance(teacher, str):
        if teacher != have_name:
            problems.append(f"name {have_name!r} != {teacher!r}")
    else:
        if teacher.display_name() != have_name:
            problems.append(f"name {have_name!r} != {teacher.display_name()!r}")
        want = teacher.model_dump()
        got = TeacherSpec.model_validate(have_spec).model_dump() if isinstance(have_spec, dict) else have_spec
        if got != want:
            diff = sorted(k for k in want if (got or {}).get(k) != want[k]) if isinstance(got, dict) else ["spec"]
            problems.append(f"spec differs in {diff}: {got} != {want}")
    if fingerprint is not None and fingerprint != m.get("teacher_fingerprint"):
        problems.append(f"fingerprint {m.get('teacher_fingerprint')!r} != {fingerprint!r}")
    if problems:
        raise TeacherMismatchError(
            f"{scores_dir}: scores are from another teacher than the config names ({'; '.join(problems)}); "
            "score the candidates with the configured teacher (`rd teacher score`) or fix `teacher:`"
        )
    return m


def positive_texts_path(job: StudentJob) -> Path | None:
    """The positives' training texts: the config's ``positive_texts``, else the one a
    ``rd queries synth --kinds ict`` folder names in its ``synth.json`` (so an ICT query is
    never trained against the document it was cut from), else ``None``."""
    if job.positive_texts:
        return Path(job.positive_texts)
    info = Path(job.collection) / "synth.json"
    if info.is_file():
        name = json.loads(info.read_text(encoding="utf-8")).get("positive_texts")
        if name:
            log.info("positive texts from %s (named by %s)", Path(job.collection) / name, info)
            return Path(job.collection) / name
    return None


def prepare_examples(job: StudentJob, with_qids: bool = False) -> tuple:
    """Check the inputs and build the training examples (no model is loaded here).

    Args:
        job: the student config.
        with_qids: also return the qids of the queries with at least one example.

    Returns:
        ``(examples, facts)``: facts for the training card (teacher, data, counts);
        ``(examples, facts, qids)`` with ``with_qids``. (A qid counts as trained when its
        query text is in an example; two queries with one text both count.)

    Raises:
        TeacherMismatchError, FileNotFoundError, IncompleteScores, DataFormatError,
        TrainingDataError (non-finite scores, no positive, empty training set).
    """
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.distill.data import TrainingDataError, build_examples, read_positive_texts
    from retrieval_distill.teachers.scoring import read_candidates, read_scores

    manifest = check_score_folder(job.scores, job.teacher, job.teacher_fingerprint)
    name = manifest.get("teacher_name")
    df = read_scores(job.scores)
    others = sorted(set(df["teacher"].unique()) - {name})
    if others:
        raise TeacherMismatchError(f"{job.scores}: rows from other teachers {others} (manifest says {name!r})")
    coll = load_collection(job.collection, split=job.split)
    qids = coll.judged_qids()
    if job.qids_file:
        from retrieval_distill.data.formats import read_qids

        keep = read_qids(job.qids_file)
        unknown = [q for q in keep if q not in coll.queries]
        if unknown:
            raise TrainingDataError(f"{job.qids_file}: {len(unknown)} qids not in {job.collection} {job.split} (e.g. {unknown[:3]})")
        keep_set = set(keep)
        qids = [q for q in qids if q in keep_set]
    if job.exclude_qids_file:
        drop = _read_qids(job.exclude_qids_file)
        qids = [q for q in qids if q not in drop]
    if job.max_queries is not None and job.max_queries < len(qids):
        qids = sorted(random.Random(job.train.seed).sample(qids, job.max_queries), key=qids.index)
    cands = read_candidates(job.candidates).pairs
    scores: dict[str, dict[str, float]] = {}
    for q, d, s in zip(df["qid"], df["docid"], df["score"]):
        scores.setdefault(q, {})[d] = float(s)
    with_cands = [q for q in qids if q in cands]
    if not with_cands:
        raise TrainingDataError(f"{job.candidates}: no candidates for any of the {len(qids)} training queries")
    pos_path = positive_texts_path(job)
    pos_texts = read_positive_texts(pos_path, coll) if pos_path else None
    examples = build_examples(
        coll, with_cands, cands, scores, n_negatives=job.train.n_negatives, negative_depth=job.train.negative_depth,
        seed=job.train.seed, positive_texts=pos_texts,
    )
    if job.max_examples is not None:
        examples = examples[: job.max_examples]
    facts = {
        "teacher": {"name": name, "fingerprint": manifest.get("teacher_fingerprint"), "scale": manifest.get("scale"), "spec": manifest.get("teacher")},
        "data": {
            "collection": job.collection,
            "split": job.split,
            "queries": len(with_cands),
            "candidates": str(job.candidates),
            "scores": str(job.scores),
            "positive_texts": str(pos_path) if pos_path else None,
            "examples": len(examples),
        },
    }
    if with_qids:
        texts = {ex["query"] for ex in examples}
        return examples, facts, [q for q in with_cands if coll.queries[q] in texts]
    return examples, facts


def _prepare_leaf(job: StudentJob, examples: list[dict], facts: dict) -> TrainConfig:
    """Attach the LEAF teacher's embeddings to the labels, fill ``teacher_dim`` and (``init:
    lstsq``) a least-squares projection start; returns the TrainConfig to train with."""
    import numpy as np

    from retrieval_distill.distill.losses import attach_teacher_embeddings, fit_projection
    from retrieval_distill.models.encoder import Encoder

    leaf = job.leaf or LeafSpec()
    text_cols = [k for k in (examples[0] if examples else {}) if k != "label"]
    whole = sorted({s.name for s in job.train.losses} & {"inbatch_kd", "rkd"})
    if whole and leaf.columns != text_cols:
        raise ValueError(f"{', '.join(whole)} need(s) the teacher's embedding of every text column: set leaf.columns "
                         f"to {text_cols} (got {leaf.columns})")
    teacher = Encoder(leaf.teacher_model, batch_size=leaf.batch_size, show_progress=False)
    if leaf.embeddings:
        from retrieval_distill.data.collections import load_collection

        teacher = _PreencodedDocuments(teacher, leaf.embeddings, load_collection(job.collection, split=job.split))
    dim = attach_teacher_embeddings(examples, teacher, leaf.columns, leaf.batch_size)
    cfg = job.train.model_copy(deep=True)
    facts["leaf"] = {"teacher_model": leaf.teacher_model, "teacher_dim": dim, "columns": leaf.columns, "init": leaf.init}
    if leaf.embeddings:
        facts["leaf"]["embeddings"] = {"folder": leaf.embeddings, "documents_encoded_anew": teacher.misses}
    student = Encoder(cfg.init, batch_size=leaf.batch_size, show_progress=False)
    init_path = None
    projected = [spec for spec in cfg.losses if spec.name in PROJECTION_LOSSES]
    if leaf.init == "lstsq" and student.dim != dim and projected:
        # targets: the packed trailing label values, one (dim,) block per aligned column
        xs, ys = [], []
        for i, col in enumerate(leaf.columns):
            texts = [ex[col] for ex in examples]
            xs.append(student.encode_queries(texts) if col == "query" else student.encode_documents(texts))
            start = [len(ex["label"]) - dim * (len(leaf.columns) - i) for ex in examples]
            ys.append(np.asarray([ex["label"][s0 : s0 + dim] for ex, s0 in zip(examples, start)], dtype=np.float32))
        w, b = fit_projection(np.concatenate(xs), np.concatenate(ys), ridge=1.0)
        init_path = Path(job.output).with_name(Path(job.output).name + ".leaf-init.npz")
        init_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(init_path, weight=w, bias=b)
        facts["leaf"]["projection_init"] = {"method": "ridge least squares", "ridge": 1.0, "texts": int(sum(len(x) for x in xs))}
    for spec in cfg.losses:
        if spec.name in embedding_losses():
            spec.options.setdefault("teacher_dim", dim)
            if init_path is not None and spec.name in PROJECTION_LOSSES:
                spec.options.setdefault("projection_init", str(init_path))
    return cfg


#: losses that add LEAF's projection to the student (and take its least-squares start)
PROJECTION_LOSSES = ("leaf", "contrastive_kd")


def embedding_losses() -> set[str]:
    """Names of the losses that read teacher embeddings from the labels (LEAF, in-batch KD,
    RKD, contrastive KD): the job attaches the ``leaf:`` teacher's embeddings for them."""
    from retrieval_distill.distill.losses import LOSSES

    return {name for name, cls in LOSSES.items() if getattr(cls, "teacher_embeddings", False)}


def auto_teacher_scale(examples: list[dict], init: str, batch_size: int = 64, max_examples: int = 2000, seed: int = 13) -> dict:
    """The ``teacher_scale`` that puts the teacher's margins on the student's score scale:
    the median, over training examples, of the student init's per-example score spread
    (standard deviation of its cosine over the example's 1 + n passages) divided by the
    median of the teacher's spread over the same passages. Margin-MSE is scale-sensitive
    (Hofstätter et al. 2020 train on raw logits of one architecture); a z-scored ensemble
    or a MaxSim teacher needs its margins mapped onto cosine-sized ones. Our own heuristic:
    no library sets this.

    Args:
        examples: :func:`prepare_examples` output (``query``, ``positive``, ``negative_*``,
            ``label``: the teacher's scores, positive first).
        init: the student init (encodes the texts; cosine scores).
        max_examples: a seeded sample of at most this many examples is encoded.

    Returns:
        ``{"teacher_scale": float, "student_spread": float, "teacher_spread": float, "examples": int}``.

    Raises:
        ValueError: no example with two or more passages, or a teacher that gives every
            passage the same score (spread 0).
    """
    import numpy as np

    from retrieval_distill.models.encoder import Encoder

    cols = sorted((k for k in (examples[0] if examples else {}) if k == "positive" or k.startswith("negative_")),
                  key=lambda k: (k != "positive", int(k.split("_")[1]) if k.startswith("negative_") else 0))
    if len(cols) < 2:
        raise ValueError("teacher_scale: auto needs examples with a positive and at least one negative")
    sample = examples if len(examples) <= max_examples else random.Random(seed).sample(examples, max_examples)
    enc = Encoder(init, batch_size=batch_size, show_progress=False)
    q = enc.encode_queries([ex["query"] for ex in sample])
    texts = sorted({ex[c] for ex in sample for c in cols})
    row = {t: i for i, t in enumerate(texts)}
    d = enc.encode_documents(texts)
    student = np.stack([np.einsum("d,nd->n", q[i], d[[row[ex[c]] for c in cols]]) for i, ex in enumerate(sample)])
    teacher = np.asarray([ex["label"][: len(cols)] for ex in sample], dtype=np.float64)
    s_spread, t_spread = float(np.median(student.std(axis=1))), float(np.median(teacher.std(axis=1)))
    if t_spread <= 0:
        raise ValueError("teacher_scale: auto: the teacher's median score spread is 0 (every passage scored alike)")
    return {"teacher_scale": round(s_spread / t_spread, 6), "student_spread": s_spread, "teacher_spread": t_spread,
            "examples": len(sample)}


def _resolve_auto_scale(cfg: TrainConfig, examples: list[dict], facts: dict) -> TrainConfig:
    """Replace ``teacher_scale: auto`` in the loss options by :func:`auto_teacher_scale`'s value
    (recorded in the training card's ``teacher_scale_auto``)."""
    if not any(spec.options.get("teacher_scale") == "auto" for spec in cfg.losses):
        return cfg
    found = auto_teacher_scale(examples, cfg.init, seed=cfg.seed)
    log.info("teacher_scale auto: %s", found)
    facts["teacher_scale_auto"] = found
    cfg = cfg.model_copy(deep=True)
    for spec in cfg.losses:
        if spec.options.get("teacher_scale") == "auto":
            spec.options["teacher_scale"] = found["teacher_scale"]
    return cfg


def evaluate_dev(model_dir: str | os.PathLike, dev: DevSpec, collection=None) -> dict:
    """Exhaustive dense search (FAISS inner product over L2-normalised vectors) of the dev
    queries over the dev corpus; returns the metrics dict (``EvalResult.to_dict``).
    ``collection``: the dev collection already loaded by the caller (``None`` loads it).

    Raises:
        ValueError: no judged dev query, or query and document vectors of other dimensions."""
    import faiss

    from retrieval_distill.evaluation.metrics import evaluate
    from retrieval_distill.models.encoder import Encoder

    coll, qids = _judged_dev(dev, collection)
    enc = Encoder(dev.doc_model or str(model_dir), query_model=str(model_dir), batch_size=dev.batch_size)
    docids = coll.docids
    d = enc.encode_documents(coll.doc_texts(docids))
    q = enc.encode_queries([coll.queries[x] for x in qids])
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != document dim {d.shape[1]}: not an aligned pair")
    index = faiss.IndexFlatIP(d.shape[1])
    index.add(d)
    k = min(100, len(docids))
    sc, ix = index.search(q, k)
    run = {qid: {docids[j]: float(s) for s, j in zip(sc[i], ix[i]) if j >= 0} for i, qid in enumerate(qids)}
    res = evaluate(coll.qrels, run, dev.metrics)
    out = res.to_dict(per_query=False)
    out.update({"collection": dev.collection, "split": dev.split, "doc_model": dev.doc_model or "student"})
    return out


def train_from_config(job: StudentJob | str | os.PathLike, show_progress: bool = True) -> Path:
    """Run a student config: check inputs, build examples, train, evaluate on dev.

    Returns:
        the student model folder (loads with ``SentenceTransformer(path)``).
    """
    from retrieval_distill.distill.train import train_student, update_card

    if not isinstance(job, StudentJob):
        job = load_job(job)
    if job.mode == "query_side":
        from retrieval_distill.distill.query_side import train_query_side

        return train_query_side(job, show_progress=show_progress)
    examples, facts, trained = prepare_examples(job, with_qids=True)
    cfg = _resolve_auto_scale(job.train, examples, facts)
    if any(s.name in embedding_losses() for s in cfg.losses):
        cfg = _prepare_leaf(job.model_copy(update={"train": cfg}), examples, facts)
    elif job.leaf is not None:
        raise ValueError(f"`leaf:` is set but no loss reads teacher embeddings (one of {sorted(embedding_losses())}) in train.losses")
    dev_coll = None
    if job.dev is not None:  # loaded once; bad dev input fails here, not after training
        dev_coll, dev_qids = _judged_dev(job.dev)
        facts["dev_judged_queries"] = len(dev_qids)
    evaluator = dev_evaluator(job.dev, collection=dev_coll) if job.dev is not None and job.dev.each_epoch else None
    out = train_student(cfg, examples, job.output, card=facts, show_progress=show_progress, evaluator=evaluator,
                        keep_best=job.dev is not None and job.dev.keep == "best", trained_qids=trained)
    if job.dev is not None:
        update_card(out, dev_metrics=evaluate_dev(out, job.dev, collection=dev_coll))
    return out
