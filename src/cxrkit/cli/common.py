"""What every command shares: logging set-up and one-line errors for expected failures."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from cxrkit.artefacts import WriteError
from cxrkit.messages import shorten
from cxrkit.inference.openvino_engine import OpenVinoUnavailable

#: ``--precision`` of every command that runs a torch checkpoint forward (cxrkit.inference.runtime).
PRECISION_HELP = (
    "Forward pass: auto (CPU: OpenVINO bf16 where the CPU has bf16 and OpenVINO "
    "is installed, within 5e-3 of fp32; else onnxruntime, within 1e-4) | fp32 "
    "(torch fp32 eager, the reference) | bf16 (torch autocast + channels_last) | "
    "onnxruntime | openvino (fp32) | openvino-bf16; default $CXRKIT_PRECISION "
    "or auto"
)

DECODE_TIMEOUT_HELP = (
    "Seconds one file may take to decode (in a worker process, stopped "
    "and reported as that file's error when over; default 30)"
)
DECODE_MEMORY_HELP = (
    "MiB of memory one file's decoding may take (an address-space cap on "
    "the worker; over it is that file's error; default 3072)"
)

#: Errors the library raises for bad input or an unwritable output; the CLI prints them as
#: one line, exit code 2.
KNOWN_ERRORS = (
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    RuntimeError,
    WriteError,
    OpenVinoUnavailable,
)


class OneLineFormatter(logging.Formatter):
    """Log records as the user reads them: the message, with ``warning: `` / ``error: ``
    before warnings and errors, on one line (a multi-line message is joined)."""

    PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "error: "}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = self.PREFIX.get(record.levelno, "")
        if prefix and not text.lower().startswith(prefix):
            text = prefix + text
        return text if record.levelno < logging.WARNING else " ".join(text.split("\n"))


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the CLI: ``warning: <message>``, one line, instead of
    Python's ``file:line: Category: message`` and the source line under it."""
    logging.getLogger("py.warnings").warning("%s", str(message))


def setup_logging(verbose: bool) -> None:
    if not sys.stderr.isatty():  # logs and CI: a progress line every 10 s, not every batch
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    warnings.simplefilter("default")
    warnings.showwarning = show_warning


def in_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
    """A Typer option callback refusing values outside ``lo..hi`` (an open end excluded).

    For the bounds Typer's ``min``/``max`` cannot say (an open end, as in a fraction
    ``0 <= x < 1``); the message has Typer's own form (``Invalid value for '--x': ...``).
    """

    def check(value):
        if value is None:
            return value
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            raise typer.BadParameter(
                f"{value:g} is not in the range "
                f"{lo:g}{'<' if lo_open else '<='}x"
                f"{'<' if hi_open else '<='}{hi:g}"
            )
        return value

    return check


#: ``--val-fraction`` and other shares of a split: 0 <= x < 1.
FRACTION = in_range(0.0, 1.0, hi_open=True)


def run(fn, *args, **kwargs):
    """Call library code; turn expected errors into one clear line and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except KNOWN_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        typer.secho(f"error: {shorten(msg)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
