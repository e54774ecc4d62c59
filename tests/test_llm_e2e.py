"""The LLM features through the whole train-evaluate job, with a tiny Llama as the user's model."""

from __future__ import annotations

import json

import pytest

from fuserank.evaluation.ablation import ablation_variants
from fuserank.config import RunConfig, load_config
from fuserank.data.synthetic import GENRES, generate_catalog, write_catalog
from fuserank.ranking.features import feature_group
from fuserank.ranking.llm_features import DESCRIPTION, HIDDEN
from fuserank.jobs.train_evaluate import prepare, train_evaluate
from tiny_models import save_tiny_bert, save_tiny_llama


@pytest.fixture(scope="module")
def llm_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-e2e")
    items, interactions = generate_catalog(n_items=60, n_users=40, seed=5)
    items_path, interactions_path = write_catalog(root / "catalog", items, interactions)
    bert = save_tiny_bert(root / "bert", words=["a", "story", "number", *GENRES])
    llama = save_tiny_llama(root / "llama")
    overrides = [
        f"output_dir={root / 'outputs'}", "run_name=llm", "data.dataset=catalog",
        f"data.items_path={items_path}", f"data.interactions_path={interactions_path}",
        f"sources.cache_dir={root / 'cache'}", f"sources.text_model={bert}",
        "retrieval.ann_candidates=20", "retrieval.popular_candidates=5", "ranker.n_estimators=20",
        "eval.top_k=10", "tracking.enabled=false",
        "llm.enabled=true", f"llm.model={llama}", "llm.max_new_tokens=4", "llm.relevance_top_m=3",
        "llm.max_items=30", "llm.log_samples=5", "llm.history_text=true",
    ]
    return load_config(None, overrides), root


def test_train_evaluate_uses_every_llm_feature_and_logs_samples(llm_config):
    config, root = llm_config
    metrics, folder = train_evaluate(config)
    names = json.loads((folder / "model" / "features.json").read_text())
    names = names["feature_names"]
    llm_names = {n for n in names if feature_group(n) == "llm"}
    assert {"llm_profile_cos_text", "llm_profile_cos_description", "llm_hidden_cos", "llm_relevance",
            "llm_hidden_cos", f"cos_{DESCRIPTION}_profile", f"cos_{HIDDEN}_profile", f"cos_{HIDDEN}_last"} <= llm_names
    samples = json.loads((folder / "llm_samples.json").read_text())
    assert {s["kind"] for s in samples} == {"description", "profile"} and len(samples) <= 10
    assert 0.0 <= metrics["test_ndcg_at_10"] <= 1.0


def test_the_ablation_removes_the_llm_group_and_its_fusion_view_together(llm_config):
    config, _ = llm_config
    data = prepare(config)
    assert DESCRIPTION in data.content and HIDDEN in data.content and data.llm is not None
    assert int(data.content[DESCRIPTION].mask.sum()) <= 30  # llm.max_items
    variants = ablation_variants(data.content, config)
    content, off = variants["without_llm"]
    assert DESCRIPTION not in content and HIDDEN not in content and not off.llm.enabled
    assert f"without_{DESCRIPTION}" not in variants and f"without_{HIDDEN}" not in variants
    assert RunConfig().llm.enabled is False
