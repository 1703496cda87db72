"""Encode a corpus into resumable shards and build FAISS index versions.

Two steps, each usable alone:

1. :func:`encode_corpus` turns ``(docid, text)`` pairs into float32 vectors, ``shard_size``
   documents per ``emb-NNNNN.npy`` file, each written atomically; a killed run resumes at
   the first missing or corrupt shard, and a finished folder is reused as a cache as long as
   the encoder's weights and the corpus are unchanged (``encoding.json`` records both
   fingerprints and every shard's SHA-256).
2. :func:`build_index` builds one FAISS index from a factory string (``Flat``, ``HNSW32``,
   ``IVF{n},PQ{m}``, ``SQ8``; any FAISS factory string works) into a version folder whose
   layout is described in :mod:`retrieval_distill.index.manifest`.

Index types follow the FAISS documentation ("Guidelines to choose an index", faiss wiki):
HNSW is Malkov & Yashunin 2018 (arXiv:1603.09320), IVF-PQ is Jégou et al. 2011
("Product quantization for nearest neighbor search", TPAMI), SQ8 is FAISS's 8-bit scalar
quantiser. Labels are stable integers (line numbers of ``docids``): non-IVF indexes sit
behind an ``IndexIDMap2`` and IVF indexes take ids natively, so incremental rebuilds can
add and remove documents by label (:func:`apply_changes`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from retrieval_distill.index.manifest import (
    DOC_HASHES_FILE,
    DOCIDS_FILE,
    FORMAT_VERSION,
    INDEX_FILE,
    TOMBSTONES_FILE,
    EncoderRef,
    IndexManifest,
    library_versions,
)
from retrieval_distill.utils import atomic_path, folder_lock, sha256_file, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    from retrieval_distill.index.store import IndexVersion
    from retrieval_distill.models.encoder import Encoder

ENCODING_STATE = "encoding.json"
SHARD_RE = re.compile(r"^emb-(\d{5})\.npy$")
SEARCH_PARAMS = ("efSearch", "nprobe")
"""Parameters that only change search, not the bytes of the index."""


class CorpusError(ValueError):
    """The corpus cannot be indexed: empty, duplicate docids, texts/docids length mismatch."""


# ----------------------------------------------------------------------------- corpus


def corpus_items(corpus: Any) -> tuple[list[str], list[str], str]:
    """Normalise a corpus argument to ``(docids, texts, name)``.

    Args:
        corpus: a :class:`~retrieval_distill.data.collections.Collection` (texts are
            ``title text``), a mapping docid -> text or docid -> ``{"title", "text"}``,
            or a pair ``(docids, texts)``.

    Raises:
        CorpusError: empty corpus, duplicate docid (named with both positions), an empty
            docid, or docids and texts of different lengths.
    """
    from retrieval_distill.data.collections import Collection

    name = ""
    if isinstance(corpus, Collection):
        docids, texts, name = corpus.docids, corpus.doc_texts(), corpus.name
    elif isinstance(corpus, Mapping):
        docids = [str(d) for d in corpus]
        texts = []
        for v in corpus.values():
            if isinstance(v, Mapping):
                texts.append(f"{v.get('title', '') or ''} {v.get('text', '') or ''}".strip())
            else:
                texts.append(str(v))
    elif isinstance(corpus, (tuple, list)) and len(corpus) == 2:
        docids, texts = [str(d) for d in corpus[0]], [str(t) for t in corpus[1]]
        if len(docids) != len(texts):
            raise CorpusError(f"corpus: {len(docids)} docids but {len(texts)} texts")
    else:
        raise CorpusError(f"corpus: expected a Collection, a mapping or (docids, texts), got {type(corpus).__name__}")
    check_docids(docids, source=name or "corpus")
    return list(docids), list(texts), name


def check_docids(docids: Sequence[str], source: str = "corpus") -> None:
    """Raise :class:`CorpusError` on an empty list, an empty docid, a docid with a line
    break (the ``docids`` file is one per line) or a duplicate docid (1-based positions)."""
    if len(docids) == 0:
        raise CorpusError(f"{source}: empty corpus (no documents to index)")
    seen: dict[str, int] = {}
    for i, d in enumerate(docids, 1):
        if not d or "\n" in d or "\r" in d:
            raise CorpusError(f"{source}: document {i}: docid {d!r} is empty or contains a line break")
        if d in seen:
            raise CorpusError(f"{source}: duplicate docid {d!r} (documents {seen[d]} and {i})")
        seen[d] = i


def doc_hashes(docids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """uint64 per document: BLAKE2b-64 of ``docid \\0 text`` (never 0, which marks a hole)."""
    out = np.empty(len(docids), dtype=np.uint64)
    for i, (d, t) in enumerate(zip(docids, texts)):
        h = int.from_bytes(hashlib.blake2b(f"{d}\0{t}".encode(), digest_size=8).digest(), "little")
        out[i] = h or 1
    return out


def corpus_fingerprint(docids: Sequence[str], hashes: np.ndarray) -> str:
    """16-hex fingerprint of the corpus: docids and text hashes, in corpus order."""
    h = hashlib.sha256()
    h.update("\n".join(docids).encode())
    h.update(np.ascontiguousarray(hashes, dtype=np.uint64).tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- encoders


def encoder_refs(encoder: "Encoder") -> tuple[EncoderRef, EncoderRef]:
    """``(document side, query side)`` of an :class:`~retrieval_distill.models.encoder.Encoder`."""
    from retrieval_distill.models.resolve import model_fingerprint

    doc = EncoderRef(name=encoder.model_name, fingerprint=model_fingerprint(encoder.model_name))
    if getattr(encoder, "symmetric", True):
        return doc, doc
    q = EncoderRef(name=encoder.query_model_name, fingerprint=model_fingerprint(encoder.query_model_name))
    return doc, q


def encoder_similarity(encoder: "Encoder") -> tuple[str, bool]:
    """``(metric, normalized)`` the encoder's vectors call for: inner product on normalised
    vectors unless the sentence-transformers model declares ``dot`` (inner product on raw
    vectors) or ``euclidean`` (L2)."""
    fn = getattr(getattr(encoder, "doc_model", None), "similarity_fn_name", None) or "cosine"
    normalized = bool(getattr(encoder, "normalize", True))
    if fn in ("euclidean", "manhattan"):
        return "l2", normalized
    return "ip", normalized


# ----------------------------------------------------------------------------- encoding


def _encoding_key(encoder: "Encoder", docids: list[str], hashes: np.ndarray, shard_size: int) -> dict:
    doc, _ = encoder_refs(encoder)
    model = getattr(encoder, "doc_model", None)
    key = {
        "encoder": doc.name,
        "encoder_fingerprint": doc.fingerprint,
        "normalize": bool(getattr(encoder, "normalize", True)),
        "max_seq_length": getattr(model, "max_seq_length", None),
        "corpus_fingerprint": corpus_fingerprint(docids, hashes),
        "n": len(docids),
        "dim": int(encoder.dim),
        "shard_size": int(shard_size),
    }
    dtype = getattr(encoder, "dtype", "fp32")
    if dtype != "fp32":  # absent for fp32, so the keys of folders written before dtype existed still match
        key["dtype"] = dtype
    return key


def _shard_ok(path: Path, rows: int, dim: int, recorded: dict | None) -> str | None:
    """Return the shard's SHA-256 if it holds a valid (rows, dim) float32 array, else None."""
    if not path.exists():
        return None
    digest = sha256_file(path)
    if recorded is not None:
        return digest if recorded.get("sha256") == digest and recorded.get("rows") == rows else None
    try:  # written but not yet recorded (killed between the rename and the state update)
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if arr.dtype != np.float32 or arr.shape != (rows, dim) or not np.isfinite(arr).all():
        return None
    return digest


def encode_corpus(
    encoder: "Encoder",
    collection_or_docids_texts: Any,
    out_dir: str | os.PathLike,
    shard_size: int = 1024,
    *,
    backend: str = "local",
    show_progress: bool = True,
) -> tuple[list[str], np.ndarray]:
    """Encode documents with the encoder's document side, in resumable shards.

    Args:
        encoder: an :class:`~retrieval_distill.models.encoder.Encoder` (its document model
            encodes; for asymmetric serving this is the teacher).
        collection_or_docids_texts: see :func:`corpus_items`.
        out_dir: the encoding folder: ``emb-NNNNN.npy`` shards (float32, ``(rows, dim)``),
            ``docids`` and ``encoding.json`` (key: encoder + corpus fingerprints, shard size,
            ``dtype`` when not fp32; per-shard row count and SHA-256; ``complete``; the bf16
            check's cosines as ``speed_check``).
        shard_size: documents per shard.
        backend: ``local`` (this process) or ``ray`` (Ray Data over the same shard files,
            :mod:`retrieval_distill.scale.ray_encode`; identical output).
        show_progress: tqdm bar over documents.

    Returns:
        ``(docids, embeddings)``: docids in corpus order and a float32 array ``(n, dim)``.

    Behaviour: a folder whose key matches is reused (complete shards are verified against
    their recorded SHA-256 and skipped; a corrupt or missing shard is re-encoded). A folder
    with a different key (other weights, other corpus, other shard size) has its shards
    deleted and is re-encoded. Every shard is written atomically, so a kill at any moment
    leaves only whole shards. Two jobs on one folder do not both encode: the second waits on
    the folder's lock (``.lock``, released when the first ends or is killed), then reuses its
    shards, or resumes where a killed one stopped.

    Raises:
        CorpusError: see :func:`corpus_items`.
        BF16FidelityError: a bf16 encoder's vectors drift from fp32 (checked before any shard).
    """
    docids, texts, _ = corpus_items(collection_or_docids_texts)
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "an encoding job", wait=True, on_wait=tqdm.write):  # the second job then reuses the shards
        hashes = doc_hashes(docids, texts)
        key = _encoding_key(encoder, docids, hashes, shard_size)
        state_path = out / ENCODING_STATE
        state: dict = {}
        if state_path.exists():
            try:
                state = json.loads(state_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                state = {}
        if state.get("key") != key:
            stale = sorted(p for p in out.iterdir() if SHARD_RE.match(p.name))
            if stale:
                old_key = state.get("key") or {}
                diff = ", ".join(f"{k}: {old_key.get(k)} != {key.get(k)}" for k in sorted(set(old_key) | set(key))
                                 if old_key.get(k) != key.get(k)) or "no readable key"
                tqdm.write(f"encode: {out} holds {len(stale)} shards of another request ({diff}); re-encoding")
            for p in stale:
                p.unlink()
            state = {"key": key, "shards": {}, "complete": False}
            write_json_atomic(state_path, state)
        docids_path = out / DOCIDS_FILE
        if not docids_path.exists() or docids_path.read_text(encoding="utf-8").split("\n")[:-1] != docids:
            with atomic_path(docids_path) as tmp:
                tmp.write_text("".join(d + "\n" for d in docids), encoding="utf-8")

        n, dim = len(docids), int(encoder.dim)
        n_shards = math.ceil(n / shard_size)
        bounds = [(i * shard_size, min(n, (i + 1) * shard_size)) for i in range(n_shards)]
        todo = []
        for i, (s, e) in enumerate(bounds):
            name = f"emb-{i:05d}.npy"
            digest = _shard_ok(out / name, e - s, dim, state["shards"].get(name))
            if digest is None:
                state["shards"].pop(name, None)
                todo.append(i)
            else:
                state["shards"][name] = {"rows": e - s, "sha256": digest}
        if todo:
            state["complete"] = False
            if getattr(encoder, "dtype", "fp32") == "bf16":
                # the fp32 check runs here, before any shard is written (Ray actors repeat it on their
                # own copy); it is kept with the shards. Raises BF16FidelityError.
                s0, e0 = bounds[todo[0]]
                check = encoder.speed_check or encoder.check_bf16(texts[s0:e0])
                state.setdefault("speed_check", check)  # a resumed folder keeps the check of its first shard
            write_json_atomic(state_path, state)
            if backend == "ray":
                from retrieval_distill.scale.ray_encode import encode_shards_ray

                for name, rows, digest in encode_shards_ray(encoder, texts, bounds, todo, out):
                    state["shards"][name] = {"rows": rows, "sha256": digest}
            elif backend == "local":
                bar = tqdm(total=n, initial=n - sum(bounds[i][1] - bounds[i][0] for i in todo), desc="encode",
                           unit="doc", disable=not show_progress)
                old_progress = getattr(encoder, "show_progress", None)
                if old_progress is not None:
                    encoder.show_progress = False  # one bar for the whole corpus, not one per shard
                try:
                    for i in todo:
                        s, e = bounds[i]
                        name, rows, digest = write_shard(out, i, encoder.encode_documents(texts[s:e]))
                        state["shards"][name] = {"rows": rows, "sha256": digest}
                        write_json_atomic(state_path, state)
                        bar.update(rows)
                finally:
                    if old_progress is not None:
                        encoder.show_progress = old_progress
                    bar.close()
            else:
                raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
        if not state.get("complete"):
            state["complete"] = True
            write_json_atomic(state_path, state)
        emb = np.concatenate([np.load(out / f"emb-{i:05d}.npy", allow_pickle=False) for i in range(n_shards)])
        return docids, np.ascontiguousarray(emb, dtype=np.float32)


def load_encoding(
    folder: str | os.PathLike, model: str | os.PathLike | None = None, role: str = "the expected encoder"
) -> tuple[list[str], np.ndarray, dict]:
    """Read a complete encoding folder written by :func:`encode_corpus`.

    Args:
        folder: the folder (``docids``, ``emb-NNNNN.npy``, ``encoding.json``).
        model: if given, the folder must have been encoded by these weights (checked on the
            weights fingerprint before any shard is read).
        role: how messages name ``model`` (``"this teacher"``, ``"the LEAF teacher"``).

    Returns:
        ``(docids, embeddings, key)``: docids in corpus order, float32 ``(n, dim)`` and the
        folder's key (``encoder``, ``encoder_fingerprint``, ``corpus_fingerprint``, ``dim``,
        ``max_seq_length``, ``normalize``, ``n``).

    Raises:
        FileNotFoundError: no ``encoding.json`` in ``folder``.
        ValueError: the encoding is incomplete, was encoded by other weights than ``model``,
            or a shard's rows or SHA-256 differ from the record (message names the file).
    """
    folder = Path(folder)
    meta_path = folder / ENCODING_STATE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not an encoding folder (rd index build / encode_corpus writes one)")
    meta = json.loads(meta_path.read_text())
    if not meta.get("complete"):
        raise ValueError(f"{meta_path}: encoding incomplete (resume it with the command that started it)")
    if model is not None:
        from retrieval_distill.models.resolve import model_fingerprint

        fp = model_fingerprint(model)
        if meta["key"].get("encoder_fingerprint") != fp:
            raise ValueError(
                f"{folder}: encoded by {meta['key'].get('encoder')!r} (weights {meta['key'].get('encoder_fingerprint')}), "
                f"not by {role} {str(model)!r} (weights {fp})"
            )
    key = meta["key"]
    parts = []
    for name in sorted(meta["shards"]):
        rec = meta["shards"][name]
        if _shard_ok(folder / name, rec["rows"], key["dim"], rec) is None:
            raise ValueError(f"{folder / name}: missing, or its rows / SHA-256 differ from {meta_path.name}")
        parts.append(np.load(folder / name, allow_pickle=False))
    docids = (folder / DOCIDS_FILE).read_text(encoding="utf-8").splitlines()
    emb = np.concatenate(parts) if parts else np.zeros((0, key["dim"]), dtype=np.float32)
    if len(docids) != emb.shape[0] or emb.shape[0] != key["n"]:
        raise ValueError(f"{folder}: {len(docids)} docids, {emb.shape[0]} vectors, key says {key['n']}")
    return docids, np.ascontiguousarray(emb, dtype=np.float32), key


def write_shard(out: Path, i: int, emb: np.ndarray) -> tuple[str, int, str]:
    """Write ``emb`` as ``out/emb-{i:05d}.npy`` atomically; return (name, rows, sha256)."""
    name = f"emb-{i:05d}.npy"
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    with atomic_path(out / name) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, emb, allow_pickle=False)
    return name, int(emb.shape[0]), sha256_file(out / name)


# ----------------------------------------------------------------------------- building


def faiss_factory_string(factory: str) -> str:
    """The string handed to ``faiss.index_factory``: IVF indexes take ids natively; any
    other index is wrapped in ``IDMap2`` so documents can be added/removed by label."""
    f = factory.strip()
    if not f:
        raise ValueError("empty factory string")
    if f.startswith("IDMap") or "IVF" in f:
        return f
    return "IDMap2," + f


def _faiss_metric(metric: str) -> int:
    import faiss

    if metric == "ip":
        return faiss.METRIC_INNER_PRODUCT
    if metric == "l2":
        return faiss.METRIC_L2
    raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}")


def unwrap(index):
    """The innermost index under ``IndexIDMap``/``IndexPreTransform`` wrappers."""
    import faiss

    idx = faiss.downcast_index(index)
    while True:
        if isinstance(idx, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            idx = faiss.downcast_index(idx.index)
        elif isinstance(idx, faiss.IndexPreTransform):
            idx = faiss.downcast_index(idx.index)
        else:
            return idx


def apply_search_params(index, params: Mapping[str, Any]) -> None:
    """Set ``efSearch`` (HNSW) and ``nprobe`` (IVF) on a loaded index, where they apply."""
    import faiss

    inner = unwrap(index)
    if "efSearch" in params and hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(params["efSearch"])
    if "nprobe" in params:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = int(params["nprobe"])


def _train_sample(emb: np.ndarray, params: Mapping[str, Any], index) -> np.ndarray:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    nlist = ivf.nlist if ivf is not None else 1
    size = int(params.get("train_size", max(20000, 64 * nlist)))
    if ivf is not None and len(emb) < nlist:
        raise ValueError(f"IVF{nlist} needs at least {nlist} vectors to train, the corpus has {len(emb)}")
    if len(emb) <= size:
        return emb
    rng = np.random.default_rng(int(params.get("seed", 0)))
    return emb[np.sort(rng.choice(len(emb), size, replace=False))]


def new_faiss_index(factory: str, dim: int, metric: str, params: Mapping[str, Any]):
    """Create an empty FAISS index for ``factory`` with build parameters applied."""
    import faiss

    index = faiss.index_factory(dim, faiss_factory_string(factory), _faiss_metric(metric))
    inner = unwrap(index)
    if hasattr(inner, "hnsw") and "efConstruction" in params:
        inner.hnsw.efConstruction = int(params["efConstruction"])
    # FAISS turns on polysemous training (a simulated-annealing reordering of each PQ
    # codebook, Douze et al. 2016) for every 8-bit PQ; it only serves Hamming-distance
    # filtering, which these searches never use, and costs minutes of CPU even on 5k
    # vectors (IVF64,PQ48 on SciFact: 180 s with it, about 8 s without). Off unless asked.
    ivf = faiss.try_extract_index_ivf(index)
    for q in (faiss.downcast_index(ivf) if ivf is not None else None, inner):
        if q is not None and hasattr(q, "do_polysemous_training"):
            q.do_polysemous_training = bool(params.get("polysemous", False))
    return index


def _default_version_tag(factory: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", factory).strip("-").lower()


def _tmp_dir_for(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_version(
    out_dir: str | os.PathLike,
    index,
    labels_docids: Sequence[str],
    hashes: np.ndarray,
    manifest: IndexManifest,
    tombstones: np.ndarray | None = None,
) -> Path:
    """Write a version folder atomically: every file goes into ``.<name>.tmp-<pid>`` beside
    ``out_dir`` (manifest last), then the folder is renamed onto ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` already exists.
    """
    import faiss

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out}: index version folder already exists")
    tmp = _tmp_dir_for(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    faiss.write_index(index, str(tmp / INDEX_FILE))
    (tmp / DOCIDS_FILE).write_text("".join(d + "\n" for d in labels_docids), encoding="utf-8")
    with open(tmp / DOC_HASHES_FILE, "wb") as fh:
        np.save(fh, np.ascontiguousarray(hashes, dtype=np.uint64), allow_pickle=False)
    if tombstones is not None and len(tombstones):
        with open(tmp / TOMBSTONES_FILE, "wb") as fh:
            np.save(fh, np.ascontiguousarray(tombstones, dtype=np.int64), allow_pickle=False)
    for f in tmp.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    manifest.write(tmp)
    _fsync_dir(tmp)
    os.rename(tmp, out)
    _fsync_dir(out.parent)
    return out


def _check_vectors(embeddings: np.ndarray, n: int) -> np.ndarray:
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"embeddings must have shape (n_docs={n}, dim), got {emb.shape}")
    if not np.isfinite(emb).all():
        raise ValueError("embeddings contain NaN or inf")
    return emb


def _normalise(emb: np.ndarray, normalize: bool | None) -> tuple[np.ndarray, bool]:
    import faiss

    norms = np.linalg.norm(emb, axis=1)
    already = bool(np.all(np.abs(norms - 1.0) < 1e-3))
    if normalize is None:
        return emb, already
    if normalize and not already:
        emb = emb.copy()
        faiss.normalize_L2(emb)
    return emb, bool(normalize)


def build_index(
    embeddings: np.ndarray,
    docids: Sequence[str],
    out_dir: str | os.PathLike,
    factory: str = "Flat",
    metric: str = "ip",
    params: Mapping[str, Any] | None = None,
    manifest_extra: Mapping[str, Any] | None = None,
    *,
    encoder: "Encoder | None" = None,
    texts: Sequence[str] | None = None,
    hashes: np.ndarray | None = None,
    normalize: bool | None = None,
) -> "IndexVersion":
    """Build a FAISS index over ``embeddings`` and write it as a version folder.

    Args:
        embeddings: float32 ``(n, dim)``, row ``i`` is document ``docids[i]``.
        docids: ``n`` unique docids.
        out_dir: the version folder to create (must not exist); its name is the version id.
        factory: ``Flat``, ``HNSW{M}``, ``IVF{nlist},PQ{m}`` (``PQ{m}x{nbits}``), ``SQ8`` or
            any FAISS factory string.
        metric: ``ip`` (inner product) or ``l2``.
        params: ``efConstruction`` (HNSW build), ``efSearch`` (HNSW search), ``nprobe``
            (IVF search), ``train_size`` (IVF/PQ training sample, default
            ``max(20000, 64*nlist)``), ``seed``, ``polysemous`` (PQ polysemous training;
            default off, see :func:`new_faiss_index`).
        manifest_extra: manifest fields (``encoder``, ``query_encoder``, ``documents_side``,
            ``corpus``, ``corpus_fingerprint``, ``encode_seconds``) and anything else, kept
            under ``extra``. ``encoder`` (``{"name", "fingerprint"}``) is required when the
            ``encoder`` argument is not given.
        encoder: fills the encoder fields (document and query side) from an Encoder.
        texts: document texts, to record per-document hashes (so a later rebuild can tell
            changed documents); without them ``hashes`` is used, else docid-only hashes.
        hashes: precomputed :func:`doc_hashes`.
        normalize: L2-normalise vectors first (``None``: record whether they already are).

    Returns:
        the new :class:`~retrieval_distill.index.store.IndexVersion`.

    Raises:
        CorpusError: empty corpus, duplicate or empty docid.
        ValueError: shape mismatch, non-finite vectors, IVF with fewer vectors than lists,
            no encoder named, bad factory string (FAISS's message).
        FileExistsError: ``out_dir`` exists.
    """
    from retrieval_distill.index.store import IndexVersion

    docids = [str(d) for d in docids]
    check_docids(docids, source=f"{out_dir}: docids")
    emb = _check_vectors(embeddings, len(docids))
    params = dict(params or {})
    extra = dict(manifest_extra or {})
    if hashes is None:
        hashes = doc_hashes(docids, texts if texts is not None else [""] * len(docids))
    hashes = np.asarray(hashes, dtype=np.uint64)
    if hashes.shape != (len(docids),):
        raise ValueError(f"hashes must have shape ({len(docids)},), got {hashes.shape}")

    fields: dict[str, Any] = {}
    for key in ("encoder", "query_encoder", "documents_side", "corpus", "corpus_fingerprint", "encode_seconds"):
        if key in extra:
            fields[key] = extra.pop(key)
    if encoder is not None:
        doc_ref, q_ref = encoder_refs(encoder)
        fields.setdefault("encoder", doc_ref.model_dump())
        fields.setdefault("query_encoder", q_ref.model_dump())
    if "encoder" not in fields:
        raise ValueError("build_index: no encoder named (pass encoder= or manifest_extra={'encoder': {name, fingerprint}})")
    fields.setdefault("query_encoder", fields["encoder"])
    fields.setdefault("corpus_fingerprint", corpus_fingerprint(docids, hashes))

    emb, normalized = _normalise(emb, normalize)
    t0 = time.perf_counter()
    try:
        index = new_faiss_index(factory, emb.shape[1], metric, params)
    except RuntimeError as e:
        raise ValueError(f"factory {factory!r}: FAISS cannot build it: {str(e).splitlines()[0]}") from None
    trained_on = None
    if not index.is_trained:
        sample = _train_sample(emb, params, index)
        index.train(sample)
        trained_on = len(docids)
    index.add_with_ids(emb, np.arange(len(docids), dtype=np.int64))
    apply_search_params(index, params)
    build_seconds = time.perf_counter() - t0

    out = Path(out_dir)
    manifest = IndexManifest(
        format_version=FORMAT_VERSION,
        version_id=out.name,
        dim=int(emb.shape[1]),
        metric=metric,
        normalized=normalized,
        factory=factory,
        faiss_factory=faiss_factory_string(factory),
        params=params,
        doc_count=len(docids),
        ntotal=int(index.ntotal),
        build_seconds=round(build_seconds, 3),
        trained_on=trained_on,
        libraries=library_versions(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        extra=extra,
        **fields,
    )
    write_version(out, index, docids, hashes, manifest)
    return IndexVersion(out)


def apply_changes(
    parent: "IndexVersion",
    out_dir: str | os.PathLike,
    remove: Sequence[str],
    add_docids: Sequence[str],
    add_embeddings: np.ndarray,
    add_hashes: np.ndarray,
    corpus_fingerprint_: str,
    manifest_updates: Mapping[str, Any] | None = None,
) -> "IndexVersion":
    """Write a new version = ``parent`` minus ``remove`` plus the added documents.

    Removal by label: ``IndexIDMap2`` over Flat/SQ8 and IVF indexes drop the vectors
    (``remove_ids``). HNSW graphs cannot drop nodes (FAISS raises), so removed labels become
    *tombstones*: the vectors stay, ``tombstones.npy`` lists them and searchers exclude them
    with an ``IDSelector``; the rebuild job rebuilds fully once tombstones pass a threshold.
    Added documents get fresh labels (appended lines of ``docids``); a removed label's line
    is left empty and never reused.

    Raises:
        KeyError: a docid to remove is not in the parent.
        CorpusError: an added docid already in the parent (and not removed) or duplicated.
    """
    import faiss

    from retrieval_distill.index.store import IndexVersion

    t0 = time.perf_counter()
    parent.load()
    index = faiss.clone_index(parent.index)
    labels = list(parent.docids)
    hashes = parent.doc_hashes.copy()
    tomb = set(parent.tombstones.tolist())
    where = parent.label_of
    rm = []
    for d in remove:
        if d not in where:
            raise KeyError(f"{parent.path}: cannot remove docid {d!r}: not in this version")
        rm.append(where[d])
    rm_arr = np.array(sorted(rm), dtype=np.int64)
    if len(rm_arr):
        if hasattr(unwrap(index), "hnsw"):
            tomb.update(rm_arr.tolist())
        else:
            removed = index.remove_ids(faiss.IDSelectorBatch(rm_arr))
            if removed != len(rm_arr):
                raise RuntimeError(f"{parent.path}: FAISS removed {removed} of {len(rm_arr)} vectors")
        for lab in rm_arr:
            labels[lab] = ""
            hashes[lab] = 0
    live = set(where) - set(remove)
    add_docids = [str(d) for d in add_docids]
    if add_docids:
        check_docids(add_docids, source="added documents")
        clash = [d for d in add_docids if d in live]
        if clash:
            raise CorpusError(f"{parent.path}: added docid {clash[0]!r} is already in the index")
        emb = _check_vectors(add_embeddings, len(add_docids))
        if emb.shape[1] != parent.manifest.dim:
            raise ValueError(f"added vectors have dim {emb.shape[1]}, the index has {parent.manifest.dim}")
        if parent.manifest.normalized:
            emb, _ = _normalise(emb, True)
        new_labels = np.arange(len(labels), len(labels) + len(add_docids), dtype=np.int64)
        index.add_with_ids(emb, new_labels)
        labels.extend(add_docids)
        hashes = np.concatenate([hashes, np.asarray(add_hashes, dtype=np.uint64)])
    m = parent.manifest
    tomb_arr = np.array(sorted(tomb), dtype=np.int64)
    out = Path(out_dir)
    changed = len(rm_arr) + len(add_docids)
    upd = dict(manifest_updates or {})
    manifest = m.model_copy(
        update={
            "version_id": out.name,
            "corpus_fingerprint": corpus_fingerprint_,
            "doc_count": sum(1 for d in labels if d),
            "ntotal": int(index.ntotal),
            "tombstones": len(tomb_arr),
            "build_seconds": round(time.perf_counter() - t0, 3),
            "changed_since_train": m.changed_since_train + changed if m.trained_on is not None else 0,
            "built_from": f"incremental:{m.version_id}",
            "libraries": library_versions(),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **upd,
        }
    )
    apply_search_params(index, manifest.params)
    write_version(out, index, labels, hashes, manifest, tomb_arr)
    return IndexVersion(out)
