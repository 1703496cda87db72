"""`rd evaluation ...` sub-commands."""

import typer

app = typer.Typer(help="evaluation stage", no_args_is_help=True)
