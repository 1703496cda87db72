"""`rd bm25 ...`: build a Lucene BM25 index and write BM25 candidates as TREC runs.

Bad input (a dataset or index that does not exist, an output folder that cannot be
written, a malformed collection, out-of-range options) ends with one ``error: ...`` line on
stderr and exit code 2, checked before the slow work starts; never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import typer

app = typer.Typer(help="BM25 (Pyserini/Lucene) index and search.", no_args_is_help=True)


def _fail(message: object) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _check_writable(path: Path, what: str, folder: bool) -> None:
    """Fail (exit 2) unless ``path`` can be written: not an existing entry of the other kind,
    and its parent folder exists (or can be created) and is writable."""
    if folder and path.exists() and not path.is_dir():
        _fail(f"{path}: exists and is not a folder (the {what})")
    if not folder and path.is_dir():
        _fail(f"{path}: is a folder; the {what} must be a file path")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _fail(f"{path}: cannot create its folder {parent} for the {what} ({e.strerror or e})")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        _fail(f"{path}: not writable (the {what})")


# errors of the loaders and searchers that mean "bad input" (DataFormatError and RunFormatError are ValueErrors)
_INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, PermissionError, ValueError)


@app.command("index")
def index_cmd(
    dataset: str = typer.Argument(..., help="BEIR folder or dataset id (beir/scifact)"),
    index_dir: Path = typer.Argument(..., help="where to write the Lucene index"),
    threads: int = typer.Option(2, min=1, help="indexing threads"),
):
    """Index a corpus with Lucene (title + text in one field, as Pyserini's BEIR flat)."""
    from retrieval_distill.data.collections import find_local, load_beir_folder, load_collection
    from retrieval_distill.search.bm25 import build_bm25_index

    _check_writable(index_dir, "index folder", folder=True)
    try:
        # only the corpus is indexed: no qrels split is needed (the TREC-DL pool has none named "test")
        local = Path(dataset) if Path(dataset).is_dir() else (find_local(dataset) or (None,))[0]
        c = load_beir_folder(local, split=None) if local is not None else load_collection(dataset)
        build_bm25_index(c, index_dir, threads=threads)
    except _INPUT_ERRORS as e:
        _fail(e)
    except OSError as e:  # a disk that fills up or goes read-only while indexing
        _fail(f"{index_dir}: cannot write the index ({e})")
    typer.echo(f"indexed {len(c.corpus)} docs into {index_dir}")


@app.command("search")
def search_cmd(
    index_dir: Path = typer.Argument(..., help="Lucene index from `rd bm25 index`"),
    dataset: str = typer.Argument(..., help="dataset id with split (beir/scifact/test) or BEIR folder"),
    output: Path = typer.Argument(..., help="TREC run file to write"),
    k: int = typer.Option(100, min=1, max=100_000, help="hits per query"),
    split: str = typer.Option(None, help="qrels split when DATASET is a folder"),
    k1: float = typer.Option(0.9, min=0.0, help="BM25 k1 (>= 0)"),
    b: float = typer.Option(0.4, min=0.0, max=1.0, help="BM25 b (0..1)"),
):
    """Search every query of a split and write a TREC run (tag ``bm25``)."""
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.evaluation.runs import write_run
    from retrieval_distill.search.bm25 import BM25Searcher

    if not index_dir.is_dir():
        _fail(f"{index_dir}: no BM25 index here (build one with `rd bm25 index`)")
    _check_writable(output, "run file", folder=False)
    try:
        c = load_collection(dataset, split=split)
        res = BM25Searcher(index_dir, k1=k1, b=b).batch_search(c.queries, k=k)
        write_run(output, {q: {h.docid: h.score for h in hs} for q, hs in res.items()}, tag="bm25")
    except _INPUT_ERRORS as e:
        _fail(e)
    except OSError as e:
        _fail(f"{output}: cannot write the run ({e})")
    typer.echo(f"wrote {output} ({len(res)} queries)")
