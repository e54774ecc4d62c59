"""The train-and-evaluate job: the edge that reads data, fetches weights, writes outputs and
records the MLflow run around the pure protocol in protocol.py."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from fuserank import atomic, provenance, registry, schema, tracking
from fuserank.config import RunConfig, cache_dir, flatten, to_dict
from fuserank.data import movielens
from fuserank.data.catalog import load_catalog, load_items
from fuserank.data.cutoffs import Cutoffs
from fuserank.data.sources import resolve
from fuserank.encoders.base import Embeddings
from fuserank.encoders.content import encode_content
from fuserank.evaluation import plots
from fuserank.evaluation.ablation import format_table, run_ablation
from fuserank.evaluation.plots import gain_by_group
from fuserank.evaluation.protocol import ProtocolResult, make_cutoffs, run_protocol
from fuserank.evaluation.slices import format_slices
from fuserank.jobs.distributed import dask_client, n_workers
from fuserank.jobs.distributed_cutoffs import CutoffShares, cutoff_shares, training_items
from fuserank.jobs.distributed_data import UserParts, read_user_parts
from fuserank.jobs.distributed_frames import HeldFrame
from fuserank.jobs.distributed_protocol import run_protocol_on_shares
from fuserank.progress import step
from fuserank.ranking.llm_features import VIEWS as LLM_VIEWS
from fuserank.ranking.llm_features import LLMSignals, prepare_llm
from fuserank.ranking.ranker import save_ranker

HEADLINE = (
    "n_test_users",
    "test_stage1_recall",
    "test_ndcg_at_10",
    "test_recall_at_10",
    "test_mrr_at_10",
    "test_popular_ndcg_at_10",
    "test_popular_recall_at_10",
    "test_retrieval_ndcg_at_10",
    "test_retrieval_recall_at_10",
    "n_test_cold_users",
    "test_cold_ndcg_at_10",
)


def load_data(config: RunConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Items and interactions of the configured dataset, validated (never modified on disk)."""
    data = config.data
    if data.dataset in ("movielens-100k", "movielens-1m"):
        reference, loader = {
            "movielens-100k": (config.sources.movielens_100k, movielens.load_movielens_100k),
            "movielens-1m": (config.sources.movielens_1m, movielens.load_movielens_1m),
        }[data.dataset]
        with step(f"fetch {data.dataset}") as s:
            folder = resolve(reference, cache_dir(config.sources))
            s.done(str(folder.name))
        with step(f"load {data.dataset}") as s:
            items, interactions = loader(folder)
            s.done(f"{items.height:,} items, {interactions.height:,} interactions")
        return items, interactions
    if data.dataset == "catalog":
        if not data.items_path or not data.interactions_path:
            raise ValueError("data.dataset=catalog needs data.items_path and data.interactions_path")
        with step("load catalog") as s:
            items, interactions = load_catalog(Path(data.items_path), Path(data.interactions_path))
            s.done(f"{items.height:,} items, {interactions.height:,} interactions")
        return items, interactions
    raise ValueError(f"data.dataset: unknown dataset {data.dataset!r}; use 'movielens-100k', 'movielens-1m' or 'catalog'")


def frame_digest(frame: pl.DataFrame) -> str:
    """sha256 of a frame's CSV form: stable across runs and library versions."""
    return hashlib.sha256(frame.write_csv().encode("utf-8")).hexdigest()


def write_outputs(result: ProtocolResult, config: RunConfig, folder: Path, run_id: str | None) -> dict[str, Path]:
    """Write ranked lists, metrics, per-user metrics, model and resolved config; returns the paths."""
    paths = {
        "ranked_lists": write_frame(folder / "ranked_lists.parquet", result.ranked),
        "per_user_metrics": write_per_user(folder / "per_user_metrics.parquet", result),
        "metrics": atomic.write_json(folder / "metrics.json", {"run_id": run_id, **result.metrics}),
        "config": atomic.write_text(folder / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=True)),
    }
    save_ranker(result.ranker, folder / "model")
    paths["model"] = folder / "model" / "model.txt"
    paths["features"] = folder / "model" / "features.json"
    return paths


def write_per_user(path: Path, result: ProtocolResult) -> Path:
    """The per-user metrics: `result.per_user`, or each system's rows a partition at a time
    where they are held on the workers (`result.per_user_rows`)."""
    if result.per_user_rows is None:
        return atomic.write_parquet(path, result.per_user)
    return write_frames(path, (part.with_columns(pl.lit(system).alias("system"))
                               for system, rows in result.per_user_rows.items()
                               for part in ([rows] if isinstance(rows, pl.DataFrame) else rows.frames())),
                        empty=result.per_user)


def write_frame(path: Path, frame: pl.DataFrame | HeldFrame) -> Path:
    """`atomic.write_parquet` of a frame here, or of one left on the workers, streamed a
    partition at a time (`write_frames`) so that the driver never holds it whole."""
    if isinstance(frame, pl.DataFrame):
        return atomic.write_parquet(path, frame)
    return write_frames(path, frame.frames(), empty=schema.empty_frame(schema.RANKED_LIST))


def write_frames(path: Path, frames: Iterable[pl.DataFrame], empty: pl.DataFrame) -> Path:
    """Frames of one schema into one Parquet file, a row group each, atomically (`empty`: what
    to write, its schema, when there is no frame)."""
    def stream(tmp: Path) -> None:
        import pyarrow.parquet as pq

        writer = None
        try:
            for part in frames:
                table = part.to_arrow()
                writer = writer or pq.ParquetWriter(tmp, table.schema, compression="zstd", write_statistics=False)
                writer.write_table(table, row_group_size=max(part.height, 1))
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            empty.clear().write_parquet(tmp, compression="zstd", statistics=False)

    return atomic.write_atomic(path, stream)


@dataclass(frozen=True)
class Prepared:
    """Data, split and content embeddings shared by train-evaluate and ablate."""

    items: pl.DataFrame
    cutoffs: Cutoffs
    content: dict[str, Embeddings]
    media: dict[str, float]
    tags: dict[str, str]
    llm: LLMSignals | None = None  # LLM signals when llm.enabled (llm_features.prepare_llm)


def prepare(config: RunConfig) -> Prepared:
    """Load and validate the data, split it, encode every modality; tags for the run record."""
    items, interactions = load_data(config)
    cutoffs = make_cutoffs(interactions, config)
    train = cutoffs.valid.history
    content, media = encode_content(items, train[schema.ITEM_ID].unique(), config)
    earliest = cutoffs.labels[-1].history if cutoffs.labels else train
    llm = prepare_llm(items, train, earliest, content["text"], config)
    if llm is not None:  # extra content views: fused by their fusion weight, features always
        content.update({name: view for name, view in llm.views().items() if name in LLM_VIEWS})
    tags = run_tags(config, frame_digest(interactions.select(list(schema.INTERACTIONS))), items)
    if llm is not None:
        tags["llm_model"] = config.llm.model
    return Prepared(items, cutoffs, content, media, tags, llm)


def run_tags(config: RunConfig, data_hash: str, items: pl.DataFrame) -> dict[str, str]:
    """The run record's tags: code, data and items hashes, weights, command line."""
    return {
        "git_commit": provenance.code_version(),
        "data_hash": data_hash,
        "items_hash": frame_digest(items.select(schema.ITEM_ID, schema.TEXT)),
        "text_model": config.sources.text_model,
        "image_weights": str(config.image.clip_weights),
        "command": provenance.command_line(sys.argv),
    }


def workers_can_read(config: RunConfig) -> bool:
    """Whether the Dask workers can read this run's interactions (`prepare_on_workers`): a
    catalog file; the LLM, the sequence model and the cold-item protocol still need the data
    on the driver."""
    return (config.data.dataset == "catalog" and not config.llm.enabled and not config.sequence.enabled
            and config.split.cold_items == 0)


@dataclass(frozen=True)
class SpreadPrepared:
    """`Prepared` with the interactions on the workers: their user partitions and the cut-offs'
    shares (jobs/distributed_data.py, jobs/distributed_cutoffs.py) instead of frames here."""

    items: pl.DataFrame
    parts: UserParts
    shares: CutoffShares
    train_items: pl.Series
    content: dict[str, Embeddings]
    media: dict[str, float]
    tags: dict[str, str]


def prepare_on_workers(client: Any, config: RunConfig, by_user: bool = False) -> SpreadPrepared:
    """`prepare` with the interactions read, checked, hashed and cut on the workers; the driver
    reads the items and encodes them (the statistics that standardise the embeddings fitted on
    the validation history's items, which the workers report). `by_user`: partitions in
    user_id order (export's), else in `query_key` order."""
    items = load_items(Path(config.data.items_path))
    with step("read interactions on the workers") as s:
        parts = read_user_parts(client, Path(config.data.interactions_path), items[schema.ITEM_ID],
                                config.dask.user_partitions or n_workers(client), by_user=by_user, digest=True)
        s.done(f"{sum(parts.rows):,} interactions, {sum(parts.users):,} users in {len(parts.futures)} partitions")
    with step("cut-offs on the workers") as s:
        shares = cutoff_shares(client, parts, config.split)
        s.done(", ".join(f"{name}: {sum(n):,} targets" for name, n in shares.targets.items()))
    train_items = training_items(client, shares)
    content, media = encode_content(items, train_items, config)
    return SpreadPrepared(items, parts, shares, train_items, content, media,
                          run_tags(config, parts.digest or "", items))


def train_evaluate(config: RunConfig, tags: dict[str, str] | None = None) -> tuple[dict[str, float], Path]:
    """Run the whole job; returns (metrics, output folder). `tags` are added to the MLflow run.

    The run records the data it read as dataset inputs and registers its ranker as a new version
    of `tracking.registered_model` (see registry.py).
    """
    start = time.perf_counter()
    run_name = config.run_name or f"train-evaluate-{config.data.dataset}"
    folder = tracking.check_outputs(config.tracking, Path(config.output_dir) / run_name)  # before any work
    with contextlib.ExitStack() as cluster:
        spread = config.dask.enabled and workers_can_read(config)
        client = cluster.enter_context(dask_client(config.dask)) if spread else None
        data = prepare_on_workers(client, config) if spread else prepare(config)
        return _train_evaluate(config, data, client, run_name, folder, start, tags)


def _train_evaluate(config: RunConfig, data: Prepared | SpreadPrepared, client: Any, run_name: str, folder: Path,
                    start: float, tags: dict[str, str] | None) -> tuple[dict[str, float], Path]:
    """The run on prepared data, recorded in MLflow (`client`: the cluster holding `data`'s shares)."""
    item_ids = data.items[schema.ITEM_ID].to_list()
    llm = data.llm if isinstance(data, Prepared) else None
    with tracking.tracked_run(config.tracking, run_name, data.tags | {"kind": "train-evaluate"} | (tags or {})
                              ) as run_id:
        if run_id is not None:
            tracking.log_params(flatten(config))
            registry.log_datasets(run_id, config.tracking, dataset_records(config, data, client))
        if isinstance(data, Prepared):
            result = run_protocol(data.cutoffs, item_ids, data.content, config, llm)
        else:
            result = run_protocol_on_shares(client, data.shares, item_ids, data.content, config)
        metrics = {**result.metrics, **data.media, "wall_seconds": time.perf_counter() - start}
        result = dataclasses.replace(result, metrics=metrics)
        with step("write outputs") as s:
            paths = write_outputs(result, config, folder, run_id)
            figures = plots.write_run_figures(metrics, result.ranker.gain_importance(), folder / "plots",
                                              prefixes=("test_", "valid_"))
            if llm is not None:  # a sample of generated profiles and descriptions, to read
                paths["llm_samples"] = atomic.write_json(folder / "llm_samples.json", llm.samples)
            s.done(str(folder))
        if run_id is not None:
            with step("log to mlflow") as s:
                tracking.log_metrics(metrics)
                tracking.log_artifacts([
                    ("", paths["metrics"]),
                    ("", paths["config"]),
                    ("outputs", paths["ranked_lists"]),
                    ("evaluation", paths["per_user_metrics"]),
                    ("ranker_text", paths["model"]),
                    ("ranker_text", paths["features"]),
                    *(("plots", path) for path in figures.values()),
                    *(("llm", paths[k]) for k in ("llm_samples",) if k in paths),
                ])
                model_hash = hashlib.sha256(paths["model"].read_bytes()).hexdigest()
                tracking.set_tags({"model_hash": model_hash})
                version_tags = {k: data.tags[k] for k in ("data_hash", "items_hash", "git_commit")}
                version_tags |= {"model_hash": model_hash, "run_name": run_name, "dataset": config.data.dataset}
                version_tags |= {k: f"{metrics[k]:.6g}" for k in (*HEADLINE, "valid_ndcg_at_10") if k in metrics}
                version = registry.register_ranker(config.tracking, paths["model"].parent, version_tags)
                if version is not None:
                    tracking.set_tags({"registered_model": version.uri})
                s.done(f"run {run_id}" + (f", {version.uri}" if version else ""))
    return metrics, folder


def dataset_records(config: RunConfig, data: Prepared | SpreadPrepared,
                    client: Any = None) -> list[registry.DatasetRecord]:
    """The tables a train-evaluate run reads, for its MLflow run page: the items and the test
    cut-off's history ("training": what stage 1 and the ranker learn from), and the test targets
    ("evaluation"), each with a content digest and where it came from. Tables on the workers
    are hashed and counted there (`client`)."""
    name = config.data.dataset
    if name == "catalog":
        items_source = ("local", provenance.portable_path(str(config.data.items_path)))
        interactions_source = ("local", provenance.portable_path(str(config.data.interactions_path)))
    else:
        reference = {"movielens-100k": config.sources.movielens_100k,
                     "movielens-1m": config.sources.movielens_1m}[name]
        kind = "pypi" if reference.startswith("pypi:") else "local"
        items_source = interactions_source = (kind, reference if kind == "pypi" else provenance.portable_path(reference))
    if isinstance(data, Prepared):
        tables = [table_facts([evaluation_table(data.cutoffs, field)]) for field in ("history", "targets")]
    else:
        tables = client.gather([client.submit(_shares_facts, data.shares.futures, field, pure=False)
                                for field in ("history", "targets")])
    (history, history_hash, history_profile), (targets, targets_hash, targets_profile) = tables
    protocol = config.split.protocol
    return [
        registry.DatasetRecord(f"{name} items", data.tags["items_hash"][:16], *items_source, "items", "training",
                               data.items),
        registry.DatasetRecord(f"{name} interactions (history, {protocol})", history_hash[:16],
                               *interactions_source, "interactions", "training", history, history_profile),
        registry.DatasetRecord(f"{name} interactions (test targets, {protocol})", targets_hash[:16],
                               *interactions_source, "interactions", "evaluation", targets, targets_profile),
    ]


def evaluation_table(cutoffs: Cutoffs, field: str) -> pl.DataFrame:
    """The test cut-off's "history", or its "targets" with the cold test users' (schema.INTERACTIONS)."""
    columns = list(schema.INTERACTIONS)
    if field == "history":
        return cutoffs.test.history.select(columns)
    return pl.concat([cutoffs.test.targets.select(columns), cutoffs.cold_test.select(columns)])


def table_facts(pieces: list[pl.DataFrame]) -> tuple[pl.DataFrame, str, dict[str, int]]:
    """(the table's schema as an empty frame, its `frame_digest`, its `registry.dataset_profile`)
    of the pieces put together in order."""
    table = pl.concat(pieces) if len(pieces) > 1 else pieces[0]
    return table.clear(), frame_digest(table), registry.dataset_profile(table)


def _shares_facts(shares: list[Cutoffs], field: str) -> tuple[pl.DataFrame, str, dict[str, int]]:
    """`table_facts` of a test table over every partition's share (on a worker)."""
    return table_facts([evaluation_table(share, field) for share in shares])


def ablate(config: RunConfig) -> tuple[pl.DataFrame, Path]:
    """Per-modality ablation on one split; writes ablation.csv/.txt and records one MLflow run."""
    run_name = config.run_name or f"ablation-{config.data.dataset}"
    folder = tracking.check_outputs(config.tracking, Path(config.output_dir) / run_name)  # before any work
    data = prepare(config)
    with tracking.tracked_run(config.tracking, run_name, data.tags | {"kind": "ablation"}) as run_id:
        if run_id is not None:
            tracking.log_params(flatten(config))
        table, results = run_ablation(data.cutoffs, data.items[schema.ITEM_ID].to_list(), data.content, config,
                                      data.llm)
        paths = [
            atomic.write_atomic(folder / "ablation.csv", lambda tmp: table.write_csv(tmp)),
            atomic.write_text(folder / "ablation.txt", format_table(table) + "\n"),
            atomic.write_json(folder / "gain_by_group.json",
                              {name: gain_by_group(r.ranker.gain_importance()) for name, r in results.items()}),
        ]
        if run_id is not None:
            metrics = dict(data.media)
            for row in table.iter_rows(named=True):
                for key in ("test_ndcg_at_10", "ci_low", "ci_high", "delta_vs_full", "delta_ci_low", "delta_ci_high"):
                    for kind in ("", "warm_", "cold_"):  # every user, then the slices (NaN: empty slice)
                        value = row.get(f"{kind}{key}")
                        if value is not None and value == value:
                            metrics[f"{row['variant']}_{kind}{key}"] = value
            tracking.log_metrics(metrics)
            tracking.log_artifacts([("", path) for path in paths])
    return table, folder


def format_summary(metrics: dict[str, float]) -> str:
    """The headline numbers as aligned lines, with bootstrap 95% CIs where the run has them."""
    keys = sorted(k for k in metrics if k.startswith("test_stage1_recall_at_")) + list(HEADLINE)
    keys += sorted(k.removesuffix("_ci_low") for k in metrics
                   if "_gain_vs_" in k and k.endswith("_ci_low") and "_slice_" not in k)
    keys = [k for k in keys if k in metrics or f"{k}_ci_low" in metrics] + ["wall_seconds"]
    width = max(len(k) for k in keys)
    lines = []
    for k in keys:
        digits = 1 if k == "wall_seconds" else 0 if k.startswith("n_") else 4
        value = f"{metrics[k]:.{digits}f}" if k in metrics else " " * 6
        if f"{k}_ci_low" in metrics:
            value += f"  95% CI [{metrics[f'{k}_ci_low']:.4f}, {metrics[f'{k}_ci_high']:.4f}]"
        lines.append(f"{k:<{width}}  {value}")
    if any(k.startswith("test_slice_") for k in metrics):  # slices: by the target's kind and history length
        lines += ["", format_slices(metrics)]
    return "\n".join(lines)
