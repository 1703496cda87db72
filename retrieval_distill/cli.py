"""The ``rd`` command line: one sub-command per stage plus ``rd pipeline CONFIG``.

Heavy libraries (torch, pyserini, faiss) are imported inside commands, so ``rd --help``
is fast.
"""

from __future__ import annotations

import os

import typer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from retrieval_distill.distill.cli import app as distill_app  # noqa: E402
from retrieval_distill.evaluation.cli import app as eval_app  # noqa: E402
from retrieval_distill.index.cli import app as index_app  # noqa: E402
from retrieval_distill.search.cli import app as bm25_app  # noqa: E402
from retrieval_distill.teachers.cli import app as teacher_app  # noqa: E402

app = typer.Typer(
    help="retrieval-distill: distil slow rankers into fast bi-encoder retrievers, index and serve them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(bm25_app, name="bm25")
app.add_typer(teacher_app, name="teacher")
app.add_typer(distill_app, name="student")
app.add_typer(index_app, name="index")
app.add_typer(eval_app, name="eval")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
