"""The ``cxrkit`` command: a thin Typer shell over the Python API.

Each command parses options, calls one library function and prints its result. Logic
lives in the library so that everything here is also scriptable from Python. The
commands live in one module per pipeline stage and are registered here, explicitly.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cxrkit.cli import data, evaluate, train
from cxrkit.cli import predict
from cxrkit.cli import explain
from cxrkit.cli import serve
from cxrkit.cli import ood
from cxrkit.cli import audit
from cxrkit.cli import importer
from cxrkit.cli.common import setup_logging

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Chest X-ray classification on NIH ChestX-ray14.",
)


def _print_version(value: bool) -> None:
    if value:
        from cxrkit import __version__

        typer.echo(f"cxrkit {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print cxrkit's version and exit",
        ),
    ] = False,
) -> None:
    setup_logging(verbose)


_EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}

# -- registration, in pipeline order ------------------------------------------------------
app.command()(data.phantoms)
app.command()(data.validate)
app.command()(data.prepare)
app.command()(data.split)
app.command()(data.stats)
app.command(context_settings=_EXTRA_ARGS)(train.train)
app.command("import")(importer.import_)
app.command()(evaluate.evaluate)
app.command()(evaluate.compare)
app.command()(ood.ood)
app.command()(predict.predict)
app.command()(predict.export)
app.command()(explain.explain)
app.command()(explain.localize)
app.command()(audit.audit)
app.command()(serve.serve)

__all__ = ["app"]
