"""One readable line for an exception: what every CLI prints and every failure record holds."""

from __future__ import annotations


def first_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first non-empty line of ``str(exc)``; the exception's type name when the message is empty.

    ``with_type`` prefixes the type (``"ValueError: bad patch"``), as failure records do. Never raises,
    whatever the message (empty, whitespace, many lines).
    """
    name = type(exc).__name__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return name
    return f"{name}: {lines[0]}" if with_type else lines[0]
