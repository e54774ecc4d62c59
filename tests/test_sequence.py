"""SASRec sequence model: a planted next-item cycle, early stopping, seeds, the cache, no leakage.

The planted answer: the catalog is a cycle of 30 items (named in a scrambled order, so the text
order of ids says nothing), and every user consumes a stretch of it, item k then item k + 1.
Timestamps come in ties of three, so the cycle is only visible in row order (data.split's tie
rule). A model that learns is top-1 right for nearly every user; chance is about 1 in 20.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from fuserank import schema
from fuserank.retrieval import sequence, sequence_training
from fuserank.config import ConfigError, RunConfig, SequenceConfig, SplitConfig, with_overrides
from fuserank.data.cutoffs import build_cutoffs
from fuserank.retrieval.sequence import cache_key, fit_sequence_model
from fuserank.retrieval.sequence_training import training_sequences, user_sequences

N_ITEMS = 30
CYCLE = [f"item{j:02d}" for j in np.random.default_rng(3).permutation(N_ITEMS)]  # CYCLE[k] -> CYCLE[k + 1]
FUTURE = "future-only"
CATALOG = tuple(sorted(CYCLE)) + (FUTURE,)
TINY = SequenceConfig(max_length=8, dim=16, blocks=1, heads=2, dropout=0.1, max_epochs=30, patience=3,
                      batch_size=32, learning_rate=1e-2, threads=1)
HELD_BACK = 4  # each user's newest items kept out of the fitted history


def cyclic(n_users: int = 80, seed: int = 0) -> pl.DataFrame:
    """Each user: 10-21 consecutive cycle items from a random start, three events per second."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for user in range(n_users):
        start, length = int(rng.integers(N_ITEMS)), int(rng.integers(10, 22))
        for t in range(length):
            users.append(f"u{user:03d}")
            items.append(CYCLE[(start + t) % N_ITEMS])
            times.append(1_000 + t // 3)
    return pl.DataFrame({schema.USER_ID: users, schema.ITEM_ID: items, schema.TIMESTAMP: times,
                         schema.RATING: [None] * len(users)}, schema=schema.INTERACTIONS)


def without_newest(interactions: pl.DataFrame, n: int) -> pl.DataFrame:
    return interactions.filter(pl.int_range(pl.len()).over(schema.USER_ID) < pl.len().over(schema.USER_ID) - n)


def next_item(item: str) -> str:
    return CYCLE[(CYCLE.index(item) + 1) % N_ITEMS]


def top1_accuracy(model: sequence.SequenceModel, history: pl.DataFrame) -> float:
    last = history.group_by(schema.USER_ID, maintain_order=True).last()
    top = model.recommend(history, last[schema.USER_ID].to_list(), k=1)
    expected = {u: next_item(i) for u, i in last.select(schema.USER_ID, schema.ITEM_ID).iter_rows()}
    return float(np.mean([expected[u] == i for u, i in top.select(schema.USER_ID, schema.ITEM_ID).iter_rows()]))


@pytest.fixture(scope="module")
def full() -> pl.DataFrame:
    return cyclic()


@pytest.fixture(scope="module")
def history(full) -> pl.DataFrame:
    return without_newest(full, HELD_BACK)


@pytest.fixture(scope="module")
def fitted(history) -> sequence.SequenceModel:
    return fit_sequence_model(history, CATALOG, TINY, seed=0)


def test_ties_keep_row_order_and_unknown_items_are_dropped():
    frame = pl.DataFrame({schema.USER_ID: ["a", "a", "a", "a"], schema.ITEM_ID: ["z", "b", "unknown", "m"],
                          schema.TIMESTAMP: [5, 5, 5, 1]})
    users, sequences = user_sequences(frame, ["b", "m", "z"])
    assert users == ["a"]
    assert sequences[0].tolist() == [2, 3, 1]  # m (t=1), then z and b in row order; indices 1-based


def test_the_planted_cycle_is_learned(fitted, history):
    assert fitted.item_vectors.dtype == np.float32 and fitted.item_vectors.shape == (len(CATALOG), TINY.dim)
    assert top1_accuracy(fitted, history) >= 0.9
    assert fitted.best_valid_ndcg >= 0.9


def test_early_stopping_stops_and_keeps_the_best_epoch(fitted, history):
    assert fitted.epochs < TINY.max_epochs and len(fitted.train_loss) == fitted.epochs
    assert fitted.train_loss[-1] < fitted.train_loss[0]
    assert fitted.epochs == fitted.best_epoch + TINY.patience
    assert fitted.best_valid_ndcg == max(fitted.valid_ndcg)
    assert fitted.valid_ndcg.index(fitted.best_valid_ndcg) == fitted.best_epoch - 1
    # The returned weights are the best epoch's: they score validation exactly as recorded.
    data = training_sequences(history, CATALOG, TINY.max_length)
    assert sequence_training.validation_ndcg(fitted.network, data, "cpu") == pytest.approx(fitted.best_valid_ndcg)


def test_the_best_epochs_weights_are_kept_not_the_last(history, monkeypatch):
    scripted = iter([0.1, 0.5, 0.3, 0.5, 0.2, 0.9])  # best at epoch 2; a tie does not count
    snapshots = []

    def fake(network, data, device):
        snapshots.append(network.item_weights.detach().clone().numpy())
        return next(scripted)

    monkeypatch.setattr(sequence_training, "validation_ndcg", fake)
    model = fit_sequence_model(history, CATALOG, dataclasses.replace(TINY, max_epochs=10), seed=0)
    assert (model.epochs, model.best_epoch, model.valid_ndcg) == (5, 2, (0.1, 0.5, 0.3, 0.5, 0.2))
    np.testing.assert_array_equal(model.item_vectors, snapshots[1])
    assert not np.array_equal(model.item_vectors, snapshots[-1])


def test_same_seed_same_vectors_and_the_callers_random_state_and_threads_are_untouched(fitted, history):
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # TINY runs on 1 thread and must hand back 2
    try:
        again = fit_sequence_model(history, CATALOG, TINY, seed=0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert torch.equal(torch.rand(3), expected_draw)
    np.testing.assert_array_equal(again.item_vectors, fitted.item_vectors)
    assert again.valid_ndcg == fitted.valid_ndcg
    other = fit_sequence_model(history, CATALOG, dataclasses.replace(TINY, max_epochs=2), seed=1)
    assert not np.array_equal(other.item_vectors, fitted.item_vectors)


def test_a_rerun_loads_from_the_cache_instead_of_training(history, tmp_path, monkeypatch):
    config = dataclasses.replace(TINY, max_epochs=3)
    first = fit_sequence_model(history, CATALOG, config, seed=0, cache_dir=tmp_path)
    assert not first.from_cache and [p.name for p in tmp_path.iterdir()] == [f"sasrec-{first.cache_key}.pt"]

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the cache holds this model")

    monkeypatch.setattr(sequence, "train_network", no_training)
    second = fit_sequence_model(history, CATALOG, config, seed=0, cache_dir=tmp_path)
    assert second.from_cache
    np.testing.assert_array_equal(second.item_vectors, first.item_vectors)
    assert ((second.epochs, second.best_epoch, second.valid_ndcg, second.train_loss)
            == (first.epochs, first.best_epoch, first.valid_ndcg, first.train_loss))
    np.testing.assert_array_equal(second.scores(history, ["u000"]), first.scores(history, ["u000"]))
    # Another seed, setting or history is another key, so it is trained.
    assert cache_key(history, CATALOG, config, 1, "cpu") != first.cache_key
    assert cache_key(history, CATALOG, dataclasses.replace(config, dropout=0.2), 0, "cpu") != first.cache_key
    assert cache_key(history.head(-1), CATALOG, config, 0, "cpu") != first.cache_key
    with pytest.raises(AssertionError, match="trained although"):
        fit_sequence_model(history, CATALOG, config, seed=1, cache_dir=tmp_path)
    # An unreadable cache file costs a refit, not a crash.
    (tmp_path / f"sasrec-{first.cache_key}.pt").write_bytes(b"not a checkpoint")
    monkeypatch.undo()
    third = fit_sequence_model(history, CATALOG, config, seed=0, cache_dir=tmp_path)
    assert not third.from_cache
    np.testing.assert_array_equal(third.item_vectors, first.item_vectors)


def test_a_continued_fit_starts_from_the_shared_histories_model_and_is_cached(full, history, tmp_path, monkeypatch):
    shared = without_newest(full, HELD_BACK + 2)
    config = dataclasses.replace(TINY, max_epochs=4, refit_epochs=2)
    base = fit_sequence_model(shared, CATALOG, config, seed=0, cache_dir=tmp_path)
    model = fit_sequence_model(history, CATALOG, config, seed=0, cache_dir=tmp_path, start_history=shared)
    assert model.started_from == base.cache_key and not model.from_cache and model.epochs <= 2
    assert model.cache_key != cache_key(history, CATALOG, config, 0, "cpu")  # not the from-scratch fit
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"sasrec-{m.cache_key}.pt" for m in (base, model))

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the cache holds this model")

    monkeypatch.setattr(sequence, "train_network", no_training)
    again = fit_sequence_model(history, CATALOG, config, seed=0, cache_dir=tmp_path, start_history=shared)
    assert again.from_cache and again.started_from == base.cache_key
    np.testing.assert_array_equal(again.item_vectors, model.item_vectors)
    # The shared history itself, or "scratch", is a plain fit; its key ignores the refit settings.
    assert fit_sequence_model(shared, CATALOG, config, 0, tmp_path, start_history=shared).cache_key == base.cache_key
    scratch = dataclasses.replace(config, refit="scratch", refit_epochs=7)
    assert cache_key(history, CATALOG, scratch, 0, "cpu") == cache_key(history, CATALOG, config, 0, "cpu")
    with pytest.raises(AssertionError, match="trained although"):
        fit_sequence_model(history, CATALOG, scratch, seed=0, cache_dir=tmp_path, start_history=shared)
    # "shared": the cut-off reads the shared history's model itself, nothing trained or written.
    used = fit_sequence_model(history, CATALOG, dataclasses.replace(config, refit="shared"), seed=0,
                              cache_dir=tmp_path, start_history=shared)
    assert used.cache_key == base.cache_key and used.started_from is None
    np.testing.assert_array_equal(used.item_vectors, base.item_vectors)
    assert len(list(tmp_path.iterdir())) == 2


def test_a_continued_fit_starts_from_the_start_models_weights(full, history):
    shared = without_newest(full, HELD_BACK + 2)
    continued = fit_sequence_model(history, CATALOG, dataclasses.replace(TINY, refit_epochs=1), seed=0,
                                   start_history=shared)
    fresh = fit_sequence_model(history, CATALOG, dataclasses.replace(TINY, refit="scratch", max_epochs=1), seed=0,
                               start_history=shared)
    base = fit_sequence_model(shared, CATALOG, TINY, seed=0)
    assert continued.epochs == fresh.epochs == 1 and fresh.started_from is None
    # Adam moves a weight by about the learning rate a step: 3 batches from the start weights.
    steps = -(-len(training_sequences(history, CATALOG, TINY.max_length).train) // TINY.batch_size)
    assert np.abs(continued.item_vectors - base.item_vectors).max() <= 1.5 * steps * TINY.learning_rate
    assert np.abs(fresh.item_vectors - base.item_vectors).max() > 0.1
    assert top1_accuracy(continued, history) >= 0.9


def test_nothing_after_the_history_reaches_the_model(full):
    """Test targets are a planted item that exists only after the test cut-off's history: the model
    fitted on that history is the same whatever the targets are (same cache key: the key covers
    everything a fit reads), never trains toward the planted item, and never prefers it to the
    true next item. (With a full softmax every output row moves, the planted one only as a
    negative, so "untouched since initialisation" is not the property to test.)"""
    planted = full.with_columns(
        pl.when(pl.int_range(pl.len()).over(schema.USER_ID) == pl.len().over(schema.USER_ID) - 1)
        .then(pl.lit(FUTURE)).otherwise(pl.col(schema.ITEM_ID)).alias(schema.ITEM_ID)
    )
    split = SplitConfig(label_cutoffs=1)
    test_history = build_cutoffs(planted, split).test.history
    assert FUTURE not in test_history[schema.ITEM_ID].to_list()
    assert (cache_key(test_history, CATALOG, TINY, 0, "cpu")
            == cache_key(build_cutoffs(full, split).test.history, CATALOG, TINY, 0, "cpu"))
    data = training_sequences(test_history, CATALOG, TINY.max_length)
    future_index = CATALOG.index(FUTURE) + 1
    assert all(future_index not in seq for seq in (*data.train, *data.valid_inputs))
    assert future_index not in data.valid_targets
    model = fit_sequence_model(test_history, CATALOG, TINY, seed=0)
    last = test_history.group_by(schema.USER_ID, maintain_order=True).last()
    users = last[schema.USER_ID].to_list()
    assert FUTURE not in model.recommend(test_history, users, k=1)[schema.ITEM_ID].to_list()
    scores = model.scores(test_history, users)
    true_next = [CATALOG.index(next_item(item)) for item in last[schema.ITEM_ID].to_list()]
    assert (scores[:, CATALOG.index(FUTURE)] < scores[np.arange(len(users)), true_next]).all()


def test_inference_reads_a_longer_history_than_the_fit(fitted, full):
    users = ["u000", "u001", "nobody"]
    states = fitted.user_states(full, users)
    assert states.dtype == np.float32 and states.shape == (3, TINY.dim)
    assert states[:2].any(axis=1).all() and not states[2].any()
    assert fitted.scores(full, users).shape == (3, len(CATALOG))
    longest = int(full.group_by(schema.USER_ID).len()["len"].max())
    assert longest > TINY.max_length  # the newest max_length items are read
    assert top1_accuracy(fitted, full) >= 0.9
    # Items outside the catalog in a later history are ignored, not an error.
    extra = pl.concat([full, full.head(1).with_columns(pl.lit("brand-new").alias(schema.ITEM_ID),
                                                        pl.lit(9_999, dtype=pl.Int64).alias(schema.TIMESTAMP))])
    np.testing.assert_array_equal(fitted.user_states(extra, ["u000"]), fitted.user_states(full, ["u000"]))


def test_sampled_softmax_trains(history):
    model = fit_sequence_model(history, CATALOG, dataclasses.replace(TINY, negatives=8), seed=0)
    assert top1_accuracy(model, history) >= 0.8


def test_length_batches_cover_every_row_once_and_pad_less_than_random_ones():
    lengths = np.random.default_rng(0).choice([3, 200], size=2_000, p=[0.7, 0.3])

    def batches(batching: str) -> list[list[int]]:
        return sequence_training.epoch_batches(lengths, 32, batching, torch.Generator().manual_seed(5))

    def padded(split: list[list[int]]) -> int:
        return sum(int(lengths[rows].max()) * len(rows) for rows in split)

    # "random" is the order models were trained in before the option: slices of one permutation.
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(5)).tolist()
    assert batches("random") == [order[start:start + 32] for start in range(0, len(order), 32)]
    by_length = batches("length")
    assert sorted(row for rows in by_length for row in rows) == list(range(len(lengths)))
    assert max(len(rows) for rows in by_length) == 32 and by_length == batches("length")
    assert padded(by_length) < 0.6 * padded(batches("random"))


def test_length_batching_trains_and_is_keyed_apart(history):
    config = dataclasses.replace(TINY, batching="length")
    assert top1_accuracy(fit_sequence_model(history, CATALOG, config, seed=0), history) >= 0.9
    assert cache_key(history, CATALOG, config, 0, "cpu") != cache_key(history, CATALOG, TINY, 0, "cpu")


def test_bad_inputs_say_what_is_wrong(history):
    with pytest.raises(ValueError, match="multiple of sequence.heads"):
        fit_sequence_model(history, CATALOG, dataclasses.replace(TINY, dim=15), seed=0)
    with pytest.raises(ValueError, match="at least 3 catalog items"):
        fit_sequence_model(history.group_by(schema.USER_ID, maintain_order=True).head(2), CATALOG, TINY, seed=0)


def test_the_sequence_section_is_off_by_default_and_checked():
    assert RunConfig().sequence == SequenceConfig() and not SequenceConfig().enabled
    assert with_overrides(RunConfig(), ["sequence.negatives=100"]).sequence.negatives == 100
    for bad in ("sequence.device=tpu", "sequence.batching=sorted", "sequence.dropout=1.0", "sequence.max_length=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            with_overrides(RunConfig(), [bad])
