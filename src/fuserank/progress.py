"""Progress bars and one closing line per long step, all switched off by `quiet`.

Output goes to stderr so stdout stays clean for results. The quiet flag is process-wide
because it is a property of the terminal session, not of any computation.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn progress bars and step lines off (True) or on (False)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def bar(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap `iterable` in a tqdm bar unless quiet."""
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, disable=_quiet, leave=False, file=sys.stderr)


@contextmanager
def counter(desc: str, total: int | None = None, unit: str = "it") -> Iterator[Any]:
    """A tqdm bar to `update(n)` by hand (e.g. from a training callback); disabled when quiet."""
    from tqdm.auto import tqdm

    with tqdm(desc=desc, total=total, unit=unit, disable=_quiet, leave=False, file=sys.stderr) as progress_bar:
        yield progress_bar


class Step:
    """Collects the size description printed when a step ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.size = ""

    def done(self, size: str) -> None:
        """Describe what the step produced, e.g. "1,682 items x 384-d, 2.6 MB"."""
        self.size = size


@contextmanager
def step(name: str) -> Iterator[Step]:
    """Time a step and print `name: <seconds> s, <size>` when it ends (unless quiet)."""
    s = Step(name)
    start = time.perf_counter()
    yield s
    seconds = time.perf_counter() - start
    if not _quiet:
        tail = f", {s.size}" if s.size else ""
        print(f"{name}: {seconds:.1f} s{tail}", file=sys.stderr, flush=True)


def megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"
