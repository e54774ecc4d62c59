"""Shared test set-up."""

from __future__ import annotations

import pytest

from fuserank.progress import set_quiet


@pytest.fixture(autouse=True)
def progress_on():
    """`fuserank ... --quiet` switches progress output off process-wide; no test inherits that."""
    set_quiet(False)
    yield
    set_quiet(False)
