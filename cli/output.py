"""What every `citybroker` command prints through: consoles sized for terminals and logs alike,
and one-line errors that never interpret their text as markup."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

# Wide enough for the demo tables when output is not a terminal (CI logs, pipes).
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def error(message: str) -> None:
    """Print `error: MESSAGE` to stderr, unwrapped, any markup in `message` shown as text."""
    # Messages quote paths and (in audit) bundle content: print them as text, on one line.
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print the error; the caller raises what this returns, to exit with `code`."""
    error(message)
    return typer.Exit(code)
