"""What every command shares: logging set-up and one-line errors for expected failures."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from cxrkit.artefacts import WriteError

#: Errors the library raises for bad input or an unwritable output; the CLI prints them as
#: one line, exit code 2.
KNOWN_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError,
                WriteError)


def setup_logging(verbose: bool) -> None:
    if not sys.stderr.isatty():  # logs and CI: a progress line every 10 s, not every batch
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    warnings.simplefilter("default")
    logging.captureWarnings(True)


def run(fn, *args, **kwargs):
    """Call library code; turn expected errors into one clear line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except KNOWN_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
