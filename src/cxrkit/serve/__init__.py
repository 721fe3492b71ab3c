"""``cxrkit serve``: a local web page and JSON API over one checkpoint (research use only).

``create_app(checkpoint)`` builds the FastAPI app (:mod:`cxrkit.serve.app`); uploads are
checked and decoded by :mod:`cxrkit.serve.uploads`; :mod:`cxrkit.serve.runner` runs it in
the foreground or on a background thread. The page is ``static/`` (plain HTML/JS/CSS,
nothing loaded from the internet).

The names below are imported on first use, so that a decoding worker process can import
:mod:`cxrkit.serve.uploads` (light: numpy, Pillow, pydicom) without the app's FastAPI and
torch.
"""

import importlib

_WHERE = {
    "DISCLAIMER": "app",
    "create_app": "app",
    "background_server": "runner",
    "run_server": "runner",
    "UploadError": "uploads",
    "decode_upload": "uploads",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"cxrkit.serve.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'cxrkit.serve' has no attribute {name!r}")


__all__ = [
    "DISCLAIMER",
    "UploadError",
    "background_server",
    "create_app",
    "decode_upload",
    "run_server",
]
