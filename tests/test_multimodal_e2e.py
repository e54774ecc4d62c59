"""End to end on a tiny multimodal catalog with broken media: the run completes, the broken
items degrade to their other modalities, and the counts reach metrics.json and MLflow."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest

from fuserank import schema
from fuserank.config import load_config
from fuserank.data.synthetic import generate_multimodal_catalog
from fuserank.jobs.train_evaluate import train_evaluate
from tiny_models import save_tiny_bert


@pytest.fixture(scope="module")
def broken_catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("multimodal")
    folder = root / "catalog"
    items, _ = generate_multimodal_catalog(folder, n_items=60, n_users=40, seed=1, video_share=0.1)
    images = items.filter(pl.col(schema.IMAGE_PATH).is_not_null())[schema.IMAGE_PATH].to_list()
    clips = items.filter(pl.col(schema.AUDIO_PATH).is_not_null())[schema.AUDIO_PATH].to_list()
    png = folder / images[0]
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])  # truncated PNG
    (folder / clips[0]).write_bytes(b"")  # zero-byte sound file
    (folder / clips[1]).write_text("not a sound at all")  # text where a sound should be
    words = sorted({w for t in items[schema.TEXT].drop_nulls() for w in re.findall(r"[a-z]+", t.lower())})
    model = save_tiny_bert(root / "bert", words=words)
    return root, folder, model


def test_broken_media_degrade_and_are_counted(broken_catalog):
    from mlflow.tracking import MlflowClient

    root, folder, model = broken_catalog
    config = load_config(None, [
        f"output_dir={root / 'outputs'}", "run_name=multimodal", "data.dataset=catalog",
        f"data.items_path={folder / 'items.parquet'}", f"data.interactions_path={folder / 'interactions.parquet'}",
        f"sources.cache_dir={root / 'cache'}", f"sources.text_model={model}",
        f"tracking.tracking_uri=sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        f"tracking.artifact_root={root / 'mlruns' / 'artifacts'}",
        "retrieval.ann_candidates=30", "retrieval.popular_candidates=5", "retrieval.modality_candidates=5",
        "retrieval.neighbourhood_candidates=5",
        "ranker.n_estimators=50",
    ])
    metrics, out = train_evaluate(config)
    assert metrics["media_image_failed"] == 1 and metrics["media_image_encoded"] == 59
    assert metrics["media_audio_failed"] == 2 and metrics["media_audio_encoded"] == 58
    assert metrics["media_video_failed"] == 0 and metrics["media_video_encoded"] == metrics["media_video_with_path"] > 0
    features = json.loads((out / "model" / "features.json").read_text())["feature_names"]
    for modality in ("text", "behaviour", "image", "audio", "video"):
        assert f"cos_{modality}_profile" in features and f"has_{modality}" in features
    assert "from_ann_image" in features and "from_pop_audio" in features
    client = MlflowClient(tracking_uri=config.tracking.tracking_uri)
    run = client.get_run(metrics_run_id(out))
    assert run.data.metrics["media_audio_failed"] == 2


def metrics_run_id(folder):
    return json.loads((folder / "metrics.json").read_text())["run_id"]
