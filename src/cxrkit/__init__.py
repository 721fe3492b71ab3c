"""cxrkit: chest X-ray classification on NIH ChestX-ray14, done properly.

Stages, in the order data flows through them::

    NIH files (read-only) -> cxrkit.data.nih (read + validate) -> cxrkit.data.splits
      -> cxrkit.data.cache (image cache) -> cxrkit.data.dataset -> cxrkit.models
      -> cxrkit.engine -> checkpoint -> cxrkit.evaluate / explain / predict / serve
"""

from cxrkit import _moved
from cxrkit.labels import FINDINGS, NO_FINDING

_moved.install()  # old module paths (cxrkit.export, cxrkit.predict, ...) keep importing

__version__ = "0.1.0"
__all__ = ["FINDINGS", "NO_FINDING", "__version__", "load"]


def load(checkpoint, **kwargs):
    """``cxrkit.load(checkpoint).predict(images)``: see :func:`cxrkit.inference.load`."""
    from cxrkit.inference.core import load as _load

    return _load(checkpoint, **kwargs)
