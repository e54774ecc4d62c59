"""Config fields that declare their own check: a range (`ranged`) or a set of choices (`one_of`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override names an unknown key, or holds a value of the wrong type
    or out of its range."""


def ranged(default: Any = dataclasses.MISSING, interval: str = "", *,
           factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field whose value must lie in `interval`, e.g. "[1, inf)" or "(0, 1]".

    The range lives with the field, so a new numeric key cannot miss its check (`check_values`).
    A tuple or mapping value is checked element by element; None (an optional key left unset)
    is not checked.

    Args:
        default: the default value (omit when `factory` gives it).
        interval: closed "[" "]" or open "(" ")" bounds; "inf" for no bound.
        factory: a default factory, for mutable defaults such as dicts.
    """
    return _declared({"range": interval}, default, factory)


def one_of(default: Any = dataclasses.MISSING, choices: tuple[str, ...] = (), *,
           factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field whose value (each element of a tuple) must be one of `choices`."""
    return _declared({"choices": tuple(choices)}, default, factory)


def _declared(metadata: dict[str, Any], default: Any, factory: Callable[[], Any] | None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)
