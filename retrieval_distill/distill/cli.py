"""`rd student ...` and `rd queries ...` sub-commands (thin: the work is in
:mod:`retrieval_distill.distill.job` and :mod:`retrieval_distill.distill.synth`).

``rd student train CONFIG.yaml`` trains a student from a teacher's score folder
(:mod:`retrieval_distill.teachers.scoring`) over candidates, with the losses of
:mod:`retrieval_distill.distill.losses` (the config format: :mod:`retrieval_distill.distill.job`);
``rd queries synth CORPUS OUT`` makes training queries for a corpus that has none
(:mod:`retrieval_distill.distill.synth`).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from retrieval_distill.distill.job import TeacherMismatchError, check_dev, load_job, prepare_examples, train_from_config

app = typer.Typer(help="students: train bi-encoder students from teacher scores", no_args_is_help=True)
queries_app = typer.Typer(help="training queries for corpora without judged queries", no_args_is_help=True)


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="student config YAML: keys documented in retrieval_distill/distill/job.py "
                                "(StudentJob); examples in eval/configs/query_side/ and eval/configs/students/"),
    check_only: bool = typer.Option(False, "--check", help="validate the inputs and count examples; train nothing"),
):
    """Train a student from a teacher's score folder: teacher check, examples, sentence-transformers
    trainer (resumes from `<output>.ckpt` after a kill), training card and loss curve, dev metrics."""
    from retrieval_distill.distill.data import TrainingDataError
    from retrieval_distill.teachers.scoring import IncompleteScores

    try:
        job = load_job(config)
        if check_only:
            if job.mode == "query_side":
                from retrieval_distill.distill.query_side import prepare_query_side

                facts = prepare_query_side(job)["facts"]
            else:
                examples, facts = prepare_examples(job)
            if job.dev is not None:
                facts["dev_judged_queries"] = check_dev(job.dev)
            typer.echo(json.dumps(facts, indent=2, default=str))
            return
        out = train_from_config(job)
    except (TeacherMismatchError, TrainingDataError, IncompleteScores, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    card = json.loads((out / "training_card.json").read_text())
    typer.echo(f"student -> {out} ({card['steps']} steps, {card['examples']} examples)")
    if "dev_metrics" in card:
        typer.echo(json.dumps(card["dev_metrics"]["overall"], indent=2))


@queries_app.command("teacher-positives")
def teacher_positives_cmd(
    synth_dir: Path = typer.Argument(..., help="a rd queries synth folder"),
    out_dir: Path = typer.Argument(..., help="output folder: qrels/<split>.tsv, candidates.trec, links to queries and corpus"),
    candidates: Path = typer.Option(..., help="the synthetic queries' candidates (TREC run)"),
    scores: Path = typer.Option(..., help="the teacher's score folder over those candidates"),
    split: str = typer.Option("train", help="qrels split name"),
):
    """Drop each synthetic query's source document from its candidates and make the teacher's
    top-scored remaining candidate its positive (train with OUT_DIR as the collection and
    OUT_DIR/candidates.trec as the candidates)."""
    from retrieval_distill.data.collections import DataFormatError
    from retrieval_distill.distill.synth import teacher_positives

    try:
        counts = teacher_positives(synth_dir, candidates, scores, out_dir, split=split)
    except (FileNotFoundError, FileExistsError, DataFormatError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{counts['queries']} queries relabelled -> {out_dir} ({json.dumps(counts)})")


@queries_app.command("synth")
def synth_cmd(
    corpus: str = typer.Argument(..., help="corpus.jsonl, a BEIR folder, or a local id like classic/adi"),
    out_dir: Path = typer.Argument(..., help="output folder (BEIR layout: queries.jsonl, qrels/<split>.tsv)"),
    kinds: str = typer.Option("title,sentence,keywords", help="comma-separated: title, sentence, keywords, ict (sentence query, positive without it)"),
    ict_keep: float = typer.Option(0.1, help="probability that an ict positive keeps its query sentence (Lee et al. 2019: 0.1)"),
    seed: int = typer.Option(13, help="seed of every random choice"),
    split: str = typer.Option("train", help="qrels split name"),
    max_docs: int = typer.Option(None, help="use a seeded sample of this many documents"),
    link_corpus: bool = typer.Option(True, help="put a corpus.jsonl symlink (never a copy) in OUT_DIR"),
):
    """Make training queries from a corpus's own documents, each with its source document as
    the positive (title, a sampled sentence, TF-IDF keywords)."""
    from retrieval_distill.data.collections import DataFormatError
    from retrieval_distill.distill.synth import synth_corpus

    try:
        res = synth_corpus(corpus, out_dir, kinds=[k.strip() for k in kinds.split(",") if k.strip()], seed=seed, split=split, max_docs=max_docs, link_corpus=link_corpus, ict_keep=ict_keep)
    except (FileNotFoundError, DataFormatError, ValueError, FileExistsError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{len(res.queries)} queries -> {out_dir} ({json.dumps(res.stats['per_kind'])}; skipped {json.dumps(res.stats['skipped'])})")
