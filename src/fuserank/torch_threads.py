"""Run a block of torch work on a set number of CPU threads, restoring the caller's setting."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Inside the block torch uses `n` CPU threads; afterwards the previous count again."""
    import torch  # heavy: imported only by the code that runs a model

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
