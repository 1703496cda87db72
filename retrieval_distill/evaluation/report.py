"""Evaluation reports: a Markdown file and a JSON twin beside it, both written atomically.

Every report states how to reproduce it: the exact command and the git commit
(``git rev-parse HEAD``, marked ``-dirty`` when the tree had uncommitted changes), plus the
date and library versions. The JSON twin (``report.md`` -> ``report.json``) carries the
same numbers for machines: ``rd repro check`` reads metrics from it by a dotted key path
(``test.student.ndcg@10``).

Notes written by hand below the line :data:`HAND_WRITTEN` in an existing report survive
when the report is regenerated (the generated part above it is replaced).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

from retrieval_distill.utils import write_json_atomic, write_text_atomic

HAND_WRITTEN = "<!-- hand-written below: kept when this report is regenerated -->"


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of ``cwd`` (default: the project), with ``-dirty`` if tracked
    files have uncommitted changes; ``unknown`` outside a git checkout."""
    cwd = cwd or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _hand_written_tail(path_md: Path) -> str:
    """``"\\n" + marker + notes`` of an existing report with the :data:`HAND_WRITTEN` marker,
    else ``""``.

    Raises:
        ValueError: the file holds the marker but is not UTF-8 (its notes would be lost).
    """
    if not path_md.is_file():
        return ""
    raw = path_md.read_bytes()
    marker = HAND_WRITTEN.encode()
    if marker not in raw:
        return ""
    try:
        notes = raw.split(marker, 1)[1].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path_md}: the notes below {HAND_WRITTEN!r} are not UTF-8 ({e.reason} at byte "
                         f"{e.start}); fix the file's encoding, then rerun (nothing was written)") from None
    return "\n" + HAND_WRITTEN + notes.replace("\r\n", "\n")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine the numbers (python, ranx, numpy, scipy...)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("retrieval-distill", "ranx", "numpy", "scipy", "pyserini", "sentence-transformers", "torch", "faiss-cpu"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_report(
    path_md: str | os.PathLike,
    title: str,
    sections: Mapping[str, str] | None = None,
    command: str | Sequence[str] | None = None,
    commit: str | None = None,
    data: Mapping[str, Any] | None = None,
    rows: Mapping[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``path_md`` (Markdown) and its JSON twin ``path_md.with_suffix('.json')``.

    Args:
        path_md: the Markdown file (``eval/reports/scifact.md``).
        title: the report's H1 title.
        sections: heading -> Markdown body, in order (tables from
            :func:`~retrieval_distill.evaluation.metrics.format_table`, significance from
            :meth:`~retrieval_distill.evaluation.compare.CompareResult.to_markdown`...).
        command: the exact command that produced the numbers (a string or argv list).
        commit: the git commit; default :func:`git_commit`.
        data: JSON content, written at the top level of the JSON twin (the numbers).
        rows: optional name -> :class:`~retrieval_distill.evaluation.metrics.EvalResult`:
            rendered as a "Results" table (first section) and stored under ``results``.
        metrics: table columns for ``rows``.
        extra: more JSON-ready facts (settings, timings), stored under ``extra`` and listed
            in the Markdown.

    Returns:
        ``(markdown path, json path)``.

    Raises:
        ValueError: a key of ``data`` collides with ``meta``/``results``/``extra``.

    An existing ``path_md`` that contains the :data:`HAND_WRITTEN` line keeps that line and
    everything after it (notes, settings chosen by hand) at the end of the new report.
    """
    from retrieval_distill.evaluation.metrics import format_table

    path_md = Path(path_md)
    path_json = path_md.with_suffix(".json")
    if isinstance(command, (list, tuple)):
        import shlex

        command = shlex.join(str(c) for c in command)
    meta = {
        "title": title,
        "command": command or "",
        "commit": commit or git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
    }
    md = [f"# {title}", ""]
    md.append("Reproduce with:")
    md.append("")
    md.append("```bash")
    md.append(meta["command"] or "(command not recorded)")
    md.append("```")
    md.append("")
    md.append(f"Commit `{meta['commit']}`, written {meta['created']}. "
              + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".")
    md.append("")
    all_sections: dict[str, str] = {}
    if rows:
        all_sections["Results"] = format_table(rows, metrics)
    all_sections.update(sections or {})
    for head, body in all_sections.items():
        md += [f"## {head}", "", body.rstrip(), ""]
    if extra:
        md += ["## Settings", ""] + [f"- {k}: `{v}`" for k, v in extra.items()] + [""]

    obj: dict[str, Any] = dict(data or {})
    clash = {"meta", "results", "extra"} & set(obj)
    if clash:
        raise ValueError(f"data keys {sorted(clash)} are reserved in the report JSON")
    obj["meta"] = meta
    if rows:
        obj["results"] = {name: r.to_dict(per_query=False) if hasattr(r, "to_dict") else r for name, r in rows.items()}
    if extra:
        obj["extra"] = dict(extra)
    text = "\n".join(md).rstrip() + "\n"
    if HAND_WRITTEN in text:
        raise ValueError(f"{path_md}: a generated section contains the hand-written marker line {HAND_WRITTEN!r}")
    text += _hand_written_tail(path_md)
    write_json_atomic(path_json, obj)
    write_text_atomic(path_md, text)
    return path_md, path_json
