"""Late-interaction (ColBERT) teacher: MaxSim over L2-normalised token embeddings.

Score of a query ``q`` (tokens ``q_1..q_m``) and a passage ``d`` (tokens ``d_1..d_n``):
``sum_i max_j cos(E(q_i), E(d_j))`` (Khattab & Zaharia 2020, "ColBERT: Efficient and
Effective Passage Search via Contextualized Late Interaction over BERT"; ColBERTv2,
Santhanam et al. 2022). Token embeddings are the encoder's last hidden states, passed
through a linear projection (identity in the zero-shot mode) and L2-normalised. Query and
document texts may be prefixed with marker tokens (ColBERT's ``[Q]``/``[D]``, stored in
colbert-ir checkpoints as ``[unused0]``/``[unused1]``), and queries may be padded with
``[MASK]`` tokens to ``query_maxlen`` (query augmentation).

This is a small module of our own: PyLate (the ColBERT library for sentence-transformers)
does not install here without replacing the project's torch 2.13 CPU build with a CUDA
torch 2.11 and downgrading sentence-transformers/transformers, and the original
``colbert-ai`` package needs faiss-gpu and its own training stack.

Two ways to build one:

* **Zero-shot from a bi-encoder** (default; ``model="all-mpnet-base-v2"``): no markers, no
  query augmentation, identity projection, and special tokens and punctuation skipped on
  both sides; MaxSim over all-mpnet-base-v2 token embeddings reranking BM25 top-100 was
  measured at 0.737 nDCG@10 on SciFact test here.
* **colbert-ir/colbertv2.0-style checkpoints** (online users): ``options={"markers":
  ["[unused0]", "[unused1]"], "query_maxlen": 32, "doc_maxlen": 180, "augment": true,
  "projection": "checkpoint", "skip_special": false}``; the 768x128 ``linear.weight`` is
  read from the checkpoint's weights file. (No such checkpoint is available offline here,
  so this path is exercised only with a projection matrix file.)
* **Fitted** (``rd teacher fit-colbert``, :func:`~retrieval_distill.teachers.fit.fit_colbert_projection`):
  the encoder stays frozen and a linear projection (hidden -> ``dim``, 128 as in ColBERT) is
  trained on qrels with mined hard negatives and in-batch negatives; it is saved as
  ``projection.pt`` beside a ``teacher.json`` spec that names it (relative to the spec file, so the
  folder can be moved; :func:`~retrieval_distill.teachers.base.parse_spec` resolves it).

Document-side work is cached: token embeddings of each document are computed once (by
docid in :meth:`ColBERTTeacher.score_ids`, or preloaded by the scoring job's document
pass through :meth:`set_document_embeddings`) and stored in float16 (halves memory; the
rounding is applied on every path, cached or not, so scores do not depend on caching).

Options: ``batch_size`` (32), ``query_maxlen`` (64), ``doc_maxlen`` (256), ``dtype``
(``fp32`` or ``bf16``: the encoder's forward pass under ``torch.autocast`` in bfloat16; it
enters the fingerprint, and before its first scores it is checked against fp32 on
``check_sample`` (64) real pairs, ``rel_tol`` (0.1) / ``min_spearman`` (0.98), see
:mod:`retrieval_distill.teachers.speed`; on an AVX-512-BF16 CPU all-mpnet-base-v2 token passes
ran 1.4x faster with another job on the cores (``eval/bench/colbert_bf16.py``) and the SciFact
fit's pass over 2,056 documents took 8.7 min against about 21 min in fp32; without bf16 units
autocast would emulate it, slower, so there the teacher runs, and fingerprints as, fp32:
:func:`~retrieval_distill.teachers.base.resolve_teacher_dtype`), ``markers``
(``[q_marker, d_marker]`` or null), ``augment`` (false), ``projection`` (``identity``,
``checkpoint``, or a ``.pt``/``.npy`` path of a (dim_out, dim_in) matrix),
``skip_special`` (true), ``skip_punctuation`` (true), ``cache_documents`` (true),
``doc_states`` (null: the score folder of an earlier ``rd teacher score`` job of this same
teacher over the same corpus; its saved document token states are preloaded, so scoring
another candidate set, e.g. a corpus's real queries after its synthetic ones, skips the
document pass for every document already encoded there. Checked: the folder's teacher
fingerprint must equal this teacher's (the option itself does not enter the fingerprint),
and a document whose text differs from the one the state was computed from is re-encoded).
"""

from __future__ import annotations

import contextlib
import string
from pathlib import Path

import numpy as np

from retrieval_distill.models.resolve import model_fingerprint, resolve_model
from retrieval_distill.teachers.base import TeacherSpec, check_options, register_teacher, resolve_teacher_dtype, spec_fingerprint
from retrieval_distill.teachers.speed import MIN_CHECK_PAIRS, check_against_fp32, stays_exact

PUNCT = set(string.punctuation)


@register_teacher("colbert")
class ColBERTTeacher:
    """MaxSim late-interaction teacher (scale ``maxsim``: a sum of cosines over query tokens).

    Raises:
        ModelNotFoundError: the model cannot be resolved.
        FileNotFoundError: a projection file does not exist.
        ValueError: a bad or unknown option, or a projection file that does not load as a (dim_out, hidden) matrix.
    """

    scale = "maxsim"
    OPTIONS = frozenset({
        "batch_size", "query_maxlen", "doc_maxlen", "markers", "augment", "skip_special", "skip_punctuation",
        "cache_documents", "dtype", "check_sample", "rel_tol", "min_spearman", "projection", "doc_states",
    })  # fmt: skip  (a pipeline member's `fit` settings are removed before the teacher is built)

    def __init__(self, spec: TeacherSpec):
        check_options(spec, self.OPTIONS)
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.dtype, spec = resolve_teacher_dtype(spec)  # bf16 -> fp32 on a CPU without native bf16
        self.spec = spec
        o = spec.options
        self.model_name = spec.model or "all-mpnet-base-v2"
        self.path = resolve_model(self.model_name)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).eval()
        self.batch_size = int(o.get("batch_size", 32))
        self.query_maxlen = int(o.get("query_maxlen", 64))
        self.doc_maxlen = int(o.get("doc_maxlen", 256))
        self.max_length = self.query_maxlen
        markers = o.get("markers")
        if markers is not None and len(markers) != 2:
            raise ValueError(f"markers must be [query_marker, doc_marker], got {markers!r}")
        self.markers = markers
        self._marker_ids = None
        if markers:
            self._marker_ids = self.tokenizer.convert_tokens_to_ids(list(markers))
            if self.tokenizer.unk_token_id in self._marker_ids:
                raise ValueError(f"marker tokens {markers} are not in the vocabulary of {self.model_name}")
        self.augment = bool(o.get("augment", False))
        self.skip_special = bool(o.get("skip_special", True))
        self.skip_punctuation = bool(o.get("skip_punctuation", True))
        self.cache_documents = bool(o.get("cache_documents", True))
        self.fast = self.dtype == "bf16"
        self._exact = False  # True while fp32 is forced (the speed check's reference, calls too small to check)
        self.speed_check: dict | None = None
        self.check_sample = int(o.get("check_sample", 64))
        self.rel_tol = float(o.get("rel_tol", 0.1))
        self.min_spearman = float(o.get("min_spearman", 0.98))
        self.projection = self._load_projection(o.get("projection", "identity"))
        vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self._punct_ids = {i for i, t in enumerate(vocab) if t and all(ch in PUNCT for ch in t.lstrip("#▁Ġ")) and t.lstrip("#▁Ġ")}
        self._special_ids = set(self.tokenizer.all_special_ids)
        self._doc_cache: dict[str, np.ndarray] = {}
        self._query_cache: dict[str, np.ndarray] = {}
        self._fp: str | None = None
        self._preloaded: dict[str, str] = {}  # docid -> text SHA-1 of states from doc_states
        if o.get("doc_states"):
            self.load_document_states(o["doc_states"])

    def load_document_states(self, folder) -> int:
        """Preload the document token states an earlier scoring job of this teacher saved
        (see the ``doc_states`` option).

        Returns:
            the number of documents loaded.

        Raises:
            FileNotFoundError / ValueError: see :func:`retrieval_distill.teachers.scoring.read_document_states`.
        """
        from retrieval_distill.teachers.scoring import read_document_states

        docids, states, hashes = read_document_states(folder, self.fingerprint)
        self.set_document_embeddings(docids, states)
        self._preloaded.update(zip(docids, hashes))
        return len(docids)

    def preloaded_docids(self) -> set[str]:
        """Docids whose token states came from ``doc_states`` (the scoring job skips them)."""
        return set(self._preloaded)

    def preloaded_text_hashes(self) -> dict[str, str]:
        """docid -> SHA-1 (16 hex) of the text its preloaded state was computed from."""
        return dict(self._preloaded)

    def drop_preloaded(self, docids) -> None:
        """Forget preloaded states (their text differs here); they are encoded again."""
        for d in docids:
            self._preloaded.pop(d, None)
            self._doc_cache.pop(d, None)

    # -- set-up -------------------------------------------------------------------------
    def _load_projection(self, proj):
        import torch

        if proj in (None, "identity"):
            return None
        if proj == "checkpoint":
            folder = Path(self.path)
            for name in ("model.safetensors", "pytorch_model.bin"):
                f = folder / name
                if f.exists():
                    if name.endswith(".safetensors"):
                        from safetensors.torch import load_file

                        sd = load_file(str(f))
                    else:
                        sd = torch.load(f, map_location="cpu", weights_only=True)
                    for k in ("linear.weight", "colbert_linear.weight"):
                        if k in sd:
                            return sd[k].float()
            raise ValueError(f"{folder}: no 'linear.weight' in the checkpoint (not a ColBERT checkpoint)")
        p = Path(proj)
        if not p.exists():
            raise FileNotFoundError(f"{p}: projection file does not exist")
        try:
            w = torch.from_numpy(np.load(p)) if p.suffix == ".npy" else torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: pickle, zip or numpy errors
            raise ValueError(f"{p}: not a readable projection matrix ({type(e).__name__}: {str(e).split('. ')[0][:160]})") from None
        hidden = int(self.model.config.hidden_size)
        if not isinstance(w, torch.Tensor) or w.ndim != 2 or w.shape[1] != hidden or w.shape[0] < 1:
            shape = tuple(w.shape) if hasattr(w, "shape") else type(w).__name__
            raise ValueError(f"{p}: projection must be a (dim_out, {hidden}) matrix for {self.model_name}, got {shape}")
        return w.float()

    @property
    def fingerprint(self) -> str:
        """Spec plus weights fingerprint (the projection file's bytes when one is given)."""
        if self._fp is None:
            extra = ""
            proj = self.spec.options.get("projection")
            if proj not in (None, "identity", "checkpoint"):
                from retrieval_distill.utils import fingerprint_files

                extra = fingerprint_files([proj])
            # preloaded document states change where token states come from, not the scores
            opts = {k: v for k, v in self.spec.options.items() if k != "doc_states"}
            self._fp = spec_fingerprint(self.spec.model_copy(update={"options": opts}), model_fingerprint(self.path) + extra)
        return self._fp

    @property
    def dim(self) -> int:
        return int(self.projection.shape[0]) if self.projection is not None else int(self.model.config.hidden_size)

    # -- token embeddings ---------------------------------------------------------------
    def _embed(self, texts: list[str], is_query: bool, raw: bool = False) -> list[np.ndarray]:
        """Token embeddings of each text: list of float32 (n_tokens_i, dim), normalised,
        with skipped tokens removed. Texts are sorted by length and batched. ``raw=True``
        returns the encoder's hidden states (n_tokens_i, hidden) before the projection and
        the normalisation (what :func:`~retrieval_distill.teachers.fit.fit_colbert_projection`
        trains on)."""
        import torch

        if not texts:
            return []
        marker = self._marker_ids[0 if is_query else 1] if self._marker_ids else None
        maxlen = self.query_maxlen if is_query else self.doc_maxlen
        enc = self.tokenizer(list(texts), truncation=True, max_length=maxlen - (marker is not None))
        if marker is not None:  # ColBERT: the marker token goes right after [CLS]
            enc = {"input_ids": [ids[:1] + [marker] + ids[1:] for ids in enc["input_ids"]]}
        lengths = np.array([len(x) for x in enc["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        out: list[np.ndarray | None] = [None] * len(texts)
        pad = self.tokenizer.pad_token_id
        mask_id = self.tokenizer.mask_token_id
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            width = maxlen if (is_query and self.augment) else int(lengths[idx].max())
            ids = np.full((len(idx), width), pad, dtype=np.int64)
            att = np.zeros((len(idx), width), dtype=np.int64)
            for r, j in enumerate(idx):
                row = enc["input_ids"][j]
                ids[r, : len(row)] = row
                if is_query and self.augment:  # ColBERT query augmentation: pad with [MASK], attended
                    ids[r, len(row) :] = mask_id
                    att[r, :] = 1
                else:
                    att[r, : len(row)] = 1
            bf16 = self.fast and not self._exact
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                h = self.model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(att)).last_hidden_state.float()
            if raw:
                h = h.numpy()
            else:
                if self.projection is not None:
                    h = h @ self.projection.T
                h = torch.nn.functional.normalize(h, dim=-1).numpy()
            for r, j in enumerate(idx):
                keep = att[r].astype(bool).copy()
                for t, tok in enumerate(ids[r]):
                    if not keep[t]:
                        continue
                    if (self.skip_special and tok in self._special_ids and not (is_query and self.augment and tok == mask_id)) or (
                        self.skip_punctuation and not is_query and tok in self._punct_ids
                    ) or (self.skip_punctuation and is_query and not self.augment and tok in self._punct_ids):
                        keep[t] = False
                if not keep.any():  # e.g. a passage of punctuation only: keep everything attended
                    keep = att[r].astype(bool)
                out[j] = np.ascontiguousarray(h[r][keep], dtype=np.float32)
        return out  # type: ignore[return-value]

    def encode_queries(self, texts: list[str]) -> list[np.ndarray]:
        """Query token embeddings: list of float32 (m_i, dim)."""
        return self._embed(list(texts), True)

    def encode_document_state(self, passages: list[str]) -> list[np.ndarray]:
        """Document token embeddings, rounded to float16: list of (n_i, dim) float16."""
        return [e.astype(np.float16) for e in self._embed(list(passages), False)]

    def set_document_embeddings(self, docids: list[str], emb: list[np.ndarray]) -> None:
        """Preload document token embeddings (from :meth:`encode_document_state`).

        Raises:
            ValueError: count or dimension mismatch.
        """
        if len(emb) != len(docids):
            raise ValueError(f"{len(emb)} token matrices for {len(docids)} docids")
        for d, e in zip(docids, emb):
            if e.ndim != 2 or e.shape[1] != self.dim:
                raise ValueError(f"docid {d}: token embeddings of shape {e.shape}, expected (n, {self.dim})")
            self._doc_cache[str(d)] = np.asarray(e, dtype=np.float16)

    def clear_cache(self) -> None:
        self._preloaded.clear()
        self._doc_cache.clear()
        self._query_cache.clear()

    # -- scoring ------------------------------------------------------------------------
    @staticmethod
    def maxsim(q: np.ndarray, d: np.ndarray) -> float:
        """``sum_i max_j q_i . d_j`` for q (m, dim) and d (n, dim)."""
        return float((q @ d.astype(np.float32).T).max(axis=1).sum())

    def check_speed(self, queries: list[str], passages: list[str]) -> dict | None:
        """With ``dtype: bf16``, score the first ``check_sample`` pairs both ways (fresh
        token embeddings, no cache) once, before any score is used; the scoring job calls it
        before its document pass.

        Returns:
            the check's record (also kept as ``speed_check``), or None for fp32 or fewer than
            ``MIN_CHECK_PAIRS`` (3) pairs.

        Raises:
            SpeedCheckError: bf16 scores drift past ``rel_tol`` / ``min_spearman``.
        """
        if not self.fast or self.speed_check is not None or len(queries) < MIN_CHECK_PAIRS:
            return self.speed_check
        n = min(self.check_sample, len(queries))

        def exact(q, p):
            with self._fp32():
                return self._score_fresh(q, p)

        self.speed_check = check_against_fp32(
            self._score_fresh, exact, list(queries[:n]), list(passages[:n]),
            option=self.dtype, rel_tol=self.rel_tol, min_spearman=self.min_spearman,
        )  # fmt: skip
        return self.speed_check

    def score(self, queries: list[str], passages: list[str]) -> np.ndarray:
        """MaxSim of each (query, passage) pair: float32 (n,).

        Raises:
            ValueError: lists of different lengths.
            SpeedCheckError: see :meth:`check_speed` (``dtype: bf16``).
        """
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries but {len(passages)} passages")
        self.check_speed(queries, passages)
        with self._exact_until_checked(len(queries)):
            return self._score_fresh(queries, passages)

    @contextlib.contextmanager
    def _fp32(self, on: bool = True):
        """Within it, the encoder runs in fp32 whatever ``dtype`` says (when ``on``)."""
        before = self._exact
        self._exact = before or on
        try:
            yield
        finally:
            self._exact = before

    def _exact_until_checked(self, n: int):
        """fp32 for a call too small to check a speed option on, before any check
        (:func:`~retrieval_distill.teachers.speed.stays_exact`, as the cross-encoder does)."""
        return self._fp32(stays_exact(self.fast, self.speed_check, n))

    def _score_fresh(self, queries: list[str], passages: list[str]) -> np.ndarray:
        uq, up = list(dict.fromkeys(queries)), list(dict.fromkeys(passages))
        qe = dict(zip(uq, self.encode_queries(uq)))
        pe = dict(zip(up, self.encode_document_state(up)))
        return np.array([self.maxsim(qe[q], pe[p]) for q, p in zip(queries, passages)], dtype=np.float32)

    def score_ids(self, qids: list[str], queries: list[str], docids: list[str], passages: list[str]) -> np.ndarray:
        """Like :meth:`score`, with query token embeddings cached by text and document token
        embeddings by docid. Returns float32 (n,)."""
        self.check_speed(queries, passages)
        with self._exact_until_checked(len(queries)):
            return self._score_ids(queries, docids, passages)

    def _score_ids(self, queries: list[str], docids: list[str], passages: list[str]) -> np.ndarray:
        new_q = [t for t in dict.fromkeys(queries) if t not in self._query_cache]
        for t, e in zip(new_q, self.encode_queries(new_q)):
            self._query_cache[t] = e
        todo: dict[str, str] = {}
        for d, p in zip(docids, passages):
            if d not in self._doc_cache:
                todo.setdefault(d, p)
        local = dict(zip(todo, self.encode_document_state(list(todo.values()))))
        if self.cache_documents:
            self._doc_cache.update(local)
        return np.array(
            [self.maxsim(self._query_cache[q], self._doc_cache[d] if d in self._doc_cache else local[d]) for q, d in zip(queries, docids)],
            dtype=np.float32,
        )
