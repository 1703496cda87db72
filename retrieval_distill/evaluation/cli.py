"""`rd eval ...`: make runs, score them, compare them.

Examples::

    rd eval run beir/scifact/test runs/bm25.test.trec --searcher bm25 --index work/bm25/scifact --k 1000
    rd eval run beir/scifact/test runs/student.test.trec --searcher dense --index indexes/student/flat
    rd eval run beir/scifact/test runs/ce.test.trec --searcher rerank --teacher cross_encoder:MODEL --candidates runs/bm25.test.trec
    rd eval score --qrels beir/scifact/test --run runs/bm25.test.trec
    rd eval score --qrels ../shared/data/msmarco/trec-dl-subset/qrels/dl19.tsv --run RUN --rel-threshold 2 --per-query
    rd eval compare runs/bm25.test.trec runs/student.test.trec --qrels beir/scifact/test --baseline bm25 \\
        --out-md cmp.md --out-json cmp.json --out-png cmp.png

``--qrels`` takes a qrels file (BEIR TSV with or without header, or TREC 4-column), a
BEIR folder (with ``--split``), or a dataset id (``beir/scifact/test``, an ir_datasets id).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import typer

app = typer.Typer(help="Evaluation: make TREC runs, score them (ranx, trec_eval semantics), compare them.",
                  no_args_is_help=True)

CLI_METRICS = "ndcg@10,mrr@10,recall@100,recall@1000,map"


def _test_list(text: str) -> list[str]:
    """``--tests``: one or both of ``t-test`` and ``fisher``, comma-separated, each once
    (raises ValueError naming what is wrong: an empty list, an unknown name, a repeat)."""
    from retrieval_distill.evaluation.compare import TESTS

    ts = [t.strip().lower() for t in text.split(",")]
    if not text.strip() or any(not t for t in ts):
        raise ValueError(f"--tests {text!r}: give a comma-separated list of {', '.join(TESTS)} with no empty item")
    bad = [t for t in ts if t not in TESTS]
    if bad:
        raise ValueError(f"--tests: unknown test(s) {', '.join(bad)}; use {', '.join(TESTS)}")
    if len(set(ts)) != len(ts):
        raise ValueError(f"--tests {text!r} names a test twice")
    return ts


def resolve_qrels(spec: str, split: str | None = None, on_unknown: str = "error") -> dict[str, dict[str, int]]:
    """Qrels from a file path, a BEIR folder (+ split) or a dataset id.

    Every qid must be a query of the collection: for a folder or id, of its queries file;
    for a file inside a BEIR folder (``<folder>/qrels/<name>.tsv``), of that folder's queries
    file (:func:`~retrieval_distill.data.collections.queries_path`). Docids are checked
    against the corpus for a folder or id (a bare file is read without loading the corpus:
    the official TREC DL qrels name passages outside the pool, and count as judged).

    Args:
        spec: the qrels file, BEIR folder or dataset id.
        split: the qrels split of a folder.
        on_unknown: ``error`` (default) or ``warn`` (rows of unknown qids dropped, of unknown
            docids kept, the counts logged; see :func:`~retrieval_distill.data.collections.load_qrels`).

    Raises:
        FileNotFoundError / DataFormatError: as the loaders (unknown ids: ``file:line``).
    """
    from retrieval_distill.data.collections import load_collection, load_qrels, load_queries, queries_path

    p = Path(spec)
    if p.is_file():
        queries = None
        folder = p.parent.parent
        if p.parent.name == "qrels" and queries_path(folder).is_file():
            queries = load_queries(queries_path(folder))
        return load_qrels(p, queries=queries, on_unknown=on_unknown)
    return load_collection(spec, split=split, on_unknown=on_unknown).qrels


@contextlib.contextmanager
def _echo_data_warnings():
    """Print the data loaders' warnings (unknown ids allowed by --allow-unknown, empty
    documents) on stderr as ``warning: ...`` lines, whatever logging is configured."""

    class _Echo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            typer.echo(f"warning: {record.getMessage()}", err=True)

    logger = logging.getLogger("retrieval_distill.data")
    handler = _Echo(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _metric_list(text: str) -> list[str]:
    """``--metrics``: checked names (raises ValueError naming a bad one)."""
    from retrieval_distill.evaluation.metrics import parse_metrics

    return parse_metrics(text)


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


@app.command("score")
def score_cmd(
    qrels: str = typer.Option(..., help="qrels file, BEIR folder (with --split) or dataset id"),
    run: Path = typer.Option(..., help="TREC run file"),
    metrics: str = typer.Option(CLI_METRICS, help="comma-separated ranx metrics"),
    rel_threshold: int = typer.Option(1, help="min grade a binary metric counts relevant (trec_eval -l; 2 for TREC DL)"),
    split: str = typer.Option(None, help="qrels split when --qrels is a BEIR folder"),
    per_query: bool = typer.Option(False, "--per-query", help="also print per-query values (trec_eval -q style)"),
    count_no_relevant: bool = typer.Option(False, help="average qrels queries without a relevant doc in as 0"),
    out_json: Path = typer.Option(None, help="write the result (with per-query values) as JSON"),
    allow_unknown: bool = typer.Option(
        False, "--allow-unknown",
        help="qrels naming qids not in the queries (dropped) or docids not in the corpus (kept): warn with the counts instead of failing",
    ),
):
    """Score one run: overall means, judged/missing/unjudged counts, optionally per query."""
    from retrieval_distill.data.collections import DataFormatError
    from retrieval_distill.evaluation.metrics import evaluate, format_table
    from retrieval_distill.evaluation.runs import read_run
    from retrieval_distill.utils import write_json_atomic

    try:
        ms = _metric_list(metrics)
        with _echo_data_warnings():
            q = resolve_qrels(qrels, split, on_unknown="warn" if allow_unknown else "error")
        r = read_run(run)
        res = evaluate(q, r, ms, rel_threshold=rel_threshold, count_no_relevant=count_no_relevant)
    except (FileNotFoundError, DataFormatError, ValueError) as e:
        _fail(e)
    name = run.name.split(".")[0]
    if per_query:
        for m in res.metrics:
            for qid, v in res.per_query[m].items():
                typer.echo(f"{m}\t{qid}\t{v:.4f}")
    typer.echo(format_table({name: res}, res.metrics), nl=False)
    typer.echo(res.counts_note())
    if res.n_missing == res.n_judged:
        typer.echo("warning: the run shares no query with the qrels (wrong qrels or split?)", err=True)
    if res.n_missing:
        shown = ", ".join(res.missing_qids[:10]) + (" ..." if res.n_missing > 10 else "")
        typer.echo(f"missing from the run (scored 0): {shown}", err=True)
    if res.n_unjudged:
        shown = ", ".join(res.unjudged_qids[:10]) + (" ..." if res.n_unjudged > 10 else "")
        typer.echo(f"not in the qrels (excluded): {shown}", err=True)
    if out_json:
        d = res.to_dict(per_query=True)
        d.update(run=str(run), qrels=qrels)
        write_json_atomic(out_json, d)


@app.command("compare")
def compare_cmd(
    runs: list[str] = typer.Argument(..., help="run files, optionally NAME=PATH (name default: file name to the first dot)"),
    qrels: str = typer.Option(..., help="qrels file, BEIR folder (with --split) or dataset id"),
    baseline: str = typer.Option(..., help="name of the baseline run"),
    metrics: str = typer.Option("ndcg@10,mrr@10,recall@100", help="comma-separated ranx metrics"),
    rel_threshold: int = typer.Option(1, help="min grade a binary metric counts relevant (2 for TREC DL)"),
    split: str = typer.Option(None, help="qrels split when --qrels is a BEIR folder"),
    tests: str = typer.Option("t-test,fisher", help="t-test and/or fisher"),
    correction: str = typer.Option("holm", help="holm, bonferroni or none"),
    alpha: float = typer.Option(0.05, help="significance level (on corrected p-values)"),
    n_permutations: int = typer.Option(10000, help="randomisation-test resamples"),
    out_md: Path = typer.Option(None, help="Markdown output"),
    out_json: Path = typer.Option(None, help="JSON output"),
    out_png: Path = typer.Option(None, help="PNG bar chart with 95% CIs"),
    allow_unknown: bool = typer.Option(
        False, "--allow-unknown",
        help="qrels naming qids not in the queries (dropped) or docids not in the corpus (kept): warn with the counts instead of failing",
    ),
):
    """Compare runs with a baseline: significance marks (paired t-test, Fisher randomisation,
    Holm/Bonferroni), as Markdown (printed), JSON and PNG."""
    from retrieval_distill.data.collections import DataFormatError
    from retrieval_distill.evaluation.compare import compare, load_runs

    try:
        ms = _metric_list(metrics)
        with _echo_data_warnings():
            q = resolve_qrels(qrels, split, on_unknown="warn" if allow_unknown else "error")
        rs = load_runs(runs)
        res = compare(q, rs, baseline, ms, tests=_test_list(tests), correction=correction, alpha=alpha,
                      rel_threshold=rel_threshold, n_permutations=n_permutations,
                      out_md=out_md, out_json=out_json, out_png=out_png)
    except (FileNotFoundError, DataFormatError, ValueError) as e:
        _fail(e)
    typer.echo(res.to_markdown(), nl=False)
    for p in (out_md, out_json, out_png):
        if p:
            typer.echo(f"wrote {p}", err=True)


@app.command("run")
def run_cmd(
    dataset: str = typer.Argument(..., help="BEIR folder or dataset id with split (beir/scifact/test)"),
    output: Path = typer.Argument(..., help="TREC run file to write"),
    searcher: str = typer.Option("bm25", help="bm25 | dense | rerank"),
    index: Path = typer.Option(None, help="bm25: Lucene index folder; dense: index store root or version folder"),
    split: str = typer.Option(None, help="qrels split when DATASET is a folder"),
    k: int = typer.Option(1000, help="hits per query"),
    tag: str = typer.Option(None, help="run tag (default: the searcher name)"),
    k1: float = typer.Option(0.9, help="bm25 k1"),
    b: float = typer.Option(0.4, help="bm25 b"),
    encoder: str = typer.Option(None, help="dense: encoder model (default: the index manifest's)"),
    query_encoder: str = typer.Option(None, help="dense: a separate query encoder (asymmetric search)"),
    teacher: str = typer.Option(None, help="rerank: teacher spec (kind:model, JSON or a spec file)"),
    candidates: Path = typer.Option(None, help="rerank: the TREC run to rerank"),
    depth: int = typer.Option(100, help="rerank: candidates per query to rescore"),
    all_queries: bool = typer.Option(False, help="search every query, not only those with qrels"),
):
    """Search every query of a dataset split and write a TREC run (atomically)."""
    from retrieval_distill.data.collections import DataFormatError, load_collection
    from retrieval_distill.evaluation.runs import write_run

    try:
        c = load_collection(dataset, split=split)
        queries = c.queries if all_queries or not c.qrels else {q: t for q, t in c.queries.items() if q in c.qrels}
        if searcher == "bm25":
            run = bm25_run(index, queries, k, k1, b)
        elif searcher == "dense":
            run = dense_run(index, queries, k, encoder, query_encoder)
        elif searcher == "rerank":
            run = rerank_run(c, queries, teacher, candidates, depth, checkpoint=output.with_name(output.name + ".partial"))
        else:
            raise ValueError(f"unknown searcher {searcher!r}: use bm25, dense or rerank")
    except (FileNotFoundError, DataFormatError, ValueError) as e:
        _fail(e)
    write_run(output, run, tag=tag or searcher, k=k)
    output.with_name(output.name + ".partial").unlink(missing_ok=True)
    typer.echo(f"wrote {output} ({len(run)} queries, top {k})")


def bm25_run(index: Path | None, queries: dict[str, str], k: int, k1: float = 0.9, b: float = 0.4):
    """BM25 (Pyserini) run: qid -> {docid: score}."""
    from retrieval_distill.search.bm25 import BM25Searcher

    if index is None:
        raise ValueError("--searcher bm25 needs --index (build one with `rd bm25 index`)")
    hits = BM25Searcher(index, k1=k1, b=b).batch_search(queries, k=k)
    return {q: {h.docid: h.score for h in hs} for q, hs in hits.items()}


def dense_run(index: Path | None, queries: dict[str, str], k: int, encoder: str | None = None, query_encoder: str | None = None):
    """Dense (FAISS index version) run: qid -> {docid: score}."""
    from retrieval_distill.search.dense import DenseSearcher

    if index is None:
        raise ValueError("--searcher dense needs --index (an index store root or version folder)")
    from retrieval_distill.index.store import open_version

    version = open_version(Path(index))
    enc = None
    if query_encoder:  # refuse a query-side student of other documents before any model loads
        from retrieval_distill.distill.query_side import check_query_encoder

        check_query_encoder(query_encoder, version.manifest.encoder.fingerprint, where=f"index {version.path}")
    if encoder or query_encoder:
        from retrieval_distill.models.encoder import Encoder

        # a query encoder alone: documents stay the index's own encoder
        enc = Encoder(encoder or version.manifest.encoder.name, query_model=query_encoder)
    hits = DenseSearcher(version, encoder=enc).batch_search(queries, k=k)
    return {q: {h.docid: h.score for h in hs if h.docid} for q, hs in hits.items()}


def rerank_run(
    collection, queries: dict[str, str], teacher: str | None, candidates: Path | None, depth: int,
    checkpoint: Path | None = None,
):
    """Rerank the top ``depth`` candidates of a run with a teacher: qid -> {docid: teacher score}.

    Resumable: with ``checkpoint``, each finished query is appended to that JSONL file
    (first line: the settings' fingerprint). A killed job started again with the same
    settings skips the queries already there (a half-written last line is dropped and
    redone); with other settings the checkpoint is discarded.

    Raises:
        ValueError: missing ``--teacher``/``--candidates``, or candidates naming docids not in the corpus.
    """
    import json

    from tqdm.auto import tqdm

    from retrieval_distill.evaluation.runs import read_run, trec_order
    from retrieval_distill.teachers.base import build_teacher, parse_spec, score_pairs
    from retrieval_distill.utils import fingerprint_obj, sha256_file

    if not teacher or candidates is None:
        raise ValueError("--searcher rerank needs --teacher and --candidates")
    cand = read_run(candidates)
    spec = parse_spec(teacher)
    todo = [q for q in queries if q in cand]
    for qid in todo:  # validate everything before the (slow) scoring starts
        unknown = [d for d, _ in trec_order(cand[qid])[:depth] if d not in collection.corpus]
        if unknown:
            raise ValueError(f"{candidates}: query {qid}: docid {unknown[0]!r} is not in the corpus of {collection.name}")
    fp = fingerprint_obj({"spec": spec.model_dump(), "candidates": sha256_file(candidates), "depth": depth,
                          "dataset": collection.name})
    out: dict[str, dict[str, float]] = {}
    if checkpoint is not None and checkpoint.exists():
        lines = checkpoint.read_text(encoding="utf-8").split("\n")
        if lines and lines[0] == fp:
            for ln in lines[1:]:
                try:
                    rec = json.loads(ln)
                except json.JSONDecodeError:
                    break  # the line being written when the job was killed
                out[rec["qid"]] = rec["scores"]
            print(f"resuming: {len(out)} of {len(todo)} queries already reranked ({checkpoint})", file=sys.stderr)
        else:
            checkpoint.unlink()
    fh = None
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        if not checkpoint.exists():
            checkpoint.write_text(fp + "\n", encoding="utf-8")
        else:  # rewrite without a torn last line
            checkpoint.write_text(fp + "\n" + "".join(json.dumps({"qid": q, "scores": v}) + "\n" for q, v in out.items()),
                                  encoding="utf-8")
        fh = open(checkpoint, "a", encoding="utf-8")
    t = build_teacher(spec)
    try:
        for qid in tqdm([q for q in todo if q not in out], desc="rerank", unit="query", file=sys.stderr):
            docids = [d for d, _ in trec_order(cand[qid])[:depth]]
            scores = score_pairs(t, [qid] * len(docids), [queries[qid]] * len(docids), docids, collection.doc_texts(docids))
            out[qid] = {d: float(s) for d, s in zip(docids, scores)}
            if fh is not None:
                fh.write(json.dumps({"qid": qid, "scores": out[qid]}) + "\n")
                fh.flush()
    finally:
        if fh is not None:
            fh.close()
    return {q: out[q] for q in todo}
