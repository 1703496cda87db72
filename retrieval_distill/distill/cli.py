"""`rd distill ...` sub-commands."""

import typer

app = typer.Typer(help="distill stage", no_args_is_help=True)
