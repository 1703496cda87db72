"""Import and export of Hofstätter et al.'s margin-MSE teacher files.

Hofstätter, Althammer, Schröder, Sertkan & Hanbury 2020, "Improving Efficient Neural
Ranking Models with Cross-Architecture Knowledge Distillation", published MS MARCO teacher
scores as TSV lines ``pos_score neg_score qid pos_pid neg_pid`` (one training triple a line,
scores of the teacher ensemble for the positive and the negative passage). Importing one
turns it into the Parquet score folder of DESIGN.md, so users can distil from published
MS MARCO teacher scores; exporting writes our scores in the same layout.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from retrieval_distill.data.formats import DataFormatError, iter_columns
from retrieval_distill.teachers.scoring import (
    FORMAT_VERSION,
    MANIFEST,
    Candidates,
    _hofstatter_scores,
    plan_shards,
    read_scores,
    shard_table,
    write_shard,
)
from retrieval_distill.utils import atomic_path, fingerprint_files, write_json_atomic

log = logging.getLogger(__name__)


def import_hofstatter(
    tsv: str | os.PathLike, out_dir: str | os.PathLike, teacher_name: str | None = None, queries_per_shard: int = 1024, tol: float = 1e-4
) -> dict:
    """Convert a Hofstätter TSV into a score folder.

    A (qid, pid) pair usually appears on many lines (the positive of many triples); its
    score is taken from its first line. Lines that give the same pair a score differing
    by more than ``tol`` are counted (``conflicting_scores``) and logged, never hidden.

    Returns:
        the manifest.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: a line without 5 columns or with a non-numeric score (``file:line``).
    """
    tsv = Path(tsv)
    if not tsv.is_file():
        raise FileNotFoundError(f"{tsv}: no such teacher file")
    scores: dict[tuple[str, str], float] = {}
    cands = Candidates(pairs={}, source=str(tsv), fmt="hofstatter")
    lines = conflicts = 0
    for lineno, parts in iter_columns(tsv, 5, "'pos_score neg_score qid pos_pid neg_pid'"):
        ps, ns = _hofstatter_scores(tsv, lineno, parts)
        lines += 1
        q = parts[2]
        for d, s in ((parts[3], ps), (parts[4], ns)):
            old = scores.get((q, d))
            if old is None:
                scores[(q, d)] = s
                cands._add(q, d, lineno)
            elif abs(old - s) > tol:
                conflicts += 1
    if conflicts:
        log.warning("%s: %d lines give an already-seen (qid, pid) a different score; the first is kept", tsv, conflicts)
    name = teacher_name or f"hofstatter:{tsv.stem}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(cands, {q: "" for q in cands.pairs}, lambda d: "", queries_per_shard)
    completed = {}
    for s in shards:
        sc = np.array([scores[(q, d)] for q, d in zip(s.qids, s.docids)], dtype=np.float32)
        sha = write_shard(shard_table(s, sc, name), out / s.name)
        completed[s.name] = {"rows": len(s), "sha256": sha}
    fp = fingerprint_files([tsv])
    manifest = {
        "format_version": FORMAT_VERSION,
        "teacher": {"kind": "import", "source": str(tsv.resolve()), "format": "hofstatter"},
        "teacher_name": name,
        "teacher_fingerprint": fp,
        "scale": "logit",
        "max_length": None,
        "dtype": "as published",
        "candidates": str(tsv.resolve()),
        "candidates_format": "hofstatter",
        "candidates_fingerprint": fp,
        "queries_per_shard": queries_per_shard,
        "n_shards": len(shards),
        "completed_shards": completed,
        "complete": True,
        "counts": {"pairs": len(scores), "queries": len(cands.pairs), "lines": lines, "conflicting_scores": conflicts},
    }
    for stale in out.glob("part-*.parquet"):
        if stale.name not in completed:
            stale.unlink()
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def export_hofstatter(
    scores_dir: str | os.PathLike,
    out_tsv: str | os.PathLike,
    qrels: dict[str, dict[str, int]] | None = None,
    triples: str | os.PathLike | None = None,
    max_negatives: int | None = None,
) -> int:
    """Write a score folder as a Hofstätter TSV ``pos_score neg_score qid pos_pid neg_pid``.

    Triples come from ``triples`` (a ``qid pos neg`` file, kept in its order) or else from
    ``qrels``: each scored positive (grade > 0) with each scored non-relevant candidate
    (the ``max_negatives`` highest-scored ones if given), qids and pids in sorted order.
    Scores are written with full float32 precision (read back bit-identical).

    Returns:
        the number of lines written.

    Raises:
        ValueError: neither ``qrels`` nor ``triples``.
        DataFormatError: a triple whose pair has no score (``file:line``).
    """
    df = read_scores(scores_dir)
    sc: dict[str, dict[str, np.float32]] = {}
    for q, d, s in zip(df.qid, df.docid, df.score):
        sc.setdefault(q, {})[d] = np.float32(s)

    def fmt(x) -> str:
        return repr(float(x))

    n = 0
    with atomic_path(out_tsv) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        if triples is not None:
            for lineno, (q, p, ng) in iter_columns(triples, 3, "'qid pos neg'"):
                for d in (p, ng):
                    if d not in sc.get(q, {}):
                        raise DataFormatError(f"{triples}:{lineno}: no teacher score for ({q}, {d}) in {scores_dir}")
                fh.write(f"{fmt(sc[q][p])}\t{fmt(sc[q][ng])}\t{q}\t{p}\t{ng}\n")
                n += 1
        elif qrels is not None:
            for q in sorted(sc):
                rel = qrels.get(q, {})
                pos = sorted(d for d in sc[q] if rel.get(d, 0) > 0)
                neg = sorted((d for d in sc[q] if rel.get(d, 0) <= 0), key=lambda d: (-sc[q][d], d))
                if max_negatives is not None:
                    neg = neg[:max_negatives]
                for p in pos:
                    for ng in sorted(neg):
                        fh.write(f"{fmt(sc[q][p])}\t{fmt(sc[q][ng])}\t{q}\t{p}\t{ng}\n")
                        n += 1
        else:
            raise ValueError("export_hofstatter needs qrels or a triples file")
    return n
