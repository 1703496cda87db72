"""Bi-encoder (embedding) teacher: cosine similarity of sentence-transformers embeddings.

The score of a pair is ``cos(E(query), E(passage))`` with L2-normalised embeddings from
:class:`retrieval_distill.models.encoder.Encoder` (Reimers & Gurevych 2019,
"Sentence-BERT"); ``all-mpnet-base-v2`` is the embedding teacher here.

Document-side work is cached: :meth:`BiEncoderTeacher.score_ids` keeps each document's
embedding by docid (and each query's by text), so scoring 100 candidates of one query
costs one query encoding plus the documents not seen before. A precomputed
``(docids, embeddings)`` array can be handed in with :meth:`set_document_embeddings`
(the scoring job does that from its on-disk document pass).

Spec options:
    batch_size (int, 32): texts per forward pass.
    max_length (int | None): token limit (``None`` keeps the model's own).
    cache_documents (bool, True): keep document embeddings by docid across calls.
    query_model (str | None): a different model for the queries: a query-side student
        (``rd student train`` with ``mode: query_side``) trained against this model's document
        vectors, so the teacher scores with the student's queries over the documents it was
        trained for (a born-again teacher, Furlanello et al. 2018, arXiv:1805.04770). Refused
        when the student's card names another document encoder; a query-side student given as
        ``model`` is refused too (it never encoded documents).
    cross_fit (list of {query_model, trained_qids}): out-of-fold query encoders, instead of
        ``query_model``: K query-side students, each trained on the queries listed in its
        ``trained_qids`` file (one qid per line, first column), e.g. K folds of the training
        queries. ``trained_qids`` may be left out for a student that ``rd student train``
        wrote: its folder's ``trained.qids`` lists the queries it trained on. When both exist,
        a query in the student's own list but not in ``trained_qids`` is refused (a fold file
        of another student). A query in the ``trained.qids`` of ``model`` (a document encoder
        that is itself a student) is refused too. A query is scored by the mean cosine of the students that did NOT train on
        it (the mean of their query vectors against the document), so a teacher built from
        students never scores a query whose qrels it was fit to: cross-fitting, the
        out-of-fold predictions of stacked generalisation (Wolpert 1992, "Stacked
        Generalization", Neural Networks 5(2)). A query outside every file (dev, test) gets
        all K. A student also counts as trained on a query whose text (case and white space
        aside) is that of a query it trained on under another qid: SciFact holds such twins
        (train claims 85 and 86 have one text and one positive), and the twin's qrels would
        otherwise be restated. Twins are found among the texts :meth:`check_queries` is given
        (the scoring job gives every query of the collection) and those scored so far.
        Scoring needs qids (:meth:`score_ids`; :meth:`score` refuses); a query every
        student trained on is an error. Each student is checked like ``query_model``; a
        two-tower student (a card without ``mode: query_side``) of other weights than
        ``model`` is refused (its queries belong with its own document tower).
    embeddings (str | None): an encoding folder of this model over the corpus (written by
        ``rd index build`` / the pipeline's ``encode_corpus``: ``OUT/encodings/<key>``);
        its document vectors are preloaded, so no document is encoded again. Refused when
        the folder's encoder fingerprint is not this model's.
    dtype ("fp32" | "bf16"): bf16 runs the forward pass under ``torch.autocast``; it is
        checked against fp32 on a sample first (see :mod:`retrieval_distill.teachers.speed`).
        On the 2 shared CPU cores here bf16 measured slower than fp32 for MiniLM, so fp32
        is the default. On a CPU without native bf16 it runs fp32 (logged; the spec and
        fingerprint say fp32): :func:`~retrieval_distill.teachers.base.resolve_teacher_dtype`.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from retrieval_distill.distill.train import TRAINED_QIDS, trained_qids_file
from retrieval_distill.teachers.base import TeacherSpec, check_options, register_teacher, resolve_teacher_dtype, spec_fingerprint

DEFAULT_MODEL = "all-mpnet-base-v2"
log = logging.getLogger(__name__)


@register_teacher("bi_encoder")
class BiEncoderTeacher:
    """Cosine-similarity teacher over a sentence-transformers bi-encoder.

    Args:
        spec: ``TeacherSpec(kind="bi_encoder", model=..., options={...})`` (options above).

    Raises:
        ModelNotFoundError: the model cannot be resolved.
        ValueError: unknown ``dtype``, or an option not listed above.
        EncoderMismatchError: ``model`` is a query-side student, or ``query_model`` (or a
            ``cross_fit`` student) is one trained against another document encoder.
        FileNotFoundError: a ``cross_fit`` qids file that does not exist.
        ValueError (EncoderMismatchError): a query encoder whose dimension is not the document
            model's; a ``cross_fit`` that is not a list of >= 2 entries (an empty one too), or a
            qids file that is a folder, empty, or not UTF-8.
    """

    scale = "cosine"
    OPTIONS = frozenset({"dtype", "batch_size", "max_length", "cache_documents", "embeddings", "query_model", "cross_fit"})

    def __init__(self, spec: TeacherSpec):
        check_options(spec, self.OPTIONS)
        from retrieval_distill.models.encoder import Encoder

        self.dtype, spec = resolve_teacher_dtype(spec)  # bf16 -> fp32 on a CPU without native bf16
        self.spec = spec
        opts = spec.options
        self.model_name = spec.model or DEFAULT_MODEL
        from retrieval_distill.distill.query_side import check_query_encoder, refuse_as_document_encoder
        from retrieval_distill.models.resolve import model_fingerprint

        refuse_as_document_encoder(self.model_name, "give the model it was trained against as `model` and this one as "
                                   "the `query_model` option")
        query_model = opts.get("query_model")
        # the document model's weights fingerprint, read only when a query encoder is checked against it
        doc_fp = model_fingerprint(self.model_name) if query_model or opts.get("cross_fit") is not None else ""
        if query_model:
            check_query_encoder(query_model, doc_fp, where=f"teacher {spec.display_name()}'s `model`")
        self.folds = self._load_folds(opts.get("cross_fit"), doc_fp, bool(query_model))
        # a document model that is itself a student (its trained.qids) was fit to those queries'
        # qrels: no fold student scores them out of fold against its documents
        self.doc_trained = set(_own_trained_qids(self.model_name, f"teacher {spec.display_name()}: `model`") or [])
        self._text_of: dict[str, str] = {}  # qid -> normalised text, for twins across folds (cross_fit)
        self._trained_texts: list[set[str]] | None = None  # per fold (then the document model), from _text_of
        # without cross_fit: the queries this teacher's own towers were trained on (a warning, not an error:
        # a born-again teacher on its training queries is a legitimate, if useless, experiment)
        q_trained = (_own_trained_qids(query_model, f"teacher {spec.display_name()}: `query_model`") or []) if query_model else []
        self.own_trained = set() if self.folds else self.doc_trained | set(q_trained)
        self.encoder = Encoder(
            self.model_name,
            query_model=query_model,
            batch_size=int(opts.get("batch_size", 32)),
            max_length=opts.get("max_length"),
            show_progress=False,
        )
        self._check_query_dims(query_model)
        self.max_length = int(self.encoder.doc_model.max_seq_length)
        self.tokenizer = self.encoder.doc_model.tokenizer
        self.cache_documents = bool(opts.get("cache_documents", True))
        self._doc_cache: dict[str, np.ndarray] = {}
        self._query_cache: dict[str, np.ndarray] = {}
        self._fp: str | None = None
        self._preloaded: set[str] = set()  # docids from an encoding folder (the scoring job skips them)
        if opts.get("embeddings"):
            self.load_document_embeddings(opts["embeddings"])

    def _check_query_dims(self, query_model) -> None:
        """Refuse a query encoder (``query_model`` or a ``cross_fit`` student) whose vectors have
        another dimension than the document model's: a plain model without a query-side card
        passes :func:`check_query_encoder`, and would otherwise fail only while scoring, after
        the document pass and some shards, with a bare numpy shape error."""
        from retrieval_distill.index.manifest import EncoderMismatchError

        doc_dim = self.encoder.dim
        models = [("query_model", str(query_model), self.encoder.query_model)] if query_model else []
        models += [(f"cross_fit[{i}].query_model", f["name"], f["model"]) for i, f in enumerate(self.folds)]
        for where, name, model in models:
            dim = int(model.get_embedding_dimension())
            if dim != doc_dim:
                raise EncoderMismatchError(
                    f"teacher {self.spec.display_name()}: {where} {name!r} gives {dim}-dim query vectors, but the "
                    f"documents of `model` {self.model_name!r} are {doc_dim}-dim; a query encoder must be trained for "
                    "that document model"
                )

    def _load_folds(self, cross_fit, doc_fp: str, has_query_model: bool) -> list[dict]:
        """The ``cross_fit`` students: ``[{"model": SentenceTransformer, "name", "fingerprint",
        "trained": set of qids}]`` (empty without the option)."""
        if cross_fit is None:  # an empty list (or {}, false, "") is a malformed option, not "no cross-fitting"
            return []
        from retrieval_distill.distill.query_side import check_query_encoder, read_card
        from retrieval_distill.models.resolve import load_sentence_transformer, model_fingerprint
        from retrieval_distill.utils import fingerprint_obj

        where = f"teacher {self.spec.display_name()}"
        if has_query_model:
            raise ValueError(f"{where}: give either `query_model` or `cross_fit`, not both")
        if not isinstance(cross_fit, list) or len(cross_fit) < 2:
            raise ValueError(f"{where}: `cross_fit` is a list of at least 2 {{query_model, trained_qids}} entries")
        folds = []
        for i, f in enumerate(cross_fit):
            if not isinstance(f, dict) or "query_model" not in f or not set(f) <= {"query_model", "trained_qids"}:
                raise ValueError(f"{where}: cross_fit[{i}] must have the key query_model and may have trained_qids, got {f!r}")
            own = _own_trained_qids(f["query_model"], f"{where}: cross_fit[{i}]")
            card = read_card(f["query_model"])
            if f.get("trained_qids") is None:
                if own is None:
                    why = (card or {}).get("trained_qids_unknown")
                    raise ValueError(
                        f"{where}: cross_fit[{i}] has no trained_qids, and {f['query_model']!r} has no {TRAINED_QIDS} "
                        + (f"({why})" if why else "(a student trained before the card recorded its queries)")
                        + ": give the fold's qids file as trained_qids"
                    )
                trained = set(own)
            else:
                trained = set(_read_trained_file(f["trained_qids"], f"{where}: cross_fit[{i}].trained_qids"))
                if own is not None:  # the student says what it trained on: a wrong fold file is caught here
                    unlisted = [q for q in own if q not in trained]
                    if unlisted:
                        raise ValueError(
                            f"{where}: cross_fit[{i}].query_model {f['query_model']!r} trained on {len(unlisted)} queries "
                            f"that its trained_qids {str(f['trained_qids'])!r} does not list (e.g. {unlisted[:3]}): the teacher "
                            f"would score them with a student fit to their qrels. Is it the fold file of another student? "
                            f"Leave trained_qids out to use the student's own {TRAINED_QIDS}."
                        )
            check_query_encoder(f["query_model"], doc_fp, where=f"{where}'s `model`")
            fp = model_fingerprint(f["query_model"])
            if card is not None and card.get("mode") != "query_side" and fp != doc_fp:
                from retrieval_distill.index.manifest import EncoderMismatchError

                # a two-tower student's query vectors belong with its own document tower: against
                # `model`'s documents its scores would be neither its own nor the model's
                raise EncoderMismatchError(
                    f"{where}: cross_fit[{i}].query_model {f['query_model']!r} is a two-tower student (its card has no "
                    f"`mode: query_side`): it encodes its own documents, not those of `model` {self.model_name!r}; "
                    "cross_fit students are query-side students trained against `model`'s documents"
                )
            folds.append({"model": load_sentence_transformer(f["query_model"]), "name": str(f["query_model"]),
                          "fingerprint": fp + fingerprint_obj(sorted(trained)),
                          "trained": trained})
        return folds

    # -- identity -----------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Spec plus model weights fingerprint (16 hex chars); with ``cross_fit``, also each
        student's weights and the qids it trained on (a changed fold file is another teacher)."""
        if self._fp is None:
            # a preloaded encoding folder changes where vectors come from, not the scores
            opts = {k: v for k, v in self.spec.options.items() if k != "embeddings"}
            weights = self.encoder.fingerprint() + "".join(f["fingerprint"] for f in self.folds)
            if self.folds:  # out of fold by text as well as by qid (session 26): scores of twins differ from before
                weights += "oof-text"
            self._fp = spec_fingerprint(self.spec.model_copy(update={"options": opts}), weights)
        return self._fp

    @property
    def dim(self) -> int:
        return self.encoder.dim

    # -- encoding -----------------------------------------------------------------------
    def _autocast(self):
        if self.dtype == "bf16":
            import torch

            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Queries -> float32 (n, dim), L2-normalised."""
        with self._autocast():
            return np.asarray(self.encoder.encode_queries(list(texts)), dtype=np.float32)

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Passages -> float32 (n, dim), L2-normalised. sentence-transformers sorts each
        call's texts by length before batching, which cuts padding."""
        with self._autocast():
            return np.asarray(self.encoder.encode_documents(list(texts)), dtype=np.float32)

    # document-side state for the scoring job's cached document pass
    def encode_document_state(self, passages: list[str]) -> np.ndarray:
        """Document-side state of :meth:`set_document_embeddings`: float32 (n, dim)."""
        return self.encode_documents(passages)

    def set_document_embeddings(self, docids: list[str], emb, preloaded: bool = False) -> None:
        """Preload document embeddings.

        Args:
            preloaded: mark these documents as preloaded (an encoding folder of this model, e.g.
                the pipeline's init embeddings), so the scoring job's document pass skips them.
            docids: n docids.
            emb: float32 array (n, dim) (or a list of n (dim,) arrays), L2-normalised rows
                from the same model (checked: dimension and unit norm).

        Raises:
            ValueError: length or dimension mismatch, or rows that are not unit length.
        """
        emb = np.asarray(np.stack(emb) if isinstance(emb, list) else emb, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(docids):
            raise ValueError(f"expected ({len(docids)}, {self.dim}) embeddings, got {emb.shape}")
        if emb.shape[1] != self.dim:
            raise ValueError(f"embedding dim {emb.shape[1]} != model dim {self.dim} ({self.model_name})")
        norms = np.linalg.norm(emb, axis=1)
        if len(norms) and not np.allclose(norms, 1.0, atol=1e-3):
            raise ValueError("document embeddings must be L2-normalised (cosine teacher)")
        for d, e in zip(docids, emb):
            self._doc_cache[str(d)] = e
        if preloaded:
            self._preloaded |= {str(d) for d in docids}

    def load_document_embeddings(self, folder) -> int:
        """Preload an encoding folder of this model (see the ``embeddings`` option).

        Returns:
            the number of documents loaded.

        Raises:
            FileNotFoundError / ValueError: see :func:`retrieval_distill.index.build.load_encoding`;
            ValueError also when the folder was encoded by other weights, another token limit
            or another dtype than the teacher's (a bf16 ``rd index build --dtype bf16``
            encoding needs ``dtype: bf16``).
        """
        from retrieval_distill.index.build import load_encoding

        docids, emb, key = load_encoding(folder, self.model_name, role="this teacher's")
        # the folder's vectors stand for this teacher's document pass: same dtype, or the spec
        # (and the score file's fingerprint) would name a precision its documents never had
        encoded = key.get("dtype", "fp32")  # folders written before the key existed are fp32
        if encoded != self.dtype:
            raise ValueError(
                f"{folder}: documents encoded in {encoded}, this teacher runs {self.dtype} "
                f"(set options.dtype to {encoded}, or preload an encoding made in {self.dtype})"
            )
        if key.get("max_seq_length") and int(key["max_seq_length"]) != self.max_length:
            raise ValueError(
                f"{folder}: encoded with max_seq_length {key['max_seq_length']}, this teacher uses {self.max_length} "
                f"(set options.max_length to {key['max_seq_length']})"
            )
        self.set_document_embeddings(docids, emb, preloaded=True)
        return len(docids)

    def preloaded_docids(self) -> set[str]:
        """Docids whose vectors came from an encoding folder (the scoring job skips them)."""
        return set(self._preloaded)

    def clear_cache(self) -> None:
        self._preloaded = set()
        self._doc_cache.clear()
        self._query_cache.clear()

    # -- scoring ------------------------------------------------------------------------
    def score(self, queries: list[str], passages: list[str]) -> np.ndarray:
        """Cosine of each (query, passage) pair.

        Args:
            queries, passages: n texts each (repeated texts are encoded once).

        Returns:
            float32 (n,), in [-1, 1].
        """
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries but {len(passages)} passages")
        if self.folds:
            raise ValueError(f"teacher {self.spec.display_name()}: a cross_fit teacher scores by qid (score_ids), not by text")
        if not queries:
            return np.zeros(0, dtype=np.float32)
        uq = list(dict.fromkeys(queries))
        up = list(dict.fromkeys(passages))
        qe = self.encode_queries(uq)
        pe = self.encode_documents(up)
        qi = {t: i for i, t in enumerate(uq)}
        pi = {t: i for i, t in enumerate(up)}
        q = qe[[qi[t] for t in queries]]
        p = pe[[pi[t] for t in passages]]
        return np.einsum("nd,nd->n", q, p).astype(np.float32)

    def _learn_texts(self, texts: dict[str, str]) -> None:
        """Record qid -> normalised text (lower case, white space collapsed) for twin detection."""
        new = {str(q): " ".join(str(t).lower().split()) for q, t in texts.items() if str(q) not in self._text_of}
        if new:
            self._text_of.update(new)
            self._trained_texts = None

    def _trained_on(self, qid: str, text: str | None = None) -> list[bool]:
        """Per ``cross_fit`` student, then for the document ``model``: whether it trained on
        ``qid`` or on a query of the same text under another qid (a twin)."""
        if self._trained_texts is None:
            self._trained_texts = [{self._text_of[q] for q in f["trained"] if q in self._text_of} for f in self.folds]
            self._trained_texts.append({self._text_of[q] for q in self.doc_trained if q in self._text_of})
        norm = " ".join(text.lower().split()) if text is not None else self._text_of.get(qid)
        sets = [f["trained"] for f in self.folds] + [self.doc_trained]
        return [qid in ids or (norm is not None and norm in tt) for ids, tt in zip(sets, self._trained_texts)]

    def check_queries(self, qids, queries: dict[str, str] | None = None) -> None:
        """Refuse, before any scoring, a ``cross_fit`` teacher's query that every student
        trained on (no student can score it out of fold), or one the document ``model`` (a
        student) trained on; "trained on" includes a twin (the same text under another qid).
        Without ``cross_fit``, log a warning when ``model`` or ``query_model`` lists some of
        ``qids`` in its ``trained.qids`` (a teacher scoring its own training queries).

        Args:
            qids: the qids the job will score (any iterable of str).
            queries: optional qid -> text of the collection's queries (all of them, not only
                ``qids``): a ``cross_fit`` teacher finds twins among them.

        Raises:
            ValueError: such a query (the message names one and counts them).
        """
        qids = list(dict.fromkeys(str(q) for q in qids))
        if queries is not None and self.folds:
            self._learn_texts(dict(queries))
        if not self.folds:
            seen = [q for q in qids if q in self.own_trained]
            if seen:
                log.warning("teacher %s: %d of the %d queries to score are in the %s of its model or query_model (e.g. %r): "
                            "a model scoring its own training queries restates their qrels (a born-again teacher gave its "
                            "student nothing on SciFact, eval/reports/query_side.md, session 24); the cross_fit option scores "
                            "them out of fold", self.spec.display_name(), len(seen), len(qids), TRAINED_QIDS, seen[0])
            return
        flags = {q: self._trained_on(q) for q in qids}
        every = [q for q in qids if all(flags[q][:-1])]
        if every:
            twin = "" if all(every[0] in f["trained"] for f in self.folds) else " (or a query of the same text)"
            raise ValueError(f"teacher {self.spec.display_name()}: query {every[0]!r} is in every cross_fit student's "
                             f"trained_qids{twin} ({len(every)} such queries); no student can score it out of fold")
        docs = [q for q in qids if flags[q][-1]]
        if docs:
            raise ValueError(f"teacher {self.spec.display_name()}: query {docs[0]!r} is in the {TRAINED_QIDS} of the document "
                             f"`model` {self.model_name!r} ({len(docs)} such queries): its documents were fit to that "
                             "query's qrels, so no student can score it out of fold against them")

    def _cross_fit_queries(self, qids: list[str], queries: list[str]) -> list:
        """Cache each query's out-of-fold vector (mean of the students that did not train on
        it) under ``(qid, text)`` and return those keys, one per pair."""
        keys = [(str(q), t) for q, t in zip(qids, queries)]
        todo = [k for k in dict.fromkeys(keys) if k not in self._query_cache]
        if not todo:
            return keys
        self._learn_texts({q: t for q, t in todo})  # a caller that never gave check_queries the collection's texts
        self.check_queries([k[0] for k in todo])
        eligible = {k: [i for i, out in enumerate(self._trained_on(k[0], k[1])[:-1]) if not out] for k in todo}
        acc = {k: 0.0 for k in todo}
        for i, f in enumerate(self.folds):
            mine = [k for k in todo if i in eligible[k]]
            if not mine:
                continue
            with self._autocast():
                vec = self.encoder.encode_queries([k[1] for k in mine], model=f["model"])
            for k, v in zip(mine, np.asarray(vec, dtype=np.float32)):
                acc[k] = acc[k] + v / len(eligible[k])
        for k in todo:
            self._query_cache[k] = np.asarray(acc[k], dtype=np.float32)
        return keys

    def score_ids(self, qids: list[str], queries: list[str], docids: list[str], passages: list[str]) -> np.ndarray:
        """Like :meth:`score`, caching query embeddings by text and document embeddings by
        docid (unless ``cache_documents`` is off), so each is encoded once.

        Returns:
            float32 (n,).
        """
        if not (len(qids) == len(queries) == len(docids) == len(passages)):
            raise ValueError("qids, queries, docids and passages must have the same length")
        if not queries:
            return np.zeros(0, dtype=np.float32)
        if self.folds:
            keys = self._cross_fit_queries(qids, queries)
        else:
            keys = list(queries)
            new_q = [t for t in dict.fromkeys(queries) if t not in self._query_cache]
            if new_q:
                for t, e in zip(new_q, self.encode_queries(new_q)):
                    self._query_cache[t] = e
        doc_vecs: dict[str, np.ndarray] = {}
        todo: dict[str, str] = {}
        for d, p in zip(docids, passages):
            if d in self._doc_cache:
                doc_vecs[d] = self._doc_cache[d]
            else:
                todo.setdefault(d, p)
        if todo:
            for d, e in zip(todo, self.encode_documents(list(todo.values()))):
                doc_vecs[d] = e
                if self.cache_documents:
                    self._doc_cache[d] = e
        q = np.stack([self._query_cache[t] for t in keys])
        p = np.stack([doc_vecs[d] for d in docids])
        return np.einsum("nd,nd->n", q, p).astype(np.float32)


def _read_trained_file(path, where: str) -> list[str]:
    """The qids of a ``trained_qids`` file (UTF-8, BOM stripped: the reader of
    ``exclude_qids_file``; a BOM read as part of the first qid would let the student that
    trained on that query score it).

    Raises:
        FileNotFoundError: no such file. ValueError: a folder, or a file that lists no qid.
    """
    from pathlib import Path

    from retrieval_distill.data.formats import read_qids

    qfile = Path(str(path))
    if qfile.is_dir():
        raise ValueError(f"{where} {str(qfile)!r} is a folder, not a qids file")
    if not qfile.is_file():
        raise FileNotFoundError(f"{where} {str(qfile)!r} does not exist")
    qids = read_qids(qfile)
    if not qids:
        raise ValueError(f"{where} {str(qfile)!r} lists no qids; a student trained on no query is not a cross-fit "
                         "student (a fold file written wrong?)")
    return qids


def _own_trained_qids(model, where: str) -> list[str] | None:
    """The qids a student folder says it trained on (its ``trained.qids``, written by
    ``rd student train``), or ``None`` for a hub name or a folder without one."""
    path = trained_qids_file(model)
    return None if path is None else _read_trained_file(path, f"{where}: the student's own")
