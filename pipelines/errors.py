"""Expected errors → one line and an exit code, for the CLI and the flows.

Bad input (a missing or malformed file, a wrong option, a release that exists from other inputs)
exits 2; anything else is a failed run and exits 1. `--verbose` or `SKELPGT_DEBUG=1` re-raises
so the full traceback is shown.
"""

from __future__ import annotations

import os
import pickle
import zipfile

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

BAD_INPUT, FAILED_RUN = 2, 1
DEBUG_ENV = "SKELPGT_DEBUG"

# errors that say "the input is wrong" rather than "the run broke"
_INPUT_ERRORS = (
    FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, ValueError, KeyError, IndexError,
    EOFError, pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError,
)  # fmt: skip


def debug_requested() -> bool:
    """True when $SKELPGT_DEBUG asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def describe_error(exc: BaseException) -> tuple[int, str]:
    """Exception -> (exit code, one-line message without traceback)."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    if isinstance(exc, _INPUT_ERRORS):
        return BAD_INPUT, text
    if isinstance(exc, OSError) and getattr(exc, "filename", None) and exc.filename not in text:
        text = f"{exc.filename}: {text}"
    return FAILED_RUN, f"{type(exc).__name__}: {text}"


class OneLineErrors(TyperGroup):
    """Typer group that prints expected errors of any subcommand as one `error:` line and exits 2 or 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except TyperException as exc:  # usage errors (bad option values, BadParameter): one line, not a box
            if not hasattr(exc, "format_message"):
                raise
            typer.echo(f"error: {' '.join(exc.format_message().split())} (see --help)", err=True)
            raise typer.Exit(getattr(exc, "exit_code", BAD_INPUT)) from None
        except Exception as exc:
            if ctx.params.get("verbose") or debug_requested():
                raise
            code, line = describe_error(exc)
            hint = " (rerun with --verbose for the traceback)" if code == FAILED_RUN else ""
            typer.echo(f"error: {line}{hint}", err=True)
            raise typer.Exit(code) from None
