"""The ``rd`` command line: one sub-command per stage plus ``rd pipeline CONFIG``.

Heavy libraries (torch, pyserini, faiss) are imported inside commands, so ``rd --help``
is fast.
"""

from __future__ import annotations

import os

import typer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retrieval_distill.distill.cli import app as distill_app  # noqa: E402
from retrieval_distill.distill.cli import queries_app  # noqa: E402
from retrieval_distill.evaluation.cli import app as eval_app  # noqa: E402
from retrieval_distill.evaluation.repro import repro_app  # noqa: E402
from retrieval_distill.index.cli import app as index_app  # noqa: E402
from retrieval_distill.search.cli import app as bm25_app  # noqa: E402
from retrieval_distill.serve_cli import serve  # noqa: E402
from retrieval_distill.teachers.cli import app as teacher_app  # noqa: E402

app = typer.Typer(
    help="retrieval-distill: distil slow rankers into fast bi-encoder retrievers, index and serve them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(bm25_app, name="bm25")
app.add_typer(teacher_app, name="teacher")
app.add_typer(distill_app, name="student")
app.add_typer(queries_app, name="queries")
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")
app.add_typer(repro_app, name="repro")
app.command("serve")(serve)


@app.command("pipeline")
def pipeline_cmd(
    config: str = typer.Argument(..., help="pipeline YAML (eval/configs/scifact.yaml)"),
    profile: str = typer.Option(None, help="profile of the config to apply (each config lists its profiles under `profiles:`; "
                                "scifact.yaml: quick, full, two-tower, colbert, ...)"),
    force: list[str] = typer.Option([], help="rerun this stage even if up to date (repeatable)"),
    until: str = typer.Option(None, help="stop after this stage"),
    set_: list[str] = typer.Option([], "--set", help="override a config key after the profile: "
                                   "KEY=VALUE, dotted keys, YAML values (--set dataset=my-corpus/ --set train.epochs=2)"),
):
    """Run every stage (queries, splits, bm25, init, candidates, teacher, train, baseline, index, eval);
    skip those whose outputs exist and match their inputs; print stage wall times and the
    metrics table."""
    from retrieval_distill.pipeline import Pipeline
    from retrieval_distill.config import load_config

    try:
        cfg = load_config(config, profile, overrides=set_)
    except (FileNotFoundError, KeyError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    unknown = set(force) - set(Pipeline.STAGES)
    if until is not None and until not in Pipeline.STAGES:
        unknown.add(until)
    if unknown:
        raise typer.BadParameter(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(Pipeline.STAGES)}")
    pipe = Pipeline(cfg, force=set(force), echo=typer.echo)
    try:
        pipe.preflight()
    except (FileNotFoundError, ValueError) as e:  # before any stage: one clear line, exit 2
        typer.echo(f"error: {config}: {e}", err=True)
        raise typer.Exit(2) from None
    from retrieval_distill.data.collections import DataFormatError

    try:
        pipe.run(until=until, preflight=False)
    except (ValueError, FileNotFoundError, PermissionError, BlockingIOError, DataFormatError) as e:
        # bad data met inside a stage, or another pipeline writing the same work folder: one line
        typer.echo(f"error: {config}: stage {pipe.current_stage}: {e} (finished stages are kept; fix and rerun)", err=True)
        raise typer.Exit(1) from None


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
