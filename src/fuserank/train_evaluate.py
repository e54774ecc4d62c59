"""The train-and-evaluate job: the edge that reads data, fetches weights, writes outputs and
records the MLflow run around the pure protocol in protocol.py."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from fuserank import atomic, schema
from fuserank.config import RunConfig, cache_dir, flatten, to_dict
from fuserank.encoders.base import Embeddings
from fuserank.progress import megabytes, step
from fuserank.protocol import ProtocolResult, run_protocol
from fuserank.sources import resolve

HEADLINE = (
    "test_stage1_recall",
    "test_ndcg_at_10",
    "test_recall_at_10",
    "test_mrr_at_10",
    "test_popular_ndcg_at_10",
    "test_popular_recall_at_10",
    "test_retrieval_ndcg_at_10",
    "test_retrieval_recall_at_10",
)


def load_data(config: RunConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Items and interactions of the configured dataset, validated (never modified on disk)."""
    data = config.data
    if data.dataset == "movielens-100k":
        from fuserank.data.movielens import load_movielens_100k

        with step("fetch movielens-100k") as s:
            folder = resolve(config.sources.movielens_100k, cache_dir(config.sources))
            s.done(str(folder.name))
        with step("load movielens-100k") as s:
            items, interactions = load_movielens_100k(folder)
            s.done(f"{items.height:,} items, {interactions.height:,} interactions")
        return items, interactions
    if data.dataset == "catalog":
        from fuserank.data.catalog import load_catalog

        if not data.items_path or not data.interactions_path:
            raise ValueError("data.dataset=catalog needs data.items_path and data.interactions_path")
        with step("load catalog") as s:
            items, interactions = load_catalog(Path(data.items_path), Path(data.interactions_path))
            s.done(f"{items.height:,} items, {interactions.height:,} interactions")
        return items, interactions
    raise ValueError(f"data.dataset: unknown dataset {data.dataset!r}; use 'movielens-100k' or 'catalog'")


def encode_content(items: pl.DataFrame, config: RunConfig) -> dict[str, Embeddings]:
    """Content embeddings of every item (cached by content hash under the cache folder)."""
    from fuserank.encoders.text import TextEncoder

    root = cache_dir(config.sources)
    with step("fetch text model") as s:
        model_dir = resolve(config.sources.text_model, root)
        s.done(str(model_dir))
    encoder = TextEncoder(
        model_dir,
        batch_size=config.text.batch_size,
        max_length=config.text.max_length,
        device=config.text.device,
        cache_dir=root / "embeddings" / "text",
    )
    with step("encode text") as s:
        text = encoder.encode(items)
        s.done(f"{len(text.item_ids):,} items x {text.vectors.shape[1]}-d, {megabytes(text.vectors.nbytes)}")
    return {"text": text}


def frame_digest(frame: pl.DataFrame) -> str:
    """sha256 of a frame's CSV form: stable across runs and library versions."""
    return hashlib.sha256(frame.write_csv().encode("utf-8")).hexdigest()


def git_commit() -> str:
    """The checked-out commit of the working directory ("unknown" outside git), "+dirty" if changed."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def write_outputs(result: ProtocolResult, config: RunConfig, folder: Path, run_id: str | None) -> dict[str, Path]:
    """Write ranked lists, metrics, per-user metrics, model and resolved config; returns the paths."""
    from fuserank.ranking import save_ranker

    import yaml

    paths = {
        "ranked_lists": atomic.write_parquet(folder / "ranked_lists.parquet", result.ranked),
        "per_user_metrics": atomic.write_parquet(folder / "per_user_metrics.parquet", result.per_user),
        "metrics": atomic.write_json(folder / "metrics.json", {"run_id": run_id, **result.metrics}),
        "config": atomic.write_text(folder / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=True)),
    }
    save_ranker(result.ranker, folder / "model")
    paths["model"] = folder / "model" / "model.txt"
    paths["features"] = folder / "model" / "features.json"
    return paths


def train_evaluate(config: RunConfig) -> tuple[dict[str, float], Path]:
    """Run the whole job; returns (metrics, output folder)."""
    from fuserank import tracking

    start = time.perf_counter()
    items, interactions = load_data(config)
    content = encode_content(items, config)
    run_name = config.run_name or f"train-evaluate-{config.data.dataset}"
    folder = Path(config.output_dir) / run_name
    tags = {
        "git_commit": git_commit(),
        "data_hash": frame_digest(interactions.select(list(schema.INTERACTIONS))),
        "items_hash": frame_digest(items.select(schema.ITEM_ID, schema.TEXT)),
        "text_model": config.sources.text_model,
        "command": " ".join(sys.argv),
    }
    with tracking.tracked_run(config.tracking, run_name, tags) as run_id:
        if run_id is not None:
            tracking.log_params(flatten(config))
        result = run_protocol(interactions, content, config)
        metrics = {**result.metrics, "wall_seconds": time.perf_counter() - start}
        result = ProtocolResult(metrics, result.per_user, result.ranked, result.ranker, result.feature_names)
        with step("write outputs") as s:
            paths = write_outputs(result, config, folder, run_id)
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
                ])
                tracking.log_lightgbm(result.ranker.booster)
                s.done(f"run {run_id}")
    return metrics, folder


def format_summary(metrics: dict[str, float]) -> str:
    """The headline numbers as aligned lines, with bootstrap 95% CIs where the run has them."""
    keys = sorted(k for k in metrics if k.startswith("test_stage1_recall_at_")) + list(HEADLINE)
    keys += sorted(k.removesuffix("_ci_low") for k in metrics if "_gain_vs_" in k and k.endswith("_ci_low"))
    keys = [k for k in keys if k in metrics or f"{k}_ci_low" in metrics] + ["wall_seconds"]
    width = max(len(k) for k in keys)
    lines = []
    for k in keys:
        value = f"{metrics[k]:.{1 if k == 'wall_seconds' else 4}f}" if k in metrics else " " * 6
        if f"{k}_ci_low" in metrics:
            value += f"  95% CI [{metrics[f'{k}_ci_low']:.4f}, {metrics[f'{k}_ci_high']:.4f}]"
        lines.append(f"{k:<{width}}  {value}")
    return "\n".join(lines)
