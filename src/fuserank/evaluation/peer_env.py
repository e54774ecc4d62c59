"""Peers whose libraries cannot share fuserank's pins, run in a venv built from a committed lock file.

RecTools (numpy < 2, pandas < 3, attrs < 24) cannot be installed beside fuserank (numpy 2,
polars 2). A peer of this kind lives in its own venv, built once from a fully pinned lock file
(`pip install --no-deps -r LOCK`, so the lock is the whole environment) under
`<cache>/peer_envs/<name>-<env_key>`, and reused while the lock file and the Python version are
unchanged. A worker script runs inside it in a subprocess; data goes both ways through .npz
files, which numpy of any version reads without pickle:

- request: the history rows as int64 (user, item) codes in event order (the order of
  data.split.sort_interactions, so equal timestamps keep fuserank's order), the users to rank,
  `n_items`, `k`, `seed` and the parameters as a JSON string;
- result: int64 (n_users, k) item codes best first, -1 padded; float32 scores; a JSON `meta`.

`read_result` turns the codes back into a schema.RANKED_LIST frame and drops any history item
that a worker let through, so the lists follow the same exclusion rule as every other peer and
fuserank's metrics score them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fuserank import atomic, schema
from fuserank.data.split import sort_interactions

# Marks a finished build: a venv without it (a build killed half way) is rebuilt.
_READY = "fuserank-peer-env-ready.json"


def env_key(lock_text: str, python_version: str | None = None) -> str:
    """16 hex digits of sha256 over the lock file's requirement lines and the Python major.minor.

    Comments, blank lines, surrounding spaces and line order do not change the key; a changed pin
    or another Python does.
    """
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = sorted({line.split("#", 1)[0].strip() for line in lock_text.splitlines()} - {""})
    return hashlib.sha256(json.dumps({"python": version, "lock": lines}).encode("utf-8")).hexdigest()[:16]


def check_lock(lock_text: str) -> list[str]:
    """The lock's requirement lines; raises ValueError unless each is pinned exactly (`name==version`)."""
    lines = [line.split("#", 1)[0].strip() for line in lock_text.splitlines()]
    lines = [line for line in lines if line]
    loose = [line for line in lines if "==" not in line or any(c in line for c in "<>~!*,;@")]
    if loose or not lines:
        raise ValueError("a peer lock file pins every package with '==' and nothing else; "
                         f"offending: {loose or 'empty'}")
    return lines


@dataclass(frozen=True)
class PeerEnv:
    """A built venv. python: its interpreter; key: env_key of its lock; built_seconds: the build's
    wall time (0 when an existing venv was reused)."""

    python: Path
    key: str
    built_seconds: float


def ensure_env(name: str, lock_path: Path, root: Path) -> PeerEnv:
    """The venv of lock file `lock_path` under `root`, built on first use (minutes: torch).

    Built at its final path (venv scripts record their own path) and marked finished only when
    pip succeeds, so a build that was killed half way is rebuilt. Concurrent callers wait on one
    lock.

    Args:
        name: the peer family, part of the folder name (e.g. "rectools").
        lock_path: pinned requirements (check_lock).
        root: where venvs live, e.g. <fuserank cache>/peer_envs.

    Raises:
        ValueError: the lock is not fully pinned. subprocess.CalledProcessError: venv or pip failed.
    """
    lock_text = Path(lock_path).read_text(encoding="utf-8")
    check_lock(lock_text)
    key = env_key(lock_text)
    final = Path(root) / f"{name}-{key}"
    python = final / "bin" / "python"
    if (final / _READY).exists():
        return PeerEnv(python, key, 0.0)
    start = time.perf_counter()
    Path(root).mkdir(parents=True, exist_ok=True)
    with atomic.file_lock(Path(root) / f".{name}-{key}.lock"):
        if (final / _READY).exists():
            return PeerEnv(python, key, 0.0)
        try:
            shutil.rmtree(final, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(final)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-input",
                            "-r", str(Path(lock_path).resolve())], check=True)
            atomic.write_json(final / _READY, {"lock": str(lock_path), "key": key})
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
    return PeerEnv(python, key, time.perf_counter() - start)


def request_arrays(history: pl.DataFrame, users: Sequence[str], item_ids: Sequence[str], k: int,
                   seed: int, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A worker's request (see the module docstring) as the arrays of its .npz file.

    Args:
        history: schema.INTERACTIONS rows the peer learns from; rows of items outside
            `item_ids` are dropped.
        users: users to rank for (a user needs history to get a list).
        item_ids: the catalog; an item's code is its position here.
        k: list length. seed: the peer's seed. params: one configuration (JSON-serialisable).

    Returns:
        user, item (int64, history rows in event order), n_items, score_users (int64), k, seed,
        params (a JSON string). User codes index the sorted ids of history users and `users`.
    """
    item_code = {item: code for code, item in enumerate(item_ids)}
    user_ids = sorted(set(history[schema.USER_ID].unique().to_list()) | set(users))
    user_code = {user: code for code, user in enumerate(user_ids)}
    rows = sort_interactions(history.filter(pl.col(schema.ITEM_ID).is_in(list(item_code))))
    return {
        "user": np.array([user_code[u] for u in rows[schema.USER_ID].to_list()], dtype=np.int64),
        "item": np.array([item_code[i] for i in rows[schema.ITEM_ID].to_list()], dtype=np.int64),
        "n_items": np.int64(len(item_ids)),
        "score_users": np.array([user_code[u] for u in users], dtype=np.int64),
        "k": np.int64(k), "seed": np.int64(seed),
        "params": np.array(json.dumps(dict(params), sort_keys=True)),
    }


def request_key(arrays: Mapping[str, np.ndarray], env: PeerEnv, worker_text: str) -> str:
    """sha256 hex of a request's arrays, the env's lock key and the worker's source: the name of
    its cached result (the same inputs to the same code give the same lists)."""
    digest = hashlib.sha256(json.dumps({"env": env.key, "worker": worker_text}).encode("utf-8"))
    for name in sorted(arrays):
        value = np.asarray(arrays[name])
        digest.update(name.encode("utf-8") + str(value.dtype).encode("utf-8") + np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def read_result(path: Path, users: Sequence[str], item_ids: Sequence[str],
                history: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A worker's result as (schema.RANKED_LIST frame, meta).

    Rows are the request's `users` in order; -1 codes are padding. History items a worker let
    through are dropped and the ranks renumbered 1..n, so every list excludes the user's history.
    """
    with np.load(path, allow_pickle=False) as result:
        codes, scores, meta = result["items"], result["scores"], json.loads(str(result["meta"]))
    if codes.shape[0] != len(users) or codes.shape != scores.shape:
        raise ValueError(f"worker result has shape {codes.shape} / {scores.shape} for {len(users)} users")
    if codes.max(initial=-1) >= len(item_ids):
        raise ValueError("worker result holds an item code outside the catalog")
    keep = codes >= 0
    catalog = np.asarray(item_ids, dtype=object)
    frame = pl.DataFrame(
        {schema.USER_ID: np.repeat(np.asarray(users, dtype=object), keep.sum(axis=1)).tolist(),
         schema.ITEM_ID: catalog[codes[keep]].tolist(),
         schema.SCORE: scores[keep].astype(np.float32)},
        schema={schema.USER_ID: pl.String, schema.ITEM_ID: pl.String, schema.SCORE: pl.Float32},
    ).with_row_index("__order")
    seen = history.select(schema.USER_ID, schema.ITEM_ID).unique()
    kept = frame.join(seen, on=[schema.USER_ID, schema.ITEM_ID], how="anti").sort("__order")
    meta["history_items_dropped"] = frame.height - kept.height
    rank = (pl.int_range(pl.len()).over(schema.USER_ID) + 1).cast(pl.Int32)
    ranked = kept.drop("__order").with_columns(rank.alias(schema.RANK))
    return ranked.select(list(schema.RANKED_LIST)).sort(schema.USER_ID, schema.RANK), meta


def recommend_in_env(env: PeerEnv, worker: Path, params: Mapping[str, Any], history: pl.DataFrame,
                     users: Sequence[str], item_ids: Sequence[str], k: int, seed: int,
                     cache_dir: Path | None = None, timeout_s: float | None = None,
                     ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Fit the worker's peer on `history` inside `env` and rank `users`: (ranked list, meta).

    With `cache_dir`, the worker's result file is kept there under request_key and reused by a
    later call with the same inputs (meta["from_cache"] says which happened); its meta keeps the
    fit's own wall time.

    Raises:
        RuntimeError: the worker failed (its stderr's tail is in the message).
    """
    worker = Path(worker)
    arrays = request_arrays(history, users, item_ids, k, seed, params)
    if cache_dir is None:
        return _run_worker(env, worker, arrays, users, item_ids, history, None, timeout_s)
    key = request_key(arrays, env, worker.read_text(encoding="utf-8"))
    cached = Path(cache_dir) / f"{key}.npz"
    # A second process asking for the same fit waits for the first and reads its result.
    with atomic.file_lock(Path(cache_dir) / f".{key}.lock"):
        if cached.exists():
            ranked, meta = read_result(cached, list(users), item_ids, history)
            return ranked, meta | {"from_cache": True}
        return _run_worker(env, worker, arrays, users, item_ids, history, cached, timeout_s)


def _run_worker(env: PeerEnv, worker: Path, arrays: Mapping[str, np.ndarray], users: Sequence[str],
                item_ids: Sequence[str], history: pl.DataFrame, cached: Path | None,
                timeout_s: float | None) -> tuple[pl.DataFrame, dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="fuserank-peer-") as folder:
        request, result = Path(folder) / "request.npz", Path(folder) / "result.npz"
        np.savez(request, **arrays)
        # The worker's own numpy/torch come from its venv: nothing of ours may leak onto its path.
        environ = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
        done = subprocess.run([str(env.python), str(worker.resolve()), str(request), str(result)], env=environ,
                              capture_output=True, text=True, timeout=timeout_s, cwd=folder)
        if done.returncode != 0:
            raise RuntimeError(f"peer worker {worker.name} failed ({done.returncode}): {done.stderr[-3000:]}")
        ranked, meta = read_result(result, list(users), item_ids, history)
        if cached is not None:
            atomic.write_atomic(cached, lambda tmp: shutil.copyfile(result, tmp))
    return ranked, meta | {"from_cache": False}
