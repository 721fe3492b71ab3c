"""``cxrkit serve``: a local web page and JSON API over one checkpoint (research use only).

``create_app(checkpoint)`` builds the FastAPI app (:mod:`cxrkit.serve.app`); uploads are
checked and decoded by :mod:`cxrkit.serve.uploads`; :mod:`cxrkit.serve.runner` runs it in
the foreground or on a background thread. The page is ``static/`` (plain HTML/JS/CSS,
nothing loaded from the internet).
"""

from cxrkit.serve.app import DISCLAIMER, create_app
from cxrkit.serve.runner import background_server, run_server
from cxrkit.serve.uploads import UploadError, decode_upload

__all__ = ["DISCLAIMER", "UploadError", "background_server", "create_app", "decode_upload",
           "run_server"]
