"""Reproducibility table: ``eval/repro.yaml`` rows, checked by ``rd repro check``.

Like Pyserini's "two-click reproductions": each row names the commands that produce a
figure the project publishes and the value expected, with a tolerance. ``rd repro check``
runs the commands, reads the figures back and prints pass/fail with the difference.

A row (YAML)::

    - name: scifact-bm25                # unique id (used by --rows)
      cheap: true                       # run in CI (``--cheap``)
      source: Pyserini BEIR regression  # where the expected value comes from
      commands:                         # shell commands, run in order from the project root
        - rd bm25 index beir/scifact {work}/bm25/scifact
        - ...
      output: {work}/repro/x.json       # a JSON file the commands wrote ...
      expected:                         # ... and dotted key paths into it
        overall.ndcg@10: {value: 0.6789, tol: 0.005}
        test.student.recall@100: 0.91   # bare number: the row's ``tol`` (default 0.0005)

or, instead of ``output``, a run to score here: ``run: PATH``, ``qrels: SPEC`` (qrels file,
BEIR folder or dataset id), optional ``rel_threshold``; then ``expected`` keys are metric
names (``ndcg@10``). Placeholders: ``{data}`` (the shared data root, ``../shared/data``
or ``$RD_DATA_ROOT``), ``{work}`` (``--work``, default ``work``), ``{python}``.

Key paths are dotted, with dots inside keys allowed: at each level the longest key that
matches is taken (``test.student.ndcg@10``, ``overall.rbp.95``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from retrieval_distill.data.collections import PROJECT_ROOT, data_roots

DEFAULT_TABLE = PROJECT_ROOT / "eval" / "repro.yaml"


class Expected(BaseModel):
    """An expected value and its absolute tolerance."""

    model_config = ConfigDict(extra="forbid")
    value: float
    tol: float | None = None


class Row(BaseModel):
    """One row of the reproducibility table (see module docstring)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    source: str = ""
    cheap: bool = False
    commands: list[str] = Field(default_factory=list)
    output: str | None = None
    run: str | None = None
    qrels: str | None = None
    rel_threshold: int = 1
    tol: float = 0.0005
    timeout_s: float = 3600
    expected: dict[str, Expected]

    @field_validator("expected", mode="before")
    @classmethod
    def _bare_numbers(cls, v):
        if isinstance(v, dict):
            return {k: ({"value": x} if isinstance(x, (int, float)) else x) for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.output) == bool(self.run):
            raise ValueError(f"row {self.name!r}: give exactly one of 'output' (a JSON file) or 'run' (+ 'qrels')")
        if self.run and not self.qrels:
            raise ValueError(f"row {self.name!r}: 'run' needs 'qrels'")
        if not self.expected:
            raise ValueError(f"row {self.name!r}: no expected values")
        return self


class Table(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    rows: list[Row]

    @model_validator(mode="after")
    def _unique(self):
        seen = set()
        for r in self.rows:
            if r.name in seen:
                raise ValueError(f"duplicate row name {r.name!r}")
            seen.add(r.name)
        return self


def load_table(path: str | os.PathLike = DEFAULT_TABLE) -> Table:
    """Read and validate a reproducibility table.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid YAML or rows (message names the file).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no reproducibility table")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Table.model_validate(data)
    except Exception as e:  # yaml.YAMLError, pydantic.ValidationError
        raise ValueError(f"{path}: {e}") from None


def lookup(obj: Any, path: str) -> Any:
    """Value at a dotted key path; dots inside keys are allowed (longest key first).

    Raises:
        KeyError: no such path (message shows the keys available where it stopped).
    """
    rest = path
    while rest:
        if not isinstance(obj, dict):
            raise KeyError(f"{path!r}: {rest!r} left but reached a {type(obj).__name__}")
        keys = sorted((k for k in obj if rest == k or rest.startswith(k + ".")), key=len, reverse=True)
        if not keys:
            raise KeyError(f"{path!r}: no key for {rest!r}; keys here: {', '.join(map(str, list(obj)[:20]))}")
        obj = obj[keys[0]]
        rest = rest[len(keys[0]) + 1 :]
    return obj


def expand(text: str, work: Path) -> str:
    """Fill ``{data}``, ``{work}``, ``{python}`` placeholders."""
    data = next((r for r in data_roots() if r.is_dir()), data_roots()[-1])
    return text.replace("{data}", str(data)).replace("{work}", str(work)).replace("{python}", shlex.quote(sys.executable))


def check_row(row: Row, work: Path, run_commands: bool = True, echo=print) -> list[dict]:
    """Run a row's commands and compare its figures with the expected ones.

    Returns:
        one dict per expected key: ``row, key, expected, tol, got, diff, ok, error``.
    """
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    results: list[dict] = []

    def fail_all(msg: str) -> list[dict]:
        return [
            {"row": row.name, "key": k, "expected": e.value, "tol": e.tol if e.tol is not None else row.tol,
             "got": None, "diff": None, "ok": False, "error": msg}
            for k, e in row.expected.items()
        ]

    if run_commands:
        for cmd in row.commands:
            cmd = expand(cmd, work)
            echo(f"[{row.name}] $ {cmd}")
            t0 = time.time()
            try:
                p = subprocess.run(cmd, shell=True, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                                   timeout=row.timeout_s)
            except subprocess.TimeoutExpired:
                return fail_all(f"command timed out after {row.timeout_s:.0f} s: {cmd}")
            if p.returncode != 0:
                tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
                return fail_all(f"command failed (exit {p.returncode}): {cmd}: " + " | ".join(tail))
            echo(f"[{row.name}]   done in {time.time() - t0:.1f} s")
    try:
        if row.output:
            out = Path(expand(row.output, work))
            if not out.is_absolute():
                out = PROJECT_ROOT / out
            if not out.is_file():
                return fail_all(f"{out}: output not found" + ("" if run_commands else " (run without --no-run)"))
            data = json.loads(out.read_text(encoding="utf-8"))
        else:
            from retrieval_distill.evaluation.cli import resolve_qrels
            from retrieval_distill.evaluation.metrics import evaluate
            from retrieval_distill.evaluation.runs import read_run

            run_path = Path(expand(row.run, work))
            if not run_path.is_absolute():
                run_path = PROJECT_ROOT / run_path
            qrels = resolve_qrels(expand(row.qrels, work))
            res = evaluate(qrels, read_run(run_path), list(row.expected), rel_threshold=row.rel_threshold)
            data = res.overall
    except Exception as e:  # a broken output is a failed row, not a crash of the whole check
        return fail_all(f"{type(e).__name__}: {e}")
    for key, e in row.expected.items():
        tol = e.tol if e.tol is not None else row.tol
        try:
            got = float(lookup(data, key))
        except (KeyError, TypeError, ValueError) as err:
            results.append({"row": row.name, "key": key, "expected": e.value, "tol": tol, "got": None, "diff": None,
                            "ok": False, "error": str(err)})
            continue
        diff = got - e.value
        results.append({"row": row.name, "key": key, "expected": e.value, "tol": tol, "got": got, "diff": diff,
                        "ok": abs(diff) <= tol + 1e-12, "error": None})
    return results


def format_results(results: list[dict]) -> str:
    """A Markdown table of checked figures."""
    lines = ["| row | figure | expected | got | diff | tol | result |", "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        got = "-" if r["got"] is None else f"{r['got']:.4f}"
        diff = "-" if r["diff"] is None else f"{r['diff']:+.4f}"
        verdict = "PASS" if r["ok"] else "FAIL" + (f" ({r['error']})" if r["error"] else "")
        lines.append(f"| {r['row']} | {r['key']} | {r['expected']:.4f} | {got} | {diff} | ±{r['tol']:g} | {verdict} |")
    return "\n".join(lines) + "\n"


def select_rows(table: Table, rows: list[str] | None, cheap: bool) -> list[Row]:
    """Rows by name (in the order given) and/or only the cheap ones.

    Raises:
        ValueError: an unknown row name.
    """
    by_name = {r.name: r for r in table.rows}
    if rows:
        unknown = [n for n in rows if n not in by_name]
        if unknown:
            raise ValueError(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(by_name)}")
        chosen = [by_name[n] for n in rows]
    else:
        chosen = list(table.rows)
    return [r for r in chosen if r.cheap] if cheap else chosen


repro_app = typer.Typer(help="Reproducibility table (eval/repro.yaml): run rows and check their figures.",
                        no_args_is_help=True)


@repro_app.command("check")
def check_cmd(
    rows: str = typer.Option(None, help="comma-separated row names (default: all)"),
    cheap: bool = typer.Option(False, "--cheap", help="only rows marked cheap (what CI runs)"),
    table: Path = typer.Option(DEFAULT_TABLE, help="the reproducibility table"),
    work: Path = typer.Option(Path("work"), help="folder for the rows' outputs ({work})"),
    no_run: bool = typer.Option(False, "--no-run", help="don't run commands; check outputs already there"),
    out_json: Path = typer.Option(None, help="write the checked figures as JSON"),
):
    """Run the selected rows and print pass/fail per figure with the difference; exit 1 on any failure."""
    from retrieval_distill.utils import write_json_atomic

    try:
        t = load_table(table)
        chosen = select_rows(t, [r.strip() for r in rows.split(",") if r.strip()] if rows else None, cheap)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    if not chosen:
        typer.echo("no rows selected", err=True)
        raise typer.Exit(2)
    work = work if work.is_absolute() else PROJECT_ROOT / work
    results: list[dict] = []
    for row in chosen:
        results += check_row(row, work, run_commands=not no_run, echo=lambda s: typer.echo(s, err=True))
    typer.echo(format_results(results), nl=False)
    n_fail = sum(not r["ok"] for r in results)
    typer.echo(f"{len(results) - n_fail}/{len(results)} figures reproduced ({len(chosen)} rows)")
    if out_json:
        write_json_atomic(out_json, {"results": results})
    if n_fail:
        raise typer.Exit(1)


@repro_app.command("list")
def list_cmd(table: Path = typer.Option(DEFAULT_TABLE, help="the reproducibility table")):
    """List the rows: name, cheap or not, figures, source."""
    try:
        t = load_table(table)
    except (FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    for r in t.rows:
        figs = ", ".join(f"{k}={e.value}" for k, e in r.expected.items())
        typer.echo(f"{r.name}\t{'cheap' if r.cheap else 'full'}\t{figs}\t{r.source}")
