"""`rd bm25 ...`: build a Lucene BM25 index and write BM25 candidates as TREC runs."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="BM25 (Pyserini/Lucene) index and search.", no_args_is_help=True)


@app.command("index")
def index_cmd(
    dataset: str = typer.Argument(..., help="BEIR folder or dataset id (beir/scifact)"),
    index_dir: Path = typer.Argument(..., help="where to write the Lucene index"),
    threads: int = typer.Option(2, help="indexing threads"),
):
    """Index a corpus with Lucene (title + text in one field, as Pyserini's BEIR flat)."""
    from retrieval_distill.data.collections import find_local, load_beir_folder, load_collection
    from retrieval_distill.search.bm25 import build_bm25_index

    # only the corpus is indexed: no qrels split is needed (the TREC-DL pool has none named "test")
    local = Path(dataset) if Path(dataset).is_dir() else (find_local(dataset) or (None,))[0]
    c = load_beir_folder(local, split=None) if local is not None else load_collection(dataset)
    build_bm25_index(c, index_dir, threads=threads)
    typer.echo(f"indexed {len(c.corpus)} docs into {index_dir}")


@app.command("search")
def search_cmd(
    index_dir: Path = typer.Argument(..., help="Lucene index from `rd bm25 index`"),
    dataset: str = typer.Argument(..., help="dataset id with split (beir/scifact/test) or BEIR folder"),
    output: Path = typer.Argument(..., help="TREC run file to write"),
    k: int = typer.Option(100, help="hits per query"),
    split: str = typer.Option(None, help="qrels split when DATASET is a folder"),
    k1: float = typer.Option(0.9),
    b: float = typer.Option(0.4),
):
    """Search every query of a split and write a TREC run (tag ``bm25``)."""
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.evaluation.runs import write_run
    from retrieval_distill.search.bm25 import BM25Searcher

    c = load_collection(dataset, split=split)
    res = BM25Searcher(index_dir, k1=k1, b=b).batch_search(c.queries, k=k)
    write_run(output, {q: {h.docid: h.score for h in hs} for q, hs in res.items()}, tag="bm25")
    typer.echo(f"wrote {output} ({len(res)} queries)")
