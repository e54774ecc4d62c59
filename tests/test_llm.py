"""The LLM wrapper (encoders/llm.py) on a tiny random Llama loaded through the user's code path."""

from __future__ import annotations

import numpy as np
import pytest

from fuserank.encoders import prompts
from fuserank.encoders.llm import embed_hidden, generate, load_causal_lm, render, yes_logprob
from tiny_models import save_tiny_llama

ITEMS = ["toy story comedy", "a red cat", "the quarterly tax report and the blue dog with a kitten", "dog",
         "green photo of the cat and the dog", "drama"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", seed=0)
    return load_causal_lm(folder, device="cpu", threads=1)


def test_the_chat_template_lays_out_system_and_user_turns(lm):
    text = render(lm, prompts.item_description("toy story"))
    assert text.startswith("<s> system You are a concise")
    assert "user Item: toy story" in text and text.endswith("<s> assistant ")


def test_batched_left_padded_generation_equals_one_at_a_time(lm):
    asks = [prompts.item_description(t) for t in ITEMS]
    batched = generate(lm, asks, max_new_tokens=6, batch_size=4)
    single = [generate(lm, [a], max_new_tokens=6, batch_size=1)[0] for a in asks]
    assert batched == single
    assert sum(bool(t) for t in batched) >= 3  # the tiny model says something, so equality means something
    assert len(set(batched)) >= 3


def test_a_rerun_reads_the_cache_and_calls_the_model_zero_times(lm, tmp_path):
    asks = [prompts.item_description(t) for t in ITEMS]
    first = generate(lm, asks, tmp_path, max_new_tokens=5, batch_size=2)
    before = lm.calls
    again = generate(lm, asks, tmp_path, max_new_tokens=5, batch_size=2)
    assert again == first and lm.calls == before
    # another template version or generation length is another key
    generate(lm, asks[:1], tmp_path, max_new_tokens=4, batch_size=2)
    assert lm.calls == before + 1


def test_an_interrupted_run_resumes_after_its_last_shard(lm, tmp_path, monkeypatch):
    asks = [prompts.item_description(t) for t in ITEMS]
    expected = generate(lm, asks, None, max_new_tokens=5, batch_size=2)
    real = lm.model.generate
    calls = {"n": 0}

    def dies_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(lm.model, "generate", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        generate(lm, asks, tmp_path, max_new_tokens=5, batch_size=2)
    assert len(list(tmp_path.glob("*.json"))) == 1  # the first batch's shard survived
    monkeypatch.setattr(lm.model, "generate", real)
    before = lm.calls
    assert generate(lm, asks, tmp_path, max_new_tokens=5, batch_size=2) == expected
    assert lm.calls - before == 2  # 3 batches, the first one cached


def test_hidden_state_embeddings_are_unit_deterministic_and_cached(lm, tmp_path):
    texts = ["a red cat", "the blue dog", "a red cat", ""]
    first = embed_hidden(lm, texts, "v1", tmp_path, batch_size=2)
    assert first.dtype == np.float32 and first.shape == (4, lm.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(first[:3], axis=1), 1.0, rtol=1e-5)
    assert not first[3].any()
    np.testing.assert_array_equal(first[0], first[2])
    assert not np.allclose(first[0], first[1])
    before = lm.calls
    np.testing.assert_array_equal(embed_hidden(lm, texts, "v1", tmp_path), first)
    assert lm.calls == before
    # padding does not change a text's vector: alone vs in a batch with a longer text
    alone = embed_hidden(lm, ["a red cat"], "v1", None)
    np.testing.assert_allclose(alone[0], first[0], atol=1e-5)


def test_yes_logprob_is_a_log_probability_and_padding_free(lm):
    asks = [prompts.relevance(["a red cat", "the dog"], "toy story"), prompts.relevance(["drama"], "cat")]
    together = yes_logprob(lm, asks, "yes", batch_size=2)
    alone = np.array([yes_logprob(lm, [a], "yes", batch_size=1)[0] for a in asks])
    assert together.shape == (2,) and np.all(together < 0)
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_a_missing_model_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_causal_lm(tmp_path / "nowhere" / "x.gguf")
