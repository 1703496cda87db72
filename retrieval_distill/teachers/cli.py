"""`rd teacher ...`: score candidates offline, fit teachers, import/export teacher files.

Examples::

    rd teacher score --teacher bi_encoder:all-mpnet-base-v2 \\
        --candidates runs/bm25.train.trec --dataset beir/scifact/train --output scores/mpnet.train
    rd teacher score --teacher ensemble.json --candidates ... --backend ray
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

app = typer.Typer(help="Teachers: score candidate pairs offline, fit teachers, import/export teacher scores.", no_args_is_help=True)


def _options(pairs: list[str] | None) -> dict:
    out = {}
    for p in pairs or []:
        k, sep, v = p.partition("=")
        if not sep:
            raise typer.BadParameter(f"--option expects key=value, got {p!r}")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_dataset(dataset: str, split: str | None):
    """A collection for scoring: a BEIR folder (all queries unless ``split``) or a dataset id."""
    from retrieval_distill.data.collections import load_beir_folder, load_collection

    if Path(dataset).is_dir():
        return load_beir_folder(dataset, split=split)
    return load_collection(dataset, split=split)


def _logging():
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@app.command("score")
def score_cmd(
    teacher: str = typer.Option(..., "--teacher", "-t", help="spec file (JSON/YAML), inline JSON, or kind:model"),
    candidates: Path = typer.Option(..., help="TREC run, 'qid docid' pairs, 'qid pos neg' triples or Hofstätter TSV"),
    dataset: str = typer.Option(..., help="BEIR folder or dataset id giving the queries and the corpus"),
    output: Path = typer.Option(..., "--output", "-o", help="score folder (Parquet shards + manifest.json)"),
    split: str = typer.Option(None, help="qrels split selecting the queries (default: all queries of a folder)"),
    option: list[str] = typer.Option(None, "--option", help="extra teacher option key=value (JSON values), repeatable"),
    queries_per_shard: int = typer.Option(64, help="queries per Parquet shard"),
    overwrite: bool = typer.Option(False, help="replace a folder made for another teacher or candidate file"),
    backend: str = typer.Option("local", help="local or ray"),
    max_shards: int = typer.Option(None, help="stop after this many new shards"),
    progress: bool = typer.Option(True, help="progress bar"),
):
    """Score every candidate pair with a teacher into sharded Parquet (resumable: rerun after a kill)."""
    _logging()
    from retrieval_distill.teachers.base import parse_spec
    from retrieval_distill.teachers.scoring import score_candidates

    spec = parse_spec(teacher, _options(option))
    coll = load_dataset(dataset, split)
    m = score_candidates(
        spec,
        candidates,
        coll.queries,
        coll.doc_text,
        output,
        corpus_ids=coll.corpus.keys(),
        queries_per_shard=queries_per_shard,
        overwrite=overwrite,
        backend=backend,
        progress=progress,
        max_shards=max_shards,
    )
    c = m["counts"]
    lr = m["last_run"]
    typer.echo(
        f"{output}: {len(m['completed_shards'])}/{m['n_shards']} shards, {c['pairs']} pairs, {c['queries']} queries, "
        f"teacher {m['teacher_name']} ({m['teacher_fingerprint']}); this run {lr['new_pairs']} pairs in {lr['seconds']} s"
        + (f" ({lr['pairs_per_s']} pairs/s)" if lr["pairs_per_s"] else "")
        + f"; empty passages {c['empty_passages']}, queries over max_length {c['queries_over_max_length']}, redone shards {c['redone_shards']}"
        + ("" if m["complete"] else "  [INCOMPLETE]")
    )
