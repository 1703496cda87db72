"""Index rebuild jobs: compare the current version with a spec and do the least work.

A spec (YAML, :class:`IndexSpec`; examples in ``indexes/``) names the corpus, the encoder,
the FAISS factory and parameters and the store root. :func:`plan` compares it with the
store's current manifest and decides:

* ``noop``: encoder fingerprint, corpus fingerprint, factory, metric and parameters all
  match;
* ``params``: only search-time parameters (``efSearch``, ``nprobe``) or the query-side
  encoder changed: a new version with the same vectors and an updated manifest;
* ``incremental``: only the corpus changed and the index allows it: documents are added
  and removed by label (``IndexIDMap2`` over Flat/SQ8/HNSW, native ids for IVF). HNSW
  cannot delete graph nodes, so removed/changed documents become tombstones filtered at
  search time, and the job rebuilds fully once tombstones exceed ``max_tombstones`` of the
  stored vectors. IVF/PQ codebooks were trained on the old corpus: once the documents added
  or removed since the last training exceed ``ivf_retrain_drift`` of the corpus it was
  trained on, the job re-trains (full rebuild);
* ``full``: no current version, an unreadable one, another document encoder, another
  factory/metric/normalisation or build parameter, another document dtype or ``max_length``
  (token limit; versions built before it was recorded in the manifest are not compared).

Every action writes a new version folder atomically and then switches ``CURRENT`` with
``os.replace``; a SIGKILL at any moment leaves the previous version current and intact
(a half-written folder is removed by the next run). Encodings are cached per
(encoder, corpus) under ``ROOT/encodings`` and resume after a kill.

Command line: ``rd index rebuild indexes/scifact-student.yaml [--dry-run]``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrieval_distill.index.build import (
    ENCODING_STATE,
    SEARCH_PARAMS,
    apply_changes,
    build_index,
    corpus_fingerprint,
    corpus_items,
    doc_hashes,
    encode_corpus,
    faiss_factory_string,
    write_version,
)
from retrieval_distill.index.manifest import EncoderRef, IndexError_, IndexManifest
from retrieval_distill.index.store import IndexStore, IndexVersion
from retrieval_distill.models.encoder import resolve_dtype


DEFAULT_SHARD_SIZE = 1024  # documents per encoding shard; a cache folder of another size is named -shardN


class IndexSpec(BaseModel):
    """What an index should be (a YAML file under ``indexes/``).

    Attributes:
        name: a readable name.
        dataset: collection id or BEIR folder (only its corpus is indexed).
        split: qrels split when ``dataset`` is a folder (default ``test``).
        model: document-side encoder (the student, or the teacher for asymmetric serving).
        query_model: query-side encoder when different (asymmetric serving).
        side: who encodes documents: ``student`` or ``teacher``.
        factory: FAISS factory string (``Flat``, ``HNSW32``, ``IVF256,PQ48``, ``SQ8``).
        metric: ``ip`` or ``l2``; default from the encoder (inner product on normalised vectors).
        params: ``efConstruction``, ``efSearch``, ``nprobe``, ``train_size``, ``seed``.
        root: the store folder.
        keep: versions to keep.
        shard_size, batch_size, max_length: encoding settings.
        dtype: ``fp32`` or ``bf16``: the document encoding's forward pass (bf16 is checked
            against fp32 on the first shard's documents and falls back to fp32 on a CPU
            without native bf16; see :mod:`retrieval_distill.models.encoder`). The manifest
            records the dtype used; changing it rebuilds fully.
        encodings: encoding cache folder (default ``ROOT/encodings``).
        backend: ``local`` or ``ray`` encoding.
        ivf_retrain_drift: re-train IVF/PQ once added+removed docs since training exceed
            this fraction of the training corpus.
        max_tombstones: rebuild HNSW fully once tombstones exceed this fraction of vectors.
    """

    model_config = ConfigDict(extra="forbid")
    name: str = ""
    dataset: str
    split: str | None = None
    model: str
    query_model: str | None = None
    side: Literal["student", "teacher"] = "student"
    factory: str = "Flat"
    metric: Literal["ip", "l2"] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    root: str
    keep: int = Field(3, ge=1)
    shard_size: int = Field(DEFAULT_SHARD_SIZE, gt=0)
    batch_size: int = Field(32, gt=0)
    max_length: int | None = Field(None, gt=0)
    dtype: Literal["fp32", "bf16"] = "fp32"
    encodings: str | None = None
    backend: Literal["local", "ray"] = "local"
    ivf_retrain_drift: float = Field(0.2, ge=0)
    max_tombstones: float = Field(0.1, ge=0)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "IndexSpec":
        """Read a spec; relative paths are relative to the current folder.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not YAML or invalid fields (message names the file).
        """
        from retrieval_distill.utils import read_yaml_mapping

        path = Path(path)
        raw = read_yaml_mapping(path, "index spec")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ValueError(f"{path}: invalid index spec: {e}") from None

    def encodings_dir(self) -> Path:
        return Path(self.encodings) if self.encodings else Path(self.root) / "encodings"


@dataclass
class Decision:
    """What a rebuild will do and why."""

    action: Literal["noop", "params", "incremental", "full"]
    reasons: list[str]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        counts = ""
        if self.action == "incremental":
            counts = f" (+{len(self.added)} added, -{len(self.removed)} removed, ~{len(self.changed)} changed)"
        return f"{self.action}{counts}: " + "; ".join(self.reasons)


@dataclass
class RebuildResult:
    decision: Decision
    version: IndexVersion | None
    seconds: float


def _refs(spec: IndexSpec) -> tuple[EncoderRef, EncoderRef]:
    from retrieval_distill.distill.query_side import check_query_encoder, refuse_as_document_encoder
    from retrieval_distill.models.resolve import model_fingerprint

    refuse_as_document_encoder(spec.model, "build the index with that model as the document encoder and this one as "
                                           "the query model (--model DOCS --query-model STUDENT), or serve it beside an existing index")
    doc = EncoderRef(name=spec.model, fingerprint=model_fingerprint(spec.model))
    if spec.query_model and spec.query_model != spec.model:
        check_query_encoder(spec.query_model, doc.fingerprint, where=f"an index of {spec.model!r}")
        return doc, EncoderRef(name=spec.query_model, fingerprint=model_fingerprint(spec.query_model))
    return doc, doc


def spec_similarity(spec: IndexSpec) -> tuple[str, bool]:
    """``(metric, normalized)`` for a spec without loading the model: the spec's metric, else
    the model folder's ``similarity_fn_name`` (``config_sentence_transformers.json``):
    ``euclidean``/``manhattan`` -> l2, anything else -> inner product; vectors are always
    L2-normalised by :class:`~retrieval_distill.models.encoder.Encoder` (its default)."""
    import json

    from retrieval_distill.models.resolve import resolve_model

    metric = spec.metric
    if metric is None:
        metric = "ip"
        cfg = Path(resolve_model(spec.model)) / "config_sentence_transformers.json"
        if cfg.exists():
            fn = json.loads(cfg.read_text(encoding="utf-8")).get("similarity_fn_name") or "cosine"
            metric = "l2" if fn in ("euclidean", "manhattan") else "ip"
    return metric, True


def _build_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in SEARCH_PARAMS}


def plan(
    spec: IndexSpec,
    current: IndexVersion | None,
    docids: list[str],
    hashes: np.ndarray,
    refs: tuple[EncoderRef, EncoderRef],
    metric: str | None = None,
    normalized: bool = True,
    dtype: str | None = None,
) -> Decision:
    """Decide what a rebuild does (see the module docstring). Reads only manifests and docids.
    ``dtype`` is the document encoding's dtype this machine would use (``spec.dtype`` after the
    CPU fallback); ``None`` leaves it out of the decision."""
    doc_ref, q_ref = refs
    if current is None:
        return Decision("full", ["no current version"])
    try:
        current.load()
        m: IndexManifest = current.manifest
    except (IndexError_, FileNotFoundError, OSError) as e:
        return Decision("full", [f"current version {current.version_id} does not load ({e})"])
    metric = metric or spec.metric or "ip"
    full = []
    if m.encoder.fingerprint != doc_ref.fingerprint:
        full.append(f"document encoder changed ({m.encoder.name}@{m.encoder.fingerprint} -> {doc_ref.name}@{doc_ref.fingerprint})")
    if faiss_factory_string(m.factory) != faiss_factory_string(spec.factory):
        full.append(f"factory changed ({m.factory} -> {spec.factory})")
    if m.metric != metric:
        full.append(f"metric changed ({m.metric} -> {metric})")
    if m.normalized != normalized:
        full.append(f"normalisation changed ({m.normalized} -> {normalized})")
    if _build_params(m.params) != _build_params(spec.params):
        full.append(f"build parameters changed ({_build_params(m.params)} -> {_build_params(spec.params)})")
    if m.documents_side != spec.side:
        full.append(f"documents side changed ({m.documents_side} -> {spec.side})")
    old_dtype = m.extra.get("dtype", "fp32")
    if dtype is not None and old_dtype != dtype:
        full.append(f"document encoding dtype changed ({old_dtype} -> {dtype})")
    # the spec's token limit (None: the model's own); versions built before it was recorded lack the key
    if "max_length" in m.extra and m.extra["max_length"] != spec.max_length:
        full.append(f"document max_length changed ({m.extra['max_length']} -> {spec.max_length} tokens)")
    if full:
        return Decision("full", full)

    meta = []
    if {k: m.params.get(k) for k in SEARCH_PARAMS} != {k: spec.params.get(k) for k in SEARCH_PARAMS}:
        meta.append(
            f"search parameters changed ({ {k: m.params.get(k) for k in SEARCH_PARAMS} } -> "
            f"{ {k: spec.params.get(k) for k in SEARCH_PARAMS} })"
        )
    if m.query_encoder is not None and m.query_encoder.fingerprint != q_ref.fingerprint:
        meta.append(f"query encoder changed ({m.query_encoder.name} -> {q_ref.name}); document vectors unchanged")

    cfp = corpus_fingerprint(docids, hashes)
    if cfp == m.corpus_fingerprint:
        if meta:
            return Decision("params", meta)
        return Decision("noop", [f"encoder, corpus ({cfp}), factory {m.factory} and parameters unchanged"])

    old = {d: current.doc_hashes[i] for i, d in enumerate(current.docids) if d}
    new = dict(zip(docids, hashes))
    added = [d for d in docids if d not in old]
    removed = [d for d in old if d not in new]
    changed = [d for d in docids if d in old and old[d] != new[d]]
    reasons = [f"corpus changed ({m.corpus_fingerprint} -> {cfp}): +{len(added)} -{len(removed)} ~{len(changed)}"] + meta
    if m.trained_on is not None:  # IVF / PQ: codebooks trained on an older corpus
        drift = (m.changed_since_train + len(added) + len(removed) + 2 * len(changed)) / max(1, m.trained_on)
        if drift > spec.ivf_retrain_drift:
            return Decision("full", reasons + [f"drift since training {drift:.3f} > ivf_retrain_drift {spec.ivf_retrain_drift}: re-train"],
                            added, removed, changed)
        reasons.append(f"drift since training {drift:.3f} <= {spec.ivf_retrain_drift}: add/remove in the trained lists")
    elif "HNSW" in m.factory.upper():
        tomb = m.tombstones + len(removed) + len(changed)
        total = m.ntotal + len(added) + len(changed)
        if tomb / total > spec.max_tombstones:
            return Decision("full", reasons + [f"HNSW tombstones would reach {tomb}/{total} > max_tombstones {spec.max_tombstones}: rebuild the graph"],
                            added, removed, changed)
        reasons.append(f"HNSW cannot delete nodes: {len(removed) + len(changed)} removals become tombstones ({tomb}/{total})")
    else:
        reasons.append(f"{m.factory} behind an id map supports add/remove")
    return Decision("incremental", reasons, added, removed, changed)


def _encoder(spec: IndexSpec):
    from retrieval_distill.models.encoder import Encoder

    return Encoder(spec.model, query_model=spec.query_model, batch_size=spec.batch_size, max_length=spec.max_length,
                   dtype=spec.dtype)


def _load_corpus(spec: IndexSpec) -> tuple[list[str], list[str], str]:
    from retrieval_distill.data.collections import load_corpus_collection

    coll = load_corpus_collection(spec.dataset, split=spec.split)
    return corpus_items(coll)


def _cache_suffix(encoder, shard_size: int = DEFAULT_SHARD_SIZE, max_length: int | None = None) -> str:
    """``-bf16`` for a bf16 encoder, ``-lenN`` for an explicit document ``max_length`` and
    ``-shardN`` for a shard size other than the default 1024: encodings of another dtype,
    truncation or shard size live in their own folder, so two builds of one corpus never share
    (or wipe each other's) shards; ``""`` for fp32, the model's own max length and 1024 (the
    folder names written before any of these existed). A ``max_length`` equal to the model's
    own limit (e.g. 256 for all-MiniLM-L6-v2) encodes the same vectors, so it shares the
    unsuffixed folder rather than encoding the corpus again."""
    dtype = getattr(encoder, "dtype", "fp32")
    if max_length is not None and max_length == getattr(encoder, "native_max_length", None):
        max_length = None
    return (("" if dtype == "fp32" else f"-{dtype}") + ("" if max_length is None else f"-len{max_length}")
            + ("" if shard_size == DEFAULT_SHARD_SIZE else f"-shard{shard_size}"))


def _speed_check(cache: Path) -> dict:
    """``{"speed_check": ...}`` from an encoding folder whose shards were checked (bf16), else ``{}``."""
    try:
        state = json.loads((cache / ENCODING_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {"speed_check": state["speed_check"]} if state.get("speed_check") else {}


def full_build(spec: IndexSpec, store: IndexStore, docids, texts, hashes, encoder=None, log=print) -> IndexVersion:
    """Encode (cached, resumable) and build a new version; publish it."""
    encoder = encoder or _encoder(spec)
    metric, normalized = spec_similarity(spec)
    doc_ref, q_ref = _refs(spec)
    cfp = corpus_fingerprint(docids, hashes)
    cache = spec.encodings_dir() / f"{doc_ref.fingerprint[:8]}-{cfp}{_cache_suffix(encoder, spec.shard_size, spec.max_length)}"
    t0 = time.perf_counter()
    ids, emb = encode_corpus(encoder, (docids, texts), cache, shard_size=spec.shard_size, backend=spec.backend)
    enc_s = time.perf_counter() - t0
    out = store.new_version_dir(spec.factory)
    log(f"build: {spec.factory} over {len(ids)} docs -> {out}")
    v = build_index(
        emb, ids, out, factory=spec.factory, metric=metric, params=spec.params, normalize=normalized, hashes=hashes,
        manifest_extra={
            "encoder": doc_ref.model_dump(), "query_encoder": q_ref.model_dump(), "documents_side": spec.side,
            "corpus": spec.dataset, "corpus_fingerprint": cfp, "encode_seconds": round(enc_s, 3),
            "spec": spec.name, "encoding_cache": str(cache), "dtype": getattr(encoder, "dtype", "fp32"),
            "max_length": spec.max_length,
            **_speed_check(cache),
        },
    )
    return store.publish(v)


def rebuild(spec: IndexSpec | str | os.PathLike, dry_run: bool = False, force_full: bool = False, log=print) -> RebuildResult:
    """Run a rebuild job for ``spec`` (see the module docstring).

    Args:
        spec: an :class:`IndexSpec` or a YAML path.
        dry_run: decide and print, change nothing.
        force_full: rebuild fully whatever the plan says.
        log: where decisions are printed.

    Returns:
        :class:`RebuildResult` with the decision and the (new or unchanged) current version.

    Raises:
        BlockingIOError: another rebuild of the same store is running.
        FileNotFoundError / ValueError / CorpusError: bad spec, dataset or model.
    """
    if not isinstance(spec, IndexSpec):
        spec = IndexSpec.from_yaml(spec)
    t0 = time.perf_counter()
    store = IndexStore(spec.root, keep=spec.keep)
    with store.lock():
        if not dry_run:
            for p in store.cleanup():
                log(f"cleanup: removed {p}")
        docids, texts, _ = _load_corpus(spec)
        hashes = doc_hashes(docids, texts)
        refs = _refs(spec)
        try:
            current = store.current()
        except FileNotFoundError:
            current = None
        metric, normalized = spec_similarity(spec)
        decision = plan(spec, current, docids, hashes, refs, metric=metric, normalized=normalized,
                        dtype=resolve_dtype(spec.dtype))
        if force_full and decision.action != "full":
            decision = Decision("full", ["--full requested"] + decision.reasons)
        log(f"decision: {decision}")
        if dry_run or decision.action == "noop":
            return RebuildResult(decision, current, time.perf_counter() - t0)

        if decision.action == "full":
            v = full_build(spec, store, docids, texts, hashes, log=log)
        elif decision.action == "params":
            v = _params_only(spec, store, current, refs)
        else:
            v = _incremental(spec, store, current, decision, docids, texts, hashes, refs, log=log)
        log(f"published: {v.version_id} ({v.manifest.doc_count} docs, {v.manifest.built_from})")
        return RebuildResult(decision, v, time.perf_counter() - t0)


def _params_only(spec: IndexSpec, store: IndexStore, current: IndexVersion, refs) -> IndexVersion:
    from retrieval_distill.index.build import apply_search_params

    m = current.manifest
    out = store.new_version_dir(spec.factory)
    params = dict(m.params)
    for k in SEARCH_PARAMS:
        params.pop(k, None)
        if k in spec.params:
            params[k] = spec.params[k]
    manifest = m.model_copy(update={"version_id": out.name, "params": params, "query_encoder": refs[1],
                                    "built_from": f"params:{m.version_id}"})
    index = current.index
    apply_search_params(index, params)
    write_version(out, index, current.docids, current.doc_hashes, manifest, current.tombstones)
    return store.publish(out)


def _incremental(spec, store, current, decision: Decision, docids, texts, hashes, refs, log=print) -> IndexVersion:
    text_of = dict(zip(docids, texts))
    hash_of = dict(zip(docids, hashes))
    to_add = decision.added + decision.changed
    add_emb = np.zeros((0, current.manifest.dim), dtype=np.float32)
    enc_s = 0.0
    if to_add:
        encoder = _encoder(spec)
        delta_h = doc_hashes(to_add, [text_of[d] for d in to_add])
        cache = spec.encodings_dir() / f"delta-{refs[0].fingerprint[:8]}-{corpus_fingerprint(to_add, delta_h)}{_cache_suffix(encoder, spec.shard_size, spec.max_length)}"
        t0 = time.perf_counter()
        _, add_emb = encode_corpus(encoder, (to_add, [text_of[d] for d in to_add]), cache, shard_size=spec.shard_size,
                                   backend=spec.backend)
        enc_s = time.perf_counter() - t0
    out = store.new_version_dir(spec.factory)
    log(f"incremental: -{len(decision.removed) + len(decision.changed)} +{len(to_add)} on {current.version_id} -> {out}")
    params = dict(current.manifest.params)
    for k in SEARCH_PARAMS:
        params.pop(k, None)
        if k in spec.params:
            params[k] = spec.params[k]
    v = apply_changes(
        current, out, remove=decision.removed + decision.changed, add_docids=to_add, add_embeddings=add_emb,
        add_hashes=np.array([hash_of[d] for d in to_add], dtype=np.uint64),
        corpus_fingerprint_=corpus_fingerprint(docids, hashes),
        manifest_updates={"encode_seconds": round(enc_s, 3), "params": params, "query_encoder": refs[1]},
    )
    return store.publish(v)
