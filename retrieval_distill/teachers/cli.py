"""`rd teachers ...` sub-commands."""

import typer

app = typer.Typer(help="teachers stage", no_args_is_help=True)
