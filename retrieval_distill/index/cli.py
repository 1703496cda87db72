"""`rd index ...` sub-commands."""

import typer

app = typer.Typer(help="index stage", no_args_is_help=True)
