import numpy as np
import polars as pl

from fuserank import schema
from fuserank.evaluation.ablation import ablation_table, ablation_variants, format_table
from fuserank.config import RunConfig
from fuserank.encoders.base import Embeddings
from fuserank.evaluation.protocol import ProtocolResult


def embeddings(ids):
    return Embeddings(tuple(ids), np.eye(len(ids), dtype=np.float32), np.ones(len(ids), dtype=bool))


def test_one_variant_per_modality_and_behaviour_switched_off_in_its_config():
    content = {"text": embeddings("ab"), "image": embeddings("ab")}
    variants = ablation_variants(content, RunConfig())
    assert list(variants) == ["full", "without_text", "without_image", "without_behaviour"]
    assert set(variants["without_image"][0]) == {"text"}
    assert variants["without_image"][1].behaviour.enabled
    assert set(variants["without_behaviour"][0]) == {"text", "image"}
    assert not variants["without_behaviour"][1].behaviour.enabled


def result(values):
    users = [f"u{i}" for i in range(len(values))]
    per_user = pl.DataFrame({schema.USER_ID: users, "ndcg_at_10": values, "system": ["fuserank"] * len(values)})
    return ProtocolResult({"test_stage1_recall": 0.5, "test_ndcg_at_10": float(np.mean(values))}, per_user,
                          pl.DataFrame(), None, [])


def test_table_by_hand():
    full = [1.0, 0.0] * 20
    table = ablation_table({"full": result(full), "without_a": result([0.0] * 40), "without_b": result(full)}, seed=0)
    rows = {r["variant"]: r for r in table.iter_rows(named=True)}
    assert rows["full"]["test_ndcg_at_10"] == 0.5 and not rows["full"]["beyond_ci"]
    assert rows["without_a"]["delta_vs_full"] == -0.5
    assert rows["without_a"]["delta_ci_high"] < 0 and rows["without_a"]["beyond_ci"]
    assert rows["without_b"]["delta_vs_full"] == 0.0 and not rows["without_b"]["beyond_ci"]
    assert rows["full"]["ci_low"] < 0.5 < rows["full"]["ci_high"]
    assert "without_a" in format_table(table)


def test_slice_columns_and_baseline_rows_by_hand():
    from fuserank.evaluation.slices import COLD, HISTORY, KIND, LENGTH, WARM

    users = [f"u{i}" for i in range(40)]
    full = [1.0, 0.0] * 20
    popular = [0.0] * 20 + [1.0] * 20  # hits only warm users
    both = pl.concat([
        pl.DataFrame({schema.USER_ID: users, "ndcg_at_10": full, "system": ["fuserank"] * 40}),
        pl.DataFrame({schema.USER_ID: users, "ndcg_at_10": popular, "system": ["popular"] * 40}),
    ])
    metrics = {"test_stage1_recall": 0.5, "test_slice_cold_stage1_recall": 0.25, "test_slice_warm_stage1_recall": 0.75}
    results = {
        "full": ProtocolResult(metrics, both, pl.DataFrame(), None, []),
        "without_a": result([1.0] * 20 + [0.0] * 20),  # perfect on the cold users, nothing on the warm ones
    }
    slices = pl.DataFrame({schema.USER_ID: users, KIND: [COLD] * 20 + [WARM] * 20, LENGTH: [3] * 40,
                           HISTORY: ["history_1_5"] * 40})
    table = ablation_table(results, seed=0, slices=slices)
    rows = {r["variant"]: r for r in table.iter_rows(named=True)}
    assert list(rows) == ["full", "without_a", "baseline_popular"]
    assert rows["full"]["cold_users"] == 20 and rows["full"]["cold_test_ndcg_at_10"] == 0.5
    assert rows["full"]["cold_stage1_recall"] == 0.25 and rows["full"]["warm_stage1_recall"] == 0.75
    assert rows["without_a"]["cold_delta_vs_full"] == 0.5 and rows["without_a"]["cold_beyond_ci"]
    assert rows["without_a"]["warm_delta_vs_full"] == -0.5 and rows["without_a"]["warm_beyond_ci"]
    assert rows["without_a"]["delta_vs_full"] == 0.0
    assert rows["baseline_popular"]["cold_test_ndcg_at_10"] == 0.0  # most-popular never names a cold item here
    assert rows["baseline_popular"]["warm_test_ndcg_at_10"] == 1.0
    assert np.isnan(rows["baseline_popular"]["test_stage1_recall"])
    text = format_table(table)
    assert "cold-item slice (20 users):" in text and "warm-item slice (20 users):" in text
    assert "baseline_popular" in text
