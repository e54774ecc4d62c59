"""Per-modality ablation: the whole protocol with each modality removed from fusion and features.

Each variant is trained and evaluated on the same split as the full model, so the paired
bootstrap CI of the NDCG@10 difference says whether a modality carries signal beyond noise.
With the test slices (evaluation/slices.py) the same columns are given again on the users whose
target is a warm item and on those whose target is a cold item (`warm_*`, `cold_*`), and the
full run's baselines (most-popular, stage-1 order, content kNN, random) are rows of their own
("baseline_<system>"), paired against the full model on the same users.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from fuserank import schema
from fuserank.config import RunConfig
from fuserank.data.cutoffs import Cutoffs
from fuserank.encoders.base import Embeddings
from fuserank.evaluation.metrics import bootstrap_ci, paired_bootstrap_ci
from fuserank.evaluation.protocol import ProtocolResult, run_protocol
from fuserank.evaluation.slices import COLD, WARM, slice_array, slice_users, user_slices
from fuserank.progress import step
from fuserank.ranking.llm_features import VIEWS as LLM_VIEWS
from fuserank.ranking.llm_features import LLMSignals

FULL = "full"
METRIC = "ndcg_at_10"
BASELINE = "baseline_"
SLICE_KINDS = (WARM, COLD)


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


def ablation_table(results: Mapping[str, ProtocolResult], seed: int, n_boot: int = 1000,
                   slices: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per variant: test NDCG@10 with its bootstrap 95% CI, and the paired difference to
    the full model with its CI; `beyond_ci` is True when that CI excludes 0. Then one row per
    baseline of the full run (`baseline_<system>`). With `slices` (`slices.user_slices` of the
    test cut-off) the same columns again, prefixed `warm_` and `cold_`, over each slice's users,
    with `<kind>_users` and `<kind>_stage1_recall` (NaN where a slice is empty)."""
    def per_user(result: ProtocolResult, system: str = "fuserank") -> pl.DataFrame:
        return result.per_user.filter(pl.col("system") == system).sort(schema.USER_ID)

    compared = {name: (result, "fuserank") for name, result in results.items()}
    full_systems = results[FULL].per_user["system"].unique(maintain_order=True).to_list()
    compared |= {f"{BASELINE}{system}": (results[FULL], system) for system in full_systems if system != "fuserank"}
    members = slice_users(slices) if slices is not None else {}
    full = per_user(results[FULL])
    rows = []
    for name, (result, system) in compared.items():
        mine = per_user(result, system)
        row: dict[str, object] = {"variant": name}
        row |= _compare(mine[METRIC].to_numpy(), full[METRIC].to_numpy(), name == FULL, n_boot, seed, "")
        recall = result.metrics.get("test_stage1_recall", float("nan"))
        row["test_stage1_recall"] = recall if system == "fuserank" else float("nan")
        for kind in SLICE_KINDS if slices is not None else ():
            users = members[kind]
            row[f"{kind}_users"] = len(users)
            ours, theirs = slice_array(mine, users, METRIC), slice_array(full, users, METRIC)
            row |= _compare(ours, theirs, name == FULL, n_boot, seed, f"{kind}_")
            recall = result.metrics.get(f"test_slice_{kind}_stage1_recall", float("nan"))
            row[f"{kind}_stage1_recall"] = recall if system == "fuserank" else float("nan")
        rows.append(row)
    return pl.DataFrame(rows)


def _compare(values: np.ndarray, full: np.ndarray, is_full: bool, n_boot: int, seed: int, prefix: str) -> dict:
    """Mean with its CI and the paired difference to `full` with its CI (NaN when empty)."""
    nan = float("nan")
    if values.size == 0:
        return {f"{prefix}test_{METRIC}": nan, f"{prefix}ci_low": nan, f"{prefix}ci_high": nan,
                f"{prefix}delta_vs_full": nan, f"{prefix}delta_ci_low": nan, f"{prefix}delta_ci_high": nan,
                f"{prefix}beyond_ci": False}
    low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    d_low, d_high = (0.0, 0.0) if is_full else paired_bootstrap_ci(values, full, n_boot=n_boot, seed=seed)
    return {
        f"{prefix}test_{METRIC}": float(values.mean()),
        f"{prefix}ci_low": low,
        f"{prefix}ci_high": high,
        f"{prefix}delta_vs_full": float(values.mean() - full.mean()),
        f"{prefix}delta_ci_low": d_low,
        f"{prefix}delta_ci_high": d_high,
        f"{prefix}beyond_ci": bool(not is_full and (d_high < 0 or d_low > 0)),
    }


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
    return ablation_table(results, seed=config.seed, slices=user_slices(cutoffs.test)), results


def format_table(table: pl.DataFrame) -> str:
    """A plain-text table for the terminal and the README: every user, then (when the table has
    them) the warm-item and cold-item slices."""
    blocks = [_format_block(table, "", "all test users")]
    for kind in SLICE_KINDS:
        if f"{kind}_users" in table.columns:
            users = int(table[f"{kind}_users"][0])
            blocks.append(_format_block(table, f"{kind}_", f"{kind}-item slice ({users:,} users)"))
    return "\n\n".join(blocks) if len(blocks) > 1 else blocks[0]


def _format_block(table: pl.DataFrame, prefix: str, title: str) -> str:
    def number(value: float, spec: str) -> str:
        return "-" if value is None or np.isnan(value) else format(value, spec)

    recall = f"{prefix}stage1_recall" if prefix else "test_stage1_recall"
    lines = [] if not prefix else [f"{title}:"]
    lines.append(f"{'variant':<24} {'NDCG@10':>8}  {'95% CI':<17}  {'delta':>8}  {'delta 95% CI':<19}  "
                 f"{'beyond CI':<9}  stage-1 recall")
    for row in table.iter_rows(named=True):
        value = row[f"{prefix}test_{METRIC}"]
        if value is None or np.isnan(value):
            ci = delta_ci = ""
        else:
            ci = f"[{row[f'{prefix}ci_low']:.4f}, {row[f'{prefix}ci_high']:.4f}]"
            delta_ci = ("" if row["variant"] == FULL else
                        f"[{row[f'{prefix}delta_ci_low']:+.4f}, {row[f'{prefix}delta_ci_high']:+.4f}]")
        lines.append(
            f"{row['variant']:<24} {number(value, '>8.4f'):>8}  {ci:<17}  "
            f"{number(row[f'{prefix}delta_vs_full'], '>+8.4f'):>8}  {delta_ci:<19}  "
            f"{'yes' if row[f'{prefix}beyond_ci'] else 'no':<9}  {number(row[recall], '.4f')}"
        )
    return "\n".join(lines)
