"""Readers of the text formats that pass between stages. Every loader reads through these,
so every file gets the same checks:

* JSONL (:func:`read_jsonl`): ``corpus.jsonl``, ``queries.jsonl``, ``positives.jsonl``...
* qrels (:func:`iter_qrels`): BEIR TSV ``query-id corpus-id score`` (header optional) or
  TREC ``qid 0 docid grade``.
* TREC runs (:func:`iter_trec_run`): ``qid Q0 docid rank score tag``.
* other whitespace-separated files (:func:`iter_columns`): candidate pairs and triples,
  Hofstätter TSVs; qids files (:func:`read_qids`).

The checks they share: the file must be UTF-8 (a UTF-8 BOM is skipped; a bad byte is
reported by line); Windows and old-Mac line endings are accepted (universal newlines);
blank lines are skipped; the column count is checked on every line; numbers are parsed
strictly (an integer column holds an integer, a NaN is refused). JSON must be standard
JSON: ``NaN``/``Infinity`` and strings holding a lone UTF-16 surrogate (``"\\ud800"``,
which no UTF-8 text can carry) are refused.

Every error is a :class:`DataFormatError` (:class:`RunFormatError` for run files) whose
message starts with ``file:line:``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator


class DataFormatError(ValueError):
    """A collection file is malformed; the message names the file and line."""


class RunFormatError(DataFormatError):
    """A run file (or run dict) is malformed; the message names the file and 1-based line."""


#: first tokens of a qrels header line (BEIR writes ``query-id corpus-id score``)
QRELS_HEADER_TOKENS = ("query-id", "qid", "query_id", "queryid")


def iter_lines(path: str | os.PathLike, error: type[DataFormatError] = DataFormatError) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` (1-based, line without its end) for every line of a
    UTF-8 text file, blank ones included.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError (or ``error``): a line that is not UTF-8 (``file:line: not valid UTF-8``),
            or a path that is a folder (or another non-file) where a text file belongs.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise error(f"{path}: a {'folder' if path.is_dir() else 'special file'}, not a text file")
    # surrogateescape keeps line numbers exact: an undecodable byte becomes a lone surrogate,
    # which real UTF-8 text cannot contain, and is reported on its own line
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline=None) as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                line.encode("utf-8")
            except UnicodeEncodeError as e:
                raise error(f"{path}:{lineno}: not valid UTF-8 (an undecodable byte at column {e.start + 1})") from None
            yield lineno, line.rstrip("\n")


def iter_columns(
    path: str | os.PathLike,
    ncols: int | tuple[int, ...],
    what: str,
    error: type[DataFormatError] = DataFormatError,
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, columns)`` for each non-blank line of a whitespace-separated file.

    Args:
        path: the file.
        ncols: the column count every line must have (or the counts allowed).
        what: the expected layout, for messages (``"'qid docid'"``).
        error: the exception class raised.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError (or ``error``): a non-UTF-8 line or a wrong column count (``file:line: reason``).
    """
    allowed = (ncols,) if isinstance(ncols, int) else tuple(ncols)
    for lineno, line in iter_lines(path, error):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in allowed:
            want = " or ".join(map(str, allowed))
            raise error(f"{path}:{lineno}: expected {want} columns {what}, got {len(parts)}: {line.rstrip()[:120]!r}")
        yield lineno, parts


def read_qids(path: str | os.PathLike) -> list[str]:
    """Read a qids file: the first whitespace-separated token of each non-blank line.

    Returns:
        the qids in file order, each once.

    Raises:
        FileNotFoundError: no such file. DataFormatError: a line that is not UTF-8.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: qids file not found")
    seen: dict[str, None] = {}
    for _lineno, line in iter_lines(path):
        parts = line.split()
        if parts:
            seen.setdefault(parts[0], None)
    return list(seen)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (non-finite numbers are not valid JSON)")


def _finite_float(token: str) -> float:
    f = float(token)
    if not math.isfinite(f):
        raise ValueError(f"the number {token[:40]} is out of the double range (non-finite numbers are not valid JSON)")
    return f


def _lone_surrogate(obj: Any) -> str | None:
    """A description of the first string (key or value) holding a lone surrogate, else None."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"a string holds a lone surrogate (\\u{ord(obj[e.start]):04x}), which is not Unicode text"
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _lone_surrogate(k) or _lone_surrogate(v)
            if found:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _lone_surrogate(v)
            if found:
                return found
    return None


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file.

    Lines must be standard JSON objects: ``NaN``/``Infinity``, numbers out of double range
    and lone surrogate escapes are refused.

    Raises:
        FileNotFoundError: the file does not exist.
        DataFormatError: a line is not a JSON object (message: ``file:line: reason``).
    """
    path = Path(path)
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_constant=_reject_constant, parse_float=_finite_float)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        except ValueError as e:
            raise DataFormatError(f"{path}:{lineno}: not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if "\\u" in line.lower():  # only escapes can produce a lone surrogate: skip the walk otherwise
            bad = _lone_surrogate(obj)
            if bad:
                raise DataFormatError(f"{path}:{lineno}: {bad}")
        yield lineno, obj


def json_id(path: str | os.PathLike, lineno: int, obj: dict, key: str = "_id") -> str:
    """The id ``obj[key]`` of a JSONL record as a string: a JSON string (or integer) that is
    one whitespace-free token, as TREC files need.

    Raises:
        DataFormatError: missing, empty, another type, or with whitespace (``file:line``).
    """
    if key not in obj:
        raise DataFormatError(f"{path}:{lineno}: missing {key!r}")
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise DataFormatError(f"{path}:{lineno}: {key!r} must be a string, got {type(v).__name__} {v!r}")
    s = str(v)
    if not s or len(s.split()) != 1 or s != s.strip():
        raise DataFormatError(f"{path}:{lineno}: {key!r} {s!r} is empty or contains whitespace (ids must be one token)")
    return s


def json_text(path: str | os.PathLike, lineno: int, obj: dict, key: str, required: bool = False) -> str:
    """The text field ``obj[key]`` of a JSONL record (``""`` when absent or null and not required).

    Raises:
        DataFormatError: a required field missing, or a value that is not a string (``file:line``).
    """
    v = obj.get(key)
    if v is None:
        if required:
            raise DataFormatError(f"{path}:{lineno}: missing {key!r}")
        return ""
    if not isinstance(v, str):
        raise DataFormatError(f"{path}:{lineno}: {key!r} must be a string, got {type(v).__name__}")
    return v


def parse_int(token: str) -> int | None:
    """``token`` as an integer (``"2"``, ``"-1"``, ``"2.0"``), or ``None`` when it is not one
    (``"1.5"``, ``"nan"``, ``"inf"``, ``"x"``)."""
    try:
        return int(token)
    except ValueError:
        pass
    try:
        f = float(token)
    except ValueError:
        return None
    if not math.isfinite(f) or f != int(f):
        return None
    return int(f)


def iter_qrels(path: str | os.PathLike) -> Iterator[tuple[int, str, str, int]]:
    """Yield ``(line_number, qid, docid, grade)`` for each judgment of a qrels file: BEIR TSV
    ``query-id corpus-id score`` (a header line is skipped) or TREC ``qid 0 docid grade``.

    Every line must have the column count of the first judgment (a file is one format).

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: wrong column count, or a grade that is not an integer (``1.5``,
            ``nan``, ``inf``; message: ``file:line: reason``).
    """
    path = Path(path)
    width: int | None = None
    first = True
    for lineno, parts in iter_columns(path, (3, 4), "(BEIR 'query-id corpus-id score' or TREC 'qid 0 docid grade')"):
        if first and parts[0].lower() in QRELS_HEADER_TOKENS:
            first = False
            continue  # header line
        first = False
        if width is None:
            width = len(parts)
        elif len(parts) != width:
            raise DataFormatError(f"{path}:{lineno}: {len(parts)} columns, but earlier lines have {width}")
        if width == 3:
            qid, docid, grade = parts
        else:
            qid, _, docid, grade = parts
        g = parse_int(grade)
        if g is None:
            try:
                float(grade)
                why = "is not an integer"
            except ValueError:
                why = "is not a number"
            raise DataFormatError(f"{path}:{lineno}: grade {grade!r} {why}")
        yield lineno, qid, docid, g


def iter_trec_run(path: str | os.PathLike) -> Iterator[tuple[int, str, str, int, float, str]]:
    """Yield ``(line_number, qid, docid, rank, score, tag)`` for each non-blank line of a TREC run.

    Raises:
        FileNotFoundError: no such file.
        RunFormatError: wrong column count (expects 6), a non-integer rank, or a
            non-numeric / NaN score (message: ``file:line: reason``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such run file")
    for lineno, parts in iter_columns(path, 6, "'qid Q0 docid rank score tag'", error=RunFormatError):
        qid, _q0, docid, rank, score, tag = parts
        try:
            r = int(rank)
        except ValueError:
            raise RunFormatError(f"{path}:{lineno}: rank {rank!r} is not an integer") from None
        try:
            s = float(score)
        except ValueError:
            raise RunFormatError(f"{path}:{lineno}: score {score!r} is not a number") from None
        if math.isnan(s):
            raise RunFormatError(f"{path}:{lineno}: score is NaN")
        yield lineno, qid, docid, r, s, tag
