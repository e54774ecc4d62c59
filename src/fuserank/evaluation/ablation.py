"""Per-modality ablation: the whole protocol with each modality removed from fusion and features.

Each variant is trained and evaluated on the same split as the full model, so the paired
bootstrap CI of the NDCG@10 difference says whether a modality carries signal beyond noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.config import RunConfig
from fuserank.data.cutoffs import Cutoffs
from fuserank.encoders.base import Embeddings
from fuserank.ranking.llm_features import VIEWS as LLM_VIEWS
from fuserank.evaluation.metrics import bootstrap_ci, paired_bootstrap_ci
from fuserank.progress import step
from fuserank.evaluation.protocol import ProtocolResult, run_protocol

if TYPE_CHECKING:
    from fuserank.ranking.llm_features import LLMSignals

FULL = "full"
METRIC = "ndcg_at_10"


def ablation_variants(
    content: Mapping[str, Embeddings], config: RunConfig
) -> dict[str, tuple[dict[str, Embeddings], RunConfig]]:
    """The full model plus one variant per modality ("without_<m>"): content modalities are
    dropped from the content dict, behaviour is switched off in its config."""
    variants = {FULL: (dict(content), config)}
    for modality in content:
        if modality in LLM_VIEWS:  # part of the LLM group below
            continue
        variants[f"without_{modality}"] = ({m: e for m, e in content.items() if m != modality}, config)
    if config.llm.enabled:  # the LLM feature group and its fusion view together
        no_llm = dataclasses.replace(config, llm=dataclasses.replace(config.llm, enabled=False))
        variants["without_llm"] = ({m: e for m, e in content.items() if m not in LLM_VIEWS}, no_llm)
    if config.behaviour.enabled:
        off = dataclasses.replace(config, behaviour=dataclasses.replace(config.behaviour, enabled=False))
        variants["without_behaviour"] = (dict(content), off)
    return variants


def ablation_table(results: Mapping[str, ProtocolResult], seed: int, n_boot: int = 1000) -> pl.DataFrame:
    """One row per variant: test NDCG@10 with its bootstrap 95% CI, and the paired difference to
    the full model with its CI; `beyond_ci` is True when that CI excludes 0."""
    def per_user(result: ProtocolResult) -> np.ndarray:
        rows = result.per_user.filter(pl.col("system") == "fuserank").sort(schema.USER_ID)
        return rows[METRIC].to_numpy()

    full = per_user(results[FULL])
    rows = []
    for name, result in results.items():
        values = per_user(result)
        low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
        delta = float(values.mean() - full.mean())
        d_low, d_high = (0.0, 0.0) if name == FULL else paired_bootstrap_ci(values, full, n_boot=n_boot, seed=seed)
        rows.append({
            "variant": name,
            f"test_{METRIC}": float(values.mean()),
            "ci_low": low,
            "ci_high": high,
            "delta_vs_full": delta,
            "delta_ci_low": d_low,
            "delta_ci_high": d_high,
            "beyond_ci": bool(name != FULL and (d_high < 0 or d_low > 0)),
            "test_stage1_recall": result.metrics["test_stage1_recall"],
        })
    return pl.DataFrame(rows)


def run_ablation(
    cutoffs: Cutoffs, item_ids: Sequence[str], content: Mapping[str, Embeddings], config: RunConfig,
    llm: LLMSignals | None = None,
) -> tuple[pl.DataFrame, dict[str, ProtocolResult]]:
    """Run every variant of `ablation_variants`; returns (table, results by variant). `llm`
    (llm_features.prepare_llm) reaches every variant whose config keeps `llm.enabled`."""
    results: dict[str, ProtocolResult] = {}
    for name, (variant_content, variant_config) in ablation_variants(content, config).items():
        with step(f"ablation [{name}]") as s:
            results[name] = run_protocol(cutoffs, item_ids, variant_content, variant_config, llm)
            s.done(f"test {METRIC} {results[name].metrics[f'test_{METRIC}']:.4f}")
    return ablation_table(results, seed=config.seed), results


def format_table(table: pl.DataFrame) -> str:
    """A plain-text table for the terminal and the README."""
    lines = [f"{'variant':<20} {'NDCG@10':>8}  {'95% CI':<17}  {'delta':>8}  {'delta 95% CI':<19}  {'beyond CI':<9}  stage-1 recall"]
    for row in table.iter_rows(named=True):
        ci = f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]"
        delta_ci = "" if row["variant"] == FULL else f"[{row['delta_ci_low']:+.4f}, {row['delta_ci_high']:+.4f}]"
        lines.append(
            f"{row['variant']:<20} {row[f'test_{METRIC}']:>8.4f}  {ci:<17}  {row['delta_vs_full']:>+8.4f}  "
            f"{delta_ci:<19}  {'yes' if row['beyond_ci'] else 'no':<9}  {row['test_stage1_recall']:.4f}"
        )
    return "\n".join(lines)
