"""``python -m cxrkit.cli`` (as torchrun runs it)."""

from cxrkit.cli import app

app()
