"""Ending a Dask worker's process while it runs a given task, for tests of what survives it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any


def kill_a_worker_while(client: Any, key_part: str, killed: list[str], delay_s: float = 0.0,
                        pick: Callable[[str, list[str]], str] | None = None, within_s: float = 120) -> None:
    """Wait until a worker runs a task whose key contains `key_part`, wait `delay_s`, then end a
    worker's process with `os._exit` (its nanny starts a new worker): that worker, or
    `pick(that worker, every worker)`. The ended worker's address is appended to `killed`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for worker, keys in client.processing().items():
            if any(key_part in str(key) for key in keys):
                time.sleep(delay_s)
                victim = worker if pick is None else pick(worker, list(client.scheduler_info()["workers"]))
                killed.append(victim)
                try:  # runs in the worker's event loop, beside the busy task thread
                    client.run(os._exit, 1, workers=[victim])
                except Exception:  # noqa: BLE001, S110 - the worker dies before it can answer
                    pass
                return
        time.sleep(0.02)


def killer(client: Any, key_part: str, killed: list[str], **kwargs: Any) -> threading.Thread:
    """`kill_a_worker_while` in a started daemon thread."""
    thread = threading.Thread(target=kill_a_worker_while, args=(client, key_part, killed), kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def within(seconds: float, func: Callable[[], Any]) -> Any:
    """`func()`, failing the test if it has not returned after `seconds` (it is left running in a
    daemon thread: a hung Dask call cannot be interrupted)."""
    out: dict[str, Any] = {}

    def call() -> None:
        try:
            out["value"] = func()
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"still running after {seconds:.0f} s")
    if "error" in out:
        raise out["error"]
    return out["value"]
