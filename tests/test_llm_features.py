"""LLM features (llm_features.py): planted values, the profile history, and no leakage into prompts."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.encoders import prompts
from fuserank.config import LLMConfig
from fuserank.data.split import leave_last_out
from fuserank.encoders import llm as llm_module
from fuserank.encoders.base import Embeddings
from fuserank.encoders.llm import load_causal_lm
from fuserank.ranking.features import feature_group
from fuserank.ranking.llm_features import (
    LLMSignals,
    add_llm_features,
    build_llm_signals,
    item_thin_text,
    profile_history,
)
from tiny_models import save_tiny_llama

E = np.eye(4, dtype=np.float32)


def _candidates(rows):
    return pl.DataFrame(
        {
            schema.USER_ID: [r[0] for r in rows],
            schema.ITEM_ID: [r[1] for r in rows],
            schema.SOURCE: ["ann"] * len(rows),
            schema.RETRIEVAL_SCORE: [0.0] * len(rows),
            schema.RETRIEVAL_RANK: [r[2] for r in rows],
        },
        schema={schema.USER_ID: pl.String, schema.ITEM_ID: pl.String, schema.SOURCE: pl.String,
                schema.RETRIEVAL_SCORE: pl.Float32, schema.RETRIEVAL_RANK: pl.Int32},
    )


def test_feature_values_on_a_planted_example():
    # u1 has a profile pointing at item a's text; u2 has none. c has no description.
    history = pl.DataFrame({schema.USER_ID: ["u1", "u2"], schema.ITEM_ID: ["a", "b"], schema.TIMESTAMP: [1, 1],
                            schema.RATING: [5.0, 5.0]})
    asked = []

    def embed_history(texts):  # a user whose history names Alpha points at item a's hidden vector
        return np.stack([E[0] if "Alpha" in t else E[1] for t in texts])

    def relevance(asks):
        asked.extend(asks)
        return np.full(len(asks), -0.5, dtype=np.float32)

    signals = LLMSignals(
        item_ids=("a", "b", "c"),
        item_labels=("Alpha", "Beta", "Gamma"),
        text_vectors=E[[0, 1, 2]],
        description=Embeddings(("a", "b", "c"), np.stack([E[1], E[0], np.zeros(4, np.float32)]),
                               np.array([True, True, False])),
        profile_users=("u1",),
        profile_vectors=E[[0]],
        hidden=Embeddings(("a", "b", "c"), E[[0, 1, 3]], np.ones(3, dtype=bool)),
        train_pairs=history.select(schema.USER_ID, schema.ITEM_ID),
        embed_history=embed_history,
        relevance=relevance,
        relevance_top_m=1,
    )
    frame = _candidates([("u1", "a", 2), ("u1", "b", 1), ("u1", "c", 3), ("u2", "a", 1), ("u2", "c", 2)])
    out, names = add_llm_features(frame, ["retrieval_rank"], history, signals)
    got = {n: out[n].to_list() for n in names[1:]}
    nan = float("nan")
    np.testing.assert_array_equal(got["llm_profile_cos_text"], [1, 0, 0, nan, nan])
    np.testing.assert_array_equal(got["llm_profile_cos_description"], [0, 1, nan, nan, nan])
    np.testing.assert_array_equal(got["llm_hidden_cos"], [1, 0, 0, 0, 0])  # u1 history "Alpha", u2 "Beta"
    np.testing.assert_allclose(got["llm_hidden_cos_z"][:3], [np.sqrt(2), -1 / np.sqrt(2), -1 / np.sqrt(2)], rtol=1e-5)
    np.testing.assert_array_equal(got["llm_relevance"], [nan, -0.5, nan, -0.5, nan])  # rank 1 of each user
    assert [a.user.split("like: ")[1].split("?")[0] for a in asked] == ["Beta", "Alpha"]
    assert {feature_group(n) for n in names[1:]} == {"llm"}
    assert feature_group("cos_llm_description_profile") == "llm"


def test_the_profile_history_is_a_prefix_of_every_stage():
    rows = [("u1", f"i{k}", k) for k in range(8)] + [("u2", "i0", 1), ("u2", "i1", 2)]
    train = pl.DataFrame(rows, schema=[schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP], orient="row").with_columns(
        pl.lit(None, pl.Float64).alias(schema.RATING))
    early = profile_history(train, label_cutoffs=3, label_window=1)
    assert sorted(early.filter(pl.col(schema.USER_ID) == "u1")[schema.ITEM_ID]) == [f"i{k}" for k in range(5)]
    assert sorted(early.filter(pl.col(schema.USER_ID) == "u2")[schema.ITEM_ID]) == ["i0"]


def test_thin_text_adds_catalog_attributes_not_already_in_the_text():
    items = pl.DataFrame({schema.ITEM_ID: ["a", "b"], schema.TEXT: ["Song A. Genre: jazz", None],
                          "genre": ["jazz", "rock"], "mood": ["calm", None], schema.IMAGE_PATH: ["x.png", None]})
    assert item_thin_text(items) == ["Song A. Genre: jazz | mood: calm", " | genre: rock"]


def _unit(text: str, dim: int = 8) -> np.ndarray:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return load_causal_lm(save_tiny_llama(tmp_path_factory.mktemp("llama") / "m"), device="cpu")


def test_no_validation_or_test_interaction_reaches_any_prompt(tiny_lm, monkeypatch):
    n_items = 12
    titles = [f"Film{k}" for k in range(n_items)] + ["ZebraValid", "QuasarTest"]
    items = pl.DataFrame({schema.ITEM_ID: [f"i{k}" for k in range(n_items + 2)],
                          schema.TEXT: [f"{t} (1999). Genres: Drama" for t in titles], "title": titles})
    rows = []
    for u in range(4):
        for t in range(8):
            rows.append((f"u{u}", f"i{(u + t) % n_items}", 100 * t))
    rows += [("u0", "i12", 10_000), ("u0", "i13", 20_000)]  # u0's validation and test targets, planted
    interactions = pl.DataFrame(rows, schema=[schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP], orient="row",
                                ).with_columns(pl.lit(4.0).alias(schema.RATING))
    split = leave_last_out(interactions, min_interactions=3)
    assert split.valid.filter(pl.col(schema.USER_ID) == "u0")[schema.ITEM_ID].to_list() == ["i12"]
    assert split.test.filter(pl.col(schema.USER_ID) == "u0")[schema.ITEM_ID].to_list() == ["i13"]

    seen: dict[str, list[str]] = {"generate": [], "hidden": [], "relevance": []}
    real_generate, real_hidden, real_yes = llm_module.generate, llm_module.embed_hidden, llm_module.yes_logprob

    def spy_generate(lm, asks, *args, **kwargs):
        seen["generate"] += [a.user for a in asks if a.version == prompts.USER_PROFILE_VERSION]
        return real_generate(lm, asks, *args, **kwargs)

    def spy_hidden(lm, texts, version, *args, **kwargs):
        if version == prompts.HISTORY_TEXT_VERSION:
            seen["hidden"] += list(texts)
        return real_hidden(lm, texts, version, *args, **kwargs)

    def spy_yes(lm, asks, *args, **kwargs):
        seen["relevance"] += [a.user.split("Would this user like")[0] for a in asks]
        return real_yes(lm, asks, *args, **kwargs)

    monkeypatch.setattr(llm_module, "generate", spy_generate)
    monkeypatch.setattr(llm_module, "embed_hidden", spy_hidden)
    monkeypatch.setattr(llm_module, "yes_logprob", spy_yes)
    text = np.stack([_unit(t) for t in items[schema.TEXT]])
    settings = LLMConfig(enabled=True, max_new_tokens=3, batch_size=4, relevance_top_m=50, history_text=True)
    signals = build_llm_signals(items, split.train, tiny_lm, lambda ts: np.stack([_unit(t) for t in ts]), text,
                                settings, profile_from=profile_history(split.train, 3, 1), cache_root=None, seed=0)
    every_item = items[schema.ITEM_ID].to_list()
    for history, users in [(profile_history(split.train, 3, 1), ["u0", "u1"]), (split.train, ["u0", "u1"]),
                           (pl.concat([split.train, split.valid]), ["u0", "u1"])]:
        frame = _candidates([(u, i, r + 1) for u in users for r, i in enumerate(every_item)])
        out, _ = add_llm_features(frame, [], history, signals)
        assert out["llm_relevance"].is_not_nan().sum() == frame.height  # every candidate was asked about
    assert len(seen["generate"]) == 4 and seen["hidden"] and seen["relevance"]
    for kind, texts in seen.items():
        for text in texts:
            assert "ZebraValid" not in text and "QuasarTest" not in text, (kind, text)
    # the profile is written from before the earliest label cut-off: u0's 3 newest train items are absent
    u0_train = split.train.filter(pl.col(schema.USER_ID) == "u0").sort(schema.TIMESTAMP)[schema.ITEM_ID].to_list()
    label_titles = [titles[int(i[1:])] for i in u0_train[-3:]]
    u0_profile = [t for t in seen["generate"] if titles[int(u0_train[0][1:])] in t][0]
    assert not any(f"- {t}\n" in u0_profile for t in label_titles)
    assert signals.description is not None and signals.description.mask.all()
