"""The header list of a SIP message: a `list` of (name, value) pairs that counts its edits.

A module of its own because it subclasses a builtin: the compiled build (`core.compiled`)
turns the message classes into C types, which cannot derive from `list`, while this stays a
plain Python class they hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class HeaderList(list):
    """A list of (name, value) pairs that counts its mutations, so a message can cache parsed
    header values and still notice when someone edits `headers` directly."""

    version = 0  # bumped on every mutation (instance attribute from then on)


def _counting(name: str) -> Callable[..., Any]:
    base = getattr(list, name)

    def method(self: HeaderList, *args: Any, **kwargs: Any) -> Any:
        self.version += 1
        return base(self, *args, **kwargs)

    method.__name__ = name
    return method


for _name in (
    "__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert",
    "pop", "remove", "clear", "sort", "reverse",
):  # fmt: skip
    setattr(HeaderList, _name, _counting(_name))
del _name
