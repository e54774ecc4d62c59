"""The export job: the edge that finds the run, loads its recorded config and booster, rebuilds
stage 1 on every interaction known now, and writes ranked lists, assignments and a manifest.

Files are written into a temporary folder beside the output folder and moved into place at the
end, so a failure never leaves a partial export behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from fuserank import atomic, registry, schema, tracking
from fuserank.config import ConfigError, DaskConfig, RunConfig, from_dict
from fuserank.data.cutoffs import Cutoffs, build_cutoffs
from fuserank.encoders.content import encode_content
from fuserank.jobs.arms import (
    ExportError,
    Server,
    arm_users,
    assign_arms,
    build_manifest,
    config_digest,
    export_batches,
    model_version,
    plan_arms,
    popular_server,
    popularity_pool,
    ranker_lists,
    retrieval_lists,
)
from fuserank.jobs.distributed import dask_client
from fuserank.jobs.distributed_export import export_batches_dask, export_parts, pool_from_parts, whole_history
from fuserank.jobs.distributed_frames import kept, send_in_slices
from fuserank.jobs.train_evaluate import prepare, prepare_on_workers, workers_can_read
from fuserank.pipeline import fit_stage
from fuserank.progress import bar, is_quiet, step
from fuserank.ranking.ranker import MODEL_FILE, load_ranker

LISTS = "ranked_lists"
ASSIGNMENTS = "assignments"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RecordedRun:
    """What a trained run recorded: its id, resolved config, booster folder and hashes, and the
    registered model version whose booster it serves (None: the run's own ranker_text/)."""

    run_id: str
    config: RunConfig
    config_hash: str
    ranker_dir: Path
    model_version: str
    data_hash: str | None
    booster_sha256: str = ""
    registered: dict[str, str | None] | None = None


def pick_best_run(runs: Sequence[dict], metric: str, minimize: bool = False) -> str:
    """The finished run with the best value of `metric` (ties: smallest run id).

    Args:
        runs: dicts with run_id, status and metrics (tracking.search_runs).

    Raises:
        ExportError: no finished run records `metric`.
    """
    scored = [r for r in runs if r["status"] == "FINISHED" and metric in r["metrics"]]
    if not scored:
        raise ExportError(f"no finished run records metric {metric!r}")
    sign = 1.0 if minimize else -1.0
    return min(scored, key=lambda r: (sign * r["metrics"][metric], r["run_id"]))["run_id"]


def find_run(config: RunConfig, run_id: str | None, experiment: str | None, metric: str, minimize: bool) -> str:
    """`run_id` when given (checked to exist; a `models:/` URI names the run that logged that
    version), else the best run of `experiment` by `metric`."""
    if run_id and registry.is_model_uri(run_id):
        return _resolve_model(config, run_id).run_id
    if run_id:
        try:
            (run,) = tracking.search_runs(config.tracking, run_ids=[run_id])
        except Exception as err:  # mlflow's own exception types stay inside tracking.py
            raise ExportError(f"run {run_id!r} not found in {config.tracking.tracking_uri}: {err}") from err
        return run["run_id"]
    name = experiment or config.tracking.experiment
    try:
        runs = tracking.search_runs(config.tracking, experiment=name)
    except ValueError as err:
        raise ExportError(str(err)) from err
    best = pick_best_run(runs, metric, minimize)
    print(f"fuserank export: best run of {name!r} by {metric}: {best}", file=sys.stderr)
    return best


def load_recorded_run(config: RunConfig, run_id: str, folder: Path) -> RecordedRun:
    """Download a run's config.yaml and ranker_text/ into `folder` and read them (nothing pickled)."""

    if is_quiet():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    config_file = tracking.download_artifact(config.tracking, run_id, "config.yaml", folder)
    ranker_dir = tracking.download_artifact(config.tracking, run_id, "ranker_text", folder)
    if config_file is None or ranker_dir is None:
        raise ExportError(f"run {run_id} lacks the config.yaml or ranker_text/ artifact of a trained run")
    text = config_file.read_text(encoding="utf-8")
    try:
        recorded = from_dict(RunConfig, yaml.safe_load(text) or {}, where=f"run {run_id} config.yaml")
    except ConfigError as err:
        raise ExportError(str(err)) from err
    (run,) = tracking.search_runs(config.tracking, run_ids=[run_id])
    booster_text = (ranker_dir / MODEL_FILE).read_text(encoding="utf-8")
    versions = registry.run_versions(config.tracking, run_id)
    registered = None if not versions else {"name": versions[0].name, "version": versions[0].version,
                                            "alias": None, "uri": versions[0].uri}
    return RecordedRun(run_id, recorded, config_digest(text), ranker_dir, model_version(booster_text),
                       run["tags"].get("data_hash"), _sha256(booster_text), registered)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _resolve_model(config: RunConfig, uri: str) -> registry.ModelVersionRef:
    try:
        return registry.resolve_model(config.tracking, uri)
    except registry.RegistryError as err:
        raise ExportError(str(err)) from err


def load_registered_run(config: RunConfig, uri: str, folder: Path) -> tuple[RecordedRun, RecordedRun]:
    """A registered model version (`models:/NAME@ALIAS` or `models:/NAME/N`) as a recorded run:
    the config of the run that logged it, and the booster and feature list of the version itself.
    Returns (the run as recorded, the run serving the version).

    A version that fuserank did not log (no feature list in its MLmodel) serves its run's
    ranker_text/ instead, with a note on stderr.
    """
    ref = _resolve_model(config, uri)
    run = load_recorded_run(config, ref.run_id, folder / "run")
    ranker_dir = registry.download_ranker(config.tracking, ref, folder / "model")
    registered = {"name": ref.name, "version": ref.version, "alias": ref.alias, "uri": ref.uri}
    if ranker_dir is None:
        print(f"fuserank export: {uri} (version {ref.version}) has no fuserank feature list; serving the "
              f"ranker_text/ of its run {ref.run_id}", file=sys.stderr)
        return run, dataclasses.replace(run, registered=registered)
    booster_text = (ranker_dir / MODEL_FILE).read_text(encoding="utf-8")
    return run, dataclasses.replace(run, ranker_dir=ranker_dir, model_version=model_version(booster_text),
                                    booster_sha256=_sha256(booster_text), registered=registered)


def read_user_list(path: Path) -> list[str]:
    """User ids from a Parquet/CSV file with a user_id column, or a text file with one id a line.

    Order is kept, blank lines are skipped, duplicates are removed (first kept).
    """
    path = Path(path)
    if path.suffix in (".parquet", ".csv"):
        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema=False)
        if schema.USER_ID not in frame.columns:
            raise ExportError(f"{path}: no column {schema.USER_ID!r}; it has {frame.columns}")
        values = frame[schema.USER_ID].cast(pl.String).drop_nulls().to_list()
    else:
        values = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return list(dict.fromkeys(v for v in values if v))


def _shared_history(config: RunConfig, main: RunConfig, cutoffs: Cutoffs, history: pl.DataFrame
                    ) -> pl.DataFrame | None:
    """What a run's sequence model continues from when it serves: the shared history of the
    run's own cut-offs over `history` (those of the main run when the split is the same); None
    without a sequence model."""
    if not config.sequence.enabled:
        return None
    own = cutoffs if config.split == main.split else build_cutoffs(history, config.split)
    return own.test.shared_history


def export(
    config: RunConfig,
    out: Path | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
    metric: str = "test_ndcg_at_10",
    minimize: bool = False,
    users_file: Path | None = None,
) -> tuple[dict, Path]:
    """Export ranked lists of a run (or the best run of an experiment) for an A/B test.

    Args:
        config: this command's config: `tracking` names the store, `export` the arms and output;
            data, stages and seed come from the run's recorded config.
        out: output folder (default <output_dir>/export-<run id>); replaced as a whole.
        run_id / experiment / metric / minimize: which run (see `find_run`); a `models:/` URI
            makes arm "run" serve that registered version. Without any of them, when every arm
            names its own run or model version, the first of those supplies data and settings.
        users_file: users to export (see `read_user_list`); default every user in the data.

    Returns:
        (manifest, output folder).
    """

    settings = config.export
    if settings.format not in ("parquet", "csv"):
        raise ExportError(f"export.format must be 'parquet' or 'csv', got {settings.format!r}")
    plans = plan_arms(settings.arms, settings.shares, settings.holdout)
    if run_id and registry.is_model_uri(run_id):  # arm "run" serves that registered version
        plans = tuple(dataclasses.replace(p, source=run_id) if p.source == "run" else p for p in plans)
    elif not run_id and not experiment and not any(p.source in ("run", "retrieval") for p in plans):
        # Every arm names its own model: the data and stage settings come from the first of them.
        run_id = next((p.source for p in plans if p.source.startswith(("run:", "models:/"))), None)
        run_id = run_id.removeprefix("run:") if run_id else None
    # Before any work: the export is staged in its parent folder (the output folder by default).
    atomic.check_writable(Path(out).parent if out else Path(config.output_dir))
    main_id = find_run(config, run_id, experiment, metric, minimize)
    out = Path(out) if out else Path(config.output_dir) / f"export-{main_id}"
    with tempfile.TemporaryDirectory(prefix="fuserank-export-") as scratch:
        runs = {main_id: load_recorded_run(config, main_id, Path(scratch) / main_id)}
        arm_runs = {"run": runs[main_id], "retrieval": runs[main_id]}  # arm source -> what it serves
        for plan in plans:
            other = plan.source.removeprefix("run:")
            if plan.source.startswith("run:") and other not in runs:
                find_run(config, other, None, metric, minimize)
                runs[other] = load_recorded_run(config, other, Path(scratch) / other)
            if plan.source.startswith("run:"):
                arm_runs[plan.source] = runs[other]
            elif registry.is_model_uri(plan.source) and plan.source not in arm_runs:
                folder = Path(scratch) / f"model-{len(arm_runs)}"
                recorded, arm_runs[plan.source] = load_registered_run(config, plan.source, folder)
                runs.setdefault(recorded.run_id, recorded)
        main = runs[main_id]
        k, exclude = settings.top_k, settings.exclude_seen
        with contextlib.ExitStack() as cluster:
            # On a cluster, stage 1 and each arm's lists are built on a worker (`ArmLists`).
            client = cluster.enter_context(dask_client(config.dask)) if config.dask.enabled else None
            # The workers read the data when every run could, sharing the main run's split.
            spread = client is not None and users_file is None and all(
                workers_can_read(r.config) and r.config.split == main.config.split for r in runs.values())
            source = worker_source(client, main.config, config.dask) if spread else driver_source(main.config)
            data_hash = source.data_hash
            for run in runs.values():
                if run.data_hash and run.data_hash != data_hash:
                    print(f"fuserank export: run {run.run_id} was trained on data {run.data_hash[:12]}; "
                          f"exporting with the data known now, {data_hash[:12]}", file=sys.stderr)
            item_ids = source.items[schema.ITEM_ID].to_list()
            build = ArmLists(client, source.history, item_ids, k, exclude)
            servers: dict[str, Server] = {}
            stages: dict[str, object] = {}
            for plan in plans:
                if plan.source in ("holdout",):
                    continue
                if plan.source == "popular":
                    servers[plan.name] = popular_server(source.pool, k)
                    continue
                run = arm_runs[plan.source]
                if run.run_id not in stages:
                    content = source.content if run.run_id == main.run_id else source.content_for(run.config)
                    stages[run.run_id] = build.stage(run.config, content, source.shared_history(run.config))
                stage = stages[run.run_id]
                if plan.source == "retrieval":
                    servers[plan.name] = Server(run.run_id, "retrieval-only", build.retrieval(stage, run.config))
                else:
                    servers[plan.name] = Server(run.run_id, run.model_version, booster_sha256=run.booster_sha256,
                                                registered=run.registered,
                                                lists=build.ranked(stage, run.config, load_ranker(run.ranker_dir),
                                                                   source.llm))
            facts = {
                "run_id": main_id,
                "config_hash": main.config_hash,
                "config_hashes": {r.run_id: r.config_hash for r in runs.values()},
                "data_hash": data_hash,
                "items_hash": source.items_hash,
                "trained_data_hashes": {r.run_id: r.data_hash for r in runs.values()},
                "salt": settings.salt,
                "shares": dict(settings.shares),
                "holdout": settings.holdout,
                "top_k": k,
                "exclude_seen": exclude,
                "format": settings.format,
                "cold_start_fallback": "most-popular items of the whole catalog (interaction count, ties by item_id)",
            }
            if spread:  # every user, assigned and listed where their interactions lie
                built = export_parts(client, source.parts, plans, settings.salt, servers, source.pool, k, exclude,
                                     settings.batch_users)
                batches, n_batches, assignments, users, unknown = (built.lists, built.batches, built.assignments,
                                                                   built.users, [])
            else:
                batches, n_batches, assignments, users, unknown = _driver_batches(
                    client, source, plans, servers, users_file, settings)
            manifest = write_export(out, bar(batches, desc="export", total=n_batches, unit="batch"), assignments,
                                    users, plans, servers, facts, unknown, settings.format)
    return manifest, out


def _driver_batches(client: Any, source: Source, plans, servers: dict[str, Server], users_file: Path | None,
                    settings: Any) -> tuple[Iterable[pl.DataFrame], int, Iterable[pl.DataFrame], dict, list[str]]:
    """The lists, their batch count, the assignments, users per arm and unknown users, from the
    users known on the driver (every user, or those of `users_file`); each batch built on a
    worker when there is a client."""
    history = source.history
    known = set(history[schema.USER_ID].unique().to_list())
    wanted = read_user_list(users_file) if users_file else sorted(known)
    unknown = [u for u in wanted if u not in known]
    if unknown:
        shown = ", ".join(unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        print(f"fuserank export: {len(unknown):,} user id(s) not in the data get the cold-start "
              f"(most-popular) list: {shown}", file=sys.stderr)
    assignments = assign_arms(wanted, plans, settings.salt).with_columns(
        (~pl.col(schema.USER_ID).is_in(list(known))).alias(schema.COLD_START))
    served = assignments.filter(pl.col(schema.ARM).is_in(list(servers)))
    seen = history.select(schema.USER_ID, schema.ITEM_ID)
    k, exclude, batch_users = settings.top_k, settings.exclude_seen, settings.batch_users
    if client is not None:  # each batch scored on a worker, written here in order
        batches = export_batches_dask(client, served, servers, seen, source.pool, k, exclude, batch_users)
    else:
        batches = export_batches(served, servers, seen, source.pool, k, exclude, batch_users,
                                 settings.parallel_batches)
    return (batches, -(-served.height // batch_users), assignments.iter_slices(batch_users), arm_users(assignments),
            unknown)


@dataclass(frozen=True)
class Source:
    """The data an export serves from, read on the driver (`driver_source`) or by the workers
    (`worker_source`).

    Attributes:
        items: the catalog; history: every known interaction, sorted (schema.INTERACTIONS): a
            frame on the driver, or a future of it on a worker; parts: the interactions in user
            partitions when the workers read them, else None.
        data_hash, items_hash: as train-evaluate records them.
        content: the main run's content embeddings; pool: `arms.popularity_pool` of the history.
        content_for, shared_history: another run's content embeddings, and what a run's
            sequence model continues from (None without one).
        llm: the main run's LLM signals (None without).
    """

    items: pl.DataFrame
    history: Any
    parts: Any
    data_hash: str
    items_hash: str
    content: dict
    pool: pl.DataFrame
    content_for: Callable[[RunConfig], dict]
    shared_history: Callable[[RunConfig], Any]
    llm: Any = None


def driver_source(main: RunConfig) -> Source:
    """Everything loaded and split here (`train_evaluate.prepare`)."""
    data = prepare(main)
    history = data.cutoffs.interactions.select(list(schema.INTERACTIONS))
    return Source(data.items, history, None, data.tags["data_hash"], data.tags["items_hash"], data.content,
                  popularity_pool(history, data.items[schema.ITEM_ID].to_list()),
                  lambda config: _content_for(config, data.tags["data_hash"]),
                  lambda config: _shared_history(config, main, data.cutoffs, history), data.llm)


def worker_source(client: Any, main: RunConfig, dask: DaskConfig) -> Source:
    """The interactions read by the workers into user partitions in user_id order
    (`train_evaluate.prepare_on_workers`, `dask.user_partitions` of them); the driver reads the
    items and gets back the data hash, the training items (whose statistics standardise the
    content embeddings) and the item counts."""
    data = prepare_on_workers(client, dataclasses.replace(main, dask=dask), by_user=True)
    item_ids = data.items[schema.ITEM_ID].to_list()

    def content_for(config: RunConfig) -> dict:
        return encode_content(data.items, data.train_items, config)[0]

    return Source(data.items, whole_history(client, data.parts), data.parts, data.tags["data_hash"],
                  data.tags["items_hash"], data.content, pool_from_parts(client, data.parts, item_ids), content_for,
                  lambda config: None)


class ArmLists:
    """Stage 1 and the lists of the arms that serve a run, built here, or on a worker of a Dask
    `client` so that the driver holds neither: there stage 1 is fitted on a worker from the
    history sent to the cluster once, each arm's `lists` is a `distributed.Future` of the
    callable, held on the cluster, and `distributed_export.export_batches_dask` hands it to
    each batch's task.

    Args:
        client: a connected `distributed.Client`, or None to build everything here.
        history: every known interaction (schema.INTERACTIONS); with a client, also a future
            of it already on the cluster (distributed_export.whole_history).
        item_ids: the catalog.
        k, exclude_seen: the export's list length and whether seen items are left out.
    """

    def __init__(self, client: Any, history: Any, item_ids: Sequence[str], k: int, exclude_seen: bool) -> None:
        self.client, self.k, self.exclude_seen = client, k, exclude_seen
        if client is None:
            self.history, self.item_ids = history, list(item_ids)
        else:
            on_cluster = not isinstance(history, pl.DataFrame)
            self.history = history if on_cluster else send_in_slices(client, history)
            self.item_ids = kept(client, list(item_ids))

    def _run(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.client is None:
            return func(*args, **kwargs)
        return self.client.submit(func, *args, **kwargs, pure=False)

    def stage(self, config: RunConfig, content: dict, shared_history: pl.DataFrame | None) -> Any:
        """Stage 1 of `config` fitted on the history (`pipeline.fit_stage`)."""
        if self.client is not None:
            content = kept(self.client, dict(content))
            if shared_history is not None:
                shared_history = send_in_slices(self.client, shared_history)
        return self._run(fit_stage, config, self.history, self.item_ids, content, shared_history)

    def retrieval(self, stage: Any, config: RunConfig) -> Any:
        """The retrieval-only lists (`arms.retrieval_lists`) of a `stage` from `self.stage`."""
        return self._lists(retrieval_lists, stage, self.history, config.retrieval, self.k, self.exclude_seen,
                           config.split.protocol)

    def ranked(self, stage: Any, config: RunConfig, ranker: Any, llm: Any) -> Any:
        """The two-stage lists (`arms.ranker_lists`) of a `stage` from `self.stage`."""
        return self._lists(ranker_lists, config, stage, ranker, self.history, self.k, self.exclude_seen, llm=llm)

    def _lists(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        lists = self._run(func, *args, **kwargs)
        if self.client is not None:
            # On every worker, as a broadcast would put them: a worker that dies then loses no
            # input (what was scattered to it alone could not be computed again).
            self.client.replicate([lists])
        return lists


def _content_for(config: RunConfig, data_hash: str) -> dict:
    """Content embeddings under another run's encoder settings (cached by content hash on disk)."""

    data = prepare(config)
    if data.tags["data_hash"] != data_hash:
        raise ExportError("arms backed by different runs must read the same data set")
    return data.content


def write_export(out: Path, batches: Iterable[pl.DataFrame], assignments: Iterable[pl.DataFrame],
                 users: Mapping[str, tuple[int, int]], plans, servers, facts: dict, unknown: Sequence[str],
                 fmt: str) -> dict:
    """Write lists and assignments (each streamed by batch, a Parquet row group each) and the
    manifest into a temp folder, then move it to `out`.

    Args:
        batches: schema.EXPORT_LIST frames in user_id order; assignments: schema.ASSIGNMENTS
            frames in user_id order; users: (users, cold-start users) per arm (`arms.arm_users`).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.sweep_stale(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=atomic.temp_suffix(), dir=out.parent))
    try:
        lists_name, assign_name = f"{LISTS}.{fmt}", f"{ASSIGNMENTS}.{fmt}"
        with step("write ranked lists") as s:
            rows: dict[str, int] = {}
            _write_frames(tmp / lists_name, _counted(batches, rows), schema.EXPORT_LIST, fmt)
            s.done(f"{sum(rows.values()):,} rows")
        _write_frames(tmp / assign_name, assignments, schema.ASSIGNMENTS, fmt)
        files = {name: {"sha256": _file_sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
                 for name in (lists_name, assign_name)}
        files[lists_name]["rows"] = int(sum(rows.values()))
        files[assign_name]["rows"] = sum(n for n, _ in users.values())
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest = build_manifest(plans, servers, users, rows, files, facts, unknown, created)
        atomic.write_json(tmp / MANIFEST, manifest)
        _replace_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write_frames(path: Path, frames: Iterable[pl.DataFrame], columns: Mapping[str, Any], fmt: str) -> None:
    """Stream frames of `columns` (a schema dict) into one file, a Parquet row group per frame."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow_schema = pa.schema([(c, pa.string() if t == pl.String else pa.bool_() if t == pl.Boolean else
                               pa.int32() if t == pl.Int32 else pa.float32()) for c, t in columns.items()])
    if fmt == "parquet":
        writer = pq.ParquetWriter(path, arrow_schema, compression="zstd")

        def write(frame: pl.DataFrame) -> None:
            writer.write_table(frame.to_arrow().cast(arrow_schema), row_group_size=max(frame.height, 1))

        try:
            # One thread encodes and writes a frame (Arrow releases the GIL) while the next is
            # built; frames still reach the file one at a time, in order.
            with ThreadPoolExecutor(max_workers=1) as writing:
                pending = None
                for frame in frames:
                    if pending is not None:
                        pending.result()  # a failed write stops the export here
                    pending = writing.submit(write, frame)
                if pending is not None:
                    pending.result()
        finally:
            writer.close()  # after the thread is done: leaving the `with` waits for it
    else:
        with open(path, "wb") as handle:
            handle.write((",".join(columns) + "\n").encode("utf-8"))
            for frame in frames:
                frame.write_csv(handle, include_header=False)


def _counted(frames: Iterable[pl.DataFrame], rows: dict[str, int]) -> Iterator[pl.DataFrame]:
    """`frames` unchanged, adding each one's rows per arm to `rows` as it passes."""
    for frame in frames:
        _count(rows, frame)
        yield frame


def _count(rows: dict[str, int], frame: pl.DataFrame) -> None:
    for arm, n in frame.group_by(schema.ARM).len().iter_rows():
        rows[arm] = rows.get(arm, 0) + n


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` folder to `out`; an existing `out` is swapped out and then removed."""
    for path in tmp.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    # mkdtemp makes the folder 0700; the export is meant to be read by others, like any new folder.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
