"""The styleengine command line (placeholder; the CLI owner replaces this)."""
import sys

import typer

from styleengine.engine.errors import UserError

app = typer.Typer(pretty_exceptions_enable=False, no_args_is_help=True)


def main() -> None:
    try:
        app()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
