"""How error messages quote what a user gave them: enough to find it, never all of it.

Why a module: errors quote input (a CSV field, a config value, a file name, an image
id) so the user can find the culprit, and one hostile file had a 50 MB field that came
back whole on stderr. Every message that quotes input goes through :func:`quote`, and
the CLI passes whole messages through :func:`shorten` as a last guard.
"""

from __future__ import annotations

#: Most characters of a quoted value kept in a message (its length is said after).
QUOTE_LIMIT = 60
#: Most characters of a whole message the CLI prints (the middle is cut).
MESSAGE_LIMIT = 2000


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut to about ``limit`` characters with the full length said.

    ``quote("Mass")`` is ``'Mass'``; a 5 MB string becomes its first ``limit``
    characters, quoted, then ``... (5,000,000 characters)``. Other values are quoted by a
    bounded ``repr`` (a few items of each container, a few levels deep: never the whole
    of a huge or deeply shared structure), cut the same way, with their item count.
    Only the kept part is ever built, so quoting a huge value costs nothing.
    """
    if isinstance(value, (str, bytes)):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    text = _bounded_repr(limit).repr(value)
    if len(text) <= limit:
        return text
    size = (
        f"{len(value):,} items"
        if isinstance(value, (list, tuple, dict, set, frozenset))
        else type(value).__name__
    )
    return f"{text[:limit]}... ({size})"


def _bounded_repr(limit: int):
    """A ``reprlib.Repr`` that stops early: a few items per container, a few levels deep,
    each string cut to ``limit``. ``repr()`` of a nested list that YAML aliases expanded
    to billions of items took a minute and 6 GB before it could be cut."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel = 3
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 6
    r.maxstring = r.maxother = r.maxlong = max(limit, 12)
    return r


def quote_list(values, n: int = 5, limit: int = QUOTE_LIMIT) -> str:
    """The first ``n`` of ``values``, each cut by :func:`quote`, as ``[a, b, ...]``."""
    values = list(values)
    more = ", ..." if len(values) > n else ""
    return "[" + ", ".join(quote(v, limit) for v in values[:n]) + more + "]"


def require_count(value, name: str, minimum: int = 1, unit: str = "images") -> int:
    """``value`` as an ``int`` if it is a whole number >= ``minimum``; else a ValueError
    that says so (``batch_size=0`` crashed deep in ``range()``, a negative one silently
    did nothing)."""
    if isinstance(value, bool) or not float(value).is_integer() or value < minimum:
        raise ValueError(
            f"{name} must be a whole number of {unit} >= {minimum}, got {quote(value)}"
        )
    return int(value)


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 image``, ``2 images``, ``1,789 images``: a number and its noun, agreeing."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` with its middle cut when longer than ``limit`` (start and end kept)."""
    text = str(text)
    if len(text) <= limit:
        return text
    head, tail = (limit * 2) // 3, limit // 3
    return f"{text[:head]} ... [{len(text) - head - tail:,} characters cut] ... {text[-tail:]}"


__all__ = ["MESSAGE_LIMIT", "QUOTE_LIMIT", "quote", "quote_list", "require_count", "shorten"]
