"""What every command shares: the Typer app, the refusal of a bad flag, the device help."""

from __future__ import annotations

import typer

DEVICE_HELP = "auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Multimodal sequential recommendation: prepare data, extract features, train, evaluate.")


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def at_least_one(*options: tuple[str, int]) -> None:
    """Refuse the first of (flag, value) below 1, naming the flag."""
    for flag, value in options:
        if value < 1:
            fail(f"{flag} must be at least 1, got {value}")

