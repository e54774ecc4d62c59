"""Leakage traps: items and interactions that exist only in validation or test are planted in a
tiny catalog, and every place that learns from data is watched while the protocol, the tuner and
the content encoders run. None of them may see a planted row before it is allowed to.

What is checked, on the real data structures:
- the history handed to the behaviour fit, candidate generation and feature building (every
  stage-1 fit of run_protocol: ranker cut-offs, validation, test) holds no test row, and no
  validation row before the test stage;
- the behaviour embedding of a test-only item is a zero row with mask False in every fit, and of a
  validation-only item in every fit before the test stage;
- popularity features equal the counts of the stage's allowed history (train for validation,
  train + valid for test) at or before each user's reference time, so a test-only item counts 0;
- the ranker-training frame labels only train interactions as positives, the early-stopping frame
  only validation targets; no test pair is ever a positive;
- the tuner's objective (validation frames, validation targets) never sees a test row;
- centring means and the audio standardiser are fitted on training items only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.config import load_config
from fuserank.data.cutoffs import cutoffs_from_split
from fuserank.data.split import leave_last_out
from fuserank.data.synthetic import generate_catalog
from fuserank.encoders.base import Embeddings

TEST_ONLY = "i_test_only"
VALID_ONLY = "i_valid_only"
PAIR = [schema.USER_ID, schema.ITEM_ID]


def planted_catalog() -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Embeddings]]:
    """A small catalog plus one test-only and one validation-only item; text vectors that make
    the test-only item the nearest neighbour of its user's history (so retrieval would find it)."""
    items, interactions = generate_catalog(n_items=120, n_users=80, seed=5, interactions_per_user=(6, 12))
    interactions = interactions.select(list(schema.INTERACTIONS))
    users = interactions[schema.USER_ID].unique().sort().to_list()
    late = int(interactions[schema.TIMESTAMP].max()) + 1_000
    planted = pl.DataFrame(
        {
            schema.USER_ID: [users[0], users[1], users[1]],
            schema.ITEM_ID: [TEST_ONLY, VALID_ONLY, "i00000"],
            schema.TIMESTAMP: [late, late, late + 10],
            schema.RATING: [5.0, 5.0, 5.0],
        },
        schema=interactions.schema,
    )
    interactions = pl.concat([interactions, planted])
    extra = pl.DataFrame({schema.ITEM_ID: [TEST_ONLY, VALID_ONLY], schema.TEXT: ["zq unique title", "zv other title"]})
    items = pl.concat([items.select(schema.ITEM_ID, schema.TEXT), extra])
    ids = tuple(items[schema.ITEM_ID].to_list())
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(ids), 16)).astype(np.float32)
    favourite = interactions.filter(pl.col(schema.USER_ID) == users[0]).sort(schema.TIMESTAMP)[schema.ITEM_ID][-2]
    vectors[ids.index(TEST_ONLY)] = vectors[ids.index(favourite)]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    text = Embeddings(ids, vectors, np.ones(len(ids), dtype=bool))
    return items, interactions, {"text": text}


def small_config(tmp_path, *extra):
    return load_config(None, [
        "seed=3", f"output_dir={tmp_path / 'out'}", "tracking.enabled=false",
        "retrieval.ann_candidates=40", "retrieval.popular_candidates=10", "behaviour.dim=8",
        "ranker.n_estimators=30", "ranker.min_child_samples=5", "eval.top_k=20", *extra,
    ])


class Recorder:
    """Wraps the stage-1 and ranker entry points and keeps what they were given and returned."""

    def __init__(self, monkeypatch):
        import fuserank.evaluation.protocol as protocol
        import fuserank.jobs.tuning as tuning
        import fuserank.pipeline as pipeline

        self.behaviour: list[tuple[pl.DataFrame, Embeddings]] = []
        self.features: list[tuple[pl.DataFrame, pl.DataFrame]] = []
        self.candidates: list[pl.DataFrame] = []
        self.fits: list[tuple[pl.DataFrame, pl.DataFrame]] = []

        def wrap(module, name, record):
            original = getattr(module, name)

            def wrapped(*args, **kwargs):
                out = original(*args, **kwargs)
                record(args, kwargs, out)
                return out

            monkeypatch.setattr(module, name, wrapped)

        wrap(pipeline, "fit_behaviour", lambda a, k, out: self.behaviour.append((a[0], out)))
        wrap(pipeline, "build_features", lambda a, k, out: self.features.append((a[1], out[0])))
        wrap(pipeline, "generate_candidates", lambda a, k, out: self.candidates.append(a[1]))
        for module in (protocol, tuning):
            wrap(module, "fit_ranker", lambda a, k, out: self.fits.append((a[0], a[1])))

    def histories(self) -> list[pl.DataFrame]:
        return [h for h, _ in self.behaviour] + [h for h, _ in self.features] + self.candidates


def rows_in(frame: pl.DataFrame, rows: pl.DataFrame) -> int:
    keys = [*PAIR, schema.TIMESTAMP]
    return frame.select(keys).join(rows.select(keys), on=keys, how="semi").height


def positives(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(pl.col(schema.LABEL) > 0).select(PAIR).unique()


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    from fuserank.evaluation.protocol import run_protocol

    monkeypatch = pytest.MonkeyPatch()
    try:
        recorder = Recorder(monkeypatch)
        items, interactions, content = planted_catalog()
        config = small_config(tmp_path_factory.mktemp("leak"))
        split = leave_last_out(interactions, min_interactions=config.split.min_interactions)
        result = run_protocol(cutoffs_from_split(split, config.split), items[schema.ITEM_ID].to_list(), content, config)
    finally:
        monkeypatch.undo()
    return recorder, split, result, config


def test_the_planted_rows_land_where_intended(protocol_run):
    _, split, _, _ = protocol_run
    assert split.test.filter(pl.col(schema.ITEM_ID) == TEST_ONLY).height == 1
    assert split.valid.filter(pl.col(schema.ITEM_ID) == VALID_ONLY).height == 1
    for frame in (split.train, split.valid):
        assert frame.filter(pl.col(schema.ITEM_ID) == TEST_ONLY).is_empty()
    assert split.train.filter(pl.col(schema.ITEM_ID) == VALID_ONLY).is_empty()


def test_no_stage_one_history_holds_a_test_row_or_an_early_validation_row(protocol_run):
    recorder, split, _, config = protocol_run
    # One fit per ranker cut-off, one for validation, one for test, in that order.
    assert len(recorder.behaviour) == config.split.label_cutoffs + 2
    assert len(recorder.features) == len(recorder.candidates) == len(recorder.behaviour)
    for history in recorder.histories():
        assert rows_in(history, split.test) == 0
    before_test = [h for h, _ in recorder.behaviour[:-1]] + [h for h, _ in recorder.features[:-1]]
    before_test += recorder.candidates[:-1]
    for history in before_test:
        assert rows_in(history, split.valid) == 0
    # The test stage learns from exactly train + valid: nothing is lost either.
    assert recorder.behaviour[-1][0].height == split.train.height + split.valid.height
    assert recorder.behaviour[-2][0].height == split.train.height


def test_behaviour_embedding_of_held_out_items_is_zero(protocol_run):
    recorder, _, _, _ = protocol_run
    for stage, (_, emb) in enumerate(recorder.behaviour):
        row = emb.item_ids.index(TEST_ONLY)
        assert not emb.mask[row] and not emb.vectors[row].any(), stage
        row = emb.item_ids.index(VALID_ONLY)
        if stage < len(recorder.behaviour) - 1:
            assert not emb.mask[row] and not emb.vectors[row].any(), stage
    # The test stage may learn the validation-only item: it is history by then.
    _, last = recorder.behaviour[-1]
    assert last.mask[last.item_ids.index(VALID_ONLY)]


def test_popularity_features_count_only_the_allowed_history(protocol_run):
    recorder, split, _, _ = protocol_run
    allowed = {"validation": split.train, "test": pl.concat([split.train, split.valid])}
    for (name, history), (_, frame) in zip(allowed.items(), recorder.features[-2:], strict=True):
        # Each user's reference time is their newest allowed interaction; count what precedes it.
        ref = history.group_by(schema.USER_ID).agg(pl.col(schema.TIMESTAMP).max().alias("ref"))
        events = history.select(schema.ITEM_ID, pl.col(schema.TIMESTAMP).alias("t"))
        pairs = frame.select(schema.USER_ID, schema.ITEM_ID, "item_log_count").with_row_index("row").join(
            ref, on=schema.USER_ID)
        counts = (pairs.join(events, on=schema.ITEM_ID, how="left").filter(pl.col("t") <= pl.col("ref"))
                  .group_by("row").len())
        got = pairs.join(counts, on="row", how="left").sort("row")
        expected = np.log1p(got["len"].fill_null(0).to_numpy().astype(np.float64))
        np.testing.assert_allclose(got["item_log_count"].to_numpy(), expected, rtol=1e-6, err_msg=name)
    # The trap is live: the test-only item (a copy of its user's favourite) is retrieved, and counts 0.
    seen = [f.filter(pl.col(schema.ITEM_ID) == TEST_ONLY) for _, f in recorder.features]
    assert sum(s.height for s in seen) > 0
    for frame in seen:
        assert (frame["item_log_count"] == 0).all()


def test_ranker_labels_come_from_train_and_early_stopping_from_validation(protocol_run):
    from fuserank.evaluation.protocol import QUERY

    recorder, split, result, _ = protocol_run
    (fit, valid), = recorder.fits
    test_pairs = split.test.select(PAIR)
    assert positives(fit).join(split.train.select(PAIR), on=PAIR, how="anti").is_empty()
    assert positives(fit).join(test_pairs, on=PAIR, how="semi").is_empty()
    assert positives(valid).join(split.valid.select(PAIR), on=PAIR, how="anti").is_empty()
    assert set(valid[schema.USER_ID].unique()) <= set(split.valid[schema.USER_ID])
    assert positives(valid).join(test_pairs, on=PAIR, how="semi").is_empty()
    assert result.metrics["ranker_train_rows"] == fit.height
    # The trees see only the queries with a positive (no negatives drawn by default).
    assert result.metrics["ranker_fit_rows"] == fit.filter((pl.col(schema.LABEL) > 0).any().over(QUERY)).height


def test_share_labels_are_train_rows_missing_from_their_own_history(tmp_path, monkeypatch):
    from fuserank.evaluation.protocol import QUERY, ranker_training_frame

    recorder = Recorder(monkeypatch)
    items, interactions, content = planted_catalog()
    config = small_config(tmp_path, "split.label_share=0.25", "split.label_cutoffs=2")
    split = leave_last_out(interactions, min_interactions=config.split.min_interactions)
    frame, _ = ranker_training_frame(cutoffs_from_split(split, config.split).labels, items[schema.ITEM_ID].to_list(),
                                     content, config)
    assert positives(frame).join(split.train.select(PAIR), on=PAIR, how="anti").is_empty()
    for cutoff, (history, _) in enumerate(recorder.features, start=1):
        labelled = positives(frame.filter(pl.col(QUERY).str.ends_with(f"#{cutoff}")))
        assert labelled.height > 0
        assert labelled.join(history.select(PAIR), on=PAIR, how="semi").is_empty()
        # A quarter of each user's remaining rows (at least one), not one row per user.
        per_user = labelled.group_by(schema.USER_ID).len()["len"]
        assert per_user.max() > 1 and per_user.min() >= 1


def test_tuning_objective_never_sees_a_test_row(tmp_path, monkeypatch):
    import fuserank.jobs.tuning as tuning
    from fuserank.jobs.train_evaluate import Prepared

    items, interactions, content = planted_catalog()
    config = small_config(tmp_path, "tune.n_trials=2", "tune.n_startup_trials=1", "tune.prune_rounds=0",
                          "tune.evaluate_best=false", "tune.ann_candidates=[20, 40]", "tune.fusion_weights=[0.5]",
                          f"tune.storage=sqlite:///{tmp_path / 'optuna.db'}")
    split = leave_last_out(interactions, min_interactions=config.split.min_interactions)
    prepared = Prepared(items, cutoffs_from_split(split, config.split), content, {}, {})
    monkeypatch.setattr(tuning, "prepare", lambda _config: prepared)
    targets: list[pl.DataFrame] = []
    original = tuning.run_trial

    def run_trial(trial, trial_cfg, cache, valid_targets, *rest):
        targets.append(valid_targets)
        return original(trial, trial_cfg, cache, valid_targets, *rest)

    monkeypatch.setattr(tuning, "run_trial", run_trial)
    recorder = Recorder(monkeypatch)
    summary, _ = tuning.tune(config)
    assert summary["n_complete"] == 2 and len(targets) == 2 and recorder.fits
    for valid_targets in targets:
        assert valid_targets.equals(split.valid)
    for history in recorder.histories():
        assert rows_in(history, split.test) == 0 and rows_in(history, split.valid) == 0
    for fit, valid in recorder.fits:
        assert positives(fit).join(split.train.select(PAIR), on=PAIR, how="anti").is_empty()
        assert positives(valid).join(split.valid.select(PAIR), on=PAIR, how="anti").is_empty()
        for frame in (fit, valid):
            assert positives(frame).join(split.test.select(PAIR), on=PAIR, how="semi").is_empty()


def test_prepare_fits_content_statistics_on_train_items_only(tmp_path, monkeypatch):
    import fuserank.jobs.train_evaluate as train_evaluate

    items, interactions, content = planted_catalog()
    seen: dict[str, object] = {}
    monkeypatch.setattr(train_evaluate, "load_data", lambda _config: (items, interactions))

    def encode_content(items_, train_items, _config):
        seen["train_items"] = set(train_items.to_list())
        return dict(content), {}

    monkeypatch.setattr(train_evaluate, "encode_content", encode_content)
    def prepare_llm(_items, train, _profile_from, _text, _config):
        seen["llm_train"] = train

    monkeypatch.setattr(train_evaluate, "prepare_llm", prepare_llm)
    config = small_config(tmp_path)
    prepared = train_evaluate.prepare(config)
    train = prepared.cutoffs.valid.history
    assert seen["train_items"] == set(train[schema.ITEM_ID])
    assert TEST_ONLY not in seen["train_items"] and VALID_ONLY not in seen["train_items"]
    assert seen["llm_train"].equals(train)


def test_centring_mean_and_audio_statistics_use_train_items_only(tmp_path, monkeypatch):
    import fuserank.encoders.content as content_module
    from fuserank.encoders.audio import AudioEncoder

    items, _, content = planted_catalog()
    items = items.with_columns(pl.format("clip_{}.wav", pl.col(schema.ITEM_ID)).alias(schema.AUDIO_PATH))
    text = content["text"]
    # The held-out items point far away: any mean that includes them moves visibly.
    vectors = text.vectors.copy()
    for item in (TEST_ONLY, VALID_ONLY):
        vectors[text.item_ids.index(item)] = np.eye(16, dtype=np.float32)[0]
    text = dataclasses.replace(text, vectors=vectors)
    monkeypatch.setattr(content_module, "_encode_text", lambda *_a: text)
    fitted: dict[str, set[str]] = {}

    def fit(self, fit_items):
        fitted["audio"] = set(fit_items[schema.ITEM_ID].to_list())
        self._fake_fitted = True

    monkeypatch.setattr(AudioEncoder, "fit", fit)
    monkeypatch.setattr(AudioEncoder, "is_fitted", property(lambda self: getattr(self, "_fake_fitted", False)))
    monkeypatch.setattr(AudioEncoder, "encode", lambda self, its: Embeddings(
        tuple(its[schema.ITEM_ID].to_list()), text.vectors, text.mask))
    train_items = pl.Series(schema.ITEM_ID, [i for i in text.item_ids if i not in (TEST_ONLY, VALID_ONLY)])
    config = small_config(tmp_path, "fusion.centre=[text]", f"sources.cache_dir={tmp_path / 'cache'}")
    out, _ = content_module.encode_content(items, train_items, config)
    assert fitted["audio"] == set(train_items.to_list())
    fit_rows = np.array([i not in (TEST_ONLY, VALID_ONLY) for i in text.item_ids])
    centred = text.vectors - text.vectors[fit_rows].mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(out["text"].vectors, centred, atol=1e-5)
