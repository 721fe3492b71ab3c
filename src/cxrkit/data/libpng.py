"""Keep libpng's harmless ``iCCP`` warnings off the terminal, and nothing else.

Seven of the 39 NIH originals (and about 2 % of the release: the RGBA files) carry an
ICC profile named 'ICC Profile' that declares a grey colour space on an RGB image.
libpng, which OpenCV's ``cv2.imread`` uses, then writes
``libpng warning: iCCP: profile 'ICC Profile': 'GRAY': Gray color space not permitted on
RGB PNG`` straight to file descriptor 2, once per file, from C: Python's ``warnings``
and ``sys.stderr`` never see it, so only redirecting the descriptor can stop it. The
pixels are unaffected (the profile is ignored).

cxrkit decodes PNGs with Pillow (see :mod:`cxrkit.data.images`), which prints nothing;
:func:`quiet_iccp_warnings` is for code that decodes with OpenCV/libpng (the
``cv2.imread`` comparison in ``bench/bench_cache.py``). It drops only lines that start
with ``libpng warning: iCCP:``; every other line, such as OpenCV's ``[ERROR] ...
readHeader`` for a broken file, still reaches the terminal. Written by hand: no library
filters a C-level file descriptor line by line.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: Lines on fd 2 that :func:`quiet_iccp_warnings` drops (bytes, a prefix).
ICCP_PREFIX = b"libpng warning: iCCP:"


@contextmanager
def quiet_iccp_warnings() -> Iterator[None]:
    """Route fd 2 through a filter that drops libpng's ``iCCP`` warnings (see module).

    Everything written to fd 2 inside the block, by C or Python, is forwarded line by
    line to the original stderr when the line is not an ``iCCP`` warning. Not for use
    from two threads at once (fd 2 is one per process).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not line.startswith(ICCP_PREFIX):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="cxrkit-iccp-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # drops the pipe's last write end: the pump sees EOF
        thread.join()
        os.close(saved)


__all__ = ["ICCP_PREFIX", "quiet_iccp_warnings"]
