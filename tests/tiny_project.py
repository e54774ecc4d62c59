"""A tiny catalog plus one config file whose output, cache and MLflow paths are relative, so the
same file drives CLI jobs run in several folders (crash and determinism tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fuserank.data.synthetic import GENRES, generate_catalog, write_catalog
from tiny_models import save_tiny_bert


def write_project(root: Path, run_name: str, n_jobs: int = 1, **sections: Any) -> Path:
    """Write the catalog, a tiny text model and config.yaml under `root`; returns the config path.

    `sections` add or replace top-level config sections (e.g. tune=..., export=...).
    """
    items, interactions = generate_catalog(n_items=100, n_users=70, seed=11)
    items_path, interactions_path = write_catalog(root / "catalog", items, interactions)
    model = save_tiny_bert(root / "bert", words=["a", "story", "number", *GENRES])
    config = {
        "seed": 5,
        "output_dir": "outputs",
        "run_name": run_name,
        "data": {"dataset": "catalog", "items_path": str(items_path), "interactions_path": str(interactions_path)},
        "sources": {"cache_dir": "cache", "text_model": str(model)},
        "split": {"label_cutoffs": 2},
        "retrieval": {"ann_candidates": 30, "popular_candidates": 10},
        "ranker": {"n_estimators": 30, "min_child_samples": 10, "n_jobs": n_jobs},
        "tracking": {"tracking_uri": "sqlite:///mlruns/mlflow.db", "artifact_root": "mlruns/artifacts",
                     "experiment": run_name},
        **sections,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
