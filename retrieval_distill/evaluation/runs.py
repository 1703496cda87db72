"""TREC run files: ``qid Q0 docid rank score tag``, one retrieved document a line.

This is the format every stage that retrieves writes (candidates, evaluation runs) and
the format ``trec_eval``, ranx and Pyserini read. Only the qid, docid and score columns
carry information: like ``trec_eval``, a reader re-ranks by score (descending) and breaks
ties by docid in *descending* string order, ignoring the rank column. A writer therefore
writes ranks in exactly that order, so that the file reads the same in every tool.

Reading and writing are written here rather than with ranx's ``Run.from_file`` because
ranx neither validates (it silently keeps the last of duplicate (qid, docid) lines and
crashes without a line number on a bad score) nor writes atomically.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

from retrieval_distill.data.formats import RunFormatError, iter_trec_run
from retrieval_distill.utils import atomic_path

Run = dict[str, dict[str, float]]

__all__ = ["Run", "RunFormatError", "iter_run_lines", "read_run", "run_tag", "trec_order", "write_run"]


def trec_order(scores: dict[str, float]) -> list[tuple[str, float]]:
    """Order one query's ``docid -> score`` as trec_eval does: score descending, ties by
    docid descending (``strcmp`` order, trec_eval's ``comp_sim_docno``).

    Returns:
        ``[(docid, score), ...]`` in rank order.
    """
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def write_run(path: str | os.PathLike, run: Run, tag: str, k: int | None = None) -> Path:
    """Write ``run`` as a TREC run file, atomically.

    Args:
        path: the file to write (its folder is created).
        run: qid -> {docid: score}; scores are floats, higher is more relevant.
        tag: the run tag (last column); must be one token.
        k: keep at most the top ``k`` documents per query (all if ``None``).

    Ranks are 1-based, by descending score, ties broken by docid descending (as
    trec_eval re-sorts them). Queries are written in ``run``'s order. Scores are written
    with ``repr`` precision so that a read-back run is identical.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        RunFormatError: an empty or multi-token tag, a qid/docid with whitespace, or a
            NaN/non-numeric score.
    """
    if not tag or len(tag.split()) != 1 or tag != tag.strip():
        raise RunFormatError(f"{path}: run tag must be one non-empty token, got {tag!r}")
    if k is not None and k < 1:
        raise RunFormatError(f"{path}: k must be >= 1, got {k}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for qid, scores in run.items():
                qid = str(qid)
                _check_token(path, "qid", qid)
                ranked = trec_order({str(d): _check_score(path, qid, d, s) for d, s in scores.items()})
                if k is not None:
                    ranked = ranked[:k]
                for rank, (docid, score) in enumerate(ranked, 1):
                    _check_token(path, "docid", docid)
                    fh.write(f"{qid} Q0 {docid} {rank} {score!r} {tag}\n")
    return path


def _check_token(path, what: str, value: str) -> None:
    if not value or len(value.split()) != 1 or value != value.strip():
        raise RunFormatError(f"{path}: {what} {value!r} is empty or contains whitespace")


def _check_score(path, qid, docid, s) -> float:
    try:
        f = float(s)
    except (TypeError, ValueError):
        raise RunFormatError(f"{path}: score of ({qid}, {docid}) is not a number: {s!r}") from None
    if math.isnan(f):
        raise RunFormatError(f"{path}: score of ({qid}, {docid}) is NaN")
    return f


def iter_run_lines(path: str | os.PathLike) -> Iterable[tuple[int, str, str, int, float, str]]:
    """Yield ``(lineno, qid, docid, rank, score, tag)`` for each non-blank line of a run file
    (the shared TREC run reader, :func:`retrieval_distill.data.formats.iter_trec_run`).

    Windows (CRLF) and old-Mac line endings are accepted (universal newlines).

    Raises:
        FileNotFoundError: no such file.
        RunFormatError: wrong column count (expects 6), a non-integer rank, a
            non-numeric / NaN score, or a line that is not UTF-8 (message: ``file:line: reason``).
    """
    return iter_trec_run(path)


def read_run(path: str | os.PathLike) -> Run:
    """Read and validate a TREC run file.

    Args:
        path: a ``qid Q0 docid rank score tag`` file (blank lines skipped; CRLF accepted).

    Returns:
        qid -> {docid: score}, queries in file order. The rank column is checked to be an
        integer but otherwise ignored (ordering comes from the scores, as in trec_eval).

    Raises:
        FileNotFoundError: no such file.
        RunFormatError: wrong column count, non-integer rank, non-numeric score, or a
            duplicate (qid, docid) pair. A duplicate is refused rather than silently
            resolved (trec_eval refuses them too); the message gives both line numbers.
    """
    run: Run = {}
    for lineno, qid, docid, _rank, score, _tag in iter_run_lines(path):
        row = run.setdefault(qid, {})
        if docid in row:
            first = next(n for n, q, d, *_ in iter_run_lines(path) if q == qid and d == docid)
            raise RunFormatError(
                f"{path}:{lineno}: duplicate (qid, docid) ({qid}, {docid}); first seen on line "
                f"{first}. Deduplicate the run (keep one score per document) first."
            )
        row[docid] = score
    return run


def run_tag(path: str | os.PathLike) -> str | None:
    """The tag (last column) of the first line of a run file, or ``None`` if it is empty."""
    for _lineno, *_rest, tag in iter_run_lines(path):
        return tag
    return None
