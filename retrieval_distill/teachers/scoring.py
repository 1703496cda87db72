"""The offline teacher scoring job of DESIGN.md (``rd teacher score``).

Input: candidates (a TREC run ``qid Q0 docid rank score tag``, ``qid docid`` pairs,
``qid pos_docid neg_docid`` triples, or a Hofstätter TSV ``pos_score neg_score qid
pos_pid neg_pid``), the queries and the corpus. Output: a folder with

* ``part-NNNNN.parquet``: long format, columns ``qid: string, docid: string,
  score: float32, teacher: string``; shard ``i`` holds the pairs of queries
  ``sorted(qids)[i*n:(i+1)*n]`` (``n = queries_per_shard``), rows sorted by (qid, docid);
  each written atomically (temporary file, fsync, ``os.replace``);
* ``manifest.json``: the teacher spec, name, scale and fingerprint, max_length, dtype, the
  candidate file and its fingerprint, a fingerprint of the query/passage texts, the shard
  plan, the completed shards with row counts and SHA-256, and counts (pairs, queries,
  duplicate candidate lines, empty passages, over-long queries, redone shards);
* ``docstate/``: for teachers with document-side state (bi-encoder embeddings, ColBERT
  token embeddings), that state computed once, in fixed chunks of sorted docids, each
  written atomically, so a killed job never recomputes finished chunks and every run
  (resumed or not, local or Ray) sees bit-identical document state. An ensemble keeps the
  state of each member that has one under ``docstate/member-NN/`` (with ``member.json``:
  the member's name and fingerprint; local backend), so a killed ensemble job resumes its
  document pass too, and a later job of that member alone reuses it (ColBERT
  ``doc_states``: :func:`read_document_states` finds the member by fingerprint).

Resume rules: a rerun with the same request skips completed shards (checked by SHA-256),
deletes and redoes a corrupt or partial shard (logged and counted), adopts a valid shard
that was written just before a kill hit the manifest update, and removes stray temporary
files. The final data has every (qid, docid, teacher) exactly once. A manifest made for a
different teacher fingerprint, candidate file or texts raises :class:`ScoreFileMismatch`
unless ``overwrite=True``.

Bad input: an unknown qid or docid in the candidates raises
:class:`~retrieval_distill.data.collections.DataFormatError` naming the file and line;
empty passage texts and queries longer than the teacher's ``max_length`` are scored
(truncated), counted, logged and recorded in the manifest, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from retrieval_distill.data.formats import DataFormatError, iter_columns, iter_lines, iter_trec_run
from retrieval_distill.teachers.base import Teacher, TeacherSpec, build_teacher, score_pairs
from retrieval_distill.utils import atomic_path, fingerprint_files, folder_lock, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DOCSTATE = "docstate"
MEMBER_STATE = "member.json"
FORMAT_VERSION = 1
COLUMNS = ("qid", "docid", "score", "teacher")


class ScoreFileMismatch(RuntimeError):
    """An output folder holds scores made for a different request (teacher or candidates)."""


class IncompleteScores(RuntimeError):
    """A score folder is not complete (the job has not finished)."""


# ---------------------------------------------------------------------------------------
# candidates
# ---------------------------------------------------------------------------------------
@dataclass
class Candidates:
    """Candidate pairs read from a file.

    Attributes:
        pairs: qid -> docids (first-seen order, deduplicated).
        lines: (qid, docid) -> 1-based line where the pair was first seen (0 for in-memory).
        source: the file (or ``"<memory>"``).
        fmt: ``trec``, ``pairs``, ``triples`` or ``hofstatter``.
        duplicates: lines that repeated a pair already seen (triples repeat positives).
    """

    pairs: dict[str, list[str]]
    lines: dict[tuple[str, str], int] = field(default_factory=dict)
    source: str = "<memory>"
    fmt: str = "pairs"
    duplicates: int = 0

    @property
    def n_pairs(self) -> int:
        return sum(len(v) for v in self.pairs.values())

    def where(self, qid: str, docid: str) -> str:
        line = self.lines.get((qid, docid), 0)
        return f"{self.source}:{line}" if line else self.source

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> "Candidates":
        """Candidates from in-memory ``(qid, docid)`` pairs (or ``(qid, pos, neg)`` triples)."""
        c = cls(pairs={}, fmt="pairs")
        for i, t in enumerate(pairs, 1):
            qid, docs = str(t[0]), [str(x) for x in t[1:]]
            for d in docs:
                c._add(qid, d, i)
        c.lines = {k: 0 for k in c.lines}
        return c

    def _add(self, qid: str, docid: str, line: int) -> None:
        if (qid, docid) in self.lines:
            self.duplicates += 1
            return
        self.lines[(qid, docid)] = line
        self.pairs.setdefault(qid, []).append(docid)


def _detect_format(path: Path) -> str:
    for _lineno, line in iter_lines(path):
        parts = line.split()
        if parts:
            return {6: "trec", 2: "pairs", 3: "triples", 5: "hofstatter"}.get(len(parts), f"unknown({len(parts)} columns)")
    raise DataFormatError(f"{path}: empty candidates file")


def read_candidates(path: str | os.PathLike, fmt: str = "auto") -> Candidates:
    """Read candidate pairs.

    Args:
        path: a TREC run (6 columns), ``qid docid`` pairs (2), ``qid pos neg`` triples (3),
            or a Hofstätter TSV ``pos_score neg_score qid pos_pid neg_pid`` (5); whitespace
            separated, blank lines skipped. Read by the shared readers of
            :mod:`retrieval_distill.data.formats` (a TREC run gets the run checks).
        fmt: ``auto`` (by the first line's column count) or one of the above.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: wrong column count, a bad rank or score, or empty file (``file:line: reason``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such candidates file")
    if fmt == "auto":
        fmt = _detect_format(path)
    ncols = {"trec": 6, "pairs": 2, "triples": 3, "hofstatter": 5}.get(fmt)
    if ncols is None:
        raise DataFormatError(f"{path}: cannot tell the candidates format ({fmt}); expected 6 (TREC run), 2, 3 or 5 columns")
    c = Candidates(pairs={}, source=str(path), fmt=fmt)
    if fmt == "trec":
        for lineno, qid, docid, _rank, _score, _tag in iter_trec_run(path):
            c._add(qid, docid, lineno)
    elif fmt == "hofstatter":
        for lineno, parts in iter_columns(path, 5, "'pos_score neg_score qid pos_pid neg_pid'"):
            _hofstatter_scores(path, lineno, parts)
            c._add(parts[2], parts[3], lineno)
            c._add(parts[2], parts[4], lineno)
    else:
        for lineno, parts in iter_columns(path, ncols, f"({fmt})"):
            c._add(parts[0], parts[1], lineno)
            if fmt == "triples":
                c._add(parts[0], parts[2], lineno)
    if not c.pairs:
        raise DataFormatError(f"{path}: no candidate pairs")
    return c


def _hofstatter_scores(path: str | os.PathLike, lineno: int, parts: list[str]) -> tuple[float, float]:
    """The two finite scores of a Hofstätter TSV line ``pos_score neg_score qid pos_pid neg_pid``.

    Raises:
        DataFormatError: a score that is not a number, or NaN/infinite (``file:line``).
    """
    out = []
    for tok in parts[:2]:
        try:
            f = float(tok)
        except ValueError:
            raise DataFormatError(f"{path}:{lineno}: score {tok!r} is not a number") from None
        if not np.isfinite(f):
            raise DataFormatError(f"{path}:{lineno}: score {tok!r} is not finite")
        out.append(f)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------
# the shard plan
# ---------------------------------------------------------------------------------------
@dataclass
class Shard:
    """One shard: its index, file name and sorted (qid, docid) pairs with texts."""

    index: int
    qids: list[str]
    docids: list[str]
    queries: list[str]
    passages: list[str]

    @property
    def name(self) -> str:
        return shard_name(self.index)

    def __len__(self) -> int:
        return len(self.docids)


def shard_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def plan_shards(cands: Candidates, queries: dict[str, str], doc_text: Callable[[str], str], queries_per_shard: int) -> list[Shard]:
    """Deterministic shards: qids sorted, ``queries_per_shard`` per shard, rows by (qid, docid)."""
    if queries_per_shard < 1:
        raise ValueError(f"queries_per_shard must be >= 1, got {queries_per_shard}")
    qids = sorted(cands.pairs)
    shards = []
    for i in range(0, len(qids), queries_per_shard):
        sq, sd, st, sp = [], [], [], []
        for q in qids[i : i + queries_per_shard]:
            for d in sorted(cands.pairs[q]):
                sq.append(q)
                sd.append(d)
                st.append(queries[q])
                sp.append(doc_text(d))
        shards.append(Shard(i // queries_per_shard, sq, sd, st, sp))
    return shards


def shard_table(shard: Shard, scores: np.ndarray, teacher_name: str):
    """The Arrow table of one shard (schema of DESIGN.md)."""
    import pyarrow as pa

    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (len(shard),):
        raise RuntimeError(f"teacher returned {scores.shape} scores for {len(shard)} pairs")
    if not np.all(np.isfinite(scores)):
        bad = int(np.argmax(~np.isfinite(scores)))
        raise RuntimeError(f"teacher returned a non-finite score {scores[bad]} for ({shard.qids[bad]}, {shard.docids[bad]})")
    return pa.table(
        {
            "qid": pa.array(shard.qids, type=pa.string()),
            "docid": pa.array(shard.docids, type=pa.string()),
            "score": pa.array(scores, type=pa.float32()),
            "teacher": pa.array([teacher_name] * len(shard), type=pa.string()),
        }
    )


def write_shard(table, path: Path) -> str:
    """Write one shard atomically with fixed writer settings (so equal tables give equal
    bytes, whichever backend wrote them). Returns the file's SHA-256."""
    import pyarrow.parquet as pq

    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=["teacher", "qid"], write_statistics=True)
    return sha256_file(path)


def score_shard(teacher: Teacher, shard: Shard, teacher_name: str):
    """Score one shard with ``teacher``; returns its Arrow table."""
    scores = score_pairs(teacher, shard.qids, shard.queries, shard.docids, shard.passages)
    return shard_table(shard, scores, teacher_name)


def _check_shard_file(path: Path, shard: Shard) -> str | None:
    """Why ``path`` is not a valid copy of ``shard`` (``None`` if it is)."""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - any read failure means corrupt
        return f"unreadable ({type(e).__name__}: {e})"
    if tuple(t.column_names) != COLUMNS:
        return f"columns {t.column_names} != {list(COLUMNS)}"
    if t.num_rows != len(shard):
        return f"{t.num_rows} rows, expected {len(shard)}"
    if t.column("qid").to_pylist() != shard.qids or t.column("docid").to_pylist() != shard.docids:
        return "(qid, docid) pairs differ from the shard plan"
    if not np.all(np.isfinite(t.column("score").to_numpy())):
        return "non-finite scores"
    return None


# ---------------------------------------------------------------------------------------
# document-side state (cached once, in chunks)
# ---------------------------------------------------------------------------------------
def has_document_state(teacher) -> bool:
    return hasattr(teacher, "encode_document_state") and hasattr(teacher, "set_document_embeddings") and getattr(
        teacher, "cache_documents", True
    )


def text_hash(text: str) -> str:
    """16 hex chars of SHA-1 of a passage text: tells whether a saved document state was
    computed from the same text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _save_state(path: Path, state, docids: list[str] | None = None, hashes: list[str] | None = None) -> None:
    if isinstance(state, np.ndarray):
        arrays = {"dense": state}
    else:  # ragged: list of (len_i, d) arrays
        lengths = np.asarray([len(s) for s in state], dtype=np.int64)
        arrays = {"flat": np.concatenate(state) if len(state) else np.zeros((0, 0), np.float32), "lengths": lengths}
    if docids is not None:  # so that another job of the same teacher can reuse the chunk
        arrays["docids"] = np.asarray(docids, dtype=str)
        arrays["text_sha1"] = np.asarray(hashes, dtype=str)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _read_state(path: Path):
    """One document-state chunk, read once: ``(state, docids, text_sha1)``; the last two are
    ``None`` in chunks written before they were recorded."""
    with np.load(path) as z:
        ids = [str(x) for x in z["docids"]] if "docids" in z else None
        hashes = [str(x) for x in z["text_sha1"]] if "text_sha1" in z else None
        if "dense" in z:
            return z["dense"], ids, hashes
        flat, lengths = z["flat"], z["lengths"]
        if int(lengths.sum()) != flat.shape[0]:
            raise ValueError("lengths do not match")
        return (np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []), ids, hashes


def _load_state(path: Path, n: int, docids: list[str] | None = None):
    """A chunk's state for ``n`` documents; raises ValueError when it holds another count,
    or (chunks that record them) other ``docids``."""
    state, ids, _ = _read_state(path)
    if len(state) != n:
        raise ValueError(f"{len(state)} rows, expected {n}")
    if docids is not None and ids is not None and ids != docids:
        raise ValueError("it holds other docids (the set of documents to encode changed)")
    return state


def read_document_states(folder: str | Path, fingerprint: str) -> tuple[list[str], list, list[str]]:
    """The document state saved by an earlier scoring job (its ``docstate/`` chunks), for
    another job of the same teacher over the same corpus (ColBERT option ``doc_states``).

    Args:
        folder: the earlier job's score folder (holding ``manifest.json`` and ``docstate/``).
        fingerprint: the reusing teacher's fingerprint; the folder's must be equal, or, for an
            ensemble's folder, one member's (``docstate/member-NN/member.json``).

    Returns:
        ``(docids, states, text_sha1)``: n docids, their n states (e.g. float16 (n_tokens, dim)
        arrays), and 16-hex SHA-1s of the texts they were computed from (see :func:`text_hash`);
        the scoring job recomputes a document whose text differs.

    Raises:
        FileNotFoundError: no score folder or no ``docstate/`` chunks in it.
        ValueError: made by another teacher (fingerprint), or chunks written before document
            states recorded their docids.
    """
    folder = Path(folder)
    man = load_manifest(folder)
    if man is None:
        raise FileNotFoundError(f"{folder}: not a score folder (no {MANIFEST})")
    state_dir = folder / DOCSTATE
    if man.get("teacher_fingerprint") != fingerprint:
        member = _member_state_dir(folder, fingerprint)
        if member is None:
            raise ValueError(
                f"{folder}: document states of teacher {man.get('teacher_name')!r} (fingerprint {man.get('teacher_fingerprint')}), "
                f"not of this teacher (fingerprint {fingerprint}; nor of any ensemble member there): other weights, "
                "projection or options"
            )
        state_dir = member
    chunks = sorted(state_dir.glob("chunk-*.npz"))
    if not chunks:
        raise FileNotFoundError(f"{state_dir}: no document-state chunks")
    docids: list[str] = []
    states: list = []
    hashes: list[str] = []
    for path in chunks:
        try:
            st, ids, h = _read_state(path)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: zipfile, numpy or key errors
            raise ValueError(f"{path}: unreadable document-state chunk ({type(e).__name__}: {e}); rescore that folder "
                             "or drop the doc_states option") from None
        if ids is None or h is None:
            raise ValueError(f"{path}: written before document states recorded their docids; rescore that folder to reuse it")
        if len(st) != len(ids):
            raise ValueError(f"{path}: {len(st)} rows for {len(ids)} docids")
        docids += ids
        hashes += h
        states += list(st)
    return docids, states, hashes


def _member_record(folder: Path) -> dict | None:
    """A ``docstate/member-NN`` folder's ``member.json``, or None (missing or unreadable)."""
    try:
        rec = json.loads((folder / MEMBER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def _member_state_dir(folder: Path, fingerprint: str) -> Path | None:
    """The ``docstate/member-NN`` folder of an ensemble's score folder whose member has
    ``fingerprint``, or None."""
    for d in sorted((folder / DOCSTATE).glob("member-*")):
        if (_member_record(d) or {}).get("fingerprint") == fingerprint:
            return d
    return None


def prepare_member_states(
    teacher, docids: list[str], doc_text: Callable[[str], str], folder: Path, chunk: int = 512, progress: bool = True
) -> None:
    """The document pass of an ensemble: :func:`prepare_document_state` for every member that
    has document-side state, each under ``folder/member-NN`` beside a ``member.json``
    (``{"name", "kind", "fingerprint"}``). A member folder recorded for another fingerprint
    (the ensemble's members changed) is emptied first."""
    import shutil

    for i, m in enumerate(getattr(teacher, "members", None) or []):
        if not has_document_state(m):
            continue
        sub = folder / f"member-{i:02d}"
        rec = {"name": m.spec.name, "kind": m.spec.kind, "fingerprint": m.fingerprint}
        old = _member_record(sub)
        if old is not None and old.get("fingerprint") != rec["fingerprint"]:
            log.warning("%s: document states of another member (%s); recomputing", sub, old.get("name"))
            shutil.rmtree(sub)
        if old != rec:
            sub.mkdir(parents=True, exist_ok=True)
            write_json_atomic(sub / MEMBER_STATE, rec)
        prepare_document_state(m, docids, doc_text, sub, chunk=chunk, progress=progress)


def load_document_state(teacher, chunks: list[tuple[str, list[str]]]) -> None:
    """Hand saved document-state chunks ``[(path, docids), ...]`` to ``teacher``."""
    for path, ids in chunks:
        teacher.set_document_embeddings(ids, _load_state(Path(path), len(ids)))


def prepare_document_state(
    teacher, docids: list[str], doc_text: Callable[[str], str], folder: Path, chunk: int = 512, progress: bool = True
) -> list[tuple[str, list[str]]]:
    """Compute (or load) the teacher's document-side state for ``docids`` (sorted, in
    chunks of ``chunk``, each saved atomically under ``folder``) and hand it to the teacher.

    Returns:
        the chunks as ``[(path, docids), ...]`` (for :func:`load_document_state`)."""
    from tqdm.auto import tqdm

    preloaded = getattr(teacher, "preloaded_docids", None)
    preloaded = preloaded() if callable(preloaded) else set()
    hashes = getattr(teacher, "preloaded_text_hashes", None)
    if callable(hashes) and preloaded:  # state saved by another job: only if made from the same text
        h = hashes()
        stale = sorted(d for d in set(docids) & preloaded if d in h and h[d] != text_hash(doc_text(d)))
        if stale:
            log.warning("document pass: %d preloaded documents have another text here (e.g. %s): recomputing them", len(stale), stale[0])
            teacher.drop_preloaded(stale)
            preloaded = preloaded - set(stale)
    docids = sorted(set(docids) - preloaded)  # e.g. a bi-encoder given an encoding folder
    if preloaded:
        log.info("document pass: %d documents preloaded by the teacher, %d to encode", len(preloaded), len(docids))
    folder.mkdir(parents=True, exist_ok=True)
    for stray in folder.glob(".*.tmp"):
        stray.unlink(missing_ok=True)
    bar = tqdm(total=len(docids), unit="doc", desc="document pass", disable=not progress, smoothing=0.1)
    chunks = []
    for i in range(0, len(docids), chunk):
        ids = docids[i : i + chunk]
        path = folder / f"chunk-{i // chunk:05d}.npz"
        loaded = False
        if path.exists():
            try:  # a chunk the teacher refuses (another member's state, other shapes) is unusable too
                teacher.set_document_embeddings(ids, _load_state(path, len(ids), ids))
                loaded = True
            except Exception as e:  # noqa: BLE001
                log.warning("%s: unusable document-state chunk (%s): deleting and recomputing", path, e)
                path.unlink()
        if not loaded:
            texts = [doc_text(d) for d in ids]
            state = teacher.encode_document_state(texts)
            _save_state(path, state, ids, [text_hash(t) for t in texts])
            teacher.set_document_embeddings(ids, _load_state(path, len(ids), ids))  # use exactly what is on disk
        chunks.append((str(path), ids))
        bar.update(len(ids))
    bar.close()
    return chunks


# ---------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------
def _texts_fingerprint(shards: list[Shard]) -> str:
    h = hashlib.sha256()
    for s in shards:
        for q, d, t, p in zip(s.qids, s.docids, s.queries, s.passages):
            h.update(f"{q}\t{d}\t{t}\t{p}\n".encode())
    return h.hexdigest()[:16]


def _count_long_queries(teacher, queries: Iterable[str]) -> tuple[int, list[str]]:
    tok = getattr(teacher, "tokenizer", None)
    ml = getattr(teacher, "max_length", None)
    if tok is None or not ml:
        return 0, []
    long = [q for q in queries if len(tok(q, add_special_tokens=True)["input_ids"]) > ml]
    return len(long), long[:5]


def load_manifest(out_dir: str | os.PathLike) -> dict | None:
    p = Path(out_dir) / MANIFEST
    if not p.exists():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def score_candidates(
    teacher: TeacherSpec | dict | Teacher,
    candidates: str | os.PathLike | Candidates,
    queries: dict[str, str],
    doc_text: Callable[[str], str] | dict[str, str],
    out_dir: str | os.PathLike,
    *,
    corpus_ids: Iterable[str] | None = None,
    queries_per_shard: int = 64,
    overwrite: bool = False,
    backend: str = "local",
    progress: bool = True,
    doc_chunk: int = 512,
    max_shards: int | None = None,
) -> dict:
    """Score every candidate pair with a teacher into a sharded Parquet score folder.

    Args:
        teacher: a spec (or its dict) or a built teacher.
        candidates: a candidates file (see :func:`read_candidates`) or :class:`Candidates`.
        queries: qid -> query text.
        doc_text: docid -> passage text (callable or dict).
        out_dir: the output folder (created).
        corpus_ids: the docids that exist (default: ``doc_text``'s keys when a dict);
            a candidate docid outside them raises.
        queries_per_shard: queries per shard (part of the request: changing it on a
            partly done folder raises :class:`ScoreFileMismatch`).
        overwrite: replace a folder made for a different request.
        backend: ``local`` or ``ray`` (:mod:`retrieval_distill.scale.ray_score`).
        progress: show a tqdm bar (pairs/s and ETA).
        doc_chunk: documents per document-state chunk.
        max_shards: stop after this many new shards (for tests and partial runs).

    Returns:
        the manifest (also written to ``out_dir/manifest.json``). A folder that is already
        complete for this request is verified (every shard's SHA-256) and not written at all;
        its ``last_run`` in the returned dict then reports 0 new pairs.

    Raises:
        DataFormatError: unknown qid or docid in the candidates (``file:line``).
        ValueError: the teacher's ``check_queries`` refuses a query (a ``cross_fit``
            bi-encoder: a query every one of its students trained on), before anything is written.
        ScoreFileMismatch: ``out_dir`` holds scores of another request.
        FolderBusyError: another scoring job is writing ``out_dir`` (a lock on
            ``out_dir/.lock``, released when that job ends or is killed).
        RuntimeError: the teacher returned wrong-sized or non-finite scores.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    cands = candidates if isinstance(candidates, Candidates) else read_candidates(candidates)
    if isinstance(doc_text, dict):
        texts = doc_text
        corpus_ids = texts.keys() if corpus_ids is None else corpus_ids
        get_text: Callable[[str], str] = texts.__getitem__
    else:
        get_text = doc_text
    known = set(corpus_ids) if corpus_ids is not None else None
    for q, docs in cands.pairs.items():
        if q not in queries:
            raise DataFormatError(f"{cands.where(q, docs[0])}: unknown qid {q!r} (not in the queries)")
        if known is not None:
            for d in docs:
                if d not in known:
                    raise DataFormatError(f"{cands.where(q, d)}: unknown docid {d!r} (not in the corpus)")
    shards = plan_shards(cands, queries, get_text, queries_per_shard)

    if not hasattr(teacher, "score"):
        teacher = build_teacher(teacher)
    if callable(getattr(teacher, "check_queries", None)):  # e.g. a cross_fit query no student may score
        teacher.check_queries(cands.pairs.keys(), queries)
    spec: TeacherSpec = teacher.spec
    name = spec.display_name()
    cand_fp = fingerprint_files([cands.source]) if Path(cands.source).is_file() else _pairs_fp(cands)
    request = {
        "format_version": FORMAT_VERSION,
        "teacher": spec.model_dump(),
        "teacher_name": name,
        "teacher_fingerprint": teacher.fingerprint,
        "scale": teacher.scale,
        "max_length": getattr(teacher, "max_length", None),
        "dtype": teacher.option_name() if hasattr(teacher, "option_name") else getattr(teacher, "dtype", "fp32"),
        "candidates": str(Path(cands.source).resolve()) if Path(cands.source).is_file() else cands.source,
        "candidates_format": cands.fmt,
        "candidates_fingerprint": cand_fp,
        "texts_fingerprint": _texts_fingerprint(shards),
        "queries_per_shard": queries_per_shard,
        "n_shards": len(shards),
    }
    with folder_lock(out, "a scoring job"):  # two jobs on one folder would race on its manifest and temporary files
        manifest = load_manifest(out)
        keys = ("format_version", "teacher_fingerprint", "candidates_fingerprint", "texts_fingerprint", "queries_per_shard")
        if manifest is not None:
            diff = [k for k in keys if manifest.get(k) != request[k]]
            if diff:
                if not overwrite:
                    raise ScoreFileMismatch(
                        f"{out}: holds scores for another request ({', '.join(f'{k}: {manifest.get(k)} != {request[k]}' for k in diff)}); "
                        "use another output folder or overwrite=True (--overwrite)"
                    )
                log.warning("%s: overwriting scores of another request (%s)", out, ", ".join(diff))
                _clear(out)
                manifest = None
        for stray in out.glob(".part-*.tmp"):
            log.info("%s: removing stray temporary file of a killed run", stray)
            try:
                stray.unlink(missing_ok=True)
            except OSError as e:  # read-only storage: a stray there harms no reader
                log.warning("%s: cannot remove a stray temporary file (%s)", stray, e)
        if manifest is not None and manifest.get("complete") is True and _all_verified(out, manifest, shards):
            # a finished folder is verified and left untouched (no manifest rewrite), so a
            # rerun into a finished, read-only score folder is a no-op, not an error
            log.info("%s: complete (%d shards, SHA-256 verified); nothing to score", out, len(shards))
            if manifest.get("candidates") != request["candidates"]:
                # the same candidate bytes read from another path (a moved or copied file): record
                # where they are now, so the manifest does not name a file that may be gone; on
                # storage this job cannot write, the old path stays (the fingerprint matches)
                try:
                    write_json_atomic(out / MANIFEST, {**manifest, "candidates": request["candidates"]})
                    manifest = {**manifest, "candidates": request["candidates"]}
                except OSError as e:
                    log.warning("%s: cannot record the candidates' new path %s (%s)", out, request["candidates"], e)
            return {**manifest, "last_run": {"backend": backend, "new_pairs": 0, "seconds": 0.0, "seconds_with_document_pass": 0.0,
                                             "pairs_per_s": None, "pairs_per_s_with_document_pass": None}}  # fmt: skip
        long_n, long_ex = _count_long_queries(teacher, dict.fromkeys(q for s in shards for q in s.queries))
        empty = [(s.qids[i], s.docids[i]) for s in shards for i, p in enumerate(s.passages) if not p.strip()]
        if long_n:
            log.warning("%d queries are longer than max_length=%s tokens and are truncated (e.g. %r)", long_n, request["max_length"], long_ex[0][:80])
        if empty:
            log.warning("%d candidate pairs have an empty passage text; they are scored as given (e.g. %s)", len(empty), empty[:3])
        manifest = manifest or {}
        planned = {s.name for s in shards}
        listed = manifest.get("completed_shards") or {}
        completed: dict[str, dict] = {k: v for k, v in listed.items() if k in planned}
        unplanned = sorted(set(listed) - planned)
        if unplanned:  # a hand-edited manifest: such an entry would keep the folder incomplete forever
            log.warning("%s: manifest lists shards this request does not plan, dropped: %s", out, unplanned[:5])
        redone = int(manifest.get("counts", {}).get("redone_shards", 0))
        manifest = {
            **request,
            "completed_shards": completed,
            "complete": False,
            "counts": {
                "pairs": sum(len(s) for s in shards),
                "queries": len(cands.pairs),
                "duplicate_candidate_lines": cands.duplicates,
                "empty_passages": len(empty),
                "empty_passage_examples": [list(p) for p in empty[:10]],
                "queries_over_max_length": long_n,
                "redone_shards": redone,
            },
        }

        # which shards are done?
        todo: list[Shard] = []
        for s in shards:
            path = out / s.name
            rec = completed.get(s.name)
            if path.is_dir():
                raise ScoreFileMismatch(f"{path}: a directory where a shard file belongs; remove it and rerun")
            if _shard_verified(path, rec):
                continue
            if path.exists():
                why = _check_shard_file(path, s) if rec is None else "SHA-256 differs from the manifest"
                if why is None:  # written just before a kill hit the manifest update
                    completed[s.name] = {"rows": len(s), "sha256": sha256_file(path)}
                    log.info("%s: adopting a complete shard not yet in the manifest", path)
                    continue
                log.warning("%s: corrupt or partial shard (%s): deleting and redoing it", path, why)
                path.unlink()
                manifest["counts"]["redone_shards"] += 1
            elif rec is not None:
                log.warning("%s: listed as completed but missing: redoing it", path)
                manifest["counts"]["redone_shards"] += 1
            completed.pop(s.name, None)
            todo.append(s)
        if max_shards is not None:
            todo = todo[:max_shards]
        write_json_atomic(out / MANIFEST, manifest)

        t_all = time.perf_counter()
        chunks: list[tuple[str, list[str]]] = []
        if todo and callable(getattr(teacher, "check_speed", None)):  # a speed option fails before the long pass
            teacher.check_speed(list(todo[0].queries), list(todo[0].passages))
        if todo and has_document_state(teacher):
            need = sorted({d for s in shards for d in s.docids})
            chunks = prepare_document_state(teacher, need, get_text, out / DOCSTATE, chunk=doc_chunk, progress=progress)
        elif todo and backend == "local" and getattr(teacher, "members", None):
            need = sorted({d for s in shards for d in s.docids})
            prepare_member_states(teacher, need, get_text, out / DOCSTATE, chunk=doc_chunk, progress=progress)

        done_pairs = sum(len(s) for s in shards if s.name in completed)
        bar = tqdm(total=manifest["counts"]["pairs"], initial=done_pairs, unit="pair", desc=f"score {name}", disable=not progress, smoothing=0.05)
        t0 = time.perf_counter()
        new_pairs = 0

        def record(s: Shard, sha: str) -> None:
            nonlocal new_pairs
            completed[s.name] = {"rows": len(s), "sha256": sha}
            write_json_atomic(out / MANIFEST, manifest)
            new_pairs += len(s)
            bar.update(len(s))

        if backend == "local":
            for s in todo:
                sha = write_shard(score_shard(teacher, s, name), out / s.name)
                record(s, sha)
        elif backend == "ray":
            from retrieval_distill.scale.ray_score import score_shards_ray

            by_index = {s.index: s for s in todo}
            for idx, sha in score_shards_ray(spec, todo, name, out, doc_chunks=chunks, queries=dict(queries)):
                record(by_index[idx], sha)
        else:
            raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
        bar.close()
        elapsed = time.perf_counter() - t0
        manifest["complete"] = len(completed) == len(shards)
        total = time.perf_counter() - t_all
        manifest["last_run"] = {
            "backend": backend, "new_pairs": new_pairs, "seconds": round(elapsed, 3), "seconds_with_document_pass": round(total, 3),
            "pairs_per_s": round(new_pairs / elapsed, 2) if elapsed > 0 and new_pairs else None,
            "pairs_per_s_with_document_pass": round(new_pairs / total, 2) if total > 0 and new_pairs else None,
        }  # fmt: skip
        manifest["completed_shards"] = dict(sorted(completed.items()))
        if getattr(teacher, "speed_check", None):
            manifest["speed_check"] = teacher.speed_check
        write_json_atomic(out / MANIFEST, manifest)
        return manifest


def _shard_verified(path: Path, rec: dict | None) -> bool:
    """The shard is listed (``rec``, its manifest entry) and its file has the listed SHA-256."""
    return rec is not None and path.is_file() and sha256_file(path) == rec.get("sha256")


def _all_verified(out: Path, manifest: dict, shards: list[Shard]) -> bool:
    """Every planned shard, and no other, is listed in ``manifest`` and verified."""
    done = manifest.get("completed_shards", {})
    return len(done) == len(shards) and all(_shard_verified(out / s.name, done.get(s.name)) for s in shards)


def _pairs_fp(c: Candidates) -> str:
    h = hashlib.sha256()
    for q in sorted(c.pairs):
        for d in sorted(c.pairs[q]):
            h.update(f"{q}\t{d}\n".encode())
    return h.hexdigest()[:16]


def _clear(out: Path) -> None:
    import shutil

    for p in out.glob("part-*.parquet"):
        p.unlink()
    shutil.rmtree(out / DOCSTATE, ignore_errors=True)
    (out / MANIFEST).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def read_scores(out_dir: str | os.PathLike, require_complete: bool = True):
    """Read a score folder into a ``pandas.DataFrame`` (qid, docid, score float32, teacher).

    Raises:
        FileNotFoundError: no manifest in ``out_dir``.
        IncompleteScores: the job has not finished (with ``require_complete``).
        ScoreFileMismatch: a shard's bytes differ from the manifest's SHA-256.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    m = load_manifest(out)
    if m is None:
        raise FileNotFoundError(f"{out}: no {MANIFEST} (not a score folder)")
    if require_complete and not m.get("complete"):
        raise IncompleteScores(f"{out}: {len(m.get('completed_shards', {}))}/{m.get('n_shards')} shards done; rerun the scoring job to finish")
    tables = []
    for name, rec in sorted(m.get("completed_shards", {}).items()):
        p = out / name
        if sha256_file(p) != rec["sha256"]:
            raise ScoreFileMismatch(f"{p}: bytes differ from the manifest (corrupt or replaced); rerun the scoring job")
        tables.append(pq.read_table(p))
    if not tables:
        return pd.DataFrame({"qid": pd.Series(dtype=str), "docid": pd.Series(dtype=str), "score": pd.Series(dtype=np.float32), "teacher": pd.Series(dtype=str)})
    df = pa.concat_tables(tables).to_pandas()
    df["score"] = df["score"].astype(np.float32)
    return df


def scores_dict(out_dir: str | os.PathLike) -> dict[str, dict[str, float]]:
    """qid -> {docid: score} from a complete score folder (one teacher)."""
    df = read_scores(out_dir)
    res: dict[str, dict[str, float]] = {}
    for q, d, s in zip(df["qid"], df["docid"], df["score"]):
        res.setdefault(q, {})[d] = float(s)
    return res
