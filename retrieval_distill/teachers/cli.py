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


def _errors():
    """The bad-input errors a teacher command reports as one ``error: ...`` line (exit 2)."""
    from retrieval_distill.teachers.scoring import IncompleteScores, ScoreFileMismatch

    # ValueError covers DataFormatError, RunFormatError and pydantic's ValidationError;
    # FileNotFoundError covers ModelNotFoundError; FolderBusyError: another job writes the folder;
    # PermissionError: an output folder this user may not write
    from retrieval_distill.utils import FolderBusyError

    return (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError, ScoreFileMismatch,
            IncompleteScores, FolderBusyError)


def _fail(e: Exception):
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


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

    try:
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
    except _errors() as e:
        _fail(e)
    c = m["counts"]
    lr = m["last_run"]
    typer.echo(
        f"{output}: {len(m['completed_shards'])}/{m['n_shards']} shards, {c['pairs']} pairs, {c['queries']} queries, "
        f"teacher {m['teacher_name']} ({m['teacher_fingerprint']}); this run {lr['new_pairs']} pairs in {lr['seconds']} s"
        + (f" ({lr['pairs_per_s']} pairs/s)" if lr["pairs_per_s"] else "")
        + f"; empty passages {c['empty_passages']}, queries over max_length {c['queries_over_max_length']}, redone shards {c['redone_shards']}"
        + ("" if m["complete"] else "  [INCOMPLETE]")
    )


def _read_qids(path: Path | None) -> set[str]:
    if path is None:
        return set()
    from retrieval_distill.data.formats import read_qids

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: qids file does not exist")
    return set(read_qids(path))


def _ranked(path: Path, corpus=None) -> dict[str, list[str]]:
    """The candidate run at ``path`` as qid -> docids in rank order.

    Raises:
        DataFormatError: a docid that is not in ``corpus`` (``file:line``).
    """
    from retrieval_distill.data.collections import DataFormatError
    from retrieval_distill.evaluation.runs import iter_run_lines, read_run, trec_order

    run = read_run(path)
    if corpus is not None and any(d not in corpus for r in run.values() for d in r):
        for lineno, _q, d, *_ in iter_run_lines(path):
            if d not in corpus:
                raise DataFormatError(f"{path}:{lineno}: unknown docid {d!r} (not in the corpus)")
    return {q: [d for d, _ in trec_order(r)] for q, r in run.items()}


def _training_queries(dataset: str, split: str | None, coll, exclude_qids: Path | None) -> dict[str, str]:
    """The fit's training queries (all but the held-out ones).

    Raises:
        ValueError: none of them has a positive qrels entry.
    """
    held = _read_qids(exclude_qids)
    queries = {q: t for q, t in coll.queries.items() if q not in held}
    if not any(g > 0 for q in queries for g in coll.qrels.get(q, {}).values()):
        raise ValueError(f"{dataset}" + (f" (split {split})" if split else "") + f": none of the {len(queries)} training queries has a positive qrels entry")
    return queries


@app.command("fit")
def fit_cmd(
    backbone: str = typer.Option("all-MiniLM-L6-v2", help="backbone (path / alias / hub name)"),
    dataset: str = typer.Option(..., help="dataset id with split (beir/scifact/train) or BEIR folder"),
    candidates: Path = typer.Option(..., help="TREC run of the training queries (hard negatives come from it)"),
    output: Path = typer.Option(..., "--output", "-o", help="cross-encoder folder to write"),
    split: str = typer.Option(None, help="qrels split when DATASET is a folder"),
    exclude_qids: Path = typer.Option(None, help="file of qids (first column) to hold out, e.g. the dev split"),
    negatives: int = typer.Option(4, help="hard negatives per query"),
    epochs: float = typer.Option(1.0),
    max_steps: int = typer.Option(-1, help="stop after this many steps (overrides epochs)"),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(2e-5),
    max_length: int = typer.Option(256),
    seed: int = typer.Option(13),
    distill_scores: Path = typer.Option(None, help="score folder of a teacher to regress first (teacher of the teacher)"),
    distill_epochs: float = typer.Option(1.0),
):
    """Train a cross-encoder teacher from a backbone on qrels plus mined hard negatives."""
    _logging()
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.teachers.fit import fit_cross_encoder
    from retrieval_distill.teachers.scoring import scores_dict

    try:
        coll = load_collection(dataset, split=split)
        held = _read_qids(exclude_qids)
        queries = _training_queries(dataset, split, coll, exclude_qids)
        distill = scores_dict(distill_scores) if distill_scores else None
        if distill:
            distill = {q: v for q, v in distill.items() if q not in held}
        path = fit_cross_encoder(
            backbone, queries, coll.qrels, _ranked(candidates, coll.corpus), coll.doc_text, output,
            negatives=negatives, epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length,
            max_steps=max_steps, seed=seed, distill_scores=distill, distill_epochs=distill_epochs,
        )  # fmt: skip
    except _errors() as e:
        _fail(e)
    typer.echo(f"wrote {path}: {(path / 'fit.json').read_text()}")


@app.command("fit-colbert")
def fit_colbert_cmd(
    model: str = typer.Option("all-mpnet-base-v2", help="encoder (path / alias / hub name); it stays frozen"),
    dataset: str = typer.Option(..., help="dataset id with split (beir/scifact/train) or BEIR folder"),
    candidates: Path = typer.Option(..., help="TREC run of the training queries (hard negatives come from it)"),
    output: Path = typer.Option(..., "--output", "-o", help="folder to write (projection.pt, teacher.json, fit.json)"),
    split: str = typer.Option(None, help="qrels split when DATASET is a folder"),
    exclude_qids: Path = typer.Option(None, help="file of qids (first column) to hold out, e.g. the dev split"),
    dim: int = typer.Option(128, help="projected token dimension"),
    negatives: int = typer.Option(4, help="hard negatives per query"),
    epochs: int = typer.Option(10),
    batch_size: int = typer.Option(32),
    lr: float = typer.Option(1e-3),
    doc_maxlen: int = typer.Option(256, help="document tokens kept"),
    seed: int = typer.Option(13),
):
    """Fit a ColBERT teacher's linear projection (frozen encoder) on qrels plus hard and in-batch negatives."""
    _logging()
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.teachers.fit import fit_colbert_projection

    try:
        coll = load_collection(dataset, split=split)
        queries = _training_queries(dataset, split, coll, exclude_qids)
        path = fit_colbert_projection(
            model, queries, coll.qrels, _ranked(candidates, coll.corpus), coll.doc_text, output, dim=dim, negatives=negatives,
            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, options={"doc_maxlen": doc_maxlen},
        )  # fmt: skip
    except _errors() as e:
        _fail(e)
    typer.echo(f"wrote {path}: {(path / 'fit.json').read_text()}")
    typer.echo(f"score with: rd teacher score -t {path / 'teacher.json'} ...")


def _parse_grid(grid: str) -> list[float]:
    """``--grid "0,0.5,1"`` as floats. Raises ValueError: not numbers, or none."""
    try:
        values = [float(x) for x in grid.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--grid {grid!r}: expected comma-separated numbers") from None
    if not values:
        raise ValueError("--grid: no weight values")
    return values


@app.command("fit-weights")
def fit_weights_cmd(
    teacher: str = typer.Option(..., "--teacher", "-t", help="ensemble spec (file or inline JSON)"),
    dataset: str = typer.Option(..., help="dev dataset id with split, or BEIR folder"),
    candidates: Path = typer.Option(..., help="TREC run of the dev queries (the lists to rerank)"),
    output: Path = typer.Option(..., "--output", "-o", help="ensemble spec JSON with the chosen weights"),
    split: str = typer.Option(None),
    qids: Path = typer.Option(None, help="file of dev qids (first column); default all judged queries"),
    grid: str = typer.Option("0,0.25,0.5,0.75,1", help="weight values tried per member"),
    metric: str = typer.Option("ndcg@10"),
):
    """Choose ensemble weights on dev by nDCG@10 and write the spec with them."""
    _logging()
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.teachers.base import build_teacher, parse_spec
    from retrieval_distill.utils import write_json_atomic

    try:
        values = _parse_grid(grid)
        spec = parse_spec(teacher)
        if spec.kind != "ensemble":
            raise ValueError(f"fit-weights needs an ensemble spec, got kind {spec.kind!r}")
        coll = load_collection(dataset, split=split)
        ranked = _ranked(candidates, coll.corpus)
        keep = _read_qids(qids)
        if keep:
            ranked = {q: v for q, v in ranked.items() if q in keep}
        judged = [q for q in ranked if any(g > 0 for g in coll.qrels.get(q, {}).values())]
        if not judged:
            raise ValueError(f"{candidates}: no candidate list belongs to a judged query of {dataset}" + (f" among {qids}" if qids else ""))
        ens = build_teacher(spec)
        res = ens.fit_weights(coll.qrels, ranked, coll.queries, coll.doc_text, grid=values, metric=metric)
    except _errors() as e:
        _fail(e)
    out = ens.spec.model_dump()
    out["fit"] = {k: res[k] for k in ("metric", "best", "equal", "queries")} | {"candidates": str(candidates), "dataset": dataset}
    write_json_atomic(output, out)
    typer.echo(f"weights {res['weights']}: {metric} {res['best']:.4f} on {res['queries']} dev queries (equal weights {res['equal']:.4f}); wrote {output}")


@app.command("import-hofstatter")
def import_cmd(
    tsv: Path = typer.Argument(..., help="pos_score neg_score qid pos_pid neg_pid"),
    output: Path = typer.Argument(..., help="score folder to write"),
    name: str = typer.Option(None, help="teacher name stored in the score file"),
):
    """Import a published Hofstätter margin-MSE teacher file as a score folder."""
    _logging()
    from retrieval_distill.teachers.hofstatter import import_hofstatter

    try:
        m = import_hofstatter(tsv, output, teacher_name=name)
    except _errors() as e:
        _fail(e)
    typer.echo(f"{output}: {m['counts']}")


@app.command("export-hofstatter")
def export_cmd(
    scores: Path = typer.Argument(..., help="score folder"),
    output: Path = typer.Argument(..., help="TSV to write"),
    dataset: str = typer.Option(None, help="dataset id/folder whose qrels give the positives"),
    split: str = typer.Option(None),
    triples: Path = typer.Option(None, help="'qid pos neg' file giving the triples instead"),
    max_negatives: int = typer.Option(None, help="highest-scored negatives per query (qrels mode)"),
):
    """Export a score folder as a Hofstätter TSV (pos_score neg_score qid pos_pid neg_pid)."""
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.teachers.hofstatter import export_hofstatter

    try:
        if not dataset and triples is None:
            raise ValueError("give --dataset (qrels give the positives) or --triples")
        qrels = load_collection(dataset, split=split).qrels if dataset else None
        n = export_hofstatter(scores, output, qrels=qrels, triples=triples, max_negatives=max_negatives)
    except _errors() as e:
        _fail(e)
    typer.echo(f"wrote {n} lines to {output}")


@app.command("evaluate")
def evaluate_cmd(
    scores: Path = typer.Argument(..., help="score folder (rd teacher score)"),
    dataset: str = typer.Option(..., help="dataset id with split, or BEIR folder (qrels)"),
    split: str = typer.Option(None),
    qids: Path = typer.Option(None, help="only these qids (first column), e.g. the dev split"),
    qrels_file: str = typer.Option(None, help="another qrels file inside the dataset folder"),
    run: Path = typer.Option(None, help="also write the teacher's reranking of every scored query as a TREC run (for rd eval compare)"),
):
    """nDCG@10 and MRR@10 of the teacher's reranking of its candidates, plus its pairs/s;
    ``--run`` writes that reranking as a TREC run (written atomically)."""
    from ranx import Qrels, Run, evaluate

    from retrieval_distill.data.collections import load_beir_folder, load_collection
    from retrieval_distill.teachers.scoring import load_manifest, scores_dict

    try:
        if qrels_file:
            coll = load_beir_folder(dataset, split=None, qrels_file=qrels_file)
        else:
            coll = load_collection(dataset, split=split)
        sc = scores_dict(scores)
        keep = _read_qids(qids)
        judged = [q for q in sc if q in coll.qrels and any(g > 0 for g in coll.qrels[q].values()) and (not keep or q in keep)]
        if not judged:
            raise ValueError(
                f"{scores}: none of its {len(sc)} queries is judged in {dataset}" + (f" {split}" if split else "")
                + (f" and listed in {qids}" if qids else "") + ": nothing to evaluate"
            )
    except _errors() as e:
        _fail(e)
    res = evaluate(Qrels({q: coll.qrels[q] for q in judged}), Run({q: sc[q] for q in judged}), ["ndcg@10", "mrr@10"])
    m = load_manifest(scores)
    if run:
        from retrieval_distill.evaluation.runs import write_run

        write_run(run, sc, tag=m["teacher_name"])
    lr = m.get("last_run") or {}
    typer.echo(json.dumps({"scores": str(scores), "teacher": m["teacher_name"], "queries": len(judged), "skipped_unjudged": len(sc) - len(judged),
                           "ndcg@10": round(res["ndcg@10"], 4), "mrr@10": round(res["mrr@10"], 4), "pairs": m["counts"]["pairs"],
                           "pairs_per_s_last_run": lr.get("pairs_per_s_with_document_pass") or lr.get("pairs_per_s")}))  # fmt: skip
